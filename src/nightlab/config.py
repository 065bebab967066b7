"""``nightlab.toml`` -> validated models.

Every table forbids unknown keys, so a typo (``timout = 60``) is an error naming the key rather
than a silently ignored setting; every error is one line naming the file, table and field.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nightlab.errors import UserError
from nightlab.paths import CONFIG_NAME, match_files
from nightlab.types import Direction

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TargetConfig(_Strict):
    editable: list[str] = Field(min_length=1)
    frozen: list[str] = Field(default_factory=list)
    run: str = Field(min_length=1)
    evaluate: str | None = None
    # Run once in the workspace before the baseline (e.g. data preparation); frozen afterwards.
    setup: str | None = None
    # Environment variables added to every run (never secrets: those go in [run] allow_env).
    env: dict[str, str] = Field(default_factory=dict)


class BudgetConfig(_Strict):
    seconds: float | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    steps: int | None = Field(default=None, gt=0)
    timeout: float = Field(default=600, gt=0)
    # Hard limit for the separate evaluate command.
    evaluate_timeout: float = Field(default=300, gt=0)

    @model_validator(mode="after")
    def _one_budget(self) -> BudgetConfig:
        if self.seconds is None and self.tokens is None and self.steps is None:
            self.seconds = 60
        if self.seconds is not None and self.seconds >= self.timeout:
            raise ValueError(f"timeout ({self.timeout:g}) must be larger than seconds ({self.seconds:g})")
        return self

    def env(self) -> dict[str, str]:
        """The ``NIGHTLAB_BUDGET_*`` variables a training command receives."""
        out: dict[str, str] = {}
        if self.seconds is not None:
            out["NIGHTLAB_BUDGET_SECONDS"] = f"{self.seconds:g}"
        if self.tokens is not None:
            out["NIGHTLAB_BUDGET_TOKENS"] = str(self.tokens)
        if self.steps is not None:
            out["NIGHTLAB_BUDGET_STEPS"] = str(self.steps)
        return out


class MetricConfig(_Strict):
    name: str = "val_bpb"
    direction: Direction = Direction.MINIMIZE
    source: Literal["json", "regex"] = "json"
    pattern: str | None = None
    file: str = "metrics.json"
    # Secondary metric recorded but never shown to agents (the holdout split).
    holdout: str | None = None

    @model_validator(mode="after")
    def _pattern_for_regex(self) -> MetricConfig:
        if self.source == "regex":
            if not self.pattern:
                raise ValueError(
                    "source = \"regex\" needs a pattern with one group, e.g. '^val_bpb:\\s*([-+0-9.eE]+)'"
                )
            import re

            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc
            if compiled.groups < 1:
                raise ValueError("pattern needs one capture group around the number")
        return self


class AgentConfig(_Strict):
    kind: str = "search"
    # replay
    file: str | None = None
    # search: [agent.space] per-knob domains, [agent] pin = ["DEPTH"], seed
    space: dict[str, Any] = Field(default_factory=dict)
    pin: list[str] = Field(default_factory=list)
    seed: int = 0
    max_knobs_per_move: int = Field(default=2, ge=1)
    # llm
    provider: Literal["openai", "anthropic"] | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    temperature: float = Field(default=0.7, ge=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    max_total_tokens: int | None = Field(default=None, gt=0)
    max_cost: float | None = Field(default=None, ge=0)
    prices: dict[str, list[float]] = Field(default_factory=dict)
    context_chars: int = Field(default=60000, gt=1000)
    retries: int = Field(default=3, ge=0)
    # llm: transient API failures (429, 5xx, timeouts) retried this many times, first wait
    # `backoff` seconds (doubling); one request may take `request_timeout` seconds.
    api_retries: int = Field(default=6, ge=0)
    backoff: float = Field(default=2.0, ge=0)
    request_timeout: float = Field(default=300, gt=0)
    # llm: ask the model for a one-line lesson after each of its experiments.
    lessons: bool = True
    # Prepare the next proposal while the current experiment trains (agents that support it).
    pipeline: bool = True
    # command (coding CLIs)
    command: str | None = None
    timeout: float = Field(default=1800, gt=0)


class PolicyConfig(_Strict):
    kind: Literal["confirm", "greedy"] = "confirm"
    baseline_runs: int = Field(default=2, ge=1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    max_runs: int = Field(default=4, ge=1)  # replicates of one candidate, first run included
    # Simplicity criterion: metric units charged per line added (and earned per line removed).
    complexity_penalty: float = Field(default=0.0, ge=0)


class RunConfig(_Strict):
    tag: str | None = None
    max_experiments: int | None = Field(default=None, ge=0)
    hours: float | None = Field(default=None, gt=0)
    # Secret-looking environment variables the training command may still see, by name.
    allow_env: list[str] = Field(default_factory=list)
    max_consecutive_crashes: int = Field(default=5, ge=1)
    seed: int = 0
    # Resource limits for each run; hitting one ends the run with a clear status (oom / crash).
    memory_limit_mb: float | None = Field(default=None, gt=0)
    log_limit_mb: float = Field(default=50, gt=0)
    run_dir_limit_mb: float | None = Field(default=None, gt=0)
    # Training and evaluation without network, writing only their worktree and run directory
    # (nightlab.executor.sandbox): "auto" uses it where the system allows, "required" refuses to run without.
    sandbox: Literal["auto", "required", "off"] = "auto"


class AuditConfig(_Strict):
    """The diff audit (nightlab.code.audit): what happens to a proposal it flags."""

    mode: Literal["block", "mark", "off"] = "block"
    # Extra regular expressions a proposal must not add (e.g. the path of a private data set).
    patterns: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid_patterns(self) -> AuditConfig:
        import re

        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns: '{pattern}' is not a valid regular expression: {exc}") from exc
        return self


class ScaleConfig(_Strict):
    constants: dict[str, Any] = Field(default_factory=dict)
    budget: BudgetConfig | None = None


class Config(_Strict):
    target: TargetConfig
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    metric: MetricConfig = Field(default_factory=MetricConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    scales: dict[str, ScaleConfig] = Field(default_factory=dict)


def _describe(error: dict) -> str:
    loc = [str(p) for p in error.get("loc", ())]
    msg = error.get("msg", "invalid")
    if error.get("type") == "extra_forbidden":
        where = f"[{'.'.join(loc[:-1])}]" if len(loc) > 1 else "top level"
        return f"unknown key '{loc[-1]}' in {where}"
    if loc:
        table, field = ".".join(loc[:-1]), loc[-1]
        where = f"[{table}] {field}" if table else f"[{field}]"
        return f"{where}: {msg}"
    return msg.removeprefix("Value error, ")


def parse_config(data: dict, source: str = CONFIG_NAME) -> Config:
    """Validate a parsed TOML mapping; the first problem becomes a one-line UserError."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe(errors[0]).replace("Value error, ", "")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{source}: {first}{more}") from None


def load_config(workspace: Path) -> Config:
    """Read and validate ``workspace/nightlab.toml``."""
    path = Path(workspace) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{path}: not found; create one with `nightlab init DIR` or see docs/CONFIG.md")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(data, str(path))


def check_workspace_files(config: Config, root: Path, source: str = CONFIG_NAME) -> None:
    """Errors a user must fix before a run: globs that match nothing."""
    for pattern in config.target.editable:
        if not match_files(root, [pattern]):
            raise UserError(f"{source}: [target] editable glob '{pattern}' matches no file in {root}")
    for pattern in config.target.frozen:
        if not match_files(root, [pattern]):
            raise UserError(f"{source}: [target] frozen glob '{pattern}' matches no file in {root}")
