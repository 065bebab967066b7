"""``nightlab.toml`` -> validated models.

Every table forbids unknown keys, so a typo (``timout = 60``) is an error naming the key rather
than a silently ignored setting; what pydantic's lax mode would let through (``true`` for a
number, an empty string, infinity) is refused too (:mod:`nightlab.config.strict`); every error is
one line naming the file, table and field.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from nightlab.config.strict import TAG_RULE, TomlModel, check_env_names, describe_error, valid_tag
from nightlab.errors import UserError, shell_word
from nightlab.paths import CONFIG_NAME, editable_files, match_files, matches
from nightlab.types import Direction

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class _Strict(TomlModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# What nightlab gives each run itself: the seed and run directory a run must not choose, the key
# only the progress evaluator holds, the tag its process tree is found and killed by.
_RUN_VARIABLES = frozenset(
    f"NIGHTLAB_{name}" for name in ("SEED", "RUN_DIR", "PROGRESS_KEY", "PROCESS_TAG", "SCORES_DIR")
)
MAX_WORKERS = 1024  # [run] workers, --workers: each has a worktree of its own (10**11 filled the disk)


class TargetConfig(_Strict):
    editable: list[str] = Field(min_length=1)
    frozen: list[str] = Field(default_factory=list)
    run: str = Field(min_length=1)
    evaluate: str | None = None
    # Run once in the workspace before the baseline (e.g. data preparation); frozen afterwards.
    setup: str | None = None
    # Environment variables added to every run (never secrets: those go in [run] allow_env).
    env: dict[str, str] = Field(default_factory=dict)
    # A frozen command run beside the training process that scores its checkpoints (progress
    # points for pruning and time-to-target), so the training process never holds val data.
    progress_evaluate: str | None = None
    # The progress evaluator also does the final evaluation when training has ended (it is
    # started with NIGHTLAB_WARM_EVALUATE=1 and finds progress.final): its start-up (imports,
    # data) is then paid beside training instead of after it. Only under the sandbox; else, or
    # when it cannot, `evaluate` runs as usual.
    warm_evaluate: bool = False
    # The progress evaluator signs its points with the key nightlab hands it (and only it) in
    # NIGHTLAB_PROGRESS_KEY, so a point the training process wrote into progress.eval.jsonl is
    # known for a forgery (the run is invalid) rather than taken for the frozen evaluator's.
    progress_signed: bool = False
    # Globs of files a run may write in its worktree (checkpoints, samples); they are moved into
    # the run directory (outputs/) after the run. Anything else it writes makes the run invalid.
    outputs: list[str] = Field(default_factory=list)
    # Files (globs; ~, ${NAME} and ${NAME:-default} expanded; may lie outside the workspace) the
    # training process must not read, such as val and holdout data: under the sandbox they are
    # empty in its view, while the evaluation commands read them (nightlab.executor.sandbox).
    private: list[str] = Field(default_factory=list)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        check_env_names(list(value))
        ours = sorted(n for n in value if n in _RUN_VARIABLES or n.startswith("NIGHTLAB_BUDGET_"))
        if ours:
            raise ValueError(
                f"{ours[0]} is nightlab's to set for each run ([budget] for a budget); remove it"
            )
        return value

    @model_validator(mode="after")
    def _warm_needs_both(self) -> TargetConfig:
        if self.warm_evaluate and not (self.evaluate and self.progress_evaluate):
            raise ValueError("warm_evaluate = true needs both evaluate and progress_evaluate")
        if self.progress_signed and not self.progress_evaluate:
            raise ValueError("progress_signed = true needs progress_evaluate")
        return self


class BudgetConfig(_Strict):
    seconds: float | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    steps: int | None = Field(default=None, gt=0)
    # Counted training FLOPs (6 per matrix weight per token plus attention): like tokens,
    # independent of the machine's load, but a bigger model gets fewer tokens, as under seconds.
    flops: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=600, gt=0)
    # Hard limit for the separate evaluate command.
    evaluate_timeout: float = Field(default=300, gt=0)

    @model_validator(mode="after")
    def _one_budget(self) -> BudgetConfig:
        if self.seconds is None and self.tokens is None and self.steps is None and self.flops is None:
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
        if self.flops is not None:
            out["NIGHTLAB_BUDGET_FLOPS"] = f"{self.flops:.6g}"
        return out


# Words of a metric's name (split at '_', '-', '.', '/', '@', digits kept) that mean higher is better
# (a correlation too: eval_spearman), and words that mean lower is better (top1_error is an error).
_SCORE_WORDS = frozenset(
    "acc accuracy top1 top5 f1 fscore auc auroc auprc ap map miou iou dice bleu rouge rougel chrf meteor precision "
    "recall psnr ssim reward return r2 em correct pass win spearman pearson kendall corr mcc ndcg mrr kappa".split()
)
_LOSS_WORDS = frozenset(
    "loss error err errors perplexity ppl bpb bpc nll wer cer mse mae rmse fid latency time "
    "seconds regret distance".split()
)


def looks_like_a_score(name: str) -> bool:
    """Whether a metric named ``name`` is, by its words, one where higher is better."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()
    words = set(re.split(r"[^a-z0-9]+", spaced)) - {""}
    words |= {w.rstrip("0123456789") for w in words}  # bleu4, acc1
    return bool(words & _SCORE_WORDS) and not words & _LOSS_WORDS


class MetricConfig(_Strict):
    name: str = "val_bpb"
    direction: Direction = Direction.MINIMIZE
    source: Literal["json", "regex"] = "json"
    pattern: str | None = None
    file: str = "metrics.json"
    # Secondary metric recorded but never shown to agents (the holdout split).
    holdout: str | None = None
    # Intermediate values while a run trains, read from its log when the target writes no
    # progress file: its only unnamed group (or one named value) around the metric; named groups
    # fraction, step, seconds, tokens place the point in the budget (else the wall time since
    # start, under seconds).
    progress_pattern: str | None = None

    @field_validator("file")
    @classmethod
    def _in_the_run_dir(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or value.startswith("~"):
            raise ValueError(f"'{value}': a file the run writes in its run directory, e.g. metrics.json")
        return value

    @model_validator(mode="after")
    def _pattern_for_regex(self) -> MetricConfig:
        if self.source == "regex":
            if not self.pattern:
                raise ValueError(
                    "source = \"regex\" needs a pattern with one group, e.g. '^val_bpb:\\s*([-+0-9.eE]+)'"
                )
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc
            if compiled.groups < 1:
                raise ValueError("pattern needs one capture group around the number")
            if compiled.groups > 1:
                # The value is read from group 1, so a second group (around the name, say) would
                # make a matching log read as "matched no line"; refused here instead.
                raise ValueError(
                    f"pattern has {compiled.groups} capture groups; it needs exactly one, around the "
                    "number: write the others as (?:...)"
                )
        if self.progress_pattern is not None:
            try:
                progress = re.compile(self.progress_pattern)
            except re.error as exc:
                raise ValueError(f"progress_pattern is not a valid regular expression: {exc}") from exc
            if metric_group(progress) is None:
                raise ValueError(
                    "progress_pattern needs a capture group around the metric: an unnamed one, "
                    "or (?P<value>...), e.g. 'step (?P<step>\\d+): .*val loss ([0-9.]+)'"
                )
            unnamed = progress.groups - len(progress.groupindex)
            if "value" not in progress.groupindex and unnamed > 1:
                # The metric is the first unnamed group: with two, which one the user meant is a
                # guess (``step (\d+): val ([0-9.]+)`` would read the step as the metric).
                raise ValueError(
                    f"progress_pattern has {unnamed} unnamed capture groups; the metric's must be "
                    "the only one: write the others as (?:...), or name them (?P<step>...), or "
                    "name the metric's (?P<value>...)"
                )
        return self

    @model_validator(mode="after")
    def _direction_for_a_score(self) -> MetricConfig:
        # Minimising an accuracy makes every night worse while looking like research: found from
        # outside, a night kept four changes that took a classifier from 76% to 17%. A name that
        # reads as a score must say its direction; one that reads as a loss or error need not.
        if "direction" not in self.model_fields_set and looks_like_a_score(self.name):
            raise ValueError(
                f"'{self.name}' reads as a score where higher is better, but direction defaults to "
                '"minimize": set direction = "maximize" (or "minimize" if lower is better)'
            )
        return self


def metric_group(pattern: re.Pattern[str]) -> int | str | None:
    """The group of a ``progress_pattern`` that holds the metric: ``value`` when named, else the
    first unnamed group (named groups place the point: step, seconds, tokens, fraction)."""
    if "value" in pattern.groupindex:
        return "value"
    named = set(pattern.groupindex.values())
    return next((i for i in range(1, pattern.groups + 1) if i not in named), None)


class KindSection(TomlModel):
    """A table whose ``kind`` picks a pluggable part (:mod:`nightlab.plugins`).

    Only the part's common keys are fields here; the keys of the kinds (``[agent.llm] model``,
    or an older workspace's ``[agent] model``) are kept as extras and checked by the part's
    registry against each kind's own settings model before anything runs.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    kind: str


class AgentSection(KindSection):
    kind: str = "search"
    # Prepare the next proposal while the current experiment trains (agents that support it).
    pipeline: bool = True


class PolicySection(KindSection):
    kind: str = "confirm"
    baseline_runs: int = Field(default=2, ge=1)
    # The confidence of keep decisions, and of the intervals `validate` and `ablate` report.
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    max_runs: int = Field(default=4, ge=1)  # replicates of one candidate, first run included
    # Futility stopping: a candidate that looks better but whose chance of becoming significant
    # within max_runs runs (if its later runs gain what its first did) is below this is discarded
    # instead of confirmed; 0: off. Only ever discards, so the false-keep bound is unchanged.
    futility: float = Field(default=0.1, ge=0, lt=1)
    # Fresh replicates of a kept change before it becomes the incumbent: its recorded value and
    # improvement rest on them, not on the runs that selected it (the winner's curse); 0: off.
    remeasure: int = Field(default=2, ge=0)
    # Simplicity criterion: metric units charged per line added (and earned per line removed).
    complexity_penalty: float = Field(default=0.0, ge=0)
    # The run-to-run sd to assume when replicates with different seeds give identical results
    # (a script that ignores NIGHTLAB_SEED); without it, 1% of the incumbent's value is assumed.
    noise_sd: float | None = Field(default=None, gt=0)
    # A candidate whose runs take this many times as long as the incumbent's is flagged in its
    # decision reason (a gain bought with compute); refuse_slower turns such keeps into discards.
    slower_ratio: float = Field(default=1.25, gt=1)
    refuse_slower: bool = False
    # Early stopping: a candidate's first run whose curve is worse than the incumbent's at the
    # same share of the budget by more than the noise allows is stopped and recorded as pruned.
    prune: bool = True
    # Shares of the budget at which a run may be pruned, and how sure the pruner must be.
    prune_at: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])
    prune_confidence: float = Field(default=0.99, gt=0.5, lt=1)

    @model_validator(mode="after")
    def _shares(self) -> PolicySection:
        if any(not 0 < share < 1 for share in self.prune_at):
            raise ValueError("prune_at: shares of the budget, each between 0 and 1 (e.g. [0.25, 0.5])")
        return self


class ExecutorSection(KindSection):
    kind: str = "local"


class PrunerSection(KindSection):
    """``[pruner]``: which rule stops hopeless runs (``[policy] prune`` switches pruning on or
    off; ``prune_at`` and ``prune_confidence`` there hold for every rule)."""

    kind: str = "incumbent"


class TrackersSection(TomlModel):
    """``[trackers]``: ``live`` names the trackers (``mlflow``, ``wandb``) every experiment is sent
    to while ``nightlab run`` runs; ``[trackers.NAME]`` tables hold each one's settings, checked
    by nightlab.store.trackers like ``[agent.NAME]``. Never keys: the clients read them from the
    environment."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    live: list[str] = Field(default_factory=list)


class RunConfig(_Strict):
    tag: str | None = None
    max_experiments: int | None = Field(default=None, ge=0)
    hours: float | None = Field(default=None, gt=0)
    # Secret-looking environment variables the training command may still see, by name.
    allow_env: list[str] = Field(default_factory=list)
    max_consecutive_crashes: int = Field(default=5, ge=1)
    # Every run's NIGHTLAB_SEED is seed + 1000 * experiment + replicate: never negative (numpy
    # refuses), below 2**31 (a 32-bit seed; a huge one was an OverflowError traceback in the ledger).
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    # Resource limits for each run; hitting one ends the run with a clear status (oom / crash).
    memory_limit_mb: float | None = Field(default=None, gt=0)
    log_limit_mb: float = Field(default=50, gt=0)
    run_dir_limit_mb: float | None = Field(default=None, gt=0)
    # Training and evaluation without network, writing only their worktree and run directory
    # (nightlab.executor.sandbox): "auto" uses it where the system allows, "required" refuses to run without.
    sandbox: Literal["auto", "required", "off"] = "auto"
    # Replicates in flight at once (nightlab.executor.slots): a number, or "auto" (one per GPU
    # group where GPUs are visible; on CPU, the cores divided by threads_per_run).
    workers: int | Literal["auto"] = 1
    # GPUs each run sees (CUDA_VISIBLE_DEVICES); unset: all of them with one worker, else one.
    gpus_per_run: int | None = Field(default=None, ge=1)
    # Runs that may share one GPU group; above 1 only when asked, since sharing shifts results.
    runs_per_gpu: int = Field(default=1, ge=1)
    # Threads each run may use (OMP/MKL/... variables), pinned to its own cores where they fit;
    # unset: the cores divided by workers once there are several, else the script decides.
    threads_per_run: int | None = Field(default=None, ge=1)

    @field_validator("tag")
    @classmethod
    def _a_branch_name(cls, value: str | None) -> str | None:
        if value is not None and not valid_tag(value):
            raise ValueError(f"'{value}': {TAG_RULE} (it names the branch nightlab/<tag>)")
        return value

    @field_validator("allow_env")
    @classmethod
    def _allowed_names(cls, value: list[str]) -> list[str]:
        check_env_names(value)
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _positive_workers(cls, value: object) -> object:
        # Before pydantic's union: "abc" read "[run.workers] int: Input should be ... (and 1 more)".
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(
                f'{json.dumps(value)} is not a number of workers: write one of at least 1, or "auto"'
            )
        if value != "auto" and value > MAX_WORKERS:
            raise ValueError(f"{value}: at most {MAX_WORKERS} (each worker has a worktree of its own)")
        return value


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
    agent: AgentSection = Field(default_factory=AgentSection)
    policy: PolicySection = Field(default_factory=PolicySection)
    executor: ExecutorSection = Field(default_factory=ExecutorSection)
    pruner: PrunerSection = Field(default_factory=PrunerSection)
    run: RunConfig = Field(default_factory=RunConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    scales: dict[str, ScaleConfig] = Field(default_factory=dict)
    trackers: TrackersSection = Field(default_factory=TrackersSection)

    @model_validator(mode="after")
    def _warm_reads_a_file(self) -> Config:
        # The verdict must be a file written after the request: a log the run could append to
        # while it trained (the evaluator's, shared with it) is no verdict.
        if self.target.warm_evaluate and self.metric.source != "json":
            raise ValueError('[target] warm_evaluate = true needs [metric] source = "json"')
        return self


def parse_config(data: dict, source: str = CONFIG_NAME) -> Config:
    """Validate a parsed TOML mapping; the first problem becomes a one-line UserError."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        # An unknown key first: a misspelt required key (``editabel``) also reads as the real one
        # missing, and "Field required" alone would hide the typo that causes it.
        errors = sorted(exc.errors(), key=lambda error: error.get("type") != "extra_forbidden")
        first = describe_error(errors[0], model=Config)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{source}: {first}{more}") from None


def workspace_root(directory: Path) -> Path:
    """``directory`` resolved, when it is a directory; else one line saying what to pass instead.

    A file is the common slip (``nightlab check train.py``): the workspace is the folder that
    holds it, and "no such directory; create one" would send the user to ``init`` for nothing.
    """
    root = Path(directory).resolve()
    if root.is_file():
        raise UserError(
            f"{root}: is a file, not a workspace directory; pass the directory that holds "
            f"{CONFIG_NAME} instead (its parent: {root.parent})"
        )
    if not root.is_dir():
        raise UserError(
            f"{root}: no such directory; create a workspace with `nightlab init {shell_word(root)}`"
        )
    return root


def load_config(workspace: Path) -> Config:
    """Read and validate ``workspace/nightlab.toml``."""
    path = workspace_root(workspace) / CONFIG_NAME
    if path.is_dir():
        raise UserError(f"{path}: is a folder; nightlab.toml must be a file (docs/CONFIG.md)")
    if not path.is_file():
        raise UserError(f"{path}: not found; create one with `nightlab init DIR` or see docs/CONFIG.md")
    try:  # UTF-8 whatever the locale; a byte-order mark (Notepad writes one) read "Invalid statement"
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        bad = f"byte {exc.object[exc.start]:#04x} at offset {exc.start}"
        raise UserError(f"{path}: not UTF-8 text ({bad}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(data, str(path))


def check_workspace_files(config: Config, root: Path, source: str = CONFIG_NAME) -> None:
    """Errors a user must fix before a run: globs that match nothing (a file git still has but
    the checkout lost is named as deleted, not blamed on the glob), a file both editable and
    frozen, nightlab.toml made editable."""
    for kind, patterns in (("editable", config.target.editable), ("frozen", config.target.frozen)):
        for pattern in patterns:
            if match_files(root, [pattern]):
                continue
            if _in_git_head(root, pattern):
                raise UserError(
                    f"{pattern} is missing from the checkout ({kind} in {source}), though git has it: "
                    f"restore it with `git -C {root} checkout -- {pattern}`"
                )
            raise UserError(f"{source}: [target] {kind} glob '{pattern}' matches no file in {root}")
    # Frozen wins over editable, and nightlab.toml is never editable (paths.is_editable): a glob
    # may take them in, but a file named as editable that is not, or nothing left, is a mistake.
    for pattern in config.target.editable:
        name = pattern.replace("\\", "/").removeprefix("./")
        if any(ch in name for ch in "*?["):
            continue
        if name == CONFIG_NAME:
            raise UserError(
                f"{source}: [target] editable names {CONFIG_NAME}, which is never editable (the agent "
                "must not change its own rules): remove it"
            )
        if matches(name, config.target.frozen):
            raise UserError(
                f"{source}: [target] {name} is both editable and frozen (frozen wins): take it out of one list"
            )
    if not editable_files(
        match_files(root, config.target.editable), config.target.editable, config.target.frozen
    ):
        raise UserError(
            f"{source}: [target] every file the editable globs match is frozen or {CONFIG_NAME}: "
            "the agent would have nothing to edit"
        )


def _in_git_head(root: Path, path: str) -> bool:
    """Whether ``path`` (a plain path, not a glob) is a file of the checkout's HEAD commit."""
    if any(ch in path for ch in "*?["):
        return False
    import subprocess

    found = subprocess.run(
        ["git", "-C", str(root), "cat-file", "-e", f"HEAD:{path}"], capture_output=True, check=False
    )
    return found.returncode == 0
