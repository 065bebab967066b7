"""Private files (``[target] private``): empty in the training process's view, read by the evaluation.

Real processes under the real sandbox (``unshare`` and Landlock); the tests that need user
namespaces skip where this machine has none. The policy tests (what a night says or refuses where
the files cannot be hidden) run everywhere.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import git, nightlab
from nightlab.config import TargetConfig
from nightlab.errors import UserError
from nightlab.executor import sandbox
from trust.kit import ledger_rows

SUPPORT = sandbox.detect()
needs_hiding = pytest.mark.skipif(
    not (SUPPORT.complete and SUPPORT.netns), reason=f"hiding needs user namespaces; {SUPPORT.describe()}"
)

# What a training script might try: read the file, unmount what covers it, bind-mount its folder
# (without the mount on the file) somewhere else and read it there, or do both from a fresh
# user and mount namespace of its own.
PROBE = """\
import ctypes, os, subprocess, sys
private, public, spare = sys.argv[1], sys.argv[2], sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
def read(path):
    try:
        return repr(open(path, "rb").read())
    except OSError as exc:
        return f"error:{exc.errno}"
out = {"private": read(private), "public": read(public)}
out["umount"] = libc.umount2(private.encode(), 0) == 0 or ctypes.get_errno()
out["detach"] = libc.umount2(private.encode(), 2) == 0 or ctypes.get_errno()
folder = os.path.dirname(private)
out["bind"] = libc.mount(folder.encode(), spare.encode(), None, 4096, None) == 0 or ctypes.get_errno()
out["via_bind"] = read(os.path.join(spare, os.path.basename(private)))
nested = subprocess.run(
    ["unshare", "-rm", "--", "sh", "-c", f"umount {private} 2>/dev/null; cat {private}"],
    capture_output=True, text=True,
)
out["nested"] = nested.stdout
out["after"] = read(private)
print("PROBE " + repr(out))
"""

SECRET, PUBLIC = b"the val split\n", b"the train split\n"


def _files(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    data = tmp_path / "cache" / "ds" / "byte"
    data.mkdir(parents=True)
    (data / "val.bin").write_bytes(SECRET)
    (data / "train.bin").write_bytes(PUBLIC)
    work, spare = tmp_path / "work", tmp_path / "work" / "spare"
    spare.mkdir(parents=True)
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    return data / "val.bin", data / "train.bin", work, script


def _probe(command: str) -> dict:
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, done.stdout + done.stderr
    return eval(line[len("PROBE ") :])  # noqa: S307 - our own probe's repr of a dict


def test_private_patterns_expand_variables_home_and_globs(tmp_path: Path, monkeypatch) -> None:
    val, train, work, _ = _files(tmp_path)
    (val.parent / "holdout.bin").write_bytes(b"x")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NIGHTLAB_CACHE", raising=False)
    patterns = ["${NIGHTLAB_CACHE:-~/cache}/**/val.bin", "${NIGHTLAB_CACHE:-~/cache}/**/holdout.bin"]
    expected = [val, val.parent / "holdout.bin"]
    assert sandbox.private_files(patterns, work) == expected  # the default, ~ expanded
    assert sandbox.private_files(patterns, work, {"NIGHTLAB_CACHE": str(tmp_path / "cache")}) == expected
    assert sandbox.private_files(patterns, work, {"NIGHTLAB_CACHE": str(tmp_path / "elsewhere")}) == []
    # An unset variable without a default names nothing (never the whole file system).
    assert sandbox.private_files(["${NIGHTLAB_NO_SUCH_VARIABLE}/**/train.bin"], work) == []
    (work / "link.bin").symlink_to(train)
    assert sandbox.private_files(["link.bin"], work) == [train]  # relative to the run, resolved
    with pytest.raises(ValueError, match="holds an empty string"):
        TargetConfig(editable=["a.py"], run="x", private=[" "])


@needs_hiding
def test_training_cannot_read_a_private_file_nor_unmount_it_while_the_evaluation_can(tmp_path: Path) -> None:
    val, train, work, script = _files(tmp_path)
    args = f"{sys.executable} {script} {val} {train} {work / 'spare'}"
    hide = sandbox.private_files([str(tmp_path / "cache" / "**" / "val.bin")], work)
    training = _probe(sandbox.wrap(args, [work], "required", hide))
    assert training["private"] == "b''" and training["after"] == "b''", training
    assert training["public"] == repr(PUBLIC), training  # a file not declared private stays readable
    assert training["umount"] is not True and training["detach"] is not True, training
    assert training["bind"] is not True and training["via_bind"] != repr(SECRET), training
    assert SECRET.decode() not in training["nested"], training
    evaluation = _probe(sandbox.wrap(args, [work], "required"))  # the evaluation's wrapping
    assert evaluation["private"] == repr(SECRET) and evaluation["public"] == repr(PUBLIC), evaluation
    assert val.read_bytes() == SECRET  # nothing changed outside


LOCK = """\
import ctypes, sys
from nightlab.executor.sandbox import hide_paths
private, folder, spare, lock = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "lock"
libc = ctypes.CDLL(None, use_errno=True)
if lock:
    hide_paths([private])
else:  # the control: the same mount, not locked
    assert libc.mount(b"/dev/null", private.encode(), None, 4096, None) == 0
hidden = open(private, "rb").read()
bound = libc.mount(folder.encode(), spare.encode(), None, 4096, None) == 0 or ctypes.get_errno()
unmounted = libc.umount2(private.encode(), 0) == 0 or ctypes.get_errno()
print("PROBE " + repr({"hidden": hidden, "bind": bound, "umount": unmounted, "after": open(private, "rb").read()}))
"""


@needs_hiding
def test_the_mounts_are_locked_by_the_kernel_not_only_by_landlock(tmp_path: Path) -> None:
    """Without Landlock (which refuses every mount call anyway): the nested user namespace alone
    keeps the file hidden; the control, the same mount without it, is undone by one umount."""
    val, _, work, _ = _files(tmp_path)
    script = tmp_path / "lock.py"
    script.write_text(LOCK)
    base = f"unshare -rm -- {sys.executable} {script} {val} {val.parent} {work / 'spare'}"
    locked = _probe(base + " lock")
    assert locked["hidden"] == b"" and locked["after"] == b"", locked
    assert locked["umount"] is not True and locked["bind"] is not True, locked
    control = _probe(base + " control")
    assert control["hidden"] == b"" and control["umount"] is True and control["after"] == SECRET, control


def test_where_the_files_cannot_be_hidden_a_night_says_so_or_refuses(monkeypatch) -> None:
    assert sandbox.hiding_problem("required", []) is None
    problem = sandbox.hiding_problem("off", ["x"])
    assert problem is not None and "private" in problem and "off" in problem and "\n" not in problem
    monkeypatch.setattr(sandbox, "detect", lambda: sandbox.SandboxSupport(landlock=6, netns=False))
    problem = sandbox.hiding_problem("auto", ["x"])
    assert problem is not None and "user namespaces" in problem
    with pytest.raises(UserError, match=r'sandbox = "required" but the training process can read'):
        sandbox.hiding_problem("required", ["x"])
    monkeypatch.setattr(sandbox, "detect", lambda: sandbox.SandboxSupport(landlock=6, netns=True))
    assert sandbox.hiding_problem("required", ["x"]) is None
    # No file to hide, so no --hide (a unix socket in /tmp, any process's, still gets --hide-socket)
    assert "--hide" not in shlex.split(sandbox.wrap("true", [Path("/x")], "auto", []))


READ_VAL = """
def _peek_at_the_evaluation_data() -> None:
    for p in [*sorted(data.token_dir().glob("*.bin")), data.dataset_dir() / "eval.key"]:
        with open(p, "rb") as f:
            print(f"peek {p.name} {len(f.read())}", flush=True)


_peek_at_the_evaluation_data()
"""


@needs_hiding
@pytest.mark.slow
def test_the_gpt_templates_training_cannot_read_val_and_holdout(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    root = tmp_path / "ws"
    assert nightlab("init", str(root), "--size", "cpu").returncode == 0
    toml = (root / "nightlab.toml").read_text()
    toml = re.sub(r"(?m)^seconds = .*$", "steps = 3", toml)
    toml = re.sub(r"(?m)^timeout = .*$", "timeout = 300", toml)
    # One baseline run and one of the edit: what is tested is what the edit's run can read.
    toml = toml.replace('kind = "confirm"', 'kind = "greedy"\nbaseline_runs = 1\nremeasure = 0')
    (root / "nightlab.toml").write_text(toml + '\n[run]\nsandbox = "required"\n')
    train = (root / "train.py").read_text()
    for name, value in (("DEPTH", "1"), ("ASPECT_RATIO", "64"), ("DEVICE_BATCH_SIZE", "8")):
        train = re.sub(rf"(?m)^{name} = \S+", f"{name} = {value}", train)
    (root / "train.py").write_text(re.sub(r"(?m)^TOTAL_BATCH_SIZE = \S+", "TOTAL_BATCH_SIZE = 2048", train))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tiny")
    marker = '\nif __name__ == "__main__":'
    assert marker in train
    (root / "train.py").write_text((root / "train.py").read_text().replace(marker, READ_VAL + marker, 1))
    env = {"NIGHTLAB_CACHE": str(tmp_path / "cache")}
    res = nightlab("try", "-m", "peek at val", "--tag", "t", str(root), env=env, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "can read the [target] private files" not in res.stdout + res.stderr
    row = ledger_rows(root)["peek at val"]
    run_dir = root / ".nightlab" / "runs" / f"{row['id']:04d}" / "0"
    log = (run_dir / "run.log").read_text()
    peeks = dict(re.findall(r"(?m)^peek (\S+) (\d+)$", log))
    assert peeks["val.bin"] == "0" and peeks["holdout.bin"] == "0", log
    assert peeks["eval.key"] == "0", log  # what would regenerate them (corpus.py) is hidden too
    assert int(peeks["train.bin"]) > 0, log
    # The evaluation read them: the run was measured, on val and on holdout.
    assert row["status"] == "ok", row["reason"]
    verdict = json.loads((run_dir / "metrics.json").read_text())
    assert verdict["val_bpb"] > 0 and verdict["holdout_bpb"] > 0, verdict
    token_dir = next((tmp_path / "cache").glob("*/*/val.bin")).parent
    assert (token_dir / "val.bin").stat().st_size > 0
