"""The domains the search infers for the arguments of training-API calls (``AdamW.lr``,
``Dropout.p``, ``DataLoader.batch_size``): an optimizer's learning rate on a log scale, a dropout
below 1, betas below 1, batch sizes as powers of two, and budgets and the evaluation's loader
pinned, as they are for every other kind of knob."""

from __future__ import annotations

import pytest

from nightlab.agents.search.describe import describe_space
from nightlab.agents.search.names import PIN_BUDGET, PIN_MEASURED, hint_name
from nightlab.agents.search.settings import SearchSettings
from nightlab.agents.search.space import build_space, infer_domain

SCRIPT = """\
import optax
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import TrainingArguments

drop = nn.Dropout(0.1)
opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0, betas=(0.9, 0.95))
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, epochs=10, pct_start=0.3)
train_loader = DataLoader(train, batch_size=64)
val_loader = DataLoader(val, batch_size=256)
args = TrainingArguments(output_dir="out", num_train_epochs=3, lr_scheduler_type="cosine", adam_beta2=0.999)
tx = optax.adamw(1e-3, b1=0.9)
"""


def test_call_knobs_get_the_domains_their_parameters_need() -> None:
    space = build_space({"train.py": SCRIPT}, SearchSettings())
    domains = {d.key: d.domain.describe() for d in space.dims}
    assert domains == {
        "Dropout.p": "[0, 0.9] linear step 0.01",  # 1.0 drops everything
        "AdamW.lr": "[3e-05, 0.003] log",
        "AdamW.weight_decay": "[0, 0.3] linear",  # `0` is read as the float it means
        "AdamW.betas[0]": "[0.5, 0.99] log(1-x)",
        "AdamW.betas[1]": "[0.5, 0.995] log(1-x)",
        "OneCycleLR.max_lr": "[0.0001, 0.01] log",
        "OneCycleLR.pct_start": "[0, 1] linear",  # a share: OneCycleLR refuses one above 1
        "train_loader.batch_size": "2**[4..8] (16..256)",
        "TrainingArguments.lr_scheduler_type": (  # the values transformers accepts
            "{'linear', 'cosine', 'cosine_with_restarts', 'polynomial', 'constant', "
            "'constant_with_warmup', 'inverse_sqrt'}"
        ),
        "TrainingArguments.adam_beta2": "[0.5, 0.9999] log(1-x)",
        "adamw.learning_rate": "[0.0001, 0.01] log",
        "adamw.b1": "[0.5, 0.99] log(1-x)",  # optax's name for Adam's beta1
    }
    assert space.pinned == {
        "OneCycleLR.epochs": PIN_BUDGET,
        "val_loader.batch_size": PIN_MEASURED,
        "TrainingArguments.num_train_epochs": PIN_BUDGET,
    }
    shown = describe_space({"train.py": SCRIPT}, SearchSettings())
    assert "train.py:8 call" in shown and "AdamW.lr" in shown


@pytest.mark.parametrize(
    ("name", "hint"),
    [("Dropout.p", "DROPOUT_P"), ("attn_drop.p", "ATTN_DROP_P"), ("Dropout.rate", "DROPOUT_RATE"),
     ("AdamW.lr", "LR"), ("--lr", "LR"), ("optim.lr", "LR"), ("p", "P"), ("RMSprop.alpha", "RMSPROP_ALPHA")],
)  # fmt: skip
def test_a_last_part_that_says_nothing_alone_reads_with_the_one_before(name: str, hint: str) -> None:
    assert hint_name(name) == hint


@pytest.mark.parametrize("name", ["adamw.b1", "adam.b2", "Adam.beta_1", "Adam.beta_2"])
def test_optax_and_keras_betas_are_averaging_coefficients(name: str) -> None:
    domain = infer_domain(name, 0.5)
    assert domain is not None and (domain.scale, domain.low, domain.high) == ("linear", 0.0, 0.99)


def test_rmsprop_alpha_and_batchnorm_momentum_stay_below_one() -> None:
    """Both are averaging coefficients: 1 freezes the average, and above it the square root of
    RMSprop's running mean goes negative. A norm's eps is a small positive float on a log scale."""
    alpha, momentum, eps = (infer_domain(n, v) for n, v in
                            (("RMSprop.alpha", 0.99), ("BatchNorm1d.momentum", 0.1), ("LayerNorm.eps", 1e-5)))  # fmt: skip
    assert alpha is not None and alpha.describe() == "[0.5, 0.999] log(1-x)"
    assert momentum is not None and momentum.describe() == "[0, 0.99] linear"
    assert eps is not None and eps.describe() == "[1e-06, 0.0001] log"
