"""The in-process research loop of ``search_efficiency.py``, counted in training runs.

It does what the harness's loop does for one session, without git, subprocesses or a ledger,
so a synthetic target can be searched thousands of times in minutes: the baseline replicated to
measure the noise, then propose -> apply the edits to the incumbent's text -> read the knobs back
(:func:`~nightlab.code.knobs.knob_values`) -> run -> ask the policy -> run again while it says
"confirm" -> record the experiment and tell the agent. The policy is nightlab's own
(:func:`~nightlab.research.policy.make_policy`, with the noise floor pooled from replicate groups
exactly as the loop pools it), so a confirmation replicate costs here what it costs in a night.

What a method *reports* after each run is its incumbent: the configuration it would hand a
person if stopped there. The trace records that configuration's noise-free loss after every
training run (baseline replicates excluded, the same for every method), so methods that spend
runs differently (one per experiment, or up to ``max_runs`` to confirm) share one x-axis.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from nightlab.agents.registry import AGENTS
from nightlab.code.knobs import knob_values
from nightlab.config import Config
from nightlab.research.policy import Evidence, Policy, noise_for
from nightlab.stats import noise_floor
from nightlab.types import Context, Direction, Edit, HistoryEntry


def load_target(path: Path) -> ModuleType:
    """The synthetic target's module, for ``run(values, seed)`` and ``true_loss(values)``."""
    spec = importlib.util.spec_from_file_location(f"synthetic_target_{abs(hash(path))}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_edits(text: str, edits: list[Edit]) -> str:
    for edit in edits:
        if edit.search is None:
            text = edit.replace
        else:
            assert text.count(edit.search) == 1, f"edit does not apply exactly once: {edit.search!r}"
            text = text.replace(edit.search, edit.replace)
    return text


@dataclass
class Trace:
    """One method's session on one seed.

    ``by_run[k]`` is the true loss of the incumbent after ``k + 1`` training runs (baseline
    excluded); ``by_experiment[i]`` the same after experiment ``i + 1`` is decided.
    ``false_keeps`` counts keeps whose configuration is truly no better than the one it replaced.
    """

    by_run: list[float] = field(default_factory=list)
    by_experiment: list[float] = field(default_factory=list)
    runs_per_experiment: list[int] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)  # keep, discard or a failure, per experiment
    keeps: int = 0
    false_keeps: int = 0


def drive(
    agent: Any,
    target: Any,
    text: str,
    runs: int,
    seed: int,
    policy: Policy,
    config: Config,
    baseline_runs: int = 2,
) -> Trace:
    """Run experiments until ``runs`` training runs are spent; the incumbent's true loss after each.

    An experiment still confirming when the budget runs out is cut there (its runs so far
    count; it is not decided), as a night's time limit would cut it.
    """
    base_values = knob_values(text)
    baseline = [target.run(base_values, seed * 10_000 + r)[1] for r in range(baseline_runs)]
    groups = [baseline] if len(baseline) > 1 else []
    incumbent_text, incumbent_values, incumbent_config = text, baseline, base_values
    noise = noise_floor(groups)
    history = [_entry(1, "baseline", "ok", "baseline", baseline, None, {})]
    agent.observe(history[0])
    if hasattr(agent, "tell_baseline"):  # the Optuna baselines start from the same knowledge
        agent.tell_baseline(text, statistics.fmean(baseline))
    trace, used = Trace(), 0
    while used < runs:
        context = Context(
            files={"train.py": incumbent_text},
            history=list(history),
            metric_name="val_loss",
            direction=Direction.MINIMIZE,
            best=statistics.fmean(incumbent_values),
            noise=noise.sd if noise else None,
            experiments_left=runs - used,
        )
        proposal = agent.propose(context)
        if proposal is None:  # nothing left to try: the incumbent stands for the rest
            trace.by_run += [target.true_loss(incumbent_config)] * (runs - used)
            break
        new_text = apply_edits(incumbent_text, proposal.edits)
        values = knob_values(new_text)
        metrics: list[float] = []
        status, decision = "ok", None
        while used < runs:
            status, metric, _ = target.run(values, seed * 10_000 + 100 + used)
            used += 1
            if status != "ok" or metric is None or not math.isfinite(metric):
                trace.by_run.append(target.true_loss(incumbent_config))
                break
            metrics.append(metric)
            sd, df, _note = noise_for(noise, metrics, incumbent_values, config.policy)
            evidence = Evidence(metrics, incumbent_values, Direction.MINIMIZE, noise_sd=sd, noise_df=df)
            decision = policy.decide(evidence)
            if decision.action == "keep":
                trace.keeps += 1
                trace.false_keeps += target.true_loss(values) >= target.true_loss(incumbent_config)
                incumbent_text, incumbent_values, incumbent_config = new_text, metrics, values
            trace.by_run.append(target.true_loss(incumbent_config))
            if decision.action != "confirm":
                break
        if status == "ok" and (decision is None or decision.action == "confirm"):
            break  # the budget ran out in the middle of this experiment
        if len(metrics) > 1:
            groups.append(metrics)
            noise = noise_floor(groups)
        trace.runs_per_experiment.append(max(len(metrics), 1))
        trace.by_experiment.append(target.true_loss(incumbent_config))
        action = decision.action if status == "ok" and decision is not None else status
        trace.decisions.append(action)
        entry = _entry(
            len(history) + 1, proposal.description, status, action, metrics, decision, proposal.meta
        )
        history.append(entry)
        agent.observe(entry)
    trace.by_run = trace.by_run[:runs]
    return trace


def _entry(
    number: int, description: str, status: str, decision: str, metrics: list[float], verdict: Any, meta: dict
) -> HistoryEntry:
    """A finished experiment as the ledger hands it to agents (metric: the replicates' mean)."""
    spread = statistics.stdev(metrics) / math.sqrt(len(metrics)) if len(metrics) > 1 else None
    return HistoryEntry(
        id=number,
        description=description,
        status=status,
        decision=decision,
        reason=getattr(verdict, "reason", ""),
        metric=statistics.fmean(metrics) if metrics and status == "ok" else None,
        spread=spread,
        runs=max(len(metrics), 1),
        delta=getattr(verdict, "delta", None),
        meta=json.loads(json.dumps(meta)),  # as the ledger stores it
    )


class NeutralNames:
    """The synthetic target with its knobs renamed ``K1``, ``K2``, ...: no name tells the agent
    which knob is a learning rate or a ratio, so only the values and the results can guide it."""

    def __init__(self, target: ModuleType, text: str, config: Config) -> None:
        self.target = target
        self.names = {name: f"K{i + 1}" for i, name in enumerate(target.OPTIMUM)}
        self.back = {v: k for k, v in self.names.items()}
        self.optimum_loss = target.optimum_loss
        self.text = text
        for name, neutral in self.names.items():
            self.text = re.sub(rf"^{name} =", f"{neutral} =", self.text, flags=re.MULTILINE)
        settings = AGENTS.settings(config.agent, "search")
        space = {self.names.get(k, k): v for k, v in settings.space.items()}
        agent = config.agent.model_copy(deep=True)
        agent.model_extra.pop("space", None)
        agent.model_extra["search"] = {**settings.model_dump(exclude={"space"}), "space": space}
        self.config = config.model_copy(update={"agent": agent})

    def _original(self, values: dict) -> dict:
        return {self.back.get(k, k): v for k, v in values.items()}

    def run(self, values: dict, seed: int) -> tuple:
        return self.target.run(self._original(values), seed)

    def true_loss(self, values: dict) -> float:
        return self.target.true_loss(self._original(values))
