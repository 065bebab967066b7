"""Knobs of absl flags, ml_collections config functions and transformers-style argument
dataclasses (``metadata={"choices": [...]}``); each rewritten with every other byte unchanged."""

from __future__ import annotations

import ast

from nightlab.code.knobs import find_knobs, set_knobs
from nightlab.code.knobs.model import Knob

ABSL = """\
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workdir", "Where metrics go.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("weight_decay", 5e-4, "L2 weight decay.")
flags.DEFINE_enum("lr_schedule", "cosine", ["constant", "cosine", "step"], "Schedule.")
flags.DEFINE_boolean("nesterov", False, "Nesterov momentum.")
flags.DEFINE_bool("ema", True, "EMA of weights.")
flags.DEFINE_float(name="lr", default=0.05, help="Learning rate.")
flags.DEFINE_enum("act", default="relu", enum_values=["relu", "gelu"], help="Activation.")
flags.DEFINE_list("layers", "64,64", "Widths.")


def main(argv):
    del argv
    print(FLAGS.lr)


if __name__ == "__main__":
    app.run(main)
"""

CONFIG = """\
\"\"\"Default hyperparameter configuration.\"\"\"
import ml_collections
from ml_collections import config_dict


def get_config():
    config = ml_collections.ConfigDict()
    config.learning_rate = 0.05
    config.momentum = 0.9
    config.num_epochs = 8

    config.model = ml_collections.ConfigDict()
    config.model.hidden = 64
    config.model.activation = "relu"  # relu, gelu or tanh
    config.optim = config_dict.ConfigDict({"beta2": 0.999, "sched": {"warmup": 0.1}})
    config.data = dict(batch_size=128)
    with config.unlocked():
        config.momentum = 0.95
    config.seed = compute()
    return config
"""

HF = """\
from dataclasses import dataclass, field


@dataclass
class TrainingArguments:
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Scheduler.", "choices": ["linear", "cosine"]})
    optim: str = field(default="adamw", metadata=dict(choices=["adamw", "sgd"]))
    report_to: str = field(default="none", metadata={"help": "Where logs go."})
"""


def _knobs(source: str, path: str = "train.py") -> dict[str, Knob]:
    return {k.name: k for k in find_knobs(source, path)}


def _only_literal_changed(source: str, name: str, value: object, new_text: str) -> None:
    """Set one knob; the result parses and differs from ``source`` only in that literal's text."""
    knob = _knobs(source)[name]
    out = set_knobs(source, {name: value}, "train.py")
    ast.parse(out)
    assert out == source[: knob.start] + new_text + source[knob.end :]
    assert _knobs(out)[name].value == value


def test_absl_flag_definitions_are_knobs_named_after_the_flag() -> None:
    knobs = _knobs(ABSL)
    assert list(knobs) == [
        "workdir", "batch_size", "weight_decay", "lr_schedule", "nesterov", "ema", "lr", "act",
    ]  # fmt: skip
    assert all(k.source == "absl" for k in knobs.values())
    assert knobs["lr_schedule"].choices == ("constant", "cosine", "step")
    assert knobs["act"].choices == ("relu", "gelu") and knobs["act"].value == "relu"
    assert knobs["nesterov"].flags == ("--nesterov", "--nonesterov")
    assert knobs["weight_decay"].flags == ("--weight_decay",) and knobs["weight_decay"].line == 6
    _only_literal_changed(ABSL, "weight_decay", 0.001, "1e-3")
    _only_literal_changed(ABSL, "lr", 0.1, "0.1")
    _only_literal_changed(ABSL, "lr_schedule", "step", '"step"')
    _only_literal_changed(ABSL, "nesterov", True, "True")


def test_an_ml_collections_config_function_gives_dotted_knobs() -> None:
    knobs = _knobs(CONFIG, "configs/default.py")
    assert list(knobs) == [
        "learning_rate", "num_epochs", "model.hidden", "model.activation", "optim.beta2",
        "optim.sched.warmup", "data.batch_size", "momentum",
    ]  # fmt: skip
    assert all(k.source == "ml_collections" for k in knobs.values())
    assert knobs["momentum"].value == 0.95 and knobs["momentum"].line == 18  # the last assignment runs
    assert knobs["model.activation"].choices == ("relu", "gelu", "tanh")  # from its comment
    _only_literal_changed(CONFIG, "model.hidden", 128, "128")
    _only_literal_changed(CONFIG, "optim.sched.warmup", 0.05, "0.05")
    _only_literal_changed(CONFIG, "learning_rate", 0.1, "0.1")


def test_a_config_dict_built_from_a_dict_literal_and_rebound_names() -> None:
    source = (
        "from ml_collections import ConfigDict\n\ncfg = ConfigDict({'lr': 1e-3, 'model': {'depth': 4}})\n"
    )
    knobs = _knobs(source)
    assert list(knobs) == ["lr", "model.depth"]
    _only_literal_changed(source, "model.depth", 6, "6")
    rebound = "def f():\n    c = ConfigDict()\n    c = {}\n    c.lr = 0.1\n"
    assert _knobs(rebound) == {}


def test_a_field_metadata_choices_list_is_the_knobs_choices() -> None:
    knobs = _knobs(HF)
    assert knobs["lr_scheduler_type"].choices == ("linear", "cosine")
    assert knobs["optim"].choices == ("adamw", "sgd")
    assert knobs["report_to"].choices == ()
    _only_literal_changed(HF, "lr_scheduler_type", "cosine", '"cosine"')


def test_a_click_boolean_flag_pair_is_one_knob_named_after_its_on_spelling() -> None:
    source = "import click\n\n\n@click.command()\n@click.option('--use-bn/--no-use-bn', default=False)\ndef f(use_bn):\n    pass\n"
    knobs = _knobs(source)
    assert list(knobs) == ["use_bn"]
    assert knobs["use_bn"].flags == ("--use-bn", "--no-use-bn")
    _only_literal_changed(source, "use_bn", True, "True")


def test_multi_number_flags_are_list_knobs_and_string_lists_are_left_out() -> None:
    source = ABSL.replace(
        'flags.DEFINE_list("layers", "64,64", "Widths.")',
        'flags.DEFINE_list("layers", ["64", "64"], "Widths.")\n'
        'flags.DEFINE_multi_string("augment", ["flip"], "Augmentations.")\n'
        'flags.DEFINE_multi_integer("hidden", [64, 32], "Width per layer.")\n'
        'flags.DEFINE_multi_float("dropouts", 0.1, "Dropout per layer.")',
    )
    knobs = {k.name: k for k in find_knobs(source, "train.py")}
    assert "layers" not in knobs and "augment" not in knobs  # strings the script parses
    hidden = knobs["hidden"]
    assert (hidden.kind, hidden.value, hidden.flags) == ("list", [64, 32], ("--hidden",))
    assert knobs["dropouts"].value == 0.1  # one value, as absl also takes it
    out = set_knobs(source, {"hidden": [128, 32]})
    assert out == source.replace("[64, 32]", "[128, 32]")
