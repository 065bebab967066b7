"""Keeping secrets out of the training process, and out of everything nightlab writes.

The training script is code an agent wrote; it runs as the user. Whatever is in its
environment it can read, print, or send somewhere. So the run environment starts from the
parent's environment with every secret-looking variable removed, and the user passes a secret
through only by naming it (``allow``). :func:`redact` is the second line of defence: the
ledger, report and log-tail writers run their text through it so a key that leaked anyway
(an allowed one, or one the script read from a file) is not copied into the outputs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

REDACTED = "[redacted]"

# Values shorter than this are not redacted: replacing "1" or "true" everywhere would wreck
# the text and protect nothing.
MIN_SECRET_LENGTH = 8

# Names removed outright (compared in upper case).
_SECRET_NAMES = frozenset(
    {
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HUGGINGFACE_TOKEN",
        "WANDB_API_KEY",
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "SSH_AUTH_SOCK",  # the agent socket signs with the user's keys without reading them
        "SSH_AGENT_PID",
        "GPG_AGENT_INFO",
        "SSH_ASKPASS",
        "GIT_ASKPASS",  # credential helpers answer for the user
        "NETRC",  # path to a .netrc (curl)
        "KUBECONFIG",  # cluster credentials
        "KRB5CCNAME",  # Kerberos ticket cache
        "DOCKER_AUTH_CONFIG",
        "DBUS_SESSION_BUS_ADDRESS",  # reaches the desktop keyring (secret service)
    }
)

# Every variable with one of these prefixes goes: cloud SDKs keep credentials and the config
# that locates them under their prefix, and a training run has no business calling LLM APIs.
_SECRET_PREFIXES = ("AWS_", "AZURE_", "GCP_", "GCLOUD_", "CLOUDSDK_", "OPENAI_", "ANTHROPIC_")

# A name is split into words at "_"; any of these words marks it as a secret.
_SECRET_WORDS = frozenset(
    {
        "KEY",
        "APIKEY",
        "TOKEN",
        "SECRET",
        "SECRETS",
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "PWD",  # MYSQL_PWD; the bare PWD / OLDPWD (directories) are exempt below
        "CREDENTIAL",
        "CREDENTIALS",
        "CREDS",
        "DSN",  # SENTRY_DSN embeds a key
        "NETRC",
    }
)
# Substrings that mark a secret even inside a word (CLIENTSECRET, PGPASSWORD).
_SECRET_SUBSTRINGS = ("SECRET", "PASSWORD", "PASSWD", "APIKEY")
_NOT_SECRETS = frozenset({"PWD", "OLDPWD"})

# Values that are credentials whatever the variable is called. Each pattern starts with a
# literal so the regex engine can skip ahead fast (a leading \b or a combined alternation makes
# redacting a big log ~50x slower); the word boundary before a token is checked by hand, so
# "mask-rcnn-..." is not taken for an "sk-..." key. Where a pattern has a group, only the group
# is secret (the user:password of a URL, not the scheme).
_SECRET_VALUE_PATTERNS = [
    re.compile(p)
    for p in (
        r"sk-[A-Za-z0-9_\-]{20,}",  # OpenAI, Anthropic (sk-ant-...)
        r"gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
        r"github_pat_[A-Za-z0-9_]{30,}",
        r"hf_[A-Za-z0-9]{30,}",  # Hugging Face
        r"xox[abprs]-[A-Za-z0-9\-]{10,}",  # Slack
        r"glpat-[A-Za-z0-9_\-]{20,}",  # GitLab
        r"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",  # AWS access key ids
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        r"://([^/\s:@]+:[^/\s@]+)@",  # user:password@ in a URL
    )
]


def _credential_spans(text: str) -> list[tuple[int, int]]:
    """Where credential-shaped tokens are in ``text``, as (start, end), in order."""
    spans = []
    for pattern in _SECRET_VALUE_PATTERNS:
        for match in pattern.finditer(text):
            start = match.start()
            inside_word = start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_")
            if inside_word and not pattern.groups:
                continue  # "mask-rcnn-..." is not an "sk-..." key (a URL's "://" always is)
            spans.append(match.span(1) if pattern.groups else match.span())
    return sorted(spans)


def is_secret_name(name: str) -> bool:
    """Whether a variable's name says it holds a secret (see :func:`scrub_env` for the rules)."""
    upper = name.upper()
    if upper in _NOT_SECRETS:
        return False
    if upper in _SECRET_NAMES or upper.startswith(_SECRET_PREFIXES):
        return True
    if any(sub in upper for sub in _SECRET_SUBSTRINGS):
        return True
    words = [w for w in upper.split("_") if w]
    return any(w in _SECRET_WORDS for w in words)


def is_secret_value(value: str) -> bool:
    """Whether a value looks like a credential (a known token format, a URL with a password)."""
    return bool(_credential_spans(value))


def is_secret(name: str, value: str) -> bool:
    return is_secret_name(name) or is_secret_value(value)


def scrub_env(environ: Mapping[str, str], allow: Iterable[str] = ()) -> dict[str, str]:
    """A copy of ``environ`` without its secrets; names in ``allow`` (exact) are kept anyway.

    A variable is removed when any rule matches (names compared in upper case):

    1. its name is a known credential: ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``,
       ``WANDB_API_KEY``, ``GITHUB_TOKEN``, ``GH_TOKEN``, ``GOOGLE_APPLICATION_CREDENTIALS``,
       ``SSH_AUTH_SOCK``, ``SSH_AGENT_PID``, ``GPG_AGENT_INFO``, ``SSH_ASKPASS``,
       ``GIT_ASKPASS``, ``NETRC``, ``KUBECONFIG``, ``KRB5CCNAME``, ``DOCKER_AUTH_CONFIG``,
       ``DBUS_SESSION_BUS_ADDRESS`` (agent sockets, credential helpers and keyrings hand out
       secrets without the secret being in the environment);
    2. its name starts with ``AWS_``, ``AZURE_``, ``GCP_``, ``GCLOUD_``, ``CLOUDSDK_``,
       ``OPENAI_`` or ``ANTHROPIC_`` (harmless ones such as ``AWS_REGION`` go too: cheaper than
       a list of exceptions, and a training run does not call cloud or LLM APIs);
    3. one of its ``_``-separated words is ``KEY``, ``APIKEY``, ``TOKEN``, ``SECRET(S)``,
       ``PASSWORD``, ``PASSWD``, ``PASSPHRASE``, ``PWD``, ``CREDENTIAL(S)``, ``CREDS``, ``DSN``
       or ``NETRC``: so ``*_API_KEY``, ``*_KEY``, ``*_TOKEN``, ``SECRET_KEY``, ``KEY_FILE``
       go, while ``KEYMAP``, ``MONKEY_PATCH``, ``TOKENIZERS_PARALLELISM``, ``MAX_TOKENS``
       and ``NIGHTLAB_BUDGET_TOKENS`` stay (whole words only);
    4. its name contains ``SECRET``, ``PASSWORD``, ``PASSWD`` or ``APIKEY`` anywhere
       (``PGPASSWORD``, ``CLIENTSECRET``);
    5. its value looks like a credential whatever the name: ``sk-...``, ``ghp_...``,
       ``github_pat_...``, ``hf_...``, ``xox?-...``, ``glpat-...``, AWS key ids, a PEM private
       key, or a URL with ``user:password@`` (a proxy or index URL with a password goes too;
       allow it by name if the run needs it).

    ``PWD`` and ``OLDPWD`` themselves are directories, never secrets.
    """
    allowed = set(allow)
    return {k: v for k, v in environ.items() if k in allowed or not is_secret(k, v)}


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """The values of every secret-looking variable in ``environ`` that are long enough to redact.

    Allowed secrets are included on purpose: passing a key to the run does not mean it may
    appear in the ledger or the report.
    """
    values = {
        v
        for k, v in environ.items()
        if len(v) >= MIN_SECRET_LENGTH and is_secret(k, v) and not _names_a_path(v)
    }
    return sorted(values, key=len, reverse=True)


def _names_a_path(value: str) -> bool:
    """A value that is the path of a file or folder here (``AWS_CA_BUNDLE=/etc/ssl/certs/...``,
    a credentials file's location): the secret, if any, is in the file, not in its name, and
    redacting the path would garble every log line that mentions it. Such variables still
    leave the run's environment; only their value is not treated as secret text."""
    if not value.startswith(("/", "~/")) or any(c.isspace() for c in value) or is_secret_value(value):
        return False
    return os.path.exists(os.path.expanduser(value))


def redact(text: str, secrets: Iterable[str], patterns: bool = True) -> str:
    """``text`` with every secret value (of length >= 8) replaced by ``[redacted]``.

    Longer secrets are replaced first so one that contains another is not left half-visible.
    With ``patterns`` (the default), anything shaped like a known credential (see rule 5 of
    :func:`scrub_env`) is redacted too, so a key the script read from a file is caught even
    though nightlab never knew its value.
    """
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    if patterns:
        pieces, last = [], 0
        for start, end in _credential_spans(text):
            if start >= last:  # overlapping matches: the first one already covers it
                pieces += [text[last:start], REDACTED]
                last = end
        text = "".join(pieces) + text[last:]
    return text
