"""What a knob's name says: whether it is searched at all, and how early it gets a look.

A script's names are the only hint the search agent has about a setting's role before it has
measured anything. Some names say a knob must not move unless the user asks (a seed, a budget,
the evaluation's own size, a checkpoint switch: moving them changes what is measured, not the
model); others say what kind of knob it is, which orders the opening's first looks and sets how
far the first one goes (see ``SearchAgent``). Split from :mod:`nightlab.agents.search.space`,
which turns knobs into domains.
"""

from __future__ import annotations

import re

from nightlab.code.knobs import is_budget_name

# Knobs that must not move unless the user declares a domain for them: changing the seed (or
# sklearn's random_state) only samples noise, the machine's layout (world_size, rank, gpus, the
# PyTorch examples' --no-cuda/--no-mps, a DDP backend, NVIDIA apex, cudnn's deterministic and
# benchmark switches, pinned memory, prefetch, a data cache, Lightning's devices, xgboost's
# nthread, sklearn's n_jobs) is not the method, a dry run or
# smoke test runs another program, tracking and videos (CleanRL's --track, --capture-video)
# write elsewhere, a mode switch (a Kaggle CFG's train = True) runs
# another program, and budgets/intervals change what is measured rather than the model. A resume's
# start (torchvision's --start_epoch, Keras's initial_epoch) skips training, and argparse's
# add_help (def get_args_parser(add_help=True)) only drops -h. Read on the hint name (the last
# dotted part).
_PINNED_BY_DEFAULT = re.compile(
    r"(SEED|BUDGET|TIMEOUT|UNTIMED|VERBOSE|COMPILE|^LOG_|^PRINT_|(?<!DROP)_PATH$|_DIR$"
    r"|^DEVICE$|^DTYPE$|WANDB|MLFLOW|TENSORBOARD|PROFIL|DEBUG|_LOG$|_ONLY$|WORKERS|^INIT_FROM$|RESUME"
    r"|RANDOM_STATE|^RNG|^(DO_)?(TRAIN|EVAL|PREDICT)$"
    r"|WORLD_SIZE|^(LOCAL_)?RANK$|^(N_?|NUM_)?GPUS?$|^(NUM_)?NODES$|^DIST_"
    r"|^(NO_|USE_|DISABLE_)?(CUDA|MPS|ACCEL|GPU|TPU|XLA)$|BACKEND$|APEX|DETERMINISTIC|^(CUDNN_)?BENCHMARK$"
    r"|DRY_RUN|SMOKE_TEST|FAST_DEV_RUN|^TRACK$|VIDEO|RENDER|PIN_MEM|PREFETCH|^CACHE$"
    r"|^DEVICES$|^(N_?|NUM_)?THREADS?$|^NTHREAD$|^N_JOBS$|LOGGER$|^REPORT_TO$|^LOG_WITH$"
    r"|^ADD_HELP$|^(START|INITIAL|BEGIN)_(EPOCH|STEP|ITER|ITERATION)S?$)"
)
# Checkpoint switches, on word parts of the whole name (see _words): `always_save_checkpoint`,
# `ckpt_every`, `checkpoint.interval`. Saving changes what is written, never the model, and a
# search that flips it spends a run on nothing. Word parts, not substrings: `SAVE` must not
# catch a name that merely contains the letters.
_CHECKPOINT = re.compile(r"(^|_)(CHECKPOINT|CKPT)|(^|_)(SAVE[SD]?|SAVING)(_|$)")
# A DeepSpeed config's engine sections (ZeRO's buckets and overlap, fp16 loss scaling, profilers)
# and its print interval and timing breakdown: how the machine runs the step, never the model. A
# ds_config.json read through init --script had twelve of them searched.
_ENGINE = re.compile(
    r"^(ZERO_OPTIMIZATION|FP16|BF16|AMP|ACTIVATION_CHECKPOINTING|FLOPS_PROFILER|COMMS_LOGGER|AIO)_"
    r"|(^|_)(STEPS_PER_PRINT|WALL_CLOCK_BREAKDOWN|BUCKET_SIZE)$"
)
# Knobs that size or select the data split or the evaluation: how much is held out (VAL_FRACTION,
# N_VAL, data.n_val), which cross-validation folds (n_fold, trn_fold), how it is evaluated (EVAL_ITERS, eval.batch_size, TEST_SIZE), and how much
# data the model trains on (_DATA_SIZE: N_TRAIN, TRAIN_SIZE, NUM_SAMPLES, DATASET_SIZE). Moving
# one changes what the metric measures, or buys a better number with more data, so results
# before and after stop being comparable. Matched on word parts (see _words): INTERVAL,
# VALUE_DIM and TRAIN_BATCH_SIZE are model or optimiser knobs, and VAL after
# CLIP/INIT/MIN/MAX/PAD/FILL is a value (Lightning's gradient_clip_val), not validation.
_EVALUATION = re.compile(
    r"(^|_)(VALID|VALIDATION|VALIDATE|EVAL|EVALS|EVALUATE|EVALUATION|TEST|TESTS|HOLDOUT|HELDOUT"
    r"|NVAL|NTEST|SPLIT|SPLITS|FOLD|FOLDS|NFOLD|NFOLDS|KFOLD|KFOLDS)(_|$)"
    r"|(^|(?<!CLIP)(?<!INIT)(?<!MIN)(?<!MAX)(?<!PAD)(?<!FILL)_)VALS?(_|$)"
)
_DATA_SIZE = re.compile(
    r"(^|_)(NTRAIN|SUBSET)(_|$)"
    r"|(^|_)(N|NUM|NUMBER)_(TRAIN|SAMPLES|EXAMPLES|DATA)(_|$)"
    r"|(^|_)(LIMIT_)?TRAIN_(SIZE|SAMPLES|EXAMPLES|FRAC|FRACTION|RATIO|PCT|PERCENT|BATCHES)(_|$)"
    r"|(^|_)(DATASET|DATA)_(SIZE|FRAC|FRACTION|LIMIT|PCT|PERCENT)(_|$)"
    r"|(^|_)(FRAC|FRACTION|PCT|PERCENT)_TRAIN(_|$)"
)
# Knobs that define the task rather than the model: the data's features, classes (a Kaggle
# CFG's target_size), vocabulary, audio sample rate, image size or context length (n_positions,
# context_size) (N_FEATURES, num_classes, VOCAB_SIZE, block_size, SEQ_LEN). Moving
# one changes the problem the metric scores (a longer context lowers a language model's loss for
# free, fewer classes make accuracy easy) or breaks the data's shape (found from outside: a YAML
# `data.n_features 16 -> 8` changed the task itself). Word parts: OUT_CHANNELS and HIDDEN_DIM are
# the model's width, and stay searched. Which dataset, task or environment (PyG's --dataset
# Cora|CiteSeer|PubMed, a GLUE task_name, CleanRL's env_id) is the task itself: a run on
# CiteSeer "beats" one on Cora by scoring another problem.
_TASK_SHAPE = re.compile(
    r"(^|_)(N|NUM|NUMBER)_?(FEATURES|CLASSES|LABELS|INPUTS|OUTPUTS|CHANNELS_IN)(_|$)"
    r"|(^|_)(INPUT|IN)_(DIM|SIZE|FEATURES|CHANNELS|SHAPE)(_|$)"
    r"|(^|_)(VOCAB|VOCABULARY|N_VOCAB)(_SIZE)?$"
    r"|(^|_)(SEQ|SEQUENCE|MAX_SEQ|CONTEXT|CTX|MAX_SEQUENCE)_(LEN|LENGTH|SIZE|WINDOW)(_|$)|(^|_)(N_CTX|BLOCK_SIZE)$"
    r"|(^|_)(N_POSITIONS|MAX_POSITION_EMBEDDINGS|TARGET_SIZE|SAMPLE_RATE|SAMPLING_RATE)$|(^|_)(N|NUM)_TARGETS$"
    r"|(^|_)(IMAGE|IMG)_(SIZE|SHAPE|HEIGHT|WIDTH|RES|RESOLUTION)(_|$)|^RESOLUTION$"
    r"|(^|_)(DATASET|TASK)(_NAME)?$|(^|_)(ENV|GYM)_(ID|NAME)$"
)
PIN_DEFAULT = "default (seed, logging, checkpoints, paths or device)"
PIN_BUDGET = "default: the budget (declare a domain in [agent.search] space to search it)"
PIN_MEASURED = (
    "default: data split or evaluation: changes what is measured "
    "(declare a domain in [agent.search] space to search it)"
)
# What a researcher tries first: learning rates, then the batch and the model's shape, then the
# schedule; everything else after. Only the order of first looks depends on it.
_PRIORITY = (
    (re.compile(r"DEVICE_BATCH|MICRO_BATCH"), 0.5),  # memory and speed more than quality
    (re.compile(r"(^|_)(LR|LEARNING_RATE)$"), 3.0),
    (re.compile(r"BATCH|DEPTH|LAYERS|WIDTH|ASPECT|DIM|HEADS"), 2.0),
    (re.compile(r"WARMUP|WARMDOWN|COOLDOWN|DECAY|FINAL_LR|SCHEDULE|BETAS|MOMENTUM"), 1.5),
    (re.compile(r"INIT|STD|SCALE|DROPOUT|CLIP|ACTIVATION|RATIO"), 1.0),
)


# Last name parts that say nothing of a knob's role alone: PyTorch's dropout `p`, Keras's
# `rate` (`Dropout.p`, `attn_drop.p`, `Dropout.rate`) and `alpha` (RMSprop's smoothing
# constant, a mixup's, a leaky slope). The part before them says it.
_ROLELESS = re.compile(r"^([A-Z]|RATE|ALPHA)$")


def hint_name(name: str) -> str:
    """The part of a knob's name the hints read, upper case: ``optim.lr`` and ``--lr`` read as
    ``LR``; a last part that says nothing alone (``Dropout.p``) with the part before it,
    ``DROPOUT_P``, so that a dropout is searched as one."""
    parts = name.lstrip("-").rsplit(".", 2)
    last = parts[-1].upper()
    if len(parts) > 1 and _ROLELESS.match(last):
        return f"{parts[-2].upper()}_{last}"
    return last


def _words(name: str) -> str:
    """The whole name as upper-case word parts joined by ``_``, for rules that read every part:
    ``data.n_val`` -> ``DATA_N_VAL``, ``EvalConfig.batches`` -> ``EVAL_CONFIG_BATCHES``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.lstrip("-"))
    return "_".join(part for part in re.split(r"[._\-]+", spaced.upper()) if part)


def default_pin(name: str) -> str | None:
    """Why a knob is pinned unless the user declares a domain for it, or None when it is searched."""
    words = _words(name)
    if _EVALUATION.search(words) or _TASK_SHAPE.search(words):
        return PIN_MEASURED  # EVAL_ITERS sizes the evaluation, MAX_SEQ_LEN the task: more than budgets
    if is_budget_name(name):
        return PIN_BUDGET  # N_TRAIN_STEPS is a budget before a data size
    if _DATA_SIZE.search(words):
        return PIN_MEASURED
    if _PINNED_BY_DEFAULT.search(hint_name(name)) or _CHECKPOINT.search(words) or _ENGINE.search(words):
        return PIN_DEFAULT
    return None


def priority(name: str) -> float:
    """How early a knob gets its first look (higher first)."""
    for pattern, weight in _PRIORITY:
        if pattern.search(hint_name(name)):
            return weight
    return 0.5


def is_named(name: str) -> bool:
    """Whether the knob's name says what kind of knob it is (one :func:`priority` knows).

    The agent's first look moves such a knob by the step its kind is known to tolerate, and a
    knob of unknown role by a wider one (see ``SearchAgent``)."""
    return any(pattern.search(hint_name(name)) for pattern, _ in _PRIORITY)
