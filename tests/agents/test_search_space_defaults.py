"""What the search leaves alone by default, and the domains it infers where the obvious range
is wrong: the data split and the evaluation, checkpoint switches, the script's own choices,
ratios for which 1.0 is degenerate, and knobs the run command sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightlab.agents.base import AgentSetup
from nightlab.agents.registry import make_agent
from nightlab.agents.search.agent import SearchAgent
from nightlab.agents.search.describe import describe_space
from nightlab.agents.search.names import PIN_BUDGET, PIN_DEFAULT, PIN_MEASURED, default_pin
from nightlab.agents.search.settings import SearchSettings
from nightlab.agents.search.space import build_space, infer_domain
from nightlab.config import parse_config
from nightlab.errors import UserError


@pytest.mark.parametrize(
    "name",
    [
        "VAL_FRACTION",
        "val_fraction",
        "N_VAL",
        "data.n_val",
        "data.n_train",
        "EVAL_ITERS",  # the evaluation's size, more than a budget
        "eval_interval",
        "eval.batch_size",
        "EvalConfig.batches",
        "TEST_SIZE",
        "holdout_frac",
        "valid_every",
        "limit_val_batches",
        "NUM_TRAIN",
        "ntrain",
        "TRAIN_SIZE",
        "train_samples",
        "NUM_SAMPLES",
        "DATASET_SIZE",
        "train_split",
        "CFG.n_fold",  # a Kaggle CFG's cross-validation folds
        "trn_fold",
        "frac_train",
    ],
)
def test_the_data_split_and_the_evaluation_are_pinned(name: str) -> None:
    assert default_pin(name) == PIN_MEASURED


@pytest.mark.parametrize(
    "name",
    [
        "data.n_features",  # found from outside: a YAML config's n_features 16 -> 8 changed the task
        "num_classes",
        "nclasses",
        "cfg.model.num_labels",
        "VOCAB_SIZE",
        "n_vocab",
        "block_size",  # nanoGPT's context length: a longer one lowers the loss for free
        "SEQ_LEN",
        "max_seq_len",
        "context_length",
        "image_size",
        "in_channels",
        "input_dim",
        "target_size",  # a Kaggle CFG's number of classes
        "n_positions",  # GPT2Config's context length
        "context_size",
        "sample_rate",
    ],
)
def test_what_defines_the_task_is_pinned(name: str) -> None:
    assert default_pin(name) == PIN_MEASURED


@pytest.mark.parametrize(
    "name",
    ["out_channels", "hidden_dim", "n_embd", "HEAD_DIM", "patch_size", "num_blocks", "embedding_dim"],
)
def test_model_widths_beside_task_shapes_are_searched(name: str) -> None:
    assert default_pin(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "INTERVAL",
        "VALUE_DIM",
        "TRAIN_BATCH_SIZE",
        "gradient_clip_val",
        "INIT_VAL",
        "N_LAYER",
        "NUM_HEADS",
        "WARMUP_RATIO",
        "EVALUATOR_DIM",
        "LATEST_WEIGHT",
        "SAMPLES_PER_TOKEN",
        "TrainConfig.dropout",
        "drop_path",  # DeiT's stochastic depth rate, not a file's path
    ],
)
def test_model_knobs_that_only_look_like_data_knobs_are_searched(name: str) -> None:
    assert default_pin(name) is None


@pytest.mark.parametrize(
    "name",
    ["random_state", "CFG.train", "do_train", "rng_seed", "world_size", "local_rank", "n_gpu", "dist_url"],
)
def test_seeds_by_other_names_and_mode_switches_are_pinned(name: str) -> None:
    assert default_pin(name) == PIN_DEFAULT


def test_a_budget_stays_a_budget() -> None:
    assert default_pin("max_iters") == PIN_BUDGET
    assert default_pin("N_TRAIN_STEPS") == PIN_BUDGET  # steps, not a data size


def test_data_knobs_show_why_and_a_declared_domain_searches_them() -> None:
    dataclass = "@dataclass\nclass C:\n    lr: float = 1e-3\n    val_fraction: float = 0.2\n"
    yaml = "data:\n  n_train: 4096\n  n_val: 1024\n"
    files = {"train.py": dataclass, "config.yaml": yaml}
    space = build_space(files, SearchSettings())
    assert [d.key for d in space.dims] == ["lr"]
    assert space.pinned == dict.fromkeys(["data.n_train", "data.n_val", "val_fraction"], PIN_MEASURED)
    table = describe_space(files, SearchSettings())
    assert "data split or evaluation: changes what is measured" in table
    declared = SearchSettings(space={"data.n_train": {"low": 1024, "high": 8192}})
    assert "data.n_train" in [d.key for d in build_space(files, declared).dims]


@pytest.mark.parametrize(
    ("name", "pinned"),
    [
        ("always_save_checkpoint", True),
        ("SAVE_EVERY", True),
        ("ckpt_interval", True),
        ("checkpoint.every", True),
        ("keep_checkpoints", True),
        ("saves_per_epoch", True),
        ("SAVEPOINT_WEIGHT", False),
        ("USE_BIAS", False),
    ],
)
def test_checkpoint_switches_are_pinned_wherever_the_word_is(name: str, pinned: bool) -> None:
    assert (default_pin(name) == PIN_DEFAULT) is pinned


def test_nanogpt_always_save_checkpoint_is_not_searched() -> None:
    space = build_space({"train.py": "always_save_checkpoint = True\nbias = False\n"}, SearchSettings())
    assert [d.key for d in space.dims] == ["bias"]
    assert space.pinned == {"always_save_checkpoint": PIN_DEFAULT}


CHOICES = """\
import argparse
from dataclasses import dataclass
from typing import Literal

parser = argparse.ArgumentParser()
parser.add_argument("--act", choices=["relu", "tanh", "sigmoid"], default="relu")
parser.add_argument("--width", type=int, choices=[64, 128, 256], default=96)
parser.add_argument("--scale", type=int, choices=[0.5, 1], default=1)


@dataclass
class Config:
    optimizer: Literal["sgd", "adam"] = "adam"
    only: Literal["one"] = "one"
"""


def test_the_scripts_own_choices_are_searched() -> None:
    space = build_space({"train.py": CHOICES}, SearchSettings())
    domains = {d.key: d.domain for d in space.dims}
    assert domains["act"].choices == ("relu", "tanh", "sigmoid")
    assert domains["act"].origin == "choices in train.py"
    assert domains["optimizer"].choices == ("sgd", "adam")
    assert domains["width"].choices == (96, 64, 128, 256)  # the default first when not listed
    assert domains["scale"].origin == "inferred"  # 0.5 cannot go in an integer knob
    assert space.pinned == {"only": "one choice in train.py"}
    assert "choices in train.py" in describe_space({"train.py": CHOICES}, SearchSettings())
    # a declaration still decides
    declared = SearchSettings(space={"act": {"choices": ["relu", "gelu"]}})
    act = next(d for d in build_space({"train.py": CHOICES}, declared).dims if d.key == "act")
    assert act.domain.choices == ("relu", "gelu") and act.domain.origin == "declared"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("dropout", 0.0),
        ("DROPOUT", 0.2),
        ("attn_drop", 0.1),
        ("drop_path_rate", 0.1),  # RATE reads as a log knob: a probability all the same
        ("label_smoothing", 0.0),
        ("mask_ratio", 0.75),
    ],
)
def test_ratios_degenerate_at_one_stay_below_it(name: str, value: float) -> None:
    domain = infer_domain(name, value)
    assert domain is not None and domain.scale == "linear"
    assert (domain.low, domain.high) == (0.0, 0.9)
    grid = domain.grid()
    assert grid is not None and value in grid and max(grid) == 0.9
    assert domain.from_unit(1.0) == 0.9 and domain.snap(0.3333) == 0.33  # two decimals, as written


def test_other_ratios_keep_their_range() -> None:
    assert infer_domain("WARMUP_RATIO", 0.5).high == 1.0
    assert infer_domain("beta1", 0.9).scale == "log1m"
    assert infer_domain("ADAM_BETAS", 0.5, element=True).high == 1.0
    assert infer_domain("MUON_MOMENTUM_WARMUP", 0.1).high == 1.0  # a share of the budget


@pytest.mark.parametrize("name", ["momentum", "optim.momentum", "BETA1", "ema"])
def test_averaging_coefficients_never_reach_one(name: str) -> None:
    """Momentum or a beta of 1.0 never moves its average (Adam divides by zero): the search stops
    at 0.99, whatever the starting value."""
    domain = infer_domain(name, 0.5)
    assert domain is not None and (domain.scale, domain.low, domain.high) == ("linear", 0.0, 0.99)
    assert infer_domain(name, 0.9).scale == "log1m" and infer_domain(name, 0.9).high < 1.0


@pytest.mark.parametrize("name", ["gamma", "SCHEDULER_GAMMA", "LR_DECAY_RATE", "discount", "lr_factor"])
def test_factors_just_below_one_stay_below_it(name: str) -> None:
    """A scheduler's gamma of 0.95 or a discount of 0.99 above 1 would grow what it shrinks."""
    domain = infer_domain(name, 0.95)
    assert domain is not None and domain.scale == "log1m" and domain.low == 0.5 and domain.high < 1.0
    assert infer_domain(name, 0.1).scale == "log"  # StepLR's gamma of 0.1: a factor of ten either way


@pytest.mark.parametrize("name", ["weight_decay", "optim.weight_decay", "WD", "l2"])
def test_a_weight_decay_that_is_off_searches_what_recipes_use(name: str) -> None:
    domain = infer_domain(name, 0.0)
    assert domain is not None and (domain.scale, domain.low, domain.high) == ("linear", 0.0, 0.3)
    assert infer_domain(name, 0.1).scale == "log"  # a decay that is on moves around its value
    assert infer_domain("OFFSET", 0.0).high == 1.0  # any other zero as before


ARGPARSE = """\
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--hidden", type=int, default=32)
parser.add_argument("--batch_size", type=int, default=64)
"""
OVERRIDE = "python train.py --lr=0.01 --hidden 64"


def test_knobs_the_run_command_sets_are_pinned_declared_or_not() -> None:
    files = {"train.py": ARGPARSE}
    declared = SearchSettings(space={"lr": {"low": 1e-4, "high": 1e-1, "log": True}})
    space = build_space(files, declared, command=OVERRIDE)
    assert [d.key for d in space.dims] == ["batch_size"]
    assert space.pinned == {
        "lr": "set by the run command (`--lr=0.01`): edits cannot change it",
        "hidden": "set by the run command (`--hidden 64`): edits cannot change it",
    }
    assert "set by the run command (`--hidden 64`)" in describe_space(files, declared, command=OVERRIDE)
    assert [d.key for d in build_space(files, declared).dims] == ["lr", "hidden", "batch_size"]


def test_the_agent_built_from_the_config_reads_the_run_command(tmp_path: Path) -> None:
    config = parse_config(
        {"target": {"editable": ["train.py"], "run": "python train.py --lr 1 --hidden=2 --batch_size 3"}}
    )
    agent = make_agent(AgentSetup(config, tmp_path), kind="search")
    assert isinstance(agent, SearchAgent) and agent.command == config.target.run
    with pytest.raises(UserError, match="nothing to search.*set by the run command"):
        agent.check({"train.py": ARGPARSE})


@pytest.mark.parametrize(
    "name",
    [
        "no_cuda", "no_mps", "no_accel", "cuda", "use_gpu", "backend", "apex_amp", "torch_deterministic",
        "cudnn_benchmark", "dry_run", "fast_dev_run", "track", "capture_video", "pin_mem", "prefetch", "cache",
        "trainer.devices", "nthread", "n_jobs", "num_threads",
    ],
)  # fmt: skip
def test_machine_switches_dry_runs_and_tracking_are_pinned(name: str) -> None:
    """Found searched on the PyTorch examples' MNIST (--no-cuda: a run on the CPU; --dry-run: one
    batch an epoch), nanoGPT (backend = 'nccl' with 'gloo' in its comment), CleanRL (cuda,
    track, capture_video, torch_deterministic), timm (--apex-amp, --pin-mem) and flax (prefetch,
    cache), an OmegaConf YAML (trainer.devices), xgboost params (nthread): each changes the
    machine or what is written, not the method."""
    assert default_pin(name) == PIN_DEFAULT


@pytest.mark.parametrize("name", ["amp", "channels_last", "backbone", "tracking_loss_weight", "cache_size"])
def test_method_knobs_beside_machine_switches_are_searched(name: str) -> None:
    assert default_pin(name) is None


@pytest.mark.parametrize("name", ["gamma", "StepLR.gamma", "lr_factor", "LR_DECAY_RATE"])
def test_a_multiplier_below_one_stays_below_it_whatever_its_value(name: str) -> None:
    """The PyTorch MNIST example's StepLR gamma of 0.7 was searched up to 7: the learning rate
    then grows sevenfold every epoch."""
    domain = infer_domain(name, 0.7)
    assert domain is not None and domain.high < 1.0 and domain.low == pytest.approx(0.07)
    assert infer_domain("focal_gamma", 2.0).high == 20.0  # a multiplier above 1 is no decay


@pytest.mark.parametrize(
    ("name", "pinned"),
    [
        ("zero_optimization.stage", True),
        ("zero_optimization.reduce_bucket_size", True),
        ("zero_optimization.overlap_comm", True),
        ("fp16.loss_scale_window", True),
        ("fp16.initial_scale_power", True),
        ("steps_per_print", True),
        ("wall_clock_breakdown", True),
        ("fp16", False),
        ("TrainingArguments.fp16", False),
        ("optimizer.params.weight_decay", False),
        ("gradient_clipping", False),
    ],
)
def test_a_deepspeed_configs_engine_settings_are_pinned(name: str, pinned: bool) -> None:
    """A ds_config.json that init --script made editable: ZeRO's stage, buckets and overlap, fp16
    loss scaling, the print interval were searched (twelve knobs of the machine, none of the model)."""
    assert (default_pin(name) == PIN_DEFAULT) is pinned


@pytest.mark.parametrize(
    ("name", "high"), [("weight_decay", 0.3), ("WD", 0.3), ("dropout", 0.9), ("attn_drop", 0.9)]
)
def test_a_ratio_or_decay_written_as_a_whole_zero_is_searched_as_a_float(name: str, high: float) -> None:
    """``dropout = 0`` or ``weight_decay = 0`` (no decimal point) was an int knob searched over
    0..10: a dropout of 8 fails, a weight decay of 8 diverges."""
    domain = infer_domain(name, 0)
    assert domain is not None and not domain.is_int and domain.low == 0.0 and domain.high == high
    assert infer_domain("n_layers", 0).is_int  # a count stays one


def test_a_diffusers_scripts_resolution_and_logger_are_pinned() -> None:
    """diffusers' train_unconditional.py: ``--resolution 64`` (the images' size: the task) and
    ``--logger`` with choices tensorboard/wandb (where logs go) were searched."""
    assert default_pin("resolution") == PIN_MEASURED
    assert default_pin("logger") == PIN_DEFAULT and default_pin("report_to") == PIN_DEFAULT
    assert default_pin("lr_scheduler") is None and default_pin("logit_scale") is None
