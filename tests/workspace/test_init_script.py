"""``nightlab init DIR --script train.py``: a nightlab.toml written and committed beside a
training script the user already has; nothing else of theirs is changed or staged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import git, nightlab
from nightlab.config import load_config
from nightlab.errors import UserError
from nightlab.workspace.script_init import guess_metric, init_script, metric_pattern, script_notes

SCRIPT = """\
import logging
log = logging.getLogger(__name__)


def main():
    log.info("step 10 train_loss 0.9")
    print(f"valid_acc: {0.81:.4f}")


main()
"""


@pytest.mark.parametrize(
    ("printed", "line"),
    [
        ("val_loss", "val_loss: 0.5123"),
        ("val_loss", "step 9 | val_loss=5.123e-1 |"),
        ("val_loss", '{"steps": 3, "val_loss": 0.5123}'),
        ("val loss", "2026-12-01 INFO val loss 0.5123"),
        ("val loss", "val_loss 0.5123"),
    ],
)
def test_the_pattern_reads_the_number_however_it_is_printed(printed: str, line: str) -> None:
    match = re.search(metric_pattern(printed), line)
    assert match is not None and float(match.group(1)) == pytest.approx(0.5123, rel=1e-3)


def test_the_metric_is_the_first_validation_metric_the_script_names() -> None:
    assert guess_metric(SCRIPT) == "valid_acc"  # not train_loss
    assert guess_metric('print("test ppl", ppl)') == "test ppl"
    assert guess_metric("print(loss)") is None


def test_init_writes_and_commits_only_its_files(tmp_path: Path) -> None:
    """In a folder without git: a repository with nightlab.toml, .gitignore and the script, the
    metric found in the script (higher is better: accuracy), and a config nightlab loads; the
    data beside it is left untracked."""
    (tmp_path / "train.py").write_text(SCRIPT)
    (tmp_path / "data.bin").write_bytes(b"\0" * 10)
    name, direction, committed = init_script(tmp_path, "train.py")
    assert (name, direction) == ("valid_acc", "maximize")
    assert sorted(committed) == [".gitignore", "nightlab.toml", "train.py"]
    assert git(tmp_path, "ls-files").split() == [".gitignore", "nightlab.toml", "train.py"]
    assert (tmp_path / ".gitignore").read_text() == ".nightlab/\n"
    config = load_config(tmp_path)
    assert config.target.editable == ["train.py"] and config.target.run == "python train.py"
    assert re.search(config.metric.pattern or "", "valid_acc: 0.8100").group(1) == "0.8100"
    with pytest.raises(UserError, match="exists already"):
        init_script(tmp_path, "train.py")


def test_init_in_a_repository_keeps_the_users_files(tmp_path: Path) -> None:
    """An existing repository: the script, tracked already, is not re-staged; an uncommitted edit
    of another file stays uncommitted; .gitignore gets one line appended."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(SCRIPT)
    (tmp_path / "notes.md").write_text("a\n")
    (tmp_path / ".gitignore").write_text("data/")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "mine")
    (tmp_path / "notes.md").write_text("a\nb\n")
    *_, committed = init_script(tmp_path, "src/train.py", metric="val loss")
    assert sorted(committed) == [".gitignore", "nightlab.toml"]
    assert (tmp_path / ".gitignore").read_text() == "data/\n.nightlab/\n"
    assert git(tmp_path, "status", "--porcelain") == "M notes.md"
    assert load_config(tmp_path).metric.name == "val_loss"


@pytest.mark.parametrize(
    ("script", "metric", "expected"),
    [
        ("missing.py", None, "no Python file missing.py"),
        ("train.py", None, "--metric val_loss"),  # the script names no metric
        ("../train.py", "val_loss", "not inside"),
        ("sub/train.py", "val_loss", "inside the git repository"),  # run from the repository's root
    ],
)
def test_what_init_cannot_do_is_one_line(
    tmp_path: Path, script: str, metric: str | None, expected: str
) -> None:
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "train.py").write_text("print(loss)\n")
    (root / "sub" / "train.py").write_text("print(loss)\n")
    git(root, "init", "-q")
    where = root / "sub" if script.startswith("sub/") else root
    with pytest.raises(UserError, match=re.escape(expected)) as info:
        init_script(where, script.removeprefix("sub/"), metric)
    assert "\n" not in str(info.value)
    assert not (where / "nightlab.toml").exists()


def test_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    res = nightlab("init", str(tmp_path), "--script", "train.py", "--size", "cpu")
    assert res.returncode == 2 and "--size sets up the template" in res.stderr
    res = nightlab("init", str(tmp_path), "--script", "train.py")
    assert res.returncode == 0, res.stderr
    assert "valid_acc (maximize)" in res.stdout and f"nightlab check {tmp_path}" in res.stdout


def test_a_package_script_runs_as_a_module_with_the_files_it_imports(tmp_path: Path) -> None:
    """``proj/train.py`` importing ``from .config import Config`` fails as ``python
    proj/train.py``: it runs as ``python -m proj.train``, and the modules it imports (directly or
    through each other) and its package's ``__init__.py`` are committed and editable."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "__init__.py").write_text("")
    (tmp_path / "proj" / "train.py").write_text("from .model import Net\nprint('val_loss: 1.0')\n")
    (tmp_path / "proj" / "model.py").write_text("from proj import layers\n\n\nclass Net:\n    pass\n")
    (tmp_path / "proj" / "layers.py").write_text("import torch\n")
    (tmp_path / "proj" / "unused.py").write_text("")
    (tmp_path / "data.csv").write_text("1\n")
    *_, committed = init_script(tmp_path, "proj/train.py")
    config = load_config(tmp_path)
    assert config.target.run == "python -m proj.train"
    assert config.target.editable == ["proj/train.py", "proj/model.py", "proj/layers.py"]
    assert set(committed) == {"nightlab.toml", ".gitignore", *config.target.editable, "proj/__init__.py"}
    assert set(git(tmp_path, "status", "--porcelain").splitlines()) == {"?? data.csv", "?? proj/unused.py"}


def test_init_notes_what_the_script_does_not_read_yet(tmp_path: Path) -> None:
    """A fixed ``torch.manual_seed(42)`` in a time-bounded loop is hidden from ``nightlab check``
    by timing noise, so init says so, with the one-line fix; a script that reads the seed and
    the budget (here through a module it imports) gets no note."""
    (tmp_path / "train.py").write_text("import torch\ntorch.manual_seed(42)\nprint('val_loss: 1')\n")
    notes = script_notes(tmp_path, "train.py")
    assert len(notes) == 2 and "(it seeds with 42)" in notes[0] and "NIGHTLAB_SEED', 42" in notes[0]
    assert "NIGHTLAB_BUDGET_SECONDS" in notes[1]
    (tmp_path / "env.py").write_text("import os\nSEED = os.environ['NIGHTLAB_SEED']\nB = 'NIGHTLAB_BUDGET'\n")
    (tmp_path / "train.py").write_text("from env import SEED\nprint('val_loss: 1')\n")
    assert script_notes(tmp_path, "train.py") == []


def test_a_failed_commit_leaves_no_nightlab_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the commit fails, nightlab.toml is removed, so running init again is not refused
    with 'exists already'."""
    import nightlab.workspace.script_init as script_init

    def fail(*_: object) -> None:
        raise UserError("git commit failed in here: disk full")

    (tmp_path / "train.py").write_text(SCRIPT)
    monkeypatch.setattr(script_init, "commit_all", fail)
    with pytest.raises(UserError, match="disk full"):
        init_script(tmp_path, "train.py")
    assert not (tmp_path / "nightlab.toml").exists()
    monkeypatch.undo()
    assert init_script(tmp_path, "train.py")[0] == "valid_acc"


def test_the_config_files_a_script_reads_are_editable_and_committed(tmp_path: Path) -> None:
    """``yaml.safe_load(open("config.yaml"))``: the settings are in the YAML, which was neither
    editable nor committed, so the search found no knob. A config the script names, a Hydra
    ``config_path`` folder's YAML files are; a data file (``vocab.json``) and a file the script
    does not name are not."""
    (tmp_path / "train.py").write_text(
        "import json, yaml\n"
        "cfg = yaml.safe_load(open('config.yaml'))\n"
        "vocab = json.load(open('vocab.json'))\n"
        "extra = json.load(open('configs/hparams.json'))\n"
        "json.dump(extra, open('run_config.json', 'w'))\n"
        "print('val_loss: 1.0')\n"
    )
    (tmp_path / "config.yaml").write_text("lr: 1e-3\nbetas:\n  - 0.9\n  - 0.98\n")
    (tmp_path / "vocab.json").write_text('{"a": 1, "b": 2}')
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "hparams.json").write_text('{"dropout": 0.1}')
    (tmp_path / "other.yaml").write_text("lr: 1.0\n")
    (tmp_path / "run_config.json").write_text('{"dropout": 0.1}')  # what the script writes
    *_, committed = init_script(tmp_path, "train.py")
    config = load_config(tmp_path)
    assert config.target.editable == ["train.py", "config.yaml", "configs/hparams.json"]
    assert {"config.yaml", "configs/hparams.json"} <= set(committed)
    untracked = {"?? other.yaml", "?? vocab.json", "?? run_config.json"}
    assert set(git(tmp_path, "status", "--porcelain").splitlines()) == untracked


@pytest.mark.parametrize(("folder", "where"), [("conf", "src/conf"), ("../conf", "conf")])
def test_a_hydra_scripts_config_tree_is_editable(tmp_path: Path, folder: str, where: str) -> None:
    (tmp_path / where / "optim").mkdir(parents=True)
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "train.py").write_text(
        f"import hydra\n\n\n@hydra.main(version_base=None, config_path='{folder}', config_name='config')\n"
        "def main(cfg):\n    print('val_loss: 1.0')\n\n\nmain()\n"
    )
    (tmp_path / where / "config.yaml").write_text("defaults:\n  - optim: adam\nbatch_size: 32\n")
    (tmp_path / where / "optim" / "adam.yaml").write_text("lr: 1e-3\n")
    init_script(tmp_path, "src/train.py")
    assert load_config(tmp_path).target.editable == [
        "src/train.py", f"{where}/config.yaml", f"{where}/optim/adam.yaml",
    ]  # fmt: skip


def test_an_ml_collections_config_file_is_editable(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.py").write_text("def get_config():\n    return None\n")
    (tmp_path / "main.py").write_text(
        "from absl import app\nfrom ml_collections import config_flags\n"
        "_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py')\nprint('val_loss: 1.0')\n"
    )
    init_script(tmp_path, "main.py")
    assert load_config(tmp_path).target.editable == ["main.py", "configs/default.py"]
