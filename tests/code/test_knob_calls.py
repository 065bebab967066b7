"""Literal arguments of calls to well-known training APIs are knobs: ``lr=3e-4`` in
``torch.optim.AdamW(...)``, ``nn.Dropout(0.1)``, ``DataLoader(ds, batch_size=64)``,
``TrainingArguments(learning_rate=5e-5)``. The most common shape of a plain PyTorch or Hugging
Face script had no knob at all; settings of the program (``print(flush=True)``, ``num_workers``,
``output_dir``) and values that are not literals stay out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nightlab.code.knobs import find_all_knobs, find_knobs, is_budget_name, set_knobs

PLAIN = """\
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import TrainingArguments


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.1)


def main(model, ds, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=4)
    args = TrainingArguments(output_dir="out", learning_rate=5e-5, per_device_train_batch_size=16,
                             num_train_epochs=3, warmup_ratio=0.1, logging_steps=10)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    print("step", flush=True)
    open("log.txt", "w", encoding="utf-8")
"""


def _values(source: str) -> dict[str, object]:
    return {k.name: k.value for k in find_knobs(source)}


def test_the_plain_script_has_knobs_named_by_callee_and_parameter() -> None:
    assert _values(PLAIN) == {
        "Dropout.p": 0.1,
        "AdamW.lr": 3e-4,
        "AdamW.weight_decay": 0.1,
        "AdamW.betas": (0.9, 0.95),
        "OneCycleLR.max_lr": 1e-3,
        "OneCycleLR.pct_start": 0.1,
        "DataLoader.batch_size": 64,
        "TrainingArguments.learning_rate": 5e-5,
        "TrainingArguments.per_device_train_batch_size": 16,
        "TrainingArguments.num_train_epochs": 3,  # a budget: the search pins it by name
        "TrainingArguments.warmup_ratio": 0.1,
        "clip_grad_norm_.max_norm": 1.0,
        "CrossEntropyLoss.label_smoothing": 0.1,
    }  # not shuffle, num_workers, output_dir, logging_steps, flush, encoding, nor total_steps=steps
    assert {k.source for k in find_knobs(PLAIN)} == {"call"}


def test_values_that_are_not_literals_and_calls_of_other_apis_are_no_knobs() -> None:
    source = """\
import argparse
import torch

LR = 3e-4
p = argparse.ArgumentParser()
p.add_argument("--wd", type=float, default=0.01)
args = p.parse_args()
opt = torch.optim.AdamW(params, lr=LR, weight_decay=args.wd, eps=LR * 1e-5)
sorted(xs, reverse=True)
round(1.5, ndigits=2)
"""
    assert _values(source) == {"LR": 3e-4, "wd": 0.01}  # the variables' own definitions
    # A class of the script's own that is called AdamW or Trainer is not the library's.
    own = "class AdamW:\n    def __init__(self, lr=0.1):\n        pass\n\n\nclass Trainer:\n    pass\n\n"
    own += "opt = AdamW(lr=0.5)\nt = Trainer(max_epochs=3)\n"
    assert _values(own) == {"lr": 0.5}  # a keyword of the script's own class, not AdamW.lr
    # Not imported at all: `optim` could be anything.
    assert _values("opt = optim.SGD(params, lr=0.1)\n") == {}


def test_import_forms_and_the_certain_positional_arguments() -> None:
    source = """\
from torch import nn, optim
from torch.optim import AdamW as Opt
from torch.optim.lr_scheduler import StepLR
from torch.nn.utils import clip_grad_norm_
import torch.utils.data as tud
import optax
from tensorflow import keras

sgd = optim.SGD(params, 0.1, momentum=0)
adamw = Opt(params, 1e-3)
sched = StepLR(sgd, 30, 0.5)
layer = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, dim_feedforward=256), 2)
clip_grad_norm_(params, 0.5)
loader = tud.DataLoader(ds, 32)
tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-4, b1=0.9))
model.compile(optimizer=keras.optimizers.Adam(1e-3))
model.fit(x, y, batch_size=128, epochs=5, verbose=2)
"""
    assert _values(source) == {
        "SGD.lr": 0.1,
        "SGD.momentum": 0.0,  # an integer where the API takes a float: searched as one
        "AdamW.lr": 1e-3,  # the API's name, not the alias
        "StepLR.step_size": 30,
        "StepLR.gamma": 0.5,
        "TransformerEncoderLayer.nhead": 4,  # not d_model (64): it must match the model
        "TransformerEncoderLayer.dim_feedforward": 256,
        "TransformerEncoder.num_layers": 2,
        "clip_grad_norm_.max_norm": 0.5,
        "DataLoader.batch_size": 32,
        "clip_by_global_norm.max_norm": 1.0,
        "adamw.learning_rate": 3e-4,
        "adamw.b1": 0.9,
        "Adam.learning_rate": 1e-3,
        "fit.batch_size": 128,  # Keras's Model.fit, in a file that imports Keras
        "fit.epochs": 5,
    }
    # Without Keras, `.fit(batch_size=...)` is anybody's method; a starred argument ends the
    # positions that can be read.
    assert _values("model.fit(x, batch_size=128)\n") == {}
    assert _values("import torch\nopt = torch.optim.SGD(*groups, 0.1)\n") == {}


def test_sizes_tied_to_the_data_or_the_model_are_no_knobs() -> None:
    source = """\
from torch import nn

emb = nn.Embedding(50257, 768)
head = nn.Linear(768, 10)
rnn = nn.LSTM(input_size=32, hidden_size=64, num_layers=2, dropout=0.2, bidirectional=True)
attn = nn.MultiheadAttention(embed_dim=64, num_heads=4)
"""
    assert _values(source) == {"LSTM.num_layers": 2, "LSTM.dropout": 0.2, "MultiheadAttention.num_heads": 4}


def test_a_name_two_calls_give_is_qualified_by_what_each_builds() -> None:
    source = """\
from torch import nn
from torch.utils.data import DataLoader


class Attention(nn.Module):
    def __init__(self):
        self.drop = nn.Dropout(0.1)
        self.resid_drop = nn.Dropout(p=0.2)


class MLP(nn.Module):
    def __init__(self):
        self.drop = nn.Dropout(0.3)
        self.net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.4), nn.Dropout(0.5))


train_loader = DataLoader(train, batch_size=64)
val_loader = DataLoader(val, batch_size=256)
"""
    assert list(_values(source)) == [
        "Attention.drop.p",
        "resid_drop.p",
        "MLP.drop.p",
        "MLP.Dropout#1.p",
        "MLP.Dropout#2.p",
        "train_loader.batch_size",
        "val_loader.batch_size",  # which the search pins: it sizes the evaluation
    ]
    # Across files, the second file's knob is qualified by its path, as for every other reader.
    two = {
        "a.py": "import torch\nopt = torch.optim.SGD(p, lr=0.1)\n",
        "b.py": "import torch\nopt = torch.optim.SGD(p, lr=0.2)\n",
    }
    assert [k.name for k in find_all_knobs(two).knobs] == ["SGD.lr", "b.py:SGD.lr"]


def test_rewriting_touches_only_the_literal_in_its_style() -> None:
    changed = set_knobs(
        PLAIN,
        {"AdamW.lr": 0.001, "AdamW.betas": (0.85, 0.99), "Dropout.p": 0.25, "DataLoader.batch_size": 128},
    )
    expected = (
        PLAIN.replace("lr=3e-4", "lr=1e-3")
        .replace("betas=(0.9, 0.95)", "betas=(0.85, 0.99)")
        .replace("nn.Dropout(0.1)", "nn.Dropout(0.25)")
        .replace("batch_size=64", "batch_size=128")
    )
    assert changed == expected
    assert _values(changed)["AdamW.lr"] == 0.001
    zero = "import torch\nopt = torch.optim.SGD(p, lr=0.1, momentum=0)  # plain SGD\n"
    assert set_knobs(zero, {"SGD.momentum": 0.9}) == zero.replace("momentum=0)", "momentum=0.9)")


def test_an_edit_reaches_the_call(tmp_path: Path) -> None:
    """The literal the search rewrites is the value the library receives (a stand-in
    ``torch.optim`` that prints what it is given)."""
    (tmp_path / "torch" / "optim").mkdir(parents=True)
    (tmp_path / "torch" / "__init__.py").write_text("from torch import optim\n")
    (tmp_path / "torch" / "optim" / "__init__.py").write_text(
        "def AdamW(params, lr=0.001, betas=(0.9, 0.999)):\n    print('lr', lr, 'betas', betas)\n"
    )
    script = "import torch\n\ntorch.optim.AdamW([], lr=3e-4, betas=(0.9, 0.95))\n"
    edited = set_knobs(script, {"AdamW.lr": 0.002, "AdamW.betas": (0.8, 0.9)})
    (tmp_path / "train.py").write_text(edited)
    out = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "lr 0.002 betas (0.8, 0.9)"


GROUPS = """\
import torch
from torch import nn

model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4, eps=1e-5), nn.BatchNorm1d(4, momentum=0.1))
base_lr = 3e-4
opt = torch.optim.AdamW(
    [
        {"params": model[0].parameters(), "weight_decay": 0.1},
        dict(params=model[1].parameters(), weight_decay=0.0, lr=1e-3),
        {"params": model[2].parameters(), "lr": base_lr * 2},
    ],
    lr=3e-4,
)
rms = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.99)
"""


def test_parameter_groups_norm_layers_and_rmsprop_alpha_are_knobs() -> None:
    """Each parameter group's literal values are knobs named after its index in
    ``optimizer.param_groups``; an edit of one reaches that group only (real torch)."""
    assert _values(GROUPS) == {
        "LayerNorm.eps": 1e-5,
        "BatchNorm1d.momentum": 0.1,
        "base_lr": 3e-4,
        "AdamW.group0.weight_decay": 0.1,
        "AdamW.group1.lr": 1e-3,
        "AdamW.group2.lr_scale": 2,
        "AdamW.lr": 3e-4,
        "RMSprop.lr": 0.01,
        "RMSprop.alpha": 0.99,
    }  # not "params", nor group 1's weight_decay=0.0 (the no-decay group); group 2's factor of base_lr
    edited = set_knobs(
        GROUPS,
        {"AdamW.group1.lr": 0.002, "AdamW.group0.weight_decay": 0.05, "BatchNorm1d.momentum": 0.2,
         "RMSprop.alpha": 0.9},
    )  # fmt: skip
    scope: dict = {}
    exec(compile(edited, "train.py", "exec"), scope)
    groups = scope["opt"].param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0, 0.01]  # group 2: AdamW's default
    assert [g["lr"] for g in groups] == [3e-4, 0.002, 2 * 3e-4]
    assert scope["model"][2].momentum == 0.2 and scope["rms"].param_groups[0]["alpha"] == 0.9


GROUPS_IN_VARIABLES = """\
import torch
from torch import nn

no_decay = ["bias"]


def build(model):
    grouped = [
        {"params": [p for n, p in model.named_parameters() if n not in no_decay], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n in no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(grouped, lr=5e-5)


def heads(model):
    head = {"params": [model.bias], "lr": 1e-3}
    body = dict(params=[model.weight], weight_decay=0.1)
    return torch.optim.SGD([body, head], lr=1e-2, momentum=0.9)


def passed_in(groups):
    return torch.optim.Adam(groups, lr=1e-3)


def rebuilt(model):
    groups = [{"params": [model.weight], "lr": 1e-4}]
    groups = [{"params": [model.bias], "lr": 5.0}]
    return torch.optim.RMSprop(groups)


model = nn.Linear(4, 4)
opt, opt2 = build(model), heads(model)
"""


def test_parameter_groups_assigned_to_variables_first_are_knobs() -> None:
    """Groups built in a variable before the optimizer call (Hugging Face's
    ``optimizer_grouped_parameters``, a group dict of its own name) are read as if written in the
    call; a list that arrives as an argument or is assigned twice is not (which value reaches the
    call is unsure). The edit reaches the group (real torch)."""
    assert _values(GROUPS_IN_VARIABLES) == {
        "AdamW.group0.weight_decay": 0.01,
        "AdamW.lr": 5e-5,
        "SGD.group1.lr": 1e-3,
        "SGD.group0.weight_decay": 0.1,
        "SGD.lr": 1e-2,
        "SGD.momentum": 0.9,
        "Adam.lr": 1e-3,
    }
    edited = set_knobs(GROUPS_IN_VARIABLES, {"AdamW.group0.weight_decay": 0.05, "SGD.group1.lr": 0.002})
    scope: dict = {}
    exec(compile(edited, "train.py", "exec"), scope)
    assert [g["weight_decay"] for g in scope["opt"].param_groups] == [0.05, 0.0]
    assert [g["lr"] for g in scope["opt2"].param_groups] == [1e-2, 0.002]


def test_lora_timm_dropouts_and_the_named_hf_schedule_are_knobs() -> None:
    """A fine-tuning script's method lives in ``LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05)``,
    ``timm.create_model(..., drop_path_rate=0.1)`` and ``get_scheduler("cosine", ...)``; the
    model's name, ``num_classes``, ``target_modules`` and ``task_type`` are not knobs."""
    source = (
        "import timm\nfrom peft import LoraConfig\nfrom transformers import get_scheduler\n"
        "cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=['q'], task_type='CAUSAL_LM')\n"
        "sched = get_scheduler('cosine', optimizer=None, num_warmup_steps=100)\n"
        "model = timm.create_model('resnet18', num_classes=10, drop_rate=0.1, drop_path_rate=0.05)\n"
    )
    assert _values(source) == {
        "LoraConfig.r": 8,
        "LoraConfig.lora_alpha": 16,
        "LoraConfig.lora_dropout": 0.05,
        "get_scheduler.name": "cosine",
        "get_scheduler.num_warmup_steps": 100,
        "create_model.drop_rate": 0.1,
        "create_model.drop_path_rate": 0.05,
    }
    assert "get_scheduler('linear'," in set_knobs(source, {"get_scheduler.name": "linear"})


def test_gradient_boosted_trees_and_forests_are_knobs() -> None:
    """xgboost, LightGBM and scikit-learn forests keep their method in the constructor's
    keywords; ``random_state``, ``n_jobs`` and ``verbose`` are not knobs, and ``max_depth`` is
    the model, not a budget."""
    source = (
        "import xgboost as xgb\nfrom lightgbm import LGBMClassifier\nfrom sklearn.ensemble import RandomForestClassifier\n"
        "m = xgb.XGBClassifier(n_estimators=500, learning_rate=0.05, max_depth=6, random_state=42, n_jobs=4)\n"
        "g = LGBMClassifier(num_leaves=31, verbose=-1)\nrf = RandomForestClassifier(min_samples_leaf=2, random_state=0)\n"
    )
    assert _values(source) == {
        "XGBClassifier.n_estimators": 500,
        "XGBClassifier.learning_rate": 0.05,
        "XGBClassifier.max_depth": 6,
        "LGBMClassifier.num_leaves": 31,
        "RandomForestClassifier.min_samples_leaf": 2,
    }
    assert not is_budget_name("XGBClassifier.max_depth")
