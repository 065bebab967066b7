"""Screening (nightlab.research.screen): each step that can stop a proposal before it runs."""

from __future__ import annotations

from nightlab.code.changes import code_hash
from nightlab.config import parse_config
from nightlab.research.screen import Change, Refusal, screen
from nightlab.types import Edit, Proposal

FILES = {"train.py": "import os\nLR = 0.1  # learning rate\nSEED = 1\nWIDTH = 64\n"}


def _config(**audit: object):
    data = {"target": {"editable": ["*.py"], "frozen": ["prepare.py"], "run": "python train.py"}}
    if audit:
        data["audit"] = audit
    return parse_config(data)


def _proposal(search: str, replace: str, path: str = "train.py", **fields: object) -> Proposal:
    return Proposal(description="d", edits=[Edit(path=path, search=search, replace=replace)], **fields)


def test_a_real_change_passes_with_its_size_and_code_hash() -> None:
    result = screen(_proposal("LR = 0.1", "LR = 0.2"), FILES, _config(), {})
    assert isinstance(result, Change)
    assert result.changed == {"train.py": FILES["train.py"].replace("LR = 0.1", "LR = 0.2")}
    assert (result.lines_added, result.lines_removed) == (1, 1)
    assert result.code_hash == code_hash({"train.py": result.changed["train.py"]}) != code_hash(FILES)


def test_each_refusal_says_why() -> None:
    config = _config()
    cases = [
        (
            Proposal(description="d", edits=[], refused="the model gave no usable answer"),
            "invalid",
            "proposal refused: the model gave no usable answer",
        ),
        (
            _proposal("LR = 0.5", "LR = 0.2"),
            "invalid",
            "edit refused: edit 1 (train.py): SEARCH block not found",
        ),
        (
            _proposal("x", "y", path="prepare.py"),
            "invalid",
            "edit refused: edit 1 (prepare.py): prepare.py is frozen",
        ),
        (
            _proposal("WIDTH = 64", "WIDTH = (64"),
            "invalid",
            "edit refused: train.py line 4: '(' was never closed",
        ),
        (
            _proposal("LR = 0.1  # learning rate", "LR = 0.1  # the learning rate"),
            "skipped",
            "only comments or whitespace change",
        ),
        (_proposal("SEED = 1", "SEED = 2"), "skipped", "only the seed changes"),
    ]
    for proposal, status, reason in cases:
        result = screen(proposal, FILES, config, {})
        assert isinstance(result, Refusal), reason
        assert result.status == status and result.reason.startswith(reason), result.reason
        assert result.decision == ("invalid" if status == "invalid" else "discard")


def test_code_already_measured_is_not_run_again() -> None:
    changed = {"train.py": FILES["train.py"].replace("LR = 0.1", "LR = 0.2")}
    measured = {code_hash(changed): 7, code_hash(FILES): 1}
    result = screen(_proposal("LR = 0.1", "LR = 0.2"), FILES, _config(), measured)
    assert isinstance(result, Refusal) and result.status == "skipped"
    assert result.reason == "the same code as #7, already measured: not run again"
    # The same code written as a whole file is the same code.
    whole = Proposal(description="d", edits=[Edit(path="train.py", replace=changed["train.py"])])
    assert isinstance(screen(whole, FILES, _config(), measured), Refusal)


def test_the_audit_blocks_or_marks() -> None:
    leak = _proposal("import os\n", "import os\nprint(open('val.bin').read())\n")
    blocked = screen(leak, FILES, _config(mode="block", patterns=["val\\.bin"]), {})
    assert (
        isinstance(blocked, Refusal) and blocked.status == "invalid" and blocked.reason.startswith("audit: ")
    )
    marked = screen(leak, FILES, _config(mode="mark", patterns=["val\\.bin"]), {})
    assert isinstance(marked, Change) and marked.audit and "val" in marked.audit[0]
