"""Parsing model answers: the common SEARCH/REPLACE form and the ways models bend it."""

from __future__ import annotations

import pytest
from agent_kit import TRAIN

from nightlab.agents.base import MAX_HYPOTHESIS
from nightlab.agents.llm.answer import AnswerError, parse_answer, without_reasoning
from nightlab.code.edits import apply_edits

GOOD = """\
Description: raise LR 0.01 -> 0.03
Hypothesis: the baseline learning rate is far too low,
so training barely moves in the budget.

train.py
<<<<<<< SEARCH
LR = 0.01  # learning rate
=======
LR = 0.03  # learning rate
>>>>>>> REPLACE
"""


def test_good_answer_gives_description_hypothesis_and_an_edit_that_applies():
    parsed = parse_answer(GOOD)
    assert parsed.description == "raise LR 0.01 -> 0.03"
    assert (
        parsed.hypothesis
        == "the baseline learning rate is far too low, so training barely moves in the budget."
    )
    assert len(parsed.edits) == 1
    edit = parsed.edits[0]
    assert (edit.path, edit.search, edit.replace) == (
        "train.py",
        "LR = 0.01  # learning rate\n",
        "LR = 0.03  # learning rate\n",
    )
    new = apply_edits({"train.py": TRAIN}, parsed.edits, ["train.py"])
    assert "LR = 0.03  # learning rate\n" in new["train.py"]
    assert "LR = 0.01" not in new["train.py"]


def test_fences_bold_paths_and_file_prefixes_are_tolerated():
    text = """**Description:** wider model
**Hypothesis:** more capacity helps.

**File: `train.py`**
```python
<<<<<<< SEARCH
WIDTH = 64  # model width
=======
WIDTH = 128  # model width
>>>>>>> REPLACE
```

```python
<<<<<<< SEARCH
LR = 0.01  # learning rate
=======
LR = 0.02  # learning rate
>>>>>>> REPLACE
```
"""
    parsed = parse_answer(text)
    assert parsed.description == "wider model"
    assert parsed.hypothesis == "more capacity helps."
    # The second block has no path line: it belongs to the file of the block before it.
    assert [e.path for e in parsed.edits] == ["train.py", "train.py"]
    assert parsed.edits[1].replace == "LR = 0.02  # learning rate\n"
    new = apply_edits({"train.py": TRAIN}, parsed.edits, ["train.py"])["train.py"]
    assert "WIDTH = 128" in new and "LR = 0.02" in new


def test_empty_search_is_a_whole_file_replacement():
    text = "Description: rewrite\nHypothesis: simpler\n\nsrc/model.py\n<<<<<<< SEARCH\n=======\nA = 1\nB = 2\n>>>>>>> REPLACE\n"
    parsed = parse_answer(text)
    assert parsed.edits[0].path == "src/model.py"
    assert parsed.edits[0].search is None
    assert parsed.edits[0].replace == "A = 1\nB = 2\n"


def test_a_block_without_a_path_uses_the_only_editable_file():
    text = "Description: x\nHypothesis: y\n\n<<<<<<< SEARCH\nLR = 0.01\n=======\nLR = 0.1\n>>>>>>> REPLACE\n"
    assert parse_answer(text, ["train.py"]).edits[0].path == "train.py"
    with pytest.raises(AnswerError, match="block 1: no file path"):
        parse_answer(text, ["a.py", "b.py"])


def test_windows_line_endings_parse_like_unix_ones():
    parsed = parse_answer(GOOD.replace("\n", "\r\n"))
    assert parsed.edits[0].search == "LR = 0.01  # learning rate\n"


def test_deleting_lines_gives_an_empty_replacement():
    text = "Description: drop width\nHypothesis: unused\n\ntrain.py\n<<<<<<< SEARCH\nWIDTH = 64  # model width\n=======\n>>>>>>> REPLACE\n"
    edit = parse_answer(text).edits[0]
    assert edit.search == "WIDTH = 64  # model width\n" and edit.replace == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("Description: raise LR 0.01 -> 0.03\n", ""), "no 'Description: ...' line"),
        ("Description: x\nHypothesis: y\nI would raise the LR.", "no SEARCH/REPLACE block"),
        (GOOD.replace("=======\n", ""), r"block 1 \(train.py\): expected '=======' between"),
        ("Description: x\n\ntrain.py\n<<<<<<< SEARCH\nLR = 1\n", r"block 1 \(train.py\): '=======' missing"),
        (
            GOOD.replace(">>>>>>> REPLACE\n", ""),
            r"block 1 \(train.py\): '>>>>>>> REPLACE' missing at the end",
        ),
        (
            GOOD.replace(">>>>>>> REPLACE\n", "")
            + "\ntrain.py\n<<<<<<< SEARCH\nA\n=======\nB\n>>>>>>> REPLACE\n",
            r"block 1 \(train.py\): '>>>>>>> REPLACE' missing before the next marker",
        ),
        (GOOD.replace("=======\n", "<<<<<<< SEARCH\n"), r"block 1 \(train.py\): expected '======='"),
        (
            "Description: x\nHypothesis: y\ntrain.py\n<<<<<<< SEARCH\n\n   \n=======\nA = 1\n>>>>>>> REPLACE\n",
            "SEARCH part holds only blank lines",
        ),
        (
            "Description: x\n\nLR = 1\n=======\nLR = 2\n>>>>>>> REPLACE\n",
            "'=======' without a '<<<<<<< SEARCH'",
        ),
        ("Description: x\n\nLR = 2\n>>>>>>> REPLACE\n", "'>>>>>>> REPLACE' without a '<<<<<<< SEARCH'"),
    ],
    ids=[
        "no-description",
        "no-blocks",
        "no-divider",
        "cut-off-in-search",
        "no-replace-at-end",
        "unclosed-before-next",
        "search-twice",
        "blank-search",
        "stray-divider",
        "stray-replace",
    ],
)
def test_malformed_answers_say_what_to_fix(text, message):
    with pytest.raises(AnswerError, match=message):
        parse_answer(text, ["train.py"])


def test_a_markdown_rule_outside_blocks_is_not_an_error():
    text = GOOD.replace("Hypothesis:", "=======\nHypothesis:")
    assert len(parse_answer(text).edits) == 1


def test_description_is_one_bounded_line():
    parsed = parse_answer(GOOD.replace("raise LR 0.01 -> 0.03", "x" * 500))
    assert parsed.description == "x" * 200


def test_a_runaway_hypothesis_is_bounded():
    """A model that writes on and on (or a CLI's proposal file) used to put all of it in the
    ledger, `status --json` and every later prompt."""
    parsed = parse_answer(GOOD.replace("Hypothesis: ", "Hypothesis: " + "why " * 100_000, 1))
    assert len(parsed.hypothesis) <= MAX_HYPOTHESIS and parsed.hypothesis.endswith("why ...")


def test_the_hypothesis_stops_at_a_path_line_without_a_blank_line_before_it():
    text = "Description: x\nHypothesis: because\nit is so\ntrain.py\n```\n<<<<<<< SEARCH\nA\n=======\nB\n>>>>>>> REPLACE\n```"
    parsed = parse_answer(text)
    assert parsed.hypothesis == "because it is so"
    assert parsed.edits[0].path == "train.py"


DRAFT = """\
Description: lower LR 0.01 -> 0.005
train.py
<<<<<<< SEARCH
LR = 0.01  # learning rate
=======
LR = 0.005  # learning rate
>>>>>>> REPLACE
Hmm, no: the loss barely moves, so the rate is too low, not too high.
"""


@pytest.mark.parametrize(
    "text",
    [
        f"<think>\n{DRAFT}</think>\n\n{GOOD}",  # Ollama / llama.cpp without a reasoning parser
        f"  <THINKING>{DRAFT}</THINKING>\n{GOOD}",
        f"{DRAFT}</think>\n{GOOD}",  # the chat template opened the block in the prompt (DeepSeek-R1)
        f"<think>first thoughts</think>\n<think>\n{DRAFT}</think>\n{GOOD}",
    ],
)
def test_a_reasoning_models_thoughts_and_their_draft_blocks_are_not_proposed(text):
    parsed = parse_answer(text, ["train.py"])
    assert parsed.description == "raise LR 0.01 -> 0.03"
    assert len(parsed.edits) == 1
    new = apply_edits({"train.py": TRAIN}, parsed.edits, ["train.py"])
    assert "LR = 0.03  # learning rate" in new["train.py"]


def test_an_answer_that_ends_inside_its_reasoning_says_so():
    with pytest.raises(AnswerError, match="ended inside its <think> reasoning"):
        parse_answer(f"<think>\n{DRAFT}", ["train.py"])
    assert without_reasoning(f"<think>\n{DRAFT}", strict=False) == ""


def test_a_think_tag_later_in_an_answer_is_not_taken_for_reasoning():
    text = GOOD.replace("far too low,", "far too low (see <think> in the notes),")
    assert parse_answer(text, ["train.py"]).hypothesis.startswith("the baseline learning rate")
