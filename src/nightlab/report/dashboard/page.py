"""The dashboard's one HTML page, served live or written out as a self-contained file.

The page is the same in both cases: ``static/index.html`` with ``app.css`` and ``app.js``. Live,
the server links them (``/static/...``) and the script opens a server-sent event stream; as a
file, they are inlined with the data, and a Content-Security-Policy in the page forbids every
network request and every script but the inlined one (pinned by its hash), so the file opens
from disk with no server and no network, and a ``<script>`` in an experiment's description can
do nothing but be read.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
import math
import re
from importlib import resources

ASSETS = ("index.html", "app.css", "app.js")
# What the live page may load: itself. connect-src 'self' lets the event stream through.
LIVE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)
# Only a header can forbid framing (browsers ignore frame-ancestors in a <meta>).
LIVE_HEADERS = {
    "Content-Security-Policy": LIVE_CSP + "; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def asset(name: str) -> str:
    """The text of one shipped asset (``static/<name>``)."""
    if name not in ASSETS:
        raise KeyError(name)
    return (resources.files("nightlab.report.dashboard") / "static" / name).read_text(encoding="utf-8")


def json_text(data: object) -> str:
    """Strict JSON (what a browser's ``JSON.parse`` accepts) for the page and the API. A metric of
    NaN or infinity (a diverged run) is ``null``: written as ``NaN`` it would break the whole
    page, and refusing it would lose every other experiment's row with it. Written as it is
    first: copying the whole tree to look for them took a fifth of report.html's time."""
    try:
        return json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere
        return json.dumps(_finite(data), separators=(",", ":"), default=str, allow_nan=False)


def _finite(data: object) -> object:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def script_json(data: object) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` that
    could close the element or start a comment, whatever an agent wrote in a description."""
    text = json_text(data)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fill(template: str, values: dict[str, str]) -> str:
    """Fill ``{{NAME}}`` slots in one pass, so a slot's text is never searched for other slots
    (an agent's description that says ``{{DATA}}`` stays text)."""
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m.group(1)], template)


def live_page(boot: dict) -> str:
    """The page ``nightlab serve`` sends: assets linked, ``boot`` (mode, tag, token rules) embedded."""
    return _fill(
        asset("index.html"),
        {
            "TITLE": html.escape(f"nightlab {boot.get('tag', '')}"),
            "CSP": LIVE_CSP,
            "STYLE": '<link rel="stylesheet" href="static/app.css">',
            "BOOT": script_json(boot),
            "DATA": "null",
            "TOP": "",
            "SCRIPT": '<script src="static/app.js"></script>',
        },
    )


def packed_details(details: dict) -> str:
    """Every experiment's details as gzip in base64, which the page unpacks with the browser's
    DecompressionStream (no request: it works from file://). Diffs and logs of 10,000 experiments
    were 18.9 MB of a 25 MB page as JSON and 1.5 MB packed, in 0.2 s."""
    return base64.b64encode(gzip.compress(json_text(details).encode("utf-8"), 6, mtime=0)).decode("ascii")


def unpacked_details(packed: str) -> dict:
    """What :func:`packed_details` packed (tests and tools read a page's details with it)."""
    return json.loads(gzip.decompress(base64.b64decode(packed)).decode("utf-8"))


def static_page(boot: dict, data: dict, top_html: str = "") -> str:
    """A self-contained page: styles, script and ``data`` (snapshot plus every experiment's
    details, those packed: ``details_gz``) inline; ``top_html`` (already escaped) is shown first,
    readable without script."""
    if "details" in data:
        data = {
            **{k: v for k, v in data.items() if k != "details"},
            "details_gz": packed_details(data["details"]),
        }
    script = asset("app.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    csp = (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    return _fill(
        asset("index.html"),
        {
            "TITLE": html.escape(f"nightlab {boot.get('tag', '')}"),
            "CSP": csp,
            "STYLE": f"<style>{asset('app.css')}</style>",
            "BOOT": script_json(boot),
            "DATA": script_json(data),
            "TOP": top_html,
            "SCRIPT": f"<script>{script}</script>",
        },
    )
