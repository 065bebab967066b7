"""A setting assigned on an object after it is made (``cfg = Config(); cfg.lr = 3e-4``,
``args = parser.parse_args(); args.lr = 1e-3``) is the value the run uses: it is the knob, and
what it replaces (the option's default, the field's default) is dead, so no knob."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nightlab.code.knobs import find_all_knobs, find_knobs, set_knobs

SCRIPT = """\
import argparse
from dataclasses import dataclass


@dataclass
class TrainConfig:
    dropout: float = 0.0
    hidden: int = 64


def get_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args()


def main():
    args = get_args()
    args.lr = 1e-3
    cfg = TrainConfig()
    cfg.dropout = 0.2
    cfg.dropout = 0.3
    if args.batch_size > 64:
        cfg.hidden = 128
    print(args.lr, cfg.dropout, cfg.hidden)


if __name__ == "__main__":
    main()
"""


def test_attributes_set_after_the_object_is_made_are_the_knobs(tmp_path: Path) -> None:
    knobs = {k.name: k for k in find_knobs(SCRIPT)}
    assert {n: (k.value, k.source) for n, k in knobs.items()} == {
        "hidden": (64, "dataclass"),  # cfg.hidden = 128 may not run: the default still applies
        "batch_size": (32, "argparse"),
        "lr": (1e-3, "attribute"),  # not the dead default=3e-4
        "dropout": (0.3, "attribute"),  # the last assignment runs; not the field's 0.0
    }
    (tmp_path / "train.py").write_text(set_knobs(SCRIPT, {"lr": 0.002, "dropout": 0.5}))
    out = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["0.002", "0.5", "64"]


def test_a_computed_value_set_on_args_leaves_the_default_a_knob() -> None:
    """DeiT: ``args.lr = args.lr * args.batch_size / 512`` (through a variable): the default
    still sets the rate, so it stays the knob."""
    source = (
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr', type=float, default=5e-4)\n"
        "args = p.parse_args()\nscaled = args.lr * 2\nargs.lr = scaled\n"
    )
    assert {k.name: k.value for k in find_knobs(source)} == {"lr": 5e-4}


def test_only_settings_objects_give_attribute_knobs() -> None:
    """``self.lr`` is a model's state and ``model.width`` an object's; what a distributed launch
    sets on ``args`` is the machine's."""
    source = (
        "import types\nclass Net:\n    def __init__(self):\n        self.lr = 0.1\n"
        "model = Net()\nmodel.width = 12\nconfig = types.SimpleNamespace()\nconfig.optim = types.SimpleNamespace()\n"
        "config.optim.lr = 3e-4\n"
        "def init_distributed_mode(args):\n    args.distributed = True\n    args.dist_backend = 'nccl'\n"
        "    args.gpu = 0\n"
    )
    assert {k.name: k.value for k in find_knobs(source)} == {"optim.lr": 3e-4}


def test_each_object_a_parser_returns_in_a_tuple_is_a_settings_object() -> None:
    """``model_args, training_args = parser.parse_args_into_dataclasses()`` (Hugging Face), then
    ``training_args.learning_rate = 2e-5``: the value the run uses."""
    source = (
        "from transformers import HfArgumentParser, TrainingArguments\n"
        "parser = HfArgumentParser((TrainingArguments,))\n"
        "model_args, training_args = parser.parse_args_into_dataclasses()\n"
        "training_args.learning_rate = 2e-5\n"
    )
    assert {k.name: (k.value, k.source) for k in find_knobs(source)} == {"learning_rate": (2e-5, "attribute")}


def test_a_config_files_key_the_script_sets_after_loading_it_is_no_knob() -> None:
    """``cfg = yaml.safe_load(f)`` then ``cfg["optim"]["lr"] = 1e-3``: the file's ``optim.lr``
    never reaches training; the script's literal is the knob. A key set from elsewhere
    (``cfg["batch_size"] = args.bs``) is dead in the file too, and a subtree replaced whole is."""
    files = {
        "train.py": (
            "import argparse\nimport yaml\n\np = argparse.ArgumentParser()\n"
            "p.add_argument('--bs', type=int, default=32)\nargs = p.parse_args()\n"
            "with open('config.yaml') as f:\n    cfg = yaml.safe_load(f)\n"
            "cfg['optim']['lr'] = 1e-3\ncfg['batch_size'] = args.bs\ncfg['model'] = dict(depth=4)\n"
            "wd = cfg['optim']['wd'] * 2\ncfg['optim']['wd'] = wd\n"  # still the file's value, scaled
        ),
        "config.yaml": "optim:\n  lr: 3e-4\n  wd: 0.1\nbatch_size: 64\nmodel:\n  depth: 2\nseed: 1\n",
    }
    found = find_all_knobs(files)
    assert {(k.path, k.name, k.value) for k in found.knobs} == {
        ("config.yaml", "optim.wd", 0.1),
        ("config.yaml", "seed", 1),
        ("train.py", "bs", 32),
        ("train.py", "optim.lr", 1e-3),
    }


def test_an_option_set_after_parsing_is_dead_where_the_parser_is_kept() -> None:
    """``from options import get_args``; ``args = get_args(); args.lr = 1e-3`` in train.py: the
    ``--lr`` default in options.py never applies, so only train.py's literal is a knob."""
    files = {
        "options.py": (
            "import argparse\n\n\ndef get_args():\n    p = argparse.ArgumentParser()\n"
            "    p.add_argument('--lr', type=float, default=3e-4)\n"
            "    p.add_argument('--wd', type=float, default=0.1)\n    return p.parse_args()\n"
        ),
        "train.py": "from options import get_args\n\nargs = get_args()\nargs.lr = 1e-3\n",
    }
    found = find_all_knobs(files)
    assert {(k.path, k.name, k.value) for k in found.knobs} == {
        ("options.py", "wd", 0.1),
        ("train.py", "lr", 1e-3),
    }


def test_a_value_computed_from_other_settings_kills_the_default_one_that_may_carry_it_does_not() -> None:
    """``args.batch = args.envs * args.steps`` after parsing overwrites the default whatever it
    is; ``args.lr = scaled`` or ``args.lr = args.lr * 2`` may carry it in, so it stays a knob."""
    source = (
        "import argparse, math\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('--batch', type=int, default=0)\n"
        "p.add_argument('--envs', type=int, default=4)\n"
        "p.add_argument('--lr', type=float, default=0.1)\n"
        "p.add_argument('--wd', type=float, default=0.01)\n"
        "args = p.parse_args()\n"
        "scaled = args.lr * 2\n"
        "args.batch = math.ceil(args.envs * 128)\n"
        "args.lr = scaled\n"
        "args.wd = args.wd * 2\n"
    )
    assert [k.name for k in find_knobs(source)] == ["envs", "lr", "wd"]


def test_a_getattr_fallback_is_the_knob_unless_an_option_declares_it() -> None:
    """fairseq's model architectures: ``args.dropout = getattr(args, "dropout", 0.1)`` fills in
    what no option set, so its literal is the value that applies; it gave no knob."""
    source = (
        "import argparse\n\n\ndef base_architecture(args):\n"
        "    args.layers = getattr(args, 'layers', 6)\n"
        "    args.dropout = getattr(args, 'dropout', 0.1)\n\n\n"
        "def main():\n    p = argparse.ArgumentParser()\n    p.add_argument('--dropout', type=float, default=0.2)\n"
        "    args = p.parse_args()\n    base_architecture(args)\n"
    )
    assert {k.name: (k.value, k.source) for k in find_knobs(source)} == {
        "layers": (6, "attribute"),
        "dropout": (0.2, "argparse"),  # the option's default is what args holds
    }
    assert "getattr(args, 'layers', 8)" in set_knobs(source, {"layers": 8})
