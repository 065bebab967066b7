"""Knobs in the arguments of calls to well-known training APIs: ``lr=3e-4`` in
``torch.optim.AdamW(model.parameters(), lr=3e-4)``.

A plain PyTorch, Hugging Face, Lightning, JAX or Keras script often keeps its hyperparameters
nowhere but in the calls that use them: the optimizer's ``lr`` and ``betas``, the loader's
``batch_size``, ``nn.Dropout(0.1)``, ``TrainingArguments(learning_rate=5e-5)``. Such a script had
no knob at all, so the search agent refused it. Here a literal argument of such a call is a knob,
named after the callee and the parameter (``AdamW.lr``, ``DataLoader.batch_size``,
``TrainingArguments.learning_rate``). An optimizer's parameter groups written out as dicts
(``AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}])``, as
nanoGPT and most GPT scripts do) give one knob per group and key, named after the group's index
in ``optimizer.param_groups`` (``AdamW.group0.weight_decay``), also when the list or a group
is a variable assigned once before the call, as Hugging Face's ``optimizer_grouped_parameters``,
and when the groups are built by code: a comprehension over a literal table, appends in a loop,
a rate scaled from the base one (``LR * 0.1``: ``group1.lr_scale``), read by :mod:`.groups`.
A group's ``weight_decay`` of 0 is no knob: that group exists to keep its parameters out of decay.

Only listed (callee, parameter) pairs count, because "any literal keyword" would make
``print(flush=True)``, ``open(encoding="utf-8")``, ``DataLoader(num_workers=4)`` and
``TrainingArguments(output_dir="out")`` knobs: settings of the machine or the program, not of the
method, where an experiment measures nothing. Left out on purpose are sizes that must agree with
the data or with another layer (``Embedding``'s vocabulary and width, ``Linear``'s features, an
RNN's ``hidden_size`` and ``bidirectional``, a transformer's ``d_model``), whose change only
crashes the run, and a schedule's length tied to the loop (``T_max``, ``steps_per_epoch``,
``milestones``). Budget-like parameters (``num_train_epochs``, ``max_steps``, ``total_steps``) are
knobs so they are shown, and the search pins them by name as it pins every budget.

A callee is recognised through the file's imports (``from torch.optim import AdamW as Opt`` then
``Opt(...)`` is ``AdamW``; ``import torch.nn as nn`` then ``nn.Dropout``), so a class of the
user's own that happens to be called ``Trainer`` or ``AdamW`` is not read. The exceptions are
methods, whose receiver is an object: ``clip_grad_norm_``/``clip_grad_value_`` on any object (the
names are torch's own, also ``accelerator.clip_grad_norm_``), and Keras's ``model.fit`` in a file
that imports Keras or TensorFlow.

A positional literal counts only where the parameter at that position is certain: an optimizer's
``lr`` (``optim.SGD(params, 0.1)``, position 1 for torch-style optimizers; position 0 for optax
and Keras), a dropout's ``p`` (``nn.Dropout(0.1)``, Keras's ``rate``), ``clip_grad_norm_``'s
``max_norm``, ``DataLoader``'s ``batch_size``, ``TransformerEncoder``'s ``num_layers``, the
heads of ``TransformerEncoderLayer``/``MultiheadAttention`` (after the model width, no knob),
``StepLR``'s ``step_size`` and ``gamma``, ``ExponentialLR``'s ``gamma`` and optax's
``clip_by_global_norm``. A value that is not a literal (``lr=args.lr``, ``lr=LR``) is no knob:
the variable's own definition is one, where another reader finds it.

When one file gives a name twice (two ``nn.Dropout`` layers, a train and a validation
``DataLoader``), each is named by what it is assigned to (``attn_drop.p``, ``val_loader.batch_size``,
which the evaluation rule then pins), then also by its class or function (``MLP.drop.p``), then
numbered (``Dropout#2.p``), whichever first tells them apart.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from nightlab.code.knobs.groups import group_arguments, set_by_every_group
from nightlab.code.knobs.literal import literal
from nightlab.code.knobs.reader import Reader, dotted_path

SOURCE = "call"


@dataclass(frozen=True)
class Param:
    """What a parameter takes: ``float`` (an integer literal is read as the float it means, so
    ``weight_decay=0`` searches floats), ``int``, ``number`` (either, kept as written: budgets),
    ``bool``, ``str`` (with the values the API accepts) or ``seq`` (a tuple or list of numbers).
    ``off_at_zero``: a 0 means "none" and has no scale to search around (``eta_min=0``), so it is
    no knob."""

    kind: str
    choices: tuple[str, ...] = ()
    off_at_zero: bool = False


@dataclass(frozen=True)
class Family:
    """Callees that take the same hyperparameters: the modules they are imported from (None:
    a method on any object), their names (None: every capitalised name of those modules, such
    as every class of ``torch.optim``), the parameters read by keyword, and by position (per
    callee name, ``"*"`` for all; ``""`` marks a position that is no knob). ``groups``: a list
    passed first holds parameter groups (torch optimizers), whose dicts give the same parameters."""

    modules: tuple[str, ...] | None
    names: frozenset[str] | None
    params: dict[str, Param]
    positional: dict[str, tuple[str, ...]]
    groups: bool = False


_F, _I, _N, _B, _SEQ = Param("float"), Param("int"), Param("number"), Param("bool"), Param("seq")
_TORCH_OPTIMIZER = {
    "lr": _F, "weight_decay": _F, "betas": _SEQ, "eps": _F, "momentum": _F, "nesterov": _B, "amsgrad": _B,
    "alpha": _F, "centered": _B,  # RMSprop's smoothing constant and its centred variant
}  # fmt: skip
_TORCH_SCHEDULER = {
    "gamma": _F, "step_size": _I, "max_lr": _F, "pct_start": _F, "div_factor": _F,
    "final_div_factor": _F, "anneal_strategy": Param("str", ("cos", "linear")), "three_phase": _B,
    "total_steps": _N, "epochs": _N, "start_factor": _F, "end_factor": _F, "total_iters": _N,
    "T_0": _I, "T_mult": _I, "eta_min": Param("float", off_at_zero=True), "factor": _F,
    "patience": _I, "power": _F,
}  # fmt: skip
_HF_ARGUMENTS = {
    "learning_rate": _F, "weight_decay": _F, "adam_beta1": _F, "adam_beta2": _F,
    "adam_epsilon": _F, "max_grad_norm": _F, "num_train_epochs": _N, "max_steps": _N,
    "lr_scheduler_type": Param("str", ("linear", "cosine", "cosine_with_restarts", "polynomial",
                                       "constant", "constant_with_warmup", "inverse_sqrt")),
    "warmup_ratio": _F, "warmup_steps": _I, "per_device_train_batch_size": _I,
    "gradient_accumulation_steps": _I, "label_smoothing_factor": _F, "optim": Param("str"),
}  # fmt: skip
_OPTAX_OPTIMIZERS = frozenset(
    "adabelief adadelta adafactor adagrad adam adamax adamaxw adamw adan amsgrad lamb lars lion "
    "nadam nadamw novograd radam rmsprop sgd yogi".split()
)
_KERAS = ("keras", "tensorflow.keras", "tf_keras")
_NN, _FUNCTIONAL = ("torch.nn",), ("torch.nn.functional",)
_DROPOUTS = frozenset(
    {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}
)
_TRANSFORMER_LAYER = {
    "nhead": _I, "dim_feedforward": _I, "dropout": _F, "norm_first": _B,
    "activation": Param("str", ("relu", "gelu")),
}  # fmt: skip

# Gradient-boosted trees (xgboost, LightGBM, CatBoost, and scikit-learn's own), read by the
# same names in each library's spelling; random_state, n_jobs and verbosity are no knobs.
_GBDT = {
    "learning_rate": _F, "n_estimators": _I, "max_depth": _I, "num_leaves": _I, "subsample": _F,
    "colsample_bytree": _F, "min_child_weight": _F, "min_child_samples": _I, "reg_alpha": _F,
    "reg_lambda": _F, "gamma": _F, "iterations": _N, "depth": _I, "l2_leaf_reg": _F,
    "min_samples_leaf": _I, "min_samples_split": _I, "max_features": _F, "max_leaf_nodes": _I,
}  # fmt: skip
_GBDT_CLASSES = frozenset(
    "XGBClassifier XGBRegressor XGBRanker LGBMClassifier LGBMRegressor LGBMRanker CatBoostClassifier "
    "CatBoostRegressor GradientBoostingClassifier GradientBoostingRegressor HistGradientBoostingClassifier "
    "HistGradientBoostingRegressor RandomForestClassifier RandomForestRegressor ExtraTreesClassifier "
    "ExtraTreesRegressor".split()
)

# stable-baselines3's algorithms: PPO("MlpPolicy", env, learning_rate=3e-4, ...) keeps an RL
# script's hyperparameters in the constructor. buffer_size (memory), verbose and seed are no knobs.
_SB3 = {
    "learning_rate": _F, "batch_size": _I, "n_steps": _I, "n_epochs": _N, "gamma": _F, "gae_lambda": _F,
    "clip_range": _F, "ent_coef": _F, "vf_coef": _F, "max_grad_norm": _F, "tau": _F, "train_freq": _I,
    "gradient_steps": _I, "learning_starts": _N, "target_update_interval": _I, "exploration_fraction": _F,
    "exploration_final_eps": _F, "policy_delay": _I, "target_policy_noise": _F,
}  # fmt: skip
_SB3_MODULES = ("stable_baselines3", "sb3_contrib") + tuple(
    f"stable_baselines3.{a}" for a in ("ppo", "a2c", "sac", "td3", "dqn", "ddpg")
)
# fastai's learners (vision_learner(dls, resnet34, ps=0.5, wd=1e-2)) and its fit methods on any
# learner (learn.fit_one_cycle(5, lr_max=1e-3), learn.fine_tune(3, base_lr=2e-3)), also
# through fastai's usual star import (from fastai.vision.all import *).
_FASTAI_MODULES = tuple(
    f"fastai.{m}" for m in ("vision.all", "vision.learner", "tabular.all", "tabular.learner", "text.all",
                             "text.learner", "collab", "learner", "basics")
)  # fmt: skip
_FASTAI_FIT = {
    "n_epoch": _N, "epochs": _N, "lr_max": _F, "lr": _F, "base_lr": _F, "div": _F, "div_final": _F,
    "pct_start": _F, "wd": _F, "freeze_epochs": _N, "lr_mult": _F,
}  # fmt: skip

FAMILIES: tuple[Family, ...] = (
    Family(_SB3_MODULES, frozenset({"PPO", "A2C", "SAC", "TD3", "DQN", "DDPG", "TRPO", "RecurrentPPO"}), _SB3, {}),
    Family(_FASTAI_MODULES, frozenset({"vision_learner", "cnn_learner", "unet_learner", "tabular_learner",
                                       "text_classifier_learner", "language_model_learner", "Learner"}),
           {"wd": _F, "ps": _F, "lr": _F, "drop_mult": _F}, {}),
    Family(None, frozenset({"fit_one_cycle", "fit_flat_cos", "fine_tune"}), _FASTAI_FIT,
           {"fit_one_cycle": ("n_epoch", "lr_max"), "fit_flat_cos": ("n_epoch", "lr"),
            "fine_tune": ("epochs", "base_lr")}),
    Family(("torch.optim.lr_scheduler",), None, _TORCH_SCHEDULER,
           {"StepLR": ("", "step_size", "gamma"), "ExponentialLR": ("", "gamma")}),
    Family(("torch.optim", "bitsandbytes.optim", "apex.optimizers", "timm.optim"), None,
           _TORCH_OPTIMIZER, {"*": ("", "lr")}, groups=True),
    Family(("transformers", "transformers.optimization"), frozenset({"AdamW", "Adafactor"}),
           _TORCH_OPTIMIZER, {"*": ("", "lr")}, groups=True),
    Family(("timm.optim",), frozenset({"create_optimizer_v2", "create_optimizer"}),
           {"lr": _F, "weight_decay": _F, "momentum": _F}, {}),
    Family(("transformers", "transformers.optimization"),
           frozenset({"get_scheduler", "get_linear_schedule_with_warmup", "get_cosine_schedule_with_warmup",
                      "get_cosine_with_hard_restarts_schedule_with_warmup",
                      "get_polynomial_decay_schedule_with_warmup", "get_constant_schedule_with_warmup"}),
           {"num_warmup_steps": _I, "num_training_steps": _N, "num_cycles": _F,
            "name": _HF_ARGUMENTS["lr_scheduler_type"]}, {"get_scheduler": ("name",)}),
    Family(("xgboost", "lightgbm", "catboost", "sklearn.ensemble"), _GBDT_CLASSES, _GBDT, {}),
    Family(("peft",), frozenset({"LoraConfig"}), {"r": _I, "lora_alpha": _N, "lora_dropout": _F}, {}),
    Family(("timm",), frozenset({"create_model"}), {"drop_rate": _F, "drop_path_rate": _F}, {}),
    Family(("transformers", "trl"), frozenset({"TrainingArguments", "Seq2SeqTrainingArguments", "SFTConfig"}),
           _HF_ARGUMENTS, {}),
    Family(("lightning", "lightning.pytorch", "pytorch_lightning"), frozenset({"Trainer"}),
           {"max_epochs": _N, "max_steps": _N, "gradient_clip_val": _F, "accumulate_grad_batches": _I,
            "gradient_clip_algorithm": Param("str", ("norm", "value"))}, {}),
    Family(_NN, _DROPOUTS, {"p": _F}, {"*": ("p",)}),
    Family(_FUNCTIONAL, frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout"}),
           {"p": _F}, {"*": ("", "p")}),
    Family(_NN, frozenset({"TransformerEncoderLayer", "TransformerDecoderLayer"}), _TRANSFORMER_LAYER,
           {"*": ("", "nhead")}),
    Family(_NN, frozenset({"Transformer"}),
           {**_TRANSFORMER_LAYER, "num_encoder_layers": _I, "num_decoder_layers": _I}, {}),
    Family(_NN, frozenset({"TransformerEncoder", "TransformerDecoder"}), {"num_layers": _I},
           {"*": ("", "num_layers")}),
    Family(_NN, frozenset({"LSTM", "GRU", "RNN"}), {"num_layers": _I, "dropout": _F}, {}),
    Family(_NN, frozenset({"MultiheadAttention"}), {"num_heads": _I, "dropout": _F}, {"*": ("", "num_heads")}),
    Family(_NN, frozenset({"CrossEntropyLoss"}), {"label_smoothing": _F}, {}),
    Family(_NN, frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"}),
           {"eps": _F, "momentum": _F}, {}),
    Family(_NN, frozenset({"LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d",
                           "InstanceNorm3d"}), {"eps": _F}, {}),
    Family(_FUNCTIONAL, frozenset({"cross_entropy"}), {"label_smoothing": _F}, {}),
    Family(None, frozenset({"clip_grad_norm_"}), {"max_norm": _F}, {"*": ("", "max_norm")}),
    Family(None, frozenset({"clip_grad_value_"}), {"clip_value": _F}, {"*": ("", "clip_value")}),
    Family(("torch.utils.data", "torch.utils.data.dataloader"), frozenset({"DataLoader"}),
           {"batch_size": _I}, {"*": ("", "batch_size")}),
    Family(("optax",), _OPTAX_OPTIMIZERS,
           {"learning_rate": _F, "b1": _F, "b2": _F, "eps": _F, "weight_decay": _F, "momentum": _F,
            "nesterov": _B}, {"*": ("learning_rate",)}),
    Family(("optax",), frozenset({"clip_by_global_norm"}), {"max_norm": _F}, {"*": ("max_norm",)}),
    Family(("optax",), frozenset({"warmup_cosine_decay_schedule", "cosine_decay_schedule"}),
           {"init_value": Param("float", off_at_zero=True), "peak_value": _F, "warmup_steps": _I,
            "decay_steps": _N, "end_value": Param("float", off_at_zero=True)}, {}),
    Family(tuple(f"{k}.optimizers" for k in _KERAS) + tuple(f"{k}.optimizers.legacy" for k in _KERAS), None,
           {"learning_rate": _F, "beta_1": _F, "beta_2": _F, "epsilon": _F, "weight_decay": _F,
            "momentum": _F, "nesterov": _B, "clipnorm": _F, "global_clipnorm": _F},
           {"*": ("learning_rate",)}),
    Family(tuple(f"{k}.layers" for k in _KERAS),
           frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"}),
           {"rate": _F}, {"*": ("rate",)}),
)  # fmt: skip
# Keras's Model.fit: a method of the user's model, read only in a file that imports Keras.
_KERAS_FIT = Family(None, frozenset({"fit"}), {"batch_size": _I, "epochs": _N}, {})
_METHODS = {name: f for f in FAMILIES if f.modules is None for name in f.names or ()}
_KERAS_ROOTS = ("keras", "tensorflow", "tf_keras")
_SHORT_STRING = 40


@dataclass
class _Found:
    """One literal argument that is a knob, before it is named."""

    callee: str
    param: str
    node: ast.expr
    target: str  # what the call is assigned to (``train_loader``, ``self.drop`` -> ``drop``), or ""
    scope: str  # the class (else the function) the call is in, or ""
    choices: tuple[str, ...]

    @property
    def base(self) -> str:
        return f"{self.callee}.{self.param}"


def call_knobs(reader: Reader, tree: ast.Module) -> set[int]:
    """Add the literal arguments of the file's calls to well-known training APIs (see the module
    docstring), after every other reader: a name they took keeps its knob. Returns the ``id`` of
    every such call, whose other arguments are no knobs (``output_dir``, ``logging_steps``)."""
    bound: dict[str, str] = {}
    calls: list[tuple[ast.Call, str, str]] = []
    _collect(tree, "", bound, calls)
    keras = any(path.split(".")[0] in _KERAS_ROOTS for path in bound.values())
    taken = {(k.start, k.end) for k in reader.found.values()}
    found: list[_Found] = []
    owners: dict[int, list[ast.AST]] | None = None
    known: set[int] = set()
    for call, target, scope in calls:
        match = _family(call.func, bound, keras)
        if match is None:
            continue
        family, callee = match
        known.add(id(call))
        scopes: list[ast.AST] = []
        if family.groups:  # an optimizer: its groups may be built in variables first
            owners = _owners(tree) if owners is None else owners
            scopes = owners.get(id(call), [tree])
        for label, param, node in _arguments(call, family, callee, scopes):
            spec = family.params[param]
            value = _value(node, spec)
            if value is None:
                continue
            found.append(_Found(callee, label, value, target, scope, spec.choices))
    for item, name, qualified in _named(found):
        start = reader.offsets.offset(item.node.lineno, item.node.col_offset)
        if (start, reader.offsets.offset(item.node.end_lineno or 0, item.node.end_col_offset or 0)) in taken:
            continue  # another reader's knob already (a literal can be one knob only)
        reader.add(name, item.node, item.node, SOURCE, qualified=qualified, choices=item.choices)
    return known


def _collect(
    node: ast.AST, scope: str, bound: dict[str, str], calls: list[tuple[ast.Call, str, str]]
) -> None:
    """Walk ``node`` once: the names its imports bind (local name -> dotted path) into ``bound``,
    and every call with what it is assigned to and the class or function around it."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            for alias in child.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:  # import torch.nn binds torch
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
            for alias in child.names:
                if alias.name != "*":
                    bound[alias.asname or alias.name] = f"{child.module}.{alias.name}"
                else:  # from fastai.vision.all import *: a name no import binds may come from it
                    bound[f"*{child.module}"] = child.module
        elif isinstance(child, ast.ClassDef):
            _collect(child, child.name, bound, calls)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = scope if scope and not isinstance(node, ast.Module) else child.name
            _collect(child, inner, bound, calls)
        elif isinstance(child, (ast.Assign, ast.AnnAssign)):
            targets = child.targets if isinstance(child, ast.Assign) else [child.target]
            name = _target_name(targets[0]) if len(targets) == 1 else ""
            if isinstance(child.value, ast.Call):
                calls.append((child.value, name, scope))
                _collect(child.value, scope, bound, calls)
                for other in targets:
                    _collect(other, scope, bound, calls)
            else:
                _collect(child, scope, bound, calls)
        else:
            if isinstance(child, ast.Call):
                calls.append((child, "", scope))
            _collect(child, scope, bound, calls)


def _target_name(node: ast.expr) -> str:
    """``train_loader`` for ``train_loader = ...``, ``drop`` for ``self.drop = ...``."""
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


def _family(func: ast.expr, bound: dict[str, str], keras: bool) -> tuple[Family, str] | None:
    """The family of a callee and its name as the API spells it, or None for any other call."""
    if isinstance(func, ast.Attribute) and func.attr in _METHODS:
        return _METHODS[func.attr], func.attr
    if isinstance(func, ast.Attribute) and func.attr == "fit" and keras:
        return _KERAS_FIT, "fit"
    parts = dotted_path(func)
    if parts is None:
        return None
    if parts[0] not in bound:
        starred = [m for key, m in bound.items() if key.startswith("*")]
        found = (_family_at(f"{m}.{'.'.join(parts)}") for m in starred)
        return next((f for f in found if f is not None and f[0].modules is not None), None)
    return _family_at(".".join([bound[parts[0]], *parts[1:]]))


def _family_at(path: str) -> tuple[Family, str] | None:
    """The family of the callee at the dotted ``path`` (``torch.optim.AdamW``), or None."""
    module, _, name = path.rpartition(".")
    for family in FAMILIES:
        if family.modules is None or module not in family.modules:
            continue
        if family.names is None and name[:1].isupper() and name != "Optimizer":
            return family, name
        if family.names is not None and name in family.names:
            return family, name
    if name in _METHODS:  # torch.nn.utils.clip_grad_norm_ imported by name
        return _METHODS[name], name
    return None


def _owners(tree: ast.Module) -> dict[int, list[ast.AST]]:
    """For each call (by ``id``), the scopes a name it uses is looked up in: its function, the
    functions around that one, then the module."""
    out: dict[int, list[ast.AST]] = {}

    def walk(node: ast.AST, chain: list[ast.AST]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, [child, *chain])
            else:
                if isinstance(child, ast.Call):
                    out[id(child)] = chain
                walk(child, chain)

    walk(tree, [tree])
    return out


def _arguments(
    call: ast.Call, family: Family, callee: str, scopes: list[ast.AST]
) -> list[tuple[str, str, ast.expr]]:
    """The (label, parameter, argument) triples of ``call`` that ``family`` reads: listed
    keywords, the positions whose parameter is certain (none after a ``*args``), and for an
    optimizer the values of its parameter groups, labelled ``group<i>.<parameter>`` after the
    index the group has in ``optimizer.param_groups``. The list and its groups may be variables
    assigned once before the call in ``scopes`` (``groups = [decay, {...}]; AdamW(groups)``), as
    Hugging Face's examples and nanoGPT build them. A keyword every group sets is a default no
    group takes, and gives no knob."""
    out: list[tuple[str, str, ast.expr]] = []
    positions = family.positional.get(callee, family.positional.get("*", ()))
    for i, arg in enumerate(call.args):
        if isinstance(arg, ast.Starred) or i >= len(positions):
            break
        if positions[i]:
            out.append((positions[i], positions[i], arg))
    listed = call.args[0] if family.groups and call.args else None
    dead = set_by_every_group(listed, call, scopes) if listed is not None else set()
    out += [(k.arg, k.arg, k.value) for k in call.keywords if k.arg in family.params and k.arg not in dead]
    return out + group_arguments(listed, call, scopes, set(family.params))


def _value(node: ast.expr, spec: Param) -> ast.expr | None:
    """``node`` when its literal fits ``spec`` (an integer for a float parameter comes back as a
    float constant at the same place), else None."""
    parsed = literal(node)
    if parsed is None:
        return None
    kind, value = parsed
    if spec.off_at_zero and value == 0:
        return None
    if spec.kind == "float" and kind == "int":
        return ast.copy_location(ast.Constant(value=float(value)), node)
    fits = {
        "float": kind == "float",
        "int": kind == "int",
        "number": kind in ("int", "float"),
        "bool": kind == "bool",
        "str": kind == "str" and isinstance(value, str) and 0 < len(value) <= _SHORT_STRING,
        "seq": kind in ("tuple", "list"),
    }
    return node if fits[spec.kind] else None


def _named(found: list[_Found]) -> list[tuple[_Found, str, str]]:
    """Each knob with its name, and the name it takes should another reader hold that one: the
    callee and parameter when only one literal gives it, else each qualified as little as tells
    it apart from the others (module docstring)."""
    groups: dict[str, list[_Found]] = {}
    for item in found:
        groups.setdefault(item.base, []).append(item)
    out: list[tuple[_Found, str, str]] = []
    for items in groups.values():
        param = items[0].param
        if len(items) == 1:
            out.append((items[0], items[0].base, f"{items[0].scope or items[0].callee}.{items[0].base}"))
            continue
        assigned = [i.target or i.callee for i in items]
        scoped = [".".join(filter(None, [i.scope, label])) for i, label in zip(items, assigned, strict=True)]
        seen: dict[str, int] = {}
        for n, (item, short, longer) in enumerate(zip(items, assigned, scoped, strict=True), 1):
            if assigned.count(short) == 1:
                label = short
            elif scoped.count(longer) == 1:
                label = longer
            else:
                seen[longer] = seen.get(longer, 0) + 1
                label = f"{longer}#{seen[longer]}"
            out.append((item, f"{label}.{param}", f"{longer}#{n}.{param}"))
    return sorted(out, key=lambda entry: (entry[0].node.lineno, entry[0].node.col_offset))
