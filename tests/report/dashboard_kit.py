"""What the dashboard tests share: a slow toy target, `nightlab serve` in a subprocess, chromium.

Browser tests drive Debian's chromium (``/usr/bin/chromium``) through Playwright's Python
package; nothing downloads a browser build. Where chromium or Playwright is missing they skip
with a message saying so (and `make test` prints that line).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import TOY_TRAIN

CHROMIUM = os.environ.get("NIGHTLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "dashboard-test-token-0123456789"

# The toy target, slowed down: it trains in steps, prints each, and reports intermediate points.
SLOW_TRAIN = TOY_TRAIN.replace(
    'print("---")',
    """import time, json as _json
STEPS = int(os.environ.get("TOY_STEPS", "4"))
for step in range(STEPS):
    time.sleep(float(os.environ.get("TOY_SLEEP", "0.4")))
    partial = loss + (STEPS - step) * 0.05
    print(f"step {step} | loss {partial:.4f}", flush=True)
    with open(os.path.join(run_dir, "curve.jsonl"), "a") as f:
        f.write(_json.dumps({"training_seconds": step + 1.0, "val_loss": partial, "step": step}) + "\\n")
print("---")""",
)


def chromium_or_skip() -> str:
    """Chromium's path, or a skip that says plainly why the browser test did not run."""
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests skipped: no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(
            "browser tests skipped: Playwright's Python package is not installed (pip install playwright)"
        )
    return CHROMIUM


@contextmanager
def browser() -> Iterator[object]:
    """A headless chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    path = chromium_or_skip()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def serving(root: Path, *args: str, token: str = TOKEN) -> Iterator[str]:
    """`nightlab serve ROOT` on a free port; yields its base address."""
    env = {**os.environ, "NIGHTLAB_DASHBOARD_TOKEN": token}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nightlab.cli", "serve", str(root), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        base = None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and base is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"dashboard: (http://\S+/)", line)
            if found:
                base = found.group(1)
        assert base, "".join(lines)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout: float = 60, every: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $NIGHTLAB_SCREENSHOTS when set (to look at them), else the test's tmp dir."""
    folder = Path(os.environ.get("NIGHTLAB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
