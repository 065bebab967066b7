"""Applying proposals' edits: scope, exact and tolerant matching, messages an LLM can act on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nightlab.code.edits import apply_edits, python_syntax_error, syntax_errors
from nightlab.errors import EditError
from nightlab.types import Edit

TRAIN = """\
import torch

LR = 0.01
WIDTH = 64


def step(model, batch):
    loss = model(batch)
    loss.backward()
    return loss


def evaluate(model, batch):
    loss = model(batch)
    return loss
"""
FILES = {"train.py": TRAIN, "model/layers.py": "class Block:\n    pass\n"}
EDITABLE = ["train.py", "model/*.py"]


def apply(*edits: Edit, files: dict[str, str] | None = None, **kwargs) -> dict[str, str]:
    return apply_edits(FILES if files is None else files, list(edits), EDITABLE, **kwargs)


def test_exact_edit() -> None:
    out = apply(Edit(path="train.py", search="LR = 0.01", replace="LR = 0.02"))
    assert out == {"train.py": TRAIN.replace("LR = 0.01", "LR = 0.02")}


def test_indentation_tolerant_edit_is_reindented() -> None:
    # The agent quoted the block without its indentation and wrote the replacement likewise.
    search = "loss = model(batch)\nloss.backward()\n"
    replace = "loss = model(batch)\nif loss.isfinite():\n    loss.backward()\n"
    out = apply(Edit(path="train.py", search=search, replace=replace))
    expected = TRAIN.replace(
        "    loss = model(batch)\n    loss.backward()\n",
        "    loss = model(batch)\n    if loss.isfinite():\n        loss.backward()\n",
    )
    assert out == {"train.py": expected}


def test_deeper_indentation_in_search_is_tolerated() -> None:
    search = "        loss.backward()\n        return loss"
    out = apply(Edit(path="train.py", search=search, replace="        return loss"))
    assert out["train.py"] == TRAIN.replace("    loss.backward()\n    return loss\n", "    return loss\n", 1)


def test_trailing_whitespace_is_tolerated() -> None:
    out = apply(
        Edit(path="train.py", search="LR = 0.01   \nWIDTH = 64\t\n", replace="LR = 0.5\nWIDTH = 64\n")
    )
    assert out["train.py"] == TRAIN.replace("LR = 0.01\n", "LR = 0.5\n")


def test_ambiguous_exact_match_is_refused_with_line_numbers() -> None:
    with pytest.raises(EditError) as err:
        apply(
            Edit(path="train.py", search="    loss = model(batch)\n", replace="    loss = 2 * model(batch)\n")
        )
    message = str(err.value)
    assert message.startswith("edit 1 (train.py): SEARCH block found 2 times")
    assert "lines 8, 14" in message and "add a few surrounding lines" in message


def test_ambiguous_tolerant_match_is_refused() -> None:
    nested = "def a():\n    x = 1\n    y = 2\n\n\nclass B:\n    def c(self):\n        x = 1\n        y = 2\n"
    with pytest.raises(EditError, match=r"ignoring indentation it matches 2 places \(lines 2, 8\)"):
        apply(
            Edit(path="train.py", search="x = 1\ny = 2", replace="x = 3\ny = 4"), files={"train.py": nested}
        )
    # One exact-indentation match wins over other places that match only when re-indented.
    out = apply(
        Edit(path="train.py", search="    x = 1\n    y = 2", replace="    x = 0"), files={"train.py": nested}
    )
    assert out["train.py"] == nested.replace("def a():\n    x = 1\n    y = 2\n", "def a():\n    x = 0\n")


def test_not_found_shows_the_nearest_lines_with_numbers() -> None:
    bad = Edit(
        path="train.py",
        search="def evaluate(model, batch):\n    loss = model(batch, train=False)\n",
        replace="x",
    )
    with pytest.raises(EditError) as err:
        apply(Edit(path="train.py", search="LR = 0.01", replace="LR = 0.02"), bad)
    message = str(err.value)
    assert message.startswith(
        "edit 2 (train.py): SEARCH block not found. The closest lines in train.py are 13-14:"
    )
    assert "   13 | def evaluate(model, batch):" in message
    assert "   14 |     loss = model(batch)" in message
    assert "First difference: SEARCH line 2 is 'loss = model(batch, train=False)' but line 14" in message


def test_out_of_scope_path_is_refused_naming_the_globs() -> None:
    with pytest.raises(EditError) as err:
        apply(Edit(path="prepare.py", search="a", replace="b"))
    assert str(err.value) == (
        "edit 1 (prepare.py): prepare.py is outside the editable files (train.py, model/*.py); edit only those"
    )


@pytest.mark.parametrize(
    "path", ["../train.py", "/etc/passwd", ".git/hooks/pre-commit", "model/../prepare.py"]
)
def test_escaping_paths_are_refused_even_with_permissive_globs(path: str) -> None:
    with pytest.raises(EditError, match=r"edit 1 .*only the editable files may change"):
        apply_edits(FILES, [Edit(path=path, replace="x")], ["**"])


def test_frozen_and_config_files_win_over_editable_globs() -> None:
    with pytest.raises(EditError, match="model/layers.py is frozen"):
        apply(Edit(path="model/layers.py", replace="x"), frozen=["model/layers.py"])
    with pytest.raises(EditError, match="nightlab.toml is frozen"):
        apply_edits({}, [Edit(path="nightlab.toml", replace="x")], ["*"])


def test_multiple_edits_apply_in_order_and_see_each_other() -> None:
    out = apply(
        Edit(path="train.py", search="LR = 0.01", replace="LR = 0.02"),
        Edit(path="train.py", search="LR = 0.02\nWIDTH = 64", replace="LR = 0.03\nWIDTH = 128"),
        Edit(path="./model/layers.py", search="    pass", replace="    depth = 2"),
    )
    assert out == {
        "train.py": TRAIN.replace("LR = 0.01\nWIDTH = 64", "LR = 0.03\nWIDTH = 128"),
        "model/layers.py": "class Block:\n    depth = 2\n",
    }


def test_a_later_edit_quoting_replaced_text_fails_with_its_number() -> None:
    with pytest.raises(EditError, match=r"^edit 2 \(train.py\): SEARCH block not found"):
        apply(
            Edit(path="train.py", search="LR = 0.01", replace="LR = 0.02"),
            Edit(path="train.py", search="LR = 0.01\nWIDTH = 64", replace="LR = 0.1\nWIDTH = 64"),
        )


def test_whole_file_edits_replace_and_create() -> None:
    out = apply(Edit(path="train.py", replace="print('hi')\n"), Edit(path="model/new.py", replace="X = 1\n"))
    assert out == {"train.py": "print('hi')\n", "model/new.py": "X = 1\n"}
    with pytest.raises(EditError, match="outside the editable files"):
        apply(Edit(path="other/new.py", replace="X = 1\n"))


def test_search_in_a_missing_file_points_to_whole_file_edits() -> None:
    with pytest.raises(EditError, match="model/absent.py does not exist; to create it, send the whole file"):
        apply(Edit(path="model/absent.py", search="a", replace="b"))


def test_no_op_and_empty_search() -> None:
    assert apply(Edit(path="train.py", search="WIDTH = 64", replace="WIDTH = 64")) == {}
    with pytest.raises(EditError, match="the SEARCH block is empty"):
        apply(Edit(path="train.py", search="  \n", replace="x"))


def test_deleting_lines_and_crlf_files() -> None:
    out = apply(Edit(path="train.py", search="WIDTH = 64\n", replace=""))
    assert "WIDTH" not in out["train.py"].split("def")[0]
    crlf = {"train.py": "A = 1\r\nB = 2\r\nC = 3\r\n"}
    out = apply(Edit(path="train.py", search="A = 1\nB = 2\n", replace="A = 5\nB = 6\n"), files=crlf)
    assert out == {"train.py": "A = 5\r\nB = 6\r\nC = 3\r\n"}


def test_python_syntax_error() -> None:
    assert python_syntax_error("train.py", TRAIN) is None
    assert python_syntax_error("notes.md", "def (") is None
    message = python_syntax_error("train.py", "A = 1\nB = 2\nif B\n    pass\n")
    assert message is not None and message.startswith("train.py line 3: ") and message.endswith(": if B")
    assert python_syntax_error("train.py", "return 1\n").startswith(
        "train.py line 1: 'return' outside function"
    )
    assert syntax_errors({"a.py": "x = (", "b.py": "y = 1"}) == [python_syntax_error("a.py", "x = (")]


def test_not_found_in_a_large_file_is_fast_and_points_to_the_right_place() -> None:
    lines = [f"    value_{i} = compute({i * 0.37 % 1:.5f}, step={i})" for i in range(3000)]
    text = "\n".join(lines) + "\n"
    search = "\n".join(line.replace("compute", "computer") for line in lines[1500:1530])
    start = time.perf_counter()
    with pytest.raises(EditError, match="The closest lines in train.py are 1501-1512:"):
        apply(Edit(path="train.py", search=search, replace="x"), files={"train.py": text})
    assert time.perf_counter() - start < 10  # ~0.5 s; a per-window difflib ratio took minutes


def test_a_syntax_error_quotes_the_line_of_the_text_checked_not_the_file_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python fills a SyntaxError's line by reading the file name from disk for some errors: run
    from a workspace, that was the user's train.py, so the agent was told the wrong line."""
    (tmp_path / "train.py").write_text("LR = 0.1  # learning rate\nSTEPS = 50\n")
    monkeypatch.chdir(tmp_path)
    assert (
        python_syntax_error("train.py", "LR = 0.1\nSTEPS = = 60\n")
        == "train.py line 2: invalid syntax: STEPS = = 60"
    )
    assert python_syntax_error("train.py", "a = 1\nb = (2,\n").endswith("was never closed: b = (2,")
