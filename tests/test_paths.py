"""The one path matcher (nightlab.paths): every part agrees on which files a glob names."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from nightlab.code.edits import apply_edits
from nightlab.errors import EditError
from nightlab.paths import editable_files, is_editable, match_files, matches, normalize, select
from nightlab.types import Edit


def test_glob_semantics() -> None:
    assert matches("train.py", ["*.py"])
    assert not matches("pkg/train.py", ["*.py"])  # * does not cross folders: anchored at the root
    assert matches("pkg/train.py", ["**/*.py"]) and matches("train.py", ["**/*.py"])  # ** is zero or more
    assert matches("pkg/a/b.py", ["pkg/**"]) and not matches("other/b.py", ["pkg/**"])
    assert matches("model/v1.py", ["model/v[0-9].py"]) and not matches("model/vx.py", ["model/v[!x].py"])
    assert matches("a.py", ["./a.py"]) and not matches("a.pyc", ["a.py"])
    assert matches("sub/train.py", ["sub/*.py"]) and not matches("sub/deep/train.py", ["sub/*.py"])


@pytest.mark.parametrize(
    "bad", ["../x.py", "/etc/passwd", ".git/hooks/pre-commit", ".nightlab/ledger.db", "a//b"]
)
def test_normalize_refuses_paths_outside_the_workspace(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize(bad)
    assert normalize("./sub/train.py") == "sub/train.py"


def test_nightlab_toml_is_never_editable_and_frozen_wins() -> None:
    assert not is_editable("nightlab.toml", ["*"], [])
    assert not is_editable("prepare.py", ["*.py"], ["prepare.py"])
    assert is_editable("train.py", ["*.py"], ["prepare.py"])
    assert editable_files(
        ["train.py", "prepare.py", "sub/x.py", "nightlab.toml"], ["**/*"], ["prepare.py"]
    ) == [
        "sub/x.py",
        "train.py",
    ]


def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")


FILES = [
    "train.py",
    "sub/train.py",
    "sub/deep/model.py",
    "data/a.bin",
    "data/raw/b.bin",
    ".hidden.py",
    "notes.md",
]
PATTERNS = [
    "*.py",
    "**/*.py",
    "sub/*.py",
    "sub/**",
    "data/**",
    "data/*.bin",
    "?otes.md",
    "[st]*/*.py",
    "**/model.py",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_files_on_disk_and_files_of_a_commit_agree(tmp_path: Path, pattern: str) -> None:
    """match_files (the frozen hashes, init checks) and select (a commit's files) name the same files,
    and for names without a leading dot they agree with glob.glob(recursive=True)."""
    _tree(tmp_path, FILES + [".git/config", ".nightlab/ledger.db"])
    on_disk = match_files(tmp_path, [pattern])
    assert on_disk == select(FILES, [pattern])
    expected = sorted(
        p for p in glob.glob(pattern, root_dir=tmp_path, recursive=True) if (tmp_path / p).is_file()
    )
    assert [p for p in on_disk if not p.startswith(".")] == expected


def test_what_an_agent_is_shown_is_what_the_edit_check_accepts() -> None:
    """The bug of three matchers: sub/train.py was shown under `*.py` and then refused."""
    commit_files = ["train.py", "sub/train.py", "prepare.py", "nightlab.toml"]
    for editable in (["*.py"], ["**/*.py"], ["sub/*.py"], ["train.py"]):
        shown = editable_files(commit_files, editable, ["prepare.py"])
        texts = dict.fromkeys(commit_files, "A = 1\n")
        for path in commit_files:
            edit = [Edit(path=path, search="A = 1", replace="A = 2")]
            if path in shown:
                assert apply_edits(texts, edit, editable, frozen=["prepare.py"]) == {path: "A = 2\n"}
            else:
                with pytest.raises(EditError):
                    apply_edits(texts, edit, editable, frozen=["prepare.py"])
    assert editable_files(commit_files, ["**/*.py"], ["prepare.py"]) == ["sub/train.py", "train.py"]
    assert editable_files(commit_files, ["*.py"], ["prepare.py"]) == ["train.py"]


def test_folders_no_pattern_reaches_are_not_walked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path, ["train.py", "venv/lib/site.py", "data/big/x.bin"])
    walked: list[str] = []
    import os

    real_walk = os.walk

    def spy(top, *args, **kwargs):  # noqa: ANN001, ANN202
        for folder, dirs, files in real_walk(top, *args, **kwargs):
            walked.append(Path(folder).relative_to(tmp_path).as_posix())
            yield folder, dirs, files

    monkeypatch.setattr(os, "walk", spy)
    assert match_files(tmp_path, ["train.py"]) == ["train.py"]
    assert walked == ["."]
