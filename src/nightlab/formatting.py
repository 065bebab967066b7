"""Numbers as people read them in tables, reasons and prompts: one set of rules for every part.

Reports, the command line, the policy's reasons and the agents' prompts all print metric values;
writing the formatting once keeps a value looking the same wherever a person meets it (and a
negative sign is always the minus sign, never a hyphen that looks like a dash).
"""

from __future__ import annotations

import math
import re

MISSING = "—"


def fixed(value: float | None, decimals: int = 6, missing: str = MISSING) -> str:
    """``1.234568`` (fixed decimals), or ``missing`` for None."""
    return missing if value is None else f"{value:.{decimals}f}"


def general(value: float | None, digits: int = 6, missing: str = MISSING) -> str:
    """``1.23457`` (significant digits), or ``missing`` for None: for prompts and one-line logs."""
    return missing if value is None else f"{value:.{digits}g}"


def signed(value: float | None, decimals: int = 6, missing: str = MISSING) -> str:
    """``+0.012345`` / ``−0.012345``; a value that rounds to zero is ``+0.000000``, never ``−0.000000``."""
    if value is None:
        return missing
    text = f"{abs(value):.{decimals}f}"
    return ("−" if value < 0 and float(text) != 0 else "+") + text


def decimals_for(
    scale: float | None, significant: int = 2, low: int = 0, high: int = 12, default: int = 4
) -> int:
    """Decimals that show ``significant`` digits of ``scale`` (4 for 0.0011 and two digits),
    within ``[low, high]``; ``default`` when the scale is zero, missing or not finite."""
    if not scale or not math.isfinite(scale):
        return default
    return min(high, max(low, significant - 1 - math.floor(math.log10(abs(scale)))))


# What a terminal acts on rather than shows, in text a run or an agent wrote (a log line, a
# reason, a description). Escape sequences first, whole: CSI (``ESC [`` ... final byte), OSC
# (``ESC ]`` up to BEL or ST; one left unterminated loses only its introducer, never the lines
# after it), DCS/SOS/PM/APC (``ESC P``/``X``/``^``/``_`` up to ST), any other ``ESC x``, and the
# 8-bit CSI (0x9B) and OSC (0x9D); then :data:`_CONTROL` takes each control character left.
_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b\][^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[PX^_][^\x1b\x9c\n]*(?:\x1b\\|\x9c)"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
    r"|\x9d[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Characters a reader cannot see that change what they see: the bidirectional controls of
# "Trojan Source" (CVE-2021-42574: code that reads one way and runs another) and the zero-width
# ones. Shown as <U+XXXX> wherever text is printed, and flagged by the diff audit.
INVISIBLE = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def show_invisible(text: str) -> str:
    """``text`` with each invisible or direction-changing character written as ``<U+XXXX>``."""
    return INVISIBLE.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)


def terminal_safe(text: object, allow: str = "") -> str:
    """``text`` fit to print on a terminal: escape sequences removed and every other C0/C1
    control character with them, except those in ``allow`` (``"\\n"`` for text meant to span
    lines; a tab not allowed becomes a space); invisible and direction-changing characters
    shown as ``<U+202E>``. For what is printed, never for what is stored:
    the ledger keeps what the run said, and JSON output escapes control characters itself."""
    text = str(text)
    if "\n" in allow:
        text = text.replace("\r\n", "\n")
    text = _ESCAPE.sub("", text)
    text = show_invisible(text)
    if "\t" not in allow:
        text = text.replace("\t", " ")
    return _CONTROL.sub(lambda m: m.group() if m.group() in allow else "", text)


def with_status(status: str, reason: str | None) -> str:
    """``"invalid: the run left a symlink ..."``: a failure's reason led by its status, once.

    A script's own verdict (``status: invalid (overspent)``) and an evaluation's ``invalid: ...``
    line come back as reasons that already say their status; leading them with it again would
    read ``invalid: invalid: overspent``."""
    reason = (reason or "").strip()
    if not reason:
        return status
    if reason.lower().startswith(f"{status.lower()}:"):
        return reason
    return f"{status}: {reason}"
