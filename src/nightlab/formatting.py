"""Numbers as people read them in tables, reasons and prompts: one set of rules for every part.

Reports, the command line, the policy's reasons and the agents' prompts all print metric values;
writing the formatting once keeps a value looking the same wherever a person meets it (and a
negative sign is always the minus sign, never a hyphen that looks like a dash).
"""

from __future__ import annotations

import math

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
