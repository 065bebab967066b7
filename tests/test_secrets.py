"""Secret scrubbing of the run environment and redaction of outputs."""

from __future__ import annotations

import pytest

from nightlab.secrets import REDACTED, is_secret_name, redact, scrub_env, secret_values

SECRET_NAMES = [
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENAI_ORG_ID",
    "FAKE_API_KEY",
    "COHERE_APIKEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "WANDB_API_KEY",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "CI_JOB_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCLOUD_PROJECT_CREDS",
    "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE",
    "SSH_AUTH_SOCK",
    "NETRC",
    "KUBECONFIG",
    "DJANGO_SECRET_KEY",
    "SECRET_KEY",
    "KAGGLE_KEY",
    "PGPASSWORD",
    "DB_PASSWORD",
    "MYSQL_PWD",
    "SMTP_PASSWD",
    "SENTRY_DSN",
    "SSH_KEY_PATH",
    "my_lowercase_token",
]

PLAIN_NAMES = [
    "PATH",
    "HOME",
    "PWD",
    "OLDPWD",
    "KEYMAP",
    "KEYBOARD_LAYOUT",
    "MONKEY_PATCH",
    "TOKENIZERS_PARALLELISM",
    "MAX_TOKENS",
    "NIGHTLAB_BUDGET_TOKENS",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "HF_HOME",
    "WANDB_MODE",
    "PYTHONHASHSEED",
    "LANG",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_removed(name: str) -> None:
    assert is_secret_name(name)
    assert name not in scrub_env({name: "value-of-the-variable", "PATH": "/bin"})


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_ordinary_names_are_kept(name: str) -> None:
    assert scrub_env({name: "value"}) == {name: "value"}


@pytest.mark.parametrize(
    "value",
    [
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
        "AKIAIOSFODNN7EXAMPLE",
        "https://alice:s3cret-pass@pypi.example.com/simple",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nabc",
    ],
)
def test_secret_values_are_removed_whatever_the_name(value: str) -> None:
    assert scrub_env({"INNOCENT_LOOKING": value}) == {}


def test_urls_without_passwords_and_paths_are_kept() -> None:
    env = {
        "PIP_INDEX_URL": "https://pypi.org/simple",
        "DATA": "/data/hf_cache",
        "MODEL": "sk-small",
        "ARCH": "mask-rcnn-resnet50-fpn-coco-v2",
        "RUN": "task_hf_abcdefghijklmnopqrstuvwxyz0123456789",
    }
    assert scrub_env(env) == env


def test_allow_keeps_exact_names_only() -> None:
    env = {"WANDB_API_KEY": "w" * 20, "HF_TOKEN": "h" * 20, "PATH": "/bin"}
    assert scrub_env(env, allow=["WANDB_API_KEY"]) == {"WANDB_API_KEY": "w" * 20, "PATH": "/bin"}
    assert "WANDB_API_KEY" not in scrub_env(env, allow=["wandb_api_key"])  # names are exact


def test_scrub_returns_a_copy() -> None:
    env = {"HF_TOKEN": "h" * 20}
    scrub_env(env)
    assert env == {"HF_TOKEN": "h" * 20}


def test_redact_replaces_long_secrets_and_known_shapes() -> None:
    key = "fake-key-1234567890"
    text = f"key={key}; short=abc; again {key}\nghp_abcdefghijklmnopqrstuvwxyz0123456789 leaked"
    out = redact(text, [key, "abc"])
    assert key not in out and out.count(REDACTED) == 3
    assert "short=abc" in out  # too short to redact: it would wreck the text
    assert "ghp_" not in out
    assert redact("plain text", [key]) == "plain text"


def test_redact_keeps_the_url_around_its_password() -> None:
    assert redact("index https://alice:pw12@host/simple", []) == f"index https://{REDACTED}@host/simple"


def test_redact_longest_first() -> None:
    inner, outer = "abcdefgh", "abcdefgh-and-more"
    assert redact(f"x {outer} y", [inner, outer]) == f"x {REDACTED} y"


def test_secret_values_lists_scrubbed_and_allowed_values() -> None:
    env = {"HF_TOKEN": "hf-token-value-123", "SHORT_TOKEN": "abc", "PATH": "/usr/local/bin:/usr/bin"}
    assert secret_values(env) == ["hf-token-value-123"]


def test_a_path_is_not_secret_text_even_when_its_variable_leaves_the_run(tmp_path) -> None:
    """Issue 17: AWS_CA_BUNDLE=/etc/ssl/certs/... (a secret by its prefix) had every mention of
    the CA bundle in a log replaced by [redacted]."""
    bundle = tmp_path / "ca-certificates.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    environ = {
        "AWS_CA_BUNDLE": str(bundle),
        "GOOGLE_APPLICATION_CREDENTIALS": str(bundle),
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "DB_PASSWORD": "/not/a/file/but/a/password",
    }
    assert "AWS_CA_BUNDLE" not in scrub_env(environ)  # the variable still stays out of the run
    values = secret_values(environ)
    assert str(bundle) not in values
    assert "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" in values
    assert "/not/a/file/but/a/password" in values  # path-shaped, but no such file: still secret
    log = f"using CA bundle {bundle}\nkey wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
    assert redact(log, values) == f"using CA bundle {bundle}\nkey {REDACTED}\n"
