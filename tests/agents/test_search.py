"""The search agent: its space, its proposals, its memory, on the synthetic target."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from nightlab.agents.base import Agent
from nightlab.agents.registry import AGENTS
from nightlab.agents.search.agent import SearchAgent, describe_space
from nightlab.agents.search.settings import SearchSettings
from nightlab.agents.search.space import build_space, infer_domain, is_named, priority
from nightlab.agents.search.surrogate import GaussianProcess, failure_probability
from nightlab.code.knobs import find_knobs, knob_values, set_knobs
from nightlab.config import load_config
from nightlab.errors import UserError
from nightlab.types import Context, Direction, HistoryEntry, Proposal

SYNTHETIC = Path(__file__).resolve().parents[1] / "fixtures" / "synthetic_target"
TRAIN = (SYNTHETIC / "train.py").read_text()

SMALL = """# a small space: 4 * 3 * 2 * 4 = 96 configurations
DEPTH = 4  # layers
ACTIVATION = 'relu'
USE_BIAS = True
LR = 0.02  # learning rate
SEED = 7
"""
SMALL_SPACE = {
    "DEPTH": {"low": 2, "high": 8, "step": 2},
    "ACTIVATION": {"choices": ["relu", "gelu", "silu"]},
    "LR": {"low": 0.01, "high": 0.04, "step": 0.01},
}


def _target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("synthetic_target_for_tests", SYNTHETIC / "train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _apply(text: str, proposal: Proposal) -> str:
    for edit in proposal.edits:
        assert edit.path == "train.py"
        if edit.search is None:
            text = edit.replace
        else:
            assert text.count(edit.search) == 1
            text = text.replace(edit.search, edit.replace)
    return text


def _small_metric(values: dict) -> tuple[str, float | None]:
    if values["DEPTH"] == 8 and values["LR"] >= 0.04:
        return "oom", None
    cost = {"relu": 0.02, "gelu": 0.0, "silu": 0.01}[values["ACTIVATION"]]
    return "ok", 1.0 + 0.01 * (values["DEPTH"] - 6) ** 2 + cost + 5 * (
        values["LR"] - 0.03
    ) ** 2 + 0.003 * values["USE_BIAS"]


def search_settings(root: Path) -> SearchSettings:
    """The search agent's settings from a workspace's nightlab.toml, as the session reads them."""
    settings = AGENTS.settings(load_config(root).agent, "search")
    assert isinstance(settings, SearchSettings)
    return settings


class MiniLoop:
    """The harness's loop in miniature: greedy keeps, history entries as the ledger makes them."""

    def __init__(self, agent: Agent, text: str, evaluate, direction: str = "minimize") -> None:
        self.agent, self.text, self.evaluate, self.direction = agent, text, evaluate, direction
        status, metric = evaluate(knob_values(text))
        self.best = metric
        self.history = [
            HistoryEntry(
                id=1,
                description="baseline",
                status=status,
                decision="baseline",
                reason="",
                metric=metric,
                spread=None,
                runs=2,
                delta=None,
            )
        ]
        agent.observe(self.history[0])
        self.proposals: list[Proposal] = []

    def context(self) -> Context:
        return Context(
            files={"train.py": self.text},
            history=list(self.history),
            metric_name="val_loss",
            direction=Direction(self.direction),
            best=self.best,
            noise=0.003,
        )

    def step(self) -> Proposal | None:
        proposal = self.agent.propose(self.context())
        if proposal is None:
            return None
        self.proposals.append(proposal)
        new_text = _apply(self.text, proposal)
        status, metric = self.evaluate(knob_values(new_text))
        better = metric is not None and (
            metric < self.best if self.direction == "minimize" else metric > self.best
        )
        decision = "keep" if status == "ok" and better else ("discard" if status == "ok" else status)
        if decision == "keep":
            self.text, self.best = new_text, metric
        entry = HistoryEntry(
            id=len(self.history) + 1,
            description=proposal.description,
            status=status,
            decision=decision,
            reason="",
            metric=metric,
            spread=None,
            runs=1,
            delta=None,
            meta=json.loads(json.dumps(proposal.meta)),
        )  # as the ledger stores it
        self.history.append(entry)
        self.agent.observe(entry)
        return proposal


def _synthetic_evaluate(seed: int = 0):
    target = _target()
    counter = iter(range(10**6))

    def evaluate(values: dict) -> tuple[str, float | None]:
        status, metric, _ = target.run(values, seed * 1000 + next(counter))
        return status, (metric if status == "ok" else None)

    return evaluate


# ---------------------------------------------------------------------------------------------
# The space


def test_inferred_domains_on_the_synthetic_target() -> None:
    config = search_settings(SYNTHETIC)
    space = build_space({"train.py": TRAIN}, config)
    domains = {d.key: d.domain for d in space.dims}
    assert domains["LEARNING_RATE"].scale == "log"
    assert (domains["LEARNING_RATE"].low, domains["LEARNING_RATE"].high) == (0.001, 0.1)
    assert domains["BATCH_SIZE"].scale == "pow2"
    assert domains["BATCH_SIZE"].grid() == [16, 32, 64, 128, 256]  # powers of two, within x4
    assert domains["DEPTH"].scale == "int" and domains["DEPTH"].grid() == list(range(1, 10))
    assert domains["WARMUP_RATIO"].scale == "linear" and (
        domains["WARMUP_RATIO"].low,
        domains["WARMUP_RATIO"].high,
    ) == (0, 1)
    assert domains["ADAM_BETAS[0]"].scale == "log1m" and domains["ADAM_BETAS[1]"].high == 0.995
    assert domains["USE_BIAS"].choices == (False, True)
    assert (
        domains["ACTIVATION"].choices == ("relu", "gelu", "silu")
        and domains["ACTIVATION"].origin == "declared"
    )
    assert "SEED" in space.pinned and "SEED" not in {d.knob for d in space.dims}
    # The optimum is reachable: every optimal value is on its domain's grid.
    optimum = _target().OPTIMUM
    for dim, value in zip(space.dims, space.dim_values(optimum), strict=True):
        assert dim.domain.snap(value) == value, dim.key


def test_strings_without_choices_are_pinned_and_shown() -> None:
    space = build_space({"train.py": "NAME = 'relu'\nLR = 0.1\n"}, SearchSettings())
    assert "NAME" in space.pinned and [d.key for d in space.dims] == ["LR"]
    table = describe_space({"train.py": TRAIN}, search_settings(SYNTHETIC))
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["knob", "where", "value", "domain"]
    row = next(line for line in lines if line.startswith("LEARNING_RATE"))
    assert "[0.001, 0.1] log" in row and "inferred" in row
    assert any(line.startswith("SEED") and "pinned" in line for line in lines)


def test_domain_inference_rules() -> None:
    assert infer_domain("HEAD_DIM", 128).scale == "pow2"
    assert infer_domain("DROPOUT", 0.1).scale == "linear"
    assert infer_domain("EMA_DECAY", 0.999).scale == "log1m"
    assert infer_domain("WEIGHT_DECAY", 0.2).scale == "log"
    assert infer_domain("OFFSET", -0.5).low < -0.5 < infer_domain("OFFSET", -0.5).high
    assert infer_domain("NAME", "x") is None
    # first looks: learning rates, then shape and batch, then the schedule; memory knobs last
    assert priority("MATRIX_LR") > priority("TOTAL_BATCH_SIZE") > priority("FINAL_LR_FRAC")
    assert priority("DEVICE_BATCH_SIZE") < priority("FINAL_LR_FRAC")


def test_domains_come_from_the_baseline_not_the_incumbent() -> None:
    moved = TRAIN.replace("DEPTH = 3 ", "DEPTH = 8 ")
    config = search_settings(SYNTHETIC)
    drifted = {d.key: d.domain for d in build_space({"train.py": moved}, config).dims}
    anchored = {
        d.key: d.domain for d in build_space({"train.py": moved}, config, origin=knob_values(TRAIN)).dims
    }
    assert drifted["DEPTH"].scale == "pow2"  # 8 alone looks like a power of two
    assert anchored["DEPTH"].scale == "int" and anchored["DEPTH"].high == 9


@pytest.mark.parametrize(
    ("space", "pin", "message"),
    [
        ({"DEPHT": {"low": 1, "high": 4}}, [], r"\[agent.search\] space: DEPHT: no such knob"),
        ({}, ["LR_MAX"], r"\[agent.search\] pin: LR_MAX: no such knob"),
        ({"LEARNING_RATE": 0.01}, [], r"LEARNING_RATE: expected a table"),
        (
            {"LEARNING_RATE": {"low": 0.1, "high": 0.01}},
            [],
            r"LEARNING_RATE: low \(0.1\) must be smaller than high",
        ),
        (
            {"LEARNING_RATE": {"low": 0.0, "high": 0.1, "log": True}},
            [],
            r"LEARNING_RATE: log = true needs low > 0",
        ),
        ({"LEARNING_RATE": {"low": 0.001}}, [], r"LEARNING_RATE: needs both low and high"),
        (
            {"LEARNING_RATE": {"low": 0.001, "high": 0.1, "lgo": True}},
            [],
            r"LEARNING_RATE: unknown key 'lgo'",
        ),
        ({"LEARNING_RATE": {"low": "a", "high": 0.1}}, [], r"LEARNING_RATE: low must be a number"),
        (
            {"DEPTH": {"low": 1.5, "high": 8}},
            [],
            r"DEPTH: the knob is an integer \(3\), so low must be whole",
        ),
        ({"DEPTH": {"low": 1, "high": 8, "step": 0}}, [], r"DEPTH: step must be positive"),
        ({"ACTIVATION": {"choices": []}}, [], r"ACTIVATION: choices must be a non-empty list"),
        (
            {"ACTIVATION": {"choices": ["gelu", 3]}},
            [],
            r"ACTIVATION: choice 3 is an int but the knob is a str",
        ),
        ({"ACTIVATION": {"low": 0, "high": 1}}, [], r"ACTIVATION: a str knob needs choices"),
        (
            {"ADAM_BETAS": [{"low": 0.8, "high": 0.95}]},
            [],
            r"ADAM_BETAS: 1 entries for a knob with 2 elements",
        ),
        (
            {"ADAM_BETAS": [{"low": 0.8, "high": 0.95}, {"low": 1, "high": 0}]},
            [],
            r"ADAM_BETAS\[1\]: low \(1\)",
        ),
    ],
)
def test_bad_space_entries_are_clear_errors(space: dict, pin: list, message: str) -> None:
    config = SearchSettings(space=space, pin=pin)
    with pytest.raises(UserError, match=message) as info:
        build_space({"train.py": TRAIN}, config)
    assert str(info.value).startswith("nightlab.toml: [agent")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Proposals


def test_proposals_edit_only_literals_and_read_like_a_researcher() -> None:
    loop = MiniLoop(SearchAgent(search_settings(SYNTHETIC)), TRAIN, _synthetic_evaluate())
    for _ in range(12):
        before = loop.text
        proposal = loop.step()
        assert proposal is not None
        after = _apply(before, proposal)
        changed = proposal.meta["changed"]
        assert 1 <= len(changed) <= 2
        # Only the literals of the changed knobs differ; every other byte is as the author wrote it.
        old = {k.name: k for k in find_knobs(before)}
        new = {k.name: k for k in find_knobs(after)}
        rebuilt = after
        for name in sorted(changed, key=lambda n: new[n].start, reverse=True):
            rebuilt = rebuilt[: new[name].start] + old[name].text + rebuilt[new[name].end :]
        assert rebuilt == before
        assert proposal.description == ", ".join(f"{n} {old[n].text} → {new[n].text}" for n in changed)
        assert knob_values(after) == {**knob_values(before), **_tuples(proposal.meta["knobs"])}
        assert proposal.hypothesis


def _tuples(values: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) and k == "ADAM_BETAS" else v for k, v in values.items()}


@pytest.mark.slow  # ~10 s: a model fit per proposal, 96 of them
def test_first_looks_go_to_learning_rates_then_shape() -> None:
    loop = MiniLoop(SearchAgent(search_settings(SYNTHETIC)), TRAIN, _synthetic_evaluate())
    first = loop.step()
    assert first is not None and first.meta["changed"] == ["LEARNING_RATE"]
    ratio = first.meta["knobs"]["LEARNING_RATE"] / 0.01
    assert 1.5 <= max(ratio, 1 / ratio) <= 3  # a researcher's first try: about x2 or /2
    second = loop.step()
    assert second is not None and second.meta["changed"][0] in {"DEPTH", "BATCH_SIZE"}


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("LEARNING_RATE = 0.01\n", 1.8, 2.2),  # named: a researcher's x2 or /2
        ("K1 = 0.01\n", 2.8, 3.6),  # unknown role: about x3, so the effect stands out
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_knob_whose_name_says_nothing_gets_a_wider_first_look(
    text: str, low: float, high: float, seed: int
) -> None:
    loop = MiniLoop(SearchAgent(SearchSettings(seed=seed)), text, lambda values: ("ok", 1.0))
    first = loop.step()
    assert first is not None
    name = text.split(" ")[0]
    ratio = first.meta["knobs"][name] / 0.01
    assert low <= max(ratio, 1 / ratio) <= high


@pytest.mark.parametrize(("name", "step"), [("DEPTH", 1), ("K3", 2)])
def test_the_first_look_at_an_integer_moves_by_its_kind_of_step(name: str, step: int) -> None:
    # DEPTH = 3 infers [1, 9]: one layer more or less; an unnamed integer moves two steps.
    loop = MiniLoop(SearchAgent(SearchSettings()), f"{name} = 3\n", lambda values: ("ok", 1.0))
    first = loop.step()
    assert first is not None and abs(first.meta["knobs"][name] - 3) == step


def test_names_that_say_what_a_knob_is() -> None:
    assert all(is_named(n) for n in ("MATRIX_LR", "optim.lr", "DEPTH", "WARMUP_RATIO", "ADAM_BETAS"))
    assert not any(is_named(n) for n in ("K1", "noise_sd", "USE_BIAS", "FOO"))


def test_no_duplicate_proposals_until_the_space_is_exhausted() -> None:
    config = SearchSettings(space=SMALL_SPACE)
    loop = MiniLoop(SearchAgent(config), SMALL, lambda v: _small_metric(v))
    seen = {tuple(sorted(knob_values(SMALL).items()))}
    for _ in range(300):
        proposal = loop.step()
        if proposal is None:
            break
        key = tuple(sorted(_tuples(proposal.meta["knobs"]).items()))
        assert key not in seen, proposal.description
        seen.add(key)
    assert len(seen) == 96  # every configuration tried exactly once, then nothing left to propose
    assert loop.agent.propose(loop.context()) is None
    assert loop.best == pytest.approx(1.0)  # and the optimum (DEPTH 6, gelu, no bias, LR 0.03) found


def test_a_pinned_knob_never_moves() -> None:
    config = search_settings(SYNTHETIC)
    config.pin = ["LEARNING_RATE"]
    loop = MiniLoop(SearchAgent(config), TRAIN, _synthetic_evaluate())
    for _ in range(25):
        proposal = loop.step()
        assert proposal is not None
        assert "LEARNING_RATE" not in proposal.meta["changed"] and "SEED" not in proposal.meta["changed"]
        assert "LEARNING_RATE = 0.01 " in loop.text and "SEED = 1234 " in loop.text
        assert all("LEARNING_RATE" not in (e.search or "") for e in proposal.edits)


def test_restart_rebuilds_the_state_from_history() -> None:
    config = search_settings(SYNTHETIC)
    first = MiniLoop(SearchAgent(config), TRAIN, _synthetic_evaluate(seed=3))
    for _ in range(15):
        first.step()
    # A new agent told the same history (as the loop does after a restart) proposes the same.
    reborn = SearchAgent(config)
    for entry in first.history:
        reborn.observe(entry)
    for _ in range(3):
        context = first.context()
        expected = first.agent.propose(context)
        got = reborn.propose(context)
        assert got is not None and expected is not None
        assert got.to_dict() == expected.to_dict()
        # both agents now wait for that experiment; finish it once and tell both
        first.agent.pending.clear()
        first.proposals.append(expected)
        _finish_step(first, expected, also=reborn)


def test_state_also_rebuilds_from_context_history_alone() -> None:
    config = search_settings(SYNTHETIC)
    first = MiniLoop(SearchAgent(config), TRAIN, _synthetic_evaluate(seed=4))
    for _ in range(10):
        first.step()
    context = first.context()
    expected = first.agent.propose(context)
    assert expected is not None
    assert SearchAgent(config).propose(context).to_dict() == expected.to_dict()  # never observed


def _finish_step(loop: MiniLoop, proposal: Proposal, also: Agent) -> None:
    new_text = _apply(loop.text, proposal)
    status, metric = loop.evaluate(knob_values(new_text))
    decision = "keep" if status == "ok" and metric < loop.best else "discard"
    if decision == "keep":
        loop.text, loop.best = new_text, metric
    entry = HistoryEntry(
        id=len(loop.history) + 1,
        description=proposal.description,
        status=status,
        decision=decision,
        reason="",
        metric=metric,
        spread=None,
        runs=1,
        delta=None,
        meta=json.loads(json.dumps(proposal.meta)),
    )
    loop.history.append(entry)
    loop.agent.observe(entry)
    also.observe(entry)


def test_proposals_in_flight_are_not_repeated() -> None:
    agent = SearchAgent(search_settings(SYNTHETIC))
    loop = MiniLoop(agent, TRAIN, _synthetic_evaluate())
    context = loop.context()
    batch = [agent.propose(context) for _ in range(6)]  # six experiments in flight at once
    keys = {json.dumps(p.meta["knobs"], sort_keys=True) for p in batch if p is not None}
    assert len(keys) == 6


def test_a_kept_change_moves_the_centre() -> None:
    agent = SearchAgent(search_settings(SYNTHETIC))
    loop = MiniLoop(agent, TRAIN, _synthetic_evaluate())
    for _ in range(3):
        loop.step()
    moved = 5 if knob_values(loop.text)["DEPTH"] != 5 else 7
    loop.text = set_knobs(loop.text, {"DEPTH": moved})  # as if a DEPTH change had been kept
    for step in range(8):
        before = knob_values(loop.text)
        proposal = loop.step()
        assert proposal is not None
        assert proposal.meta["base"]["DEPTH"] == before["DEPTH"]
        if step == 0:
            assert before["DEPTH"] == moved
        if "DEPTH" in proposal.meta["changed"]:
            assert f"DEPTH {before['DEPTH']} →" in proposal.description


def test_a_pruned_run_counts_as_its_estimate_not_as_a_failure() -> None:
    agent = SearchAgent(search_settings(SYNTHETIC))
    loop = MiniLoop(agent, TRAIN, _synthetic_evaluate())
    for _ in range(2):
        loop.step()
    proposal = agent.propose(loop.context())
    assert proposal is not None
    meta = json.loads(json.dumps(proposal.meta))
    estimate = loop.best + 0.05  # the ledger's guess of where the stopped run would have ended
    for entry_id, pruned in (
        (50, {"at": 0.25, "value": 2.0, "incumbent": 1.9, "estimate": estimate}),
        (51, {}),
    ):
        entry = HistoryEntry(
            id=entry_id,
            description=proposal.description,
            status="pruned",
            decision="discard",
            reason="pruned",
            metric=None,
            spread=None,
            runs=1,
            delta=None,
            meta={**meta, "pruned": pruned},
        )
        agent.observe(entry)
    origin = agent._origin(loop.context().files)
    space = agent._space(loop.context().files, origin)
    trials = {
        t_id: t
        for t_id, t in zip(
            sorted(agent.entries), agent._trials(space, space.current(), Direction("minimize")), strict=True
        )
    }
    assert trials[50].status == "pruned" and trials[50].value == pytest.approx(estimate)
    assert trials[51].value is None  # no estimate: tried, but not a point of the model
    maximise = agent._trials(space, space.current(), Direction("maximize"))
    assert maximise[-2].value == pytest.approx(-estimate)  # oriented like every other point


def test_failures_make_their_region_less_attractive() -> None:
    categorical = np.array([False, False])
    failed = np.array([[0.9, 0.9]])
    ok = np.array([[0.2, 0.2], [0.3, 0.5]])
    p = failure_probability(np.array([[0.88, 0.9], [0.2, 0.25]]), failed, ok, categorical)
    assert p[0] > 0.5 > 0.01 > p[1]
    assert failure_probability(np.array([[0.5, 0.5]]), np.zeros((0, 2)), ok, categorical)[0] == 0.0


def test_gp_learns_which_knob_matters() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((30, 2))
    y = (x[:, 0] - 0.3) ** 2 + rng.normal(0, 0.003, 30)  # only the first knob matters
    gp = GaussianProcess(np.array([False, False]), noise_var=0.003**2).fit(x, y)
    assert gp.length_scales[0] < gp.length_scales[1]
    mean, _ = gp.predict(np.array([[0.3, 0.9], [0.95, 0.1]]))
    assert mean[0] < mean[1]


def test_search_finds_real_improvements_on_the_synthetic_target() -> None:
    target = _target()
    loop = MiniLoop(SearchAgent(search_settings(SYNTHETIC)), TRAIN, _synthetic_evaluate(seed=1))
    baseline = target.true_loss(knob_values(TRAIN))
    for _ in range(25):
        loop.step()
    final = target.true_loss(knob_values(loop.text))
    assert baseline - final > 0.12  # most of the 0.23 gap to the optimum, far beyond the noise (0.003)


def test_maximised_metrics_are_climbed() -> None:
    target = _target()
    evaluate = _synthetic_evaluate(seed=2)

    def negated(values: dict) -> tuple[str, float | None]:
        status, metric = evaluate(values)
        return status, (None if metric is None else -metric)

    loop = MiniLoop(SearchAgent(search_settings(SYNTHETIC)), TRAIN, negated, direction="maximize")
    for _ in range(15):
        loop.step()
    assert target.true_loss(knob_values(loop.text)) < target.true_loss(knob_values(TRAIN)) - 0.05


# ---------------------------------------------------------------------------------------------
# The synthetic target itself (the harness's loop tests use it too)


def test_synthetic_target_runs_fast_and_writes_its_metrics(tmp_path: Path) -> None:
    env = {**os.environ, "NIGHTLAB_SEED": "5", "NIGHTLAB_RUN_DIR": str(tmp_path / "run")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=SYNTHETIC, env=env, capture_output=True, text=True
    )
    assert time.monotonic() - started < 1.0 or os.environ.get("CI") is None
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    printed = float(done.stdout.split("val_loss:")[1].split()[0])
    assert printed == pytest.approx(metrics["val_loss"], abs=1e-6)
    target = _target()
    assert abs(metrics["val_loss"] - target.true_loss(target.knobs())) < 5 * target.noise_sd
    env["NIGHTLAB_SEED"] = "6"
    again = subprocess.run(
        [sys.executable, "train.py"], cwd=SYNTHETIC, env=env, capture_output=True, text=True
    )
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val_loss"] != metrics["val_loss"]
    assert again.returncode == 0


def test_synthetic_target_fails_like_training_does(tmp_path: Path) -> None:
    target = _target()
    best = dict(target.OPTIMUM)
    assert target.run(best, 0)[0] == "ok" and target.true_loss(best) == target.optimum_loss
    assert target.run({**best, "BATCH_SIZE": 512, "DEPTH": 8}, 0)[0] == "oom"
    status, metric, _ = target.run({**best, "LEARNING_RATE": 0.5}, 0)
    assert status == "nan" and math.isnan(metric)
    script = tmp_path / "train.py"
    script.write_text(TRAIN.replace("BATCH_SIZE = 64 ", "BATCH_SIZE = 2048 "))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and "out of memory" in done.stderr


def test_domains_round_trip_their_grid() -> None:
    for name, value in [
        ("LR", 0.04),
        ("BETA2", 0.95),
        ("WIDTH", 64),
        ("DEPTH", 5),
        ("DROPOUT", 0.1),
        ("FLAG", True),
    ]:
        domain = infer_domain(name, value, element=name == "BETA2")
        grid = domain.grid()
        assert grid is not None and value in grid, (name, grid[:5])
        for v in grid:
            assert domain.from_unit(domain.to_unit(v)) == v, (name, v)
            assert domain.snap(v) == v
    lr = infer_domain("LR", 0.04)
    assert lr.snap(0.04321) == 0.043 and lr.snap(5.0) == lr.high  # two significant digits, clipped


def test_knobs_sharing_a_line_get_a_whole_file_edit() -> None:
    text = "LR = 0.01; WD = 0.1  # both on one line\nDEPTH = 4\n"
    agent = SearchAgent(SearchSettings(max_knobs_per_move=2))
    loop = MiniLoop(
        agent, text, lambda v: ("ok", abs(math.log(v["LR"] / 0.03)) + abs(math.log(v["WD"] / 0.02)))
    )
    forms = {"whole file": 0, "search/replace": 0}
    for _ in range(20):
        before = loop.text
        proposal = loop.step()
        assert proposal is not None
        after = _apply(before, proposal)  # applies exactly, whichever form the edit took
        assert after.splitlines()[0].endswith("  # both on one line")
        if {"LR", "WD"} <= set(proposal.meta["changed"]):
            assert len(proposal.edits) == 1 and proposal.edits[0].search is None
            forms["whole file"] += 1
        else:
            assert all(edit.search is not None for edit in proposal.edits)
            forms["search/replace"] += 1
    assert forms["whole file"] and forms["search/replace"], forms


@pytest.mark.parametrize("state", ["running", "finished"])
def test_a_near_repeat_of_a_configuration_tried_or_in_flight_is_not_proposed(state: str) -> None:
    """With two slots, ``LR 0.01 → 0.005`` running in one (or just back, clearly worse), the
    opening proposed ``LR 0.01 → 0.0051``: the same run again."""
    from nightlab.agents.search.seen import NEAR

    text = "LR = 0.01  # learning rate\nSTEPS = 100\n"
    baseline = HistoryEntry(
        id=1, description="baseline", status="ok", decision="baseline", reason="", metric=1.0,
        spread=None, runs=2, delta=None,
    )  # fmt: skip
    tried = HistoryEntry(
        id=2, description="LR 0.01 → 0.005", status="running" if state == "running" else "ok",
        decision="" if state == "running" else "discard", reason="",
        metric=None if state == "running" else 1.97, spread=None, runs=1, delta=None,
        meta={"knobs": {"LR": 0.005, "STEPS": 100}, "agent": "search"},
    )  # fmt: skip
    other = HistoryEntry(
        id=3, description="LR 0.01 → 0.02", status="ok", decision="discard", reason="", metric=1.2,
        spread=None, runs=1, delta=None, meta={"knobs": {"LR": 0.02, "STEPS": 100}, "agent": "search"},
    )  # fmt: skip
    space = build_space({"train.py": text}, SearchSettings())
    near = space.unit({"LR": 0.005, "STEPS": 100})
    for seed in range(12):
        agent = SearchAgent(SearchSettings(seed=seed))
        context = Context(
            files={"train.py": text}, history=[baseline, other] + ([tried] if state == "finished" else []),
            metric_name="val_loss", direction=Direction.MINIMIZE, best=1.0, noise=0.01,
            running=[tried] if state == "running" else [],
        )  # fmt: skip
        proposal = agent.propose(context)
        assert proposal is not None
        knobs = proposal.meta["knobs"]
        assert max(abs(space.unit(knobs) - near)) >= NEAR, (seed, proposal.description)
