"""The prompt: every part of the state is there, and it fits the budget oldest-first."""

from __future__ import annotations

from agent_kit import PREPARE, make_context
from agent_kit import entry as make_entry

from nightlab.agents.llm.prompt import build_prompt, frozen_interface


def history(n: int) -> list:
    entries = []
    for i in range(1, n + 1):
        kept = i % 10 == 0
        entries.append(
            make_entry(
                i,
                f"experiment number {i} tweaks knob {i % 7}",
                decision="keep" if kept else "discard",
                delta=0.001 * (i % 5) if not kept else 0.01,
                diff=f"--- a/train.py\n+++ b/train.py\n-LR = {i}\n+LR = {i + 1}\n" if kept else "",
                hypothesis=f"hypothesis {i}",
            )
        )
    crashed = make_entry(
        n + 1,
        "huge batch",
        status="oom",
        decision="crash",
        delta=None,
        log_tail="Traceback...\nCUDA out of memory",
    )
    return [*entries, crashed]


def test_small_prompt_holds_every_section():
    context = make_context(history=history(12))
    prompt = build_prompt(context, ["LR above 0.1 diverges"], budget=60000)
    text = prompt.user
    assert prompt.omitted == {}
    assert "Edit only these editable files: train.py" in prompt.system
    for needle in (
        "Lower val_loss",  # program.md
        "noise floor: one run's val_loss varies by about ±0.002",
        "budget left: 10 experiments",
        "best so far: 0.354",
        "| 3 | experiment number 3 tweaks knob 3 | 0.35 | +0.003 ± 0.001 | 2 | ok | discard |",  # history row
        "+LR = 11",  # kept diff
        "# Near misses",
        "CUDA out of memory",  # last crash's log tail
        "LR above 0.1 diverges",  # a lesson
        "def evaluate(model, split='val')",  # frozen interface
        "WIDTH = 64  # model width",  # the editable file
    ):
        assert needle in text, needle


def test_a_long_history_fits_the_budget_oldest_first_out():
    context = make_context(history=history(300))
    lessons = [f"lesson {i}: something learned" for i in range(40)]
    prompt = build_prompt(context, lessons, budget=7000)
    size = len(prompt.system) + len(prompt.user)
    assert size <= 7000
    text = prompt.user
    assert "| 300 | experiment number 300" in text  # the newest rows stay
    assert "| 1 | experiment number 1 " not in text  # the oldest leave
    assert "left out to fit the context" in text
    assert prompt.omitted["history"] > 250
    assert "lesson 39" in text and "lesson 0:" not in text
    # The essentials never leave.
    assert "Lower val_loss" in text and "WIDTH = 64  # model width" in text


def test_near_misses_and_the_frozen_interface_leave_before_recent_history():
    context = make_context(history=history(18))
    full = build_prompt(context, [], budget=100000)
    tight = build_prompt(context, [], budget=len(full.system) + len(full.user) - 1500)
    assert tight.omitted["frozen"] == 1 and tight.omitted["near"] == 5
    assert "def evaluate" not in tight.user and "# Near misses" in tight.user
    assert "| 18 | experiment number 18" in tight.user  # the newest rows stay
    assert "| 1 | experiment number 1 " not in tight.user


def test_near_misses_are_shown_closest_first():
    text = build_prompt(make_context(history=history(9)), [], budget=100000).user
    near = text[text.index("# Near misses") :]
    assert near.index("#4 ") < near.index("#3 ") < near.index("#2 ")


def test_frozen_interface_is_signatures_and_constants_not_bodies():
    text = frozen_interface("prepare.py", PREPARE)
    assert "MAX_SEQ_LEN = 256" in text
    assert "def evaluate(model, split='val')  # Bits per byte on the validation split." in text
    assert "secret_internal_detail" not in text
    assert frozen_interface("README.md", "line\n" * 100).count("line") == 40


def test_experiments_in_flight_are_named_so_they_are_not_proposed_again():
    context = make_context(history=history(3))
    context.running = [make_entry(7, "WIDTH 64 -> 96 in another slot", status="running", decision="")]
    text = build_prompt(context, [], budget=60000).user
    assert "running now in other slots (do not propose these again)" in text
    assert "#7 WIDTH 64 -> 96 in another slot" in text
    assert "running now" not in build_prompt(make_context(history=history(3)), [], budget=60000).user
