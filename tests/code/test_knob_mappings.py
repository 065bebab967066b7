"""Settings dicts built by code: a merge (``config = {**defaults, "lr": 1e-2}``) decides which
literal applies, and an ``argparse.Namespace(...)`` built under ``if __name__ == "__main__":``
holds a script's settings. An overridden entry was a knob whose edits changed nothing; a
namespace of settings gave no knob at all."""

from __future__ import annotations

from nightlab.code.knobs import find_all_knobs, find_knobs, set_all_knobs, set_knobs

MERGED = """\
defaults = {"lr": 3e-3, "batch_size": 64, "optim": {"eps": 1e-8, "wd": 0.1}, "dropout": 0.1}
config = {**defaults, "lr": 1e-2, "betas": (0.9, 0.95), "optim": {"eps": 1e-6}}
run_cfg = dict(config, batch_size=128)
late = {"dropout": 0.5, **defaults}
final = run_cfg | {"warmup": 10}
opts = {"smoothing": 0.1, **dict(globals().get("overrides", {}))}
lookup = {"a": 1}
"""


def test_a_merge_keeps_the_literal_that_applies() -> None:
    """Each key's knob is the literal the merged dict ends with: a later key replaces a spread
    one (also a whole nested dict, through ``dict(base, k=v)`` and ``base | {...}``), a later
    spread replaces an earlier key; a spread that cannot be read leaves its neighbours knobs."""
    found = {k.name: (k.value, k.line) for k in find_knobs(MERGED)}
    assert found == {
        "dropout": (0.1, 1),  # late's own dropout is replaced by **defaults after it
        "lr": (1e-2, 2),  # defaults' lr is replaced by config's
        "betas": ((0.9, 0.95), 2),
        "optim.eps": (1e-6, 2),  # config's optim replaces defaults' optim, wd included
        "batch_size": (128, 3),
        "warmup": (10, 5),
        "smoothing": (0.1, 6),  # vars(...) may or may not set it: the literal applies when not
    }  # `lookup` is no settings name and merges no settings: not read
    edited = set_knobs(MERGED, {"lr": 0.02, "batch_size": 256})
    scope: dict = {}
    exec(compile(edited, "train.py", "exec"), scope)
    assert scope["final"]["lr"] == 0.02 and scope["final"]["batch_size"] == 256


NAMESPACE = """\
import argparse
from types import SimpleNamespace


def main(args):
    return args.lr * args.batch_size


if __name__ == "__main__":
    args = argparse.Namespace(lr=3e-3, batch_size=64, betas=(0.9, 0.999))
    hparams = SimpleNamespace(width=32)
    result = {"lr": 5.0}
    main(args)
"""


def test_a_namespace_of_settings_under_main_is_knobs() -> None:
    """``args = argparse.Namespace(...)`` and ``SimpleNamespace`` under ``if __name__ ==
    "__main__":`` are settings (a plain dict there of another name is not), and can be set."""
    assert {k.name: k.value for k in find_knobs(NAMESPACE)} == {
        "lr": 3e-3,
        "batch_size": 64,
        "betas": (0.9, 0.999),
        "width": 32,
    }
    edited = set_knobs(NAMESPACE, {"lr": 1e-3, "width": 64})
    assert "argparse.Namespace(lr=1e-3, batch_size=64" in edited and "SimpleNamespace(width=64)" in edited


BUILT = """\
from dataclasses import dataclass

from transformers import GPT2Config, TrainingArguments


@dataclass
class Config:
    lr: float = 1e-3
    batch_size: int = 32
    dropout: float = 0.1


cfg = Config(lr=3e-4, batch_size=64)


def main():
    model_config = GPT2Config(n_layer=4, n_embd=128)
    args = TrainingArguments(output_dir="out", learning_rate=5e-5, logging_steps=10)
    net = Widget(lr=0.5)
    return model_config, args, net
"""


def test_the_literals_a_settings_object_is_built_with_are_knobs() -> None:
    """``cfg = Config(lr=3e-4)``: the values that apply (the class's defaults for them are dead,
    as before) are knobs, in a function too; a training API's call gives only its listed
    arguments, and a variable not named as settings gives none."""
    found = {k.name: (k.value, k.line) for k in find_knobs(BUILT)}
    assert found == {
        "dropout": (0.1, 10),
        "lr": (3e-4, 13),
        "batch_size": (64, 13),
        "TrainingArguments.learning_rate": (5e-5, 18),
        "n_layer": (4, 17),
        "n_embd": (128, 17),
    }
    assert "cfg = Config(lr=1e-3, batch_size=64)" in set_knobs(BUILT, {"lr": 1e-3})


MODEL = """\
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, d_in, d_out, hidden=32, n_layers=1, *, dropout=0.1, train=False, norm=None):
        super().__init__()
"""


def test_the_keywords_a_script_builds_its_own_class_with_are_knobs() -> None:
    """``model = Net(10, 2, hidden=128)`` in train.py, ``Net`` imported relatively from an
    editable model.py: ``hidden`` is the 128 that applies (the default 32 is dead); a parameter
    without a default (``d_in=10``, a size the data sets), a switch (``train=True`` may pick the
    data), a nested call and a class from elsewhere give none."""
    train = (
        "from .model import Net\nfrom .model import Net as Small\nfrom torchvision.models import resnet18\n\n"
        "model = Net(d_in=10, d_out=2, hidden=128, n_layers=3)\nhead = Small(4, 4, dropout=0.2, hidden=5)\n"
        "backbone = resnet18(num_classes=10)\nds = Small(1, 1, train=True, norm=Norm(eps=1.0))\n"
    )
    files = {"proj/model.py": MODEL, "proj/train.py": train}
    found = {k.name: (k.value, k.path) for k in find_all_knobs(files).knobs}
    assert found == {
        "hidden": (128, "proj/train.py"),
        "n_layers": (3, "proj/train.py"),
        "dropout": (0.2, "proj/train.py"),
        "head.hidden": (5, "proj/train.py"),
    }  # every default of Net is passed by some call: none is a knob in model.py
    edited = set_all_knobs(files, {"hidden": 256})
    assert "Net(d_in=10, d_out=2, hidden=256, n_layers=3)" in edited["proj/train.py"]


def test_an_entry_set_after_the_dict_is_the_knob() -> None:
    """``config["lr"] = 1e-2`` and ``config.update(...)`` at the top level replace the dict's
    entries: the values they set are the knobs; an update whose keys cannot be read changes
    nothing, and a dict not named as settings stays unread."""
    source = (
        'config = {"lr": 3e-3, "bs": 64, "optim": {"eps": 1e-8}, "wd": 0.1}\nconfig["lr"] = 1e-2\n'
        'config.update(bs=128, optim={"eps": 1e-6})\nconfig.update(**dict())\ntable = {"x": 1}\ntable["x"] = 2\n'
    )
    assert {k.name: (k.value, k.line) for k in find_knobs(source)} == {
        "wd": (0.1, 1),
        "lr": (1e-2, 2),
        "bs": (128, 3),
        "optim.eps": (1e-6, 3),
    }
    scope: dict = {}
    exec(compile(set_knobs(source, {"lr": 0.02, "optim.eps": 1e-7}), "train.py", "exec"), scope)
    assert scope["config"] == {"lr": 0.02, "bs": 128, "optim": {"eps": 1e-7}, "wd": 0.1}


def test_a_settings_dict_a_function_builds_or_returns_is_knobs() -> None:
    """``def get_config(): return {...}`` and ``hp = dict(...)`` in a function are settings; a
    later ``config["lr"] = args.lr`` in the same function leaves the literal no knob, and a merge
    there of a module-level dict drops the entries it replaces."""
    source = (
        'def get_config():\n    return {"lr": 1e-3, "model": {"width": 64}}\n\n\n'
        'def default_hparams():\n    hp = dict(lr=3e-4, dropout=0.1)\n    hp["dropout"] = 0.2\n    return hp\n\n\n'
        'def main(args):\n    config = {"lr": 1e-2, "bs": 32}\n    config["lr"] = args.lr\n    table = {"a": 1}\n'
        '    run = {**DEFAULTS, "momentum": 0.95}\n    return config, table, run\n\n\nDEFAULTS = {"momentum": 0.9, "eps": 1e-8}\n'
    )
    assert {k.name: (k.value, k.line) for k in find_knobs(source)} == {
        "lr": (1e-3, 2),
        "model.width": (64, 2),
        "hp.lr": (3e-4, 6),
        "dropout": (0.2, 7),
        "bs": (32, 12),
        "momentum": (0.95, 15),  # DEFAULTS' 0.9 is replaced by the merge in main
        "eps": (1e-8, 19),
    }


def test_a_nested_subscript_assignment_replaces_the_entry_it_names() -> None:
    """``config["optim"]["lr"] = 1e-3`` after ``config = {"optim": {"lr": 3e-4}}``: the 3e-4 is
    dead, the 1e-3 is the knob ``optim.lr``, rewritten where it is."""
    source = 'config = {"optim": {"lr": 3e-4, "wd": 0.1}}\nconfig["optim"]["lr"] = 1e-3\n'
    assert {k.name: (k.value, k.line) for k in find_knobs(source)} == {
        "optim.wd": (0.1, 1),
        "optim.lr": (1e-3, 2),
    }
    assert set_knobs(source, {"optim.lr": 2e-3}).endswith('config["optim"]["lr"] = 2e-3\n')
