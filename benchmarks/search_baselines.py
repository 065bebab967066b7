"""The baselines of ``search_efficiency.py``, as agents over the search agent's own space.

Random search, Optuna's TPE and Optuna's CMA-ES (ask-and-tell, default settings, no incumbent
logic) see exactly the knobs and domains the search agent sees
(:func:`~nightlab.agents.search.space.build_space`), so a comparison measures the strategy, not
the space. All follow the Agent protocol, so the harness's loop can run them too (see
``search_cpu.py``). CMA-ES needs the ``cmaes`` package (the ``bench`` extra).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna

from nightlab.agents.base import Agent
from nightlab.agents.registry import AGENTS
from nightlab.agents.search.space import Domain, Space, build_space
from nightlab.code.knobs import set_knobs
from nightlab.config import Config
from nightlab.types import Context, Edit, HistoryEntry, Proposal


class RandomAgent(Agent):
    """Uniform random configurations over the search agent's domains, never repeating one."""

    name = "random"

    def __init__(self, config: Config, seed: int) -> None:
        self.agent_config = AGENTS.settings(config.agent, "search")
        self.rng = np.random.default_rng(seed)
        self.tried: set[tuple] = set()
        self.space: Space | None = None

    def observe(self, entry: HistoryEntry) -> None:
        pass

    def propose(self, context: Context) -> Proposal | None:
        # Domains from the first files seen (the baseline), as the search agent infers them.
        self.space = self.space or build_space(context.files, self.agent_config)
        space = self.space
        for _ in range(1000):
            config = space.with_dims(
                space.current(), {i: _uniform(d.domain, self.rng) for i, d in enumerate(space.dims)}
            )
            if space.key(config) not in self.tried:
                self.tried.add(space.key(config))
                return _whole_config_proposal(space, context.files, config, "random")
        return None


class OptunaAgent(Agent):
    """An Optuna sampler over the same space through ask-and-tell, with no incumbent logic.

    The baseline is told as a finished trial before the first ask, so the sampler starts from
    what every other method knows. Each trial is one training run; what it reports is Optuna's
    ``best_trial``, the configuration with the best measured value (the greedy rule).
    """

    name = "optuna"

    def __init__(self, config: Config, seed: int) -> None:
        self.agent_config = AGENTS.settings(config.agent, "search")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction="minimize", sampler=self.sampler(seed))
        self.told: set[int] = set()
        self.space: Space | None = None

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def propose(self, context: Context) -> Proposal | None:
        if self.space is None:
            # Domains from the first files seen (the baseline), as the search agent infers them.
            self.space = build_space(context.files, self.agent_config)
            baseline = next((e for e in context.history if e.decision == "baseline"), None)
            if baseline is not None and baseline.metric is not None:
                self._tell_baseline(self.space, baseline.metric)
        distributions = {d.key: _optuna_distribution(d.domain) for d in self.space.dims}
        with warnings.catch_warnings():  # CMA-ES says once that categoricals are sampled apart
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial = self.study.ask(distributions)
        changes = {i: _from_optuna(d.domain, trial.params[d.key]) for i, d in enumerate(self.space.dims)}
        config = self.space.with_dims(self.space.current(), changes)
        proposal = _whole_config_proposal(self.space, context.files, config, self.name)
        proposal.meta["trial"] = trial.number
        return proposal

    def observe(self, entry: HistoryEntry) -> None:
        number = entry.meta.get("trial")
        if number is None or number in self.told:
            return
        self.told.add(number)
        if entry.status == "ok" and entry.metric is not None:
            self.study.tell(number, entry.metric)
        else:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)

    def _tell_baseline(self, space: Space, value: float) -> None:
        params = {
            d.key: _to_optuna(d.domain, v)
            for d, v in zip(space.dims, space.dim_values(space.current()), strict=True)
        }
        distributions = {d.key: _optuna_distribution(d.domain) for d in space.dims}
        self.study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=value)
        )


class TPEAgent(OptunaAgent):
    """Optuna's TPE sampler, default settings."""

    name = "tpe"

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed)


class CMAESAgent(OptunaAgent):
    """Optuna's CMA-ES sampler (the ``cmaes`` package), default settings.

    CMA-ES moves the numeric dimensions (its mean starts at the centre of the space, its step
    at a sixth of the range, a population of 4 + 3 ln d per generation); Optuna samples the
    categorical ones (booleans, declared choices) at random, as it does for every CMA-ES user.
    """

    name = "cmaes"

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _uniform(domain: Domain, rng: np.random.Generator) -> Any:
    if domain.categorical:
        return domain.choices[int(rng.integers(len(domain.choices)))]
    return domain.from_unit(float(rng.random()))


def _optuna_distribution(domain: Domain) -> optuna.distributions.BaseDistribution:
    if domain.categorical:
        return optuna.distributions.CategoricalDistribution(list(domain.choices))
    if domain.scale == "pow2" or (domain.scale == "int" and not domain.step):
        return optuna.distributions.IntDistribution(int(domain.low), int(domain.high))
    if domain.scale == "int":
        return optuna.distributions.IntDistribution(int(domain.low), int(domain.high), step=int(domain.step))
    if domain.scale == "log1m":  # searched as 1 - x on a log scale, like the search agent
        return optuna.distributions.FloatDistribution(1 - domain.high, 1 - domain.low, log=True)
    return optuna.distributions.FloatDistribution(domain.low, domain.high, log=domain.scale == "log")


def _from_optuna(domain: Domain, value: Any) -> Any:
    if domain.scale == "pow2":
        return 2 ** int(value)
    if domain.scale == "log1m":
        return domain.snap(1 - value)
    return value if domain.categorical else domain.snap(value)


def _to_optuna(domain: Domain, value: Any) -> Any:
    if domain.scale == "pow2":
        return int(round(math.log2(value)))
    if domain.scale == "log1m":
        return 1 - value
    return value


def _whole_config_proposal(space: Space, files: dict[str, str], config: dict, agent: str) -> Proposal:
    path = next(iter(space.knobs.values())).path
    values = {k: v for k, v in config.items() if k in space.knobs and k not in space.pinned}
    text = set_knobs(files[path], values, path)
    meta = {"agent": agent, "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}
    return Proposal(description=f"{agent} configuration", edits=[Edit(path=path, replace=text)], meta=meta)
