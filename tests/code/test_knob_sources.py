"""Knobs where people keep them: lowercase settings, argparse and click defaults, dataclass
fields, YAML, JSON and TOML files; each rewritten with every other byte unchanged."""

from __future__ import annotations

import difflib
import json

import pytest
import tomllib
from ruamel.yaml import YAML

from nightlab.code.knobs import find_knobs, is_budget_name, knob_values, set_knobs
from nightlab.errors import UserError

NANOGPT_STYLE = """\
\"\"\"Train a GPT: settings below, overridden by a config file and --key=value flags.\"\"\"
import os
import time

out_dir = 'out'
eval_interval = 2000
log_interval = 1
always_save_checkpoint = True  # save after every eval
batch_size = 12  # micro-batch size
learning_rate = 6e-4  # max learning rate
max_iters = 600000  # total number of training iterations
betas = (0.9, 0.95)
dtype = 'bfloat16' if os.environ.get('GPU') else 'float32'
compile = True
config_keys = [k for k, v in globals().items() if not k.startswith('_')]
exec(open('configurator.py').read())  # overrides from the command line or a config file
iter_num = 0
best_val_loss = 1e9
"""

CONFIG_FILE = """\
# config for training on shakespeare characters
out_dir = 'out-shakespeare-char'
eval_interval = 250  # keep frequent because we'll overfit
gradient_accumulation_steps = 1
batch_size = 64
n_layer = 6
dropout = 0.2
learning_rate = 1e-3
"""

ARGPARSE = """\
import argparse
import click
from dataclasses import dataclass, field


def parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--wd", dest="weight_decay", type=float, default=0.1)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("data")
    return parser.parse_args()


@click.command()
@click.option("--warmup", default=100, help="warm-up steps")
def main(warmup):
    pass


@dataclass
class TrainConfig:
    lr: float = 1e-3  # the same name as --lr: qualified
    depth: int = 4
    betas: tuple = field(default=(0.9, 0.95))
    name: str = "run"
    _private: int = 3
"""


def _changed_lines(old: str, new: str) -> list[str]:
    """The removed and added lines of a diff, sorted (what changed, not how difflib groups it)."""
    return sorted(line for line in difflib.ndiff(old.splitlines(), new.splitlines()) if line[:1] in "+-")


def test_the_leading_settings_block_of_a_script_and_nothing_after_it() -> None:
    knobs = {k.name: k for k in find_knobs(NANOGPT_STYLE, "train.py")}
    assert list(knobs) == [
        "out_dir", "eval_interval", "log_interval", "always_save_checkpoint", "batch_size",
        "learning_rate", "max_iters", "betas", "compile",
    ]  # fmt: skip
    assert all(k.source == "setting" for k in knobs.values())
    assert knobs["learning_rate"].comment == "max learning rate"
    new = set_knobs(NANOGPT_STYLE, {"learning_rate": 1.2e-3, "batch_size": 24}, "train.py")
    assert _changed_lines(NANOGPT_STYLE, new) == sorted(
        [
            "- batch_size = 12  # micro-batch size",
            "+ batch_size = 24  # micro-batch size",
            "- learning_rate = 6e-4  # max learning rate",
            "+ learning_rate = 1.2e-3  # max learning rate",
        ]
    )
    assert knob_values(CONFIG_FILE, "config/train_shakespeare_char.py")["dropout"] == 0.2


def test_argparse_click_and_dataclass_defaults() -> None:
    knobs = {k.name: k for k in find_knobs(ARGPARSE, "train.py")}
    assert {n: (k.value, k.source) for n, k in knobs.items()} == {
        "lr": (3e-4, "argparse"),
        "n_layer": (6, "argparse"),
        "weight_decay": (0.1, "argparse"),
        "warmup": (100, "click"),
        "TrainConfig.lr": (1e-3, "dataclass"),
        "depth": (4, "dataclass"),
        "betas": ((0.9, 0.95), "dataclass"),
        "name": ("run", "dataclass"),
    }
    new = set_knobs(ARGPARSE, {"lr": 6e-4, "TrainConfig.lr": 2e-3, "betas": (0.8, 0.95)}, "train.py")
    assert _changed_lines(ARGPARSE, new) == sorted(
        [
            '-     parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")',
            '+     parser.add_argument("--lr", type=float, default=6e-4, help="peak learning rate")',
            "-     lr: float = 1e-3  # the same name as --lr: qualified",
            "+     lr: float = 2e-3  # the same name as --lr: qualified",
            "-     betas: tuple = field(default=(0.9, 0.95))",
            "+     betas: tuple = field(default=(0.8, 0.95))",
        ]
    )


def test_an_argparse_string_default_is_the_number_its_type_makes_it() -> None:
    """argparse converts a string default with ``type=``: ``default="3e-4"`` is the float 3e-4,
    searched as a number, and written back as a string again; a string that is no number stays a string."""
    source = (
        "import argparse\np = argparse.ArgumentParser()\n"
        "p.add_argument('--lr', type=float, default='3e-4')\np.add_argument('--bs', type=int, default='64')\n"
        "p.add_argument('--name', type=str, default='64')\n"
    )
    knobs = {k.name: (k.kind, k.value) for k in find_knobs(source, "train.py")}
    assert knobs == {"lr": ("float", 3e-4), "bs": ("int", 64), "name": ("str", "64")}
    assert "default='1e-3')" in set_knobs(source, {"lr": 1e-3}, "train.py")


def test_an_argparse_default_read_from_the_environment_is_its_fallback() -> None:
    """``default=os.getenv("LR", "3e-4")``: unset in a run, the fallback applies."""
    source = (
        "import argparse, os\np = argparse.ArgumentParser()\n"
        "p.add_argument('--lr', type=float, default=os.getenv('LR', '3e-4'))\n"
        "p.add_argument('--bs', type=int, default=int(os.environ.get('BS', 64)))\n"
    )
    assert {k.name: (k.kind, k.value) for k in find_knobs(source, "train.py")} == {
        "lr": ("float", 3e-4),
        "bs": ("int", 64),
    }
    assert "os.getenv('LR', '1e-3')" in set_knobs(source, {"lr": 1e-3}, "train.py")


def test_a_settings_field_read_from_the_environment_is_its_fallback() -> None:
    source = (
        "import os\nfrom dataclasses import dataclass\n\n\n@dataclass\nclass Config:\n"
        "    lr: float = float(os.environ.get('LR', '3e-4'))\n\n\nclass CFG:\n    wd = float(os.getenv('WD', 0.1))\n"
    )
    assert {k.name: (k.value, k.source) for k in find_knobs(source, "train.py")} == {
        "lr": (3e-4, "dataclass"),
        "wd": (0.1, "class"),
    }


def test_argparse_set_defaults_is_the_value_that_applies() -> None:
    """``parser.set_defaults(lr=1e-3)`` wins over ``add_argument("--lr", default=3e-4)``: its
    literal is the knob (with the option's spelling), also for an option declared without one."""
    source = (
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr', type=float, default=3e-4)\n"
        "p.add_argument('--batch-size', type=int)\np.add_argument('--wd', default=0.1)\n"
        "p.set_defaults(lr=1e-3, batch_size=64)\n"
    )
    knobs = {k.name: k for k in find_knobs(source, "train.py")}
    assert {n: (k.value, k.line) for n, k in knobs.items()} == {
        "lr": (1e-3, 6),
        "batch_size": (64, 6),
        "wd": (0.1, 5),
    }
    assert knobs["batch_size"].flags == ("--batch-size",)
    assert "p.set_defaults(lr=2e-3, batch_size=64)" in set_knobs(source, {"lr": 2e-3}, "train.py")


FACTORY = """\
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    hidden_sizes: list = field(default_factory=lambda: [64, 32])
    tags: list = field(default_factory=list)
    names: list = field(default_factory=lambda: ["a"])
"""


def test_a_dataclass_list_made_by_a_default_factory_is_a_knob() -> None:
    """``field(default_factory=lambda: [64, 32])``, the way a dataclass holds a list of widths,
    is a knob searched element by element; a factory of anything but numbers is not."""
    assert knob_values(FACTORY, "config.py") == {"hidden_sizes": [64, 32]}
    new = set_knobs(FACTORY, {"hidden_sizes": [128, 32]}, "config.py")
    assert "field(default_factory=lambda: [128, 32])" in new


YAML_TEXT = """\
# model and optimizer
model:
  n_layer: 6        # depth
  name: "small"
  bias: false
optim: {lr: 3.0e-4, wd: 0.1}
schedule:
  warmup_steps: 100
  decay: cosine
tags: [a, b]
note: |
  multi-line
"""

JSON_TEXT = """{
  "model": {"n_layer": 6, "name": "small", "bias": false},
  "lr": 0.0003,
  "layers": [1, 2, {"x": 3}],
  "empty": {}
}
"""

TOML_TEXT = """\
# training settings
lr = 3e-4  # peak
name = 'small'

[model]
n_layer = 6
bias = false   # no bias
"quoted key" = 1.5
layers = [1, 2]

[[runs]]
seed = 1
"""


def test_yaml_json_and_toml_scalars_by_key_path() -> None:
    assert knob_values(YAML_TEXT, "config.yaml") == {
        "model.n_layer": 6, "model.name": "small", "model.bias": False, "optim.lr": 3e-4,
        "optim.wd": 0.1, "schedule.warmup_steps": 100, "schedule.decay": "cosine",
    }  # fmt: skip
    assert knob_values(JSON_TEXT, "config.json") == {
        "model.n_layer": 6, "model.name": "small", "model.bias": False, "lr": 0.0003,
    }  # fmt: skip
    assert knob_values(TOML_TEXT, "config.toml") == {
        "lr": 3e-4, "name": "small", "model.n_layer": 6, "model.bias": False, "model.quoted key": 1.5,
        "model.layers": [1, 2],  # a list of numbers on one line; [a, b] and [1, 2, {"x": 3}] are not
    }  # fmt: skip
    assert {k.name: k.comment for k in find_knobs(YAML_TEXT, "c.yml")}["model.n_layer"] == "depth"


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        (
            "c.yaml",
            "optim:\n  betas: [0.9, 0.98]  # adam\n  f: {bs: [32, 64]}\n  block:\n    - relu\n",
            "optim:\n  betas: [0.8, 0.99]  # adam\n  f: {bs: [32, 128]}\n  block:\n    - relu\n",
        ),
        (
            "c.json",
            '{"optim": {"betas": [0.9,0.98], "f": {"bs": [32, 64]}}, "ml": [\n"a"]}',
            '{"optim": {"betas": [0.8,0.99], "f": {"bs": [32, 128]}}, "ml": [\n"a"]}',
        ),
        (
            "c.toml",
            "[optim]\nbetas = [0.9, 0.98] # adam\nf.bs = [32, 64]\nflags = [true]\n",
            "[optim]\nbetas = [0.8, 0.99] # adam\nf.bs = [32, 128]\nflags = [true]\n",
        ),
    ],
)
def test_a_list_of_numbers_in_a_config_file_is_a_knob(path: str, text: str, expected: str) -> None:
    """``betas: [0.9, 0.98]`` in YAML, JSON or TOML is a knob as it is in Python (Adam's betas,
    a list of widths), rewritten number by number; a list of anything but numbers is not (a YAML
    block list and a JSON list over several lines are knobs too: test_knob_yaml_lists.py)."""
    assert knob_values(text, path) == {"optim.betas": [0.9, 0.98], "optim.f.bs": [32, 64]}
    assert set_knobs(text, {"optim.betas": [0.8, 0.99], "optim.f.bs": [32, 128]}, path) == expected


def test_config_files_are_rewritten_only_where_the_value_is() -> None:
    new_yaml = set_knobs(
        YAML_TEXT, {"model.n_layer": 8, "optim.lr": 6e-4, "model.name": "big", "model.bias": True}, "c.yaml"
    )
    assert _changed_lines(YAML_TEXT, new_yaml) == sorted(
        [
            "-   n_layer: 6        # depth",
            '-   name: "small"',
            "-   bias: false",
            "+   n_layer: 8        # depth",
            '+   name: "big"',
            "+   bias: true",
            "- optim: {lr: 3.0e-4, wd: 0.1}",
            "+ optim: {lr: 6.0e-4, wd: 0.1}",
        ]
    )
    assert YAML().load(new_yaml)["optim"]["lr"] == 6e-4
    new_json = set_knobs(
        JSON_TEXT, {"model.n_layer": 12, "lr": 0.001, "model.name": 'a "quoted" name'}, "c.json"
    )
    assert json.loads(new_json)["model"] == {"n_layer": 12, "name": 'a "quoted" name', "bias": False}
    assert (
        new_json.replace("12", "6").replace("0.001", "0.0003").replace('"a \\"quoted\\" name"', '"small"')
        == JSON_TEXT
    )
    new_toml = set_knobs(TOML_TEXT, {"lr": 1e-3, "model.bias": True, "model.quoted key": 2.5}, "c.toml")
    assert _changed_lines(TOML_TEXT, new_toml) == sorted(
        [
            "- lr = 3e-4  # peak",
            "+ lr = 1e-3  # peak",
            "- bias = false   # no bias",
            '- "quoted key" = 1.5',
            "+ bias = true   # no bias",
            '+ "quoted key" = 2.5',
        ]
    )
    assert tomllib.loads(new_toml)["model"]["bias"] is True


def test_broken_config_files_are_one_line_errors() -> None:
    for text, path in (("a: [1, 2\n", "c.yaml"), ('{"a": }', "c.json"), ("a = \n", "c.toml")):
        with pytest.raises(UserError) as caught:
            find_knobs(text, path)
        assert str(caught.value).startswith(f"{path}: not valid") and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "budget"),
    [("max_iters", True), ("NUM_EPOCHS", True), ("total_tokens", True),
     ("MAX_SEQ_LEN", True), ("schedule.decay_iters", True), ("--max-steps", True), ("max_epochs", True),
     ("warmup_steps", False), ("WARMUP_ITERS", False), ("max_lr", False), ("max_grad_norm", False),
     ("TOTAL_BATCH_SIZE", False), ("learning_rate", False), ("n_layer", False), ("eval_interval", False),
     ("max_depth", False), ("max_leaf_nodes", False), ("max_features", False)],
)  # fmt: skip
def test_budget_names(name: str, budget: bool) -> None:
    assert is_budget_name(name) is budget


CHOICES = """\
import argparse
from dataclasses import dataclass
from typing import Literal

import click

parser = argparse.ArgumentParser()
parser.add_argument("--act", choices=["relu", "tanh", "sigmoid"], default="relu")
parser.add_argument("--width", type=int, choices=(64, 128, 256), default=128)
parser.add_argument("--norm", choices=NORMS, default="layer")  # computed: not readable
parser.add_argument("-l", "--lr", dest="learning_rate", type=float, default=3e-4)


@click.command()
@click.option("--pool", type=click.Choice(["max", "avg"]), default="max")
def main(pool): ...


@dataclass
class Config:
    optimizer: Literal["sgd", "adam"] = "adam"
    schedule: "typing.Literal['cosine', 'linear']" = "cosine"  # a quoted annotation
    only: Literal["one"] = "one"
    lr: float = 1e-3
"""


def test_declared_choices_and_option_spellings_travel_with_the_knob() -> None:
    knobs = {k.name: k for k in find_knobs(CHOICES)}
    assert knobs["act"].choices == ("relu", "tanh", "sigmoid")
    assert knobs["width"].choices == (64, 128, 256)
    assert knobs["pool"].choices == ("max", "avg")
    assert knobs["optimizer"].choices == ("sgd", "adam")
    assert knobs["only"].choices == ("one",)
    assert knobs["schedule"].choices == ("cosine", "linear")
    assert knobs["norm"].choices == () and knobs["lr"].choices == ()
    # the spellings of an option, so `-l 0.01` in a run command is known to set learning_rate
    assert knobs["learning_rate"].flags == ("-l", "--lr") and knobs["act"].flags == ("--act",)
    assert knobs["optimizer"].flags == ()


WRAPPED_CHOICES = """\
from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Union

OPTIMIZERS = ("adamw", "sgd", "lion")
Norm = Literal["layer", "rms"]
ACTIVATION = "gelu"  # MLP activation: relu, gelu or silu
SCHEDULE = "cosine"  # one of: cosine | linear | constant
NAME = "gpt"  # the name of the run, gpt or whatever you like
DATA = "data/owt"  # data/owt or data/shakespeare

parser.add_argument("--optim", default="adamw", choices=OPTIMIZERS)


@dataclass
class Config:
    pos: Optional[Literal["rope", "learned"]] = "rope"
    mix: Literal["a", "b"] | None = "b"
    norm: Norm = "rms"
    gate: Annotated[Literal["on", "off"], "the MLP gate"] = "on"
    act: Union[Literal["relu"], Literal["tanh"], None] = "relu"
"""


def test_choices_behind_optional_union_alias_module_names_and_comments() -> None:
    """Alternatives an author wrote down in other common shapes are read too; a comment that
    does not list plain words holding the knob's own value gives none."""
    knobs = {k.name: k for k in find_knobs(WRAPPED_CHOICES)}
    assert knobs["optim"].choices == ("adamw", "sgd", "lion")
    assert knobs["pos"].choices == ("rope", "learned")
    assert knobs["mix"].choices == ("a", "b")
    assert knobs["norm"].choices == ("layer", "rms")
    assert knobs["gate"].choices == ("on", "off")
    assert knobs["act"].choices == ("relu", "tanh")
    assert knobs["ACTIVATION"].choices == ("relu", "gelu", "silu")
    assert knobs["SCHEDULE"].choices == ("cosine", "linear", "constant")
    assert knobs["NAME"].choices == ()  # "whatever you like" is not a value
    assert knobs["DATA"].choices == ()  # paths are not a list of words
    yaml = "model:\n  act: relu  # relu, gelu or silu\n  name: gpt  # the model name\n"
    by_name = {k.name: k for k in find_knobs(yaml, "config.yaml")}
    assert by_name["model.act"].choices == ("relu", "gelu", "silu")
    assert by_name["model.name"].choices == ()


SETTINGS_SHAPES = """\
import os
from enum import Enum

LR = float(os.environ.get("LR", 3e-4))
WARMUP = os.getenv("WARMUP", 100)
BATCH = int(os.getenv("BATCH", "64"))  # environment values are strings
RUN_NAME = os.getenv("RUN_NAME", "base")
BUDGET_S = float(os.environ.get("NIGHTLAB_BUDGET_SECONDS", 300))  # the harness sets it
config = dict(batch_size=64, act="gelu", optim=dict(betas=(0.9, 0.95)))
HPARAMS = {"dropout": 0.1, "model": {"width": 256}, 3: 4}
SIZES = {"small": 64, "large": 128}  # a lookup table, not settings


class CFG:
    weight_decay = 0.1
    lr = 1e-3  # not LR: names are case-sensitive


class Color(Enum):
    RED = 1


class Net:
    hidden = 128
"""


def test_class_dict_and_environment_default_settings_are_knobs_and_can_be_set() -> None:
    """Kaggle's `class CFG`, wandb's `config = dict(...)` and environment defaults are where many
    scripts keep settings; tables, enums and other classes are not settings."""
    knobs = {k.name: k for k in find_knobs(SETTINGS_SHAPES)}
    assert {n: (k.value, k.source) for n, k in knobs.items()} == {
        "LR": (3e-4, "env"),
        "WARMUP": (100, "env"),
        "BATCH": (64, "env"),
        "RUN_NAME": ("base", "env"),
        "batch_size": (64, "dict"),
        "act": ("gelu", "dict"),
        "optim.betas": ((0.9, 0.95), "dict"),
        "dropout": (0.1, "dict"),
        "model.width": (256, "dict"),
        "weight_decay": (0.1, "class"),
        "lr": (1e-3, "class"),
    }
    assert knobs["BATCH"].kind == "int" and knobs["BATCH"].text == '"64"'
    out = set_knobs(SETTINGS_SHAPES, {"LR": 6e-4, "batch_size": 128, "model.width": 512, "weight_decay": 0.2})
    assert 'os.environ.get("LR", 6e-4)' in out and "dict(batch_size=128," in out
    assert 'int(os.getenv("BATCH", "32"))' in set_knobs(SETTINGS_SHAPES, {"BATCH": 32})
    assert '"model": {"width": 512}' in out and "weight_decay = 0.2" in out
    assert out.replace("6e-4", "3e-4").replace("128,", "64,").replace("512", "256").replace("0.2", "0.1") == (
        SETTINGS_SHAPES
    )
