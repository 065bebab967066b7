"""Knobs in the defaults of the function a script runs (fire, typer, click, ``main()`` under
``__main__``, constructors), and only where those defaults apply; each rewritten in place."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from nightlab.agents.search.settings import SearchSettings
from nightlab.agents.search.space import build_space
from nightlab.code.knobs import find_all_knobs, find_knobs, set_all_knobs, set_knobs
from nightlab.code.knobs.model import Knob

FIRE = """\
import fire


def make_data(n=2048, seed=0):
    return n


def main(lr=3e-3, batch_size=64, hidden=32,
         epochs=20, activation="relu"):
    make_data()


if __name__ == "__main__":
    fire.Fire(main)
"""

TYPER = """\
from typing import Annotated, Literal
import typer

app = typer.Typer()


@app.command()
def train(
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 2e-3,
    batch_size: Annotated[int, typer.Option("--bs")] = 64,
    width: int = typer.Option(48, "--width", "-w", help="hidden width"),
    grad_clip: float = typer.Option(default=1.0),
    act: Literal["relu", "gelu"] = "relu",
    use_bn: bool = False,
    data: str = typer.Argument("data.bin"),
    out: str = typer.Option(...),
):
    pass


if __name__ == "__main__":
    app()
"""

MAIN = """\
import sys


def helper(x, scale=2.0):
    return x * scale


def main(lr=3e-3, depth=4, *, dropout=0.1, warmup=100):
    helper(1.0)


def other(momentum=0.9):
    pass


if __name__ == "__main__":
    sys.exit(main(warmup=10))
"""


def _knobs(source: str) -> dict[str, Knob]:
    return {k.name: k for k in find_knobs(source, "train.py")}


def _only_literal_changed(source: str, name: str, value: object, new_text: str) -> str:
    """Set one knob; the result parses and differs from ``source`` only in that literal's text."""
    knob = _knobs(source)[name]
    out = set_knobs(source, {name: value}, "train.py")
    ast.parse(out)
    assert out == source[: knob.start] + new_text + source[knob.end :]
    assert _knobs(out)[name].value == value
    return out


def test_the_defaults_of_the_function_fire_runs_are_knobs_and_a_helpers_are_not() -> None:
    knobs = _knobs(FIRE)
    assert list(knobs) == ["lr", "batch_size", "hidden", "epochs", "activation"]
    assert all(k.source == "fire" for k in knobs.values())
    assert knobs["lr"].flags == ("--lr",) and knobs["lr"].line == 8 and knobs["epochs"].line == 9
    _only_literal_changed(FIRE, "lr", 0.006, "6e-3")
    _only_literal_changed(FIRE, "activation", "gelu", '"gelu"')


def test_fire_without_a_component_runs_the_one_function_nothing_else_calls() -> None:
    one = FIRE.replace("fire.Fire(main)", "fire.Fire()")
    assert list(_knobs(one)) == ["lr", "batch_size", "hidden", "epochs", "activation"]
    two = one + "\n\ndef evaluate(batch_size=256):\n    pass\n"
    assert _knobs(two) == {}  # two commands: which one the run picks is on its command line


def test_typer_parameters_read_their_default_wherever_it_is_written() -> None:
    knobs = _knobs(TYPER)
    assert list(knobs) == ["lr", "batch_size", "width", "grad_clip", "act", "use_bn", "data"]
    assert all(k.source == "typer" for k in knobs.values())
    assert knobs["batch_size"].flags == ("--bs",)
    assert knobs["width"].flags == ("--width", "-w") and knobs["width"].text == "48"
    assert knobs["grad_clip"].flags == ("--grad-clip",) and knobs["grad_clip"].value == 1.0
    assert knobs["use_bn"].flags == ("--use-bn", "--no-use-bn")
    assert knobs["act"].choices == ("relu", "gelu")
    assert knobs["data"].flags == ()  # a positional argument has no option to spell
    _only_literal_changed(TYPER, "width", 96, "96")
    _only_literal_changed(TYPER, "lr", 0.001, "1e-3")
    _only_literal_changed(TYPER, "grad_clip", 0.5, "0.5")


def test_typer_run_of_a_plain_function() -> None:
    source = "import typer\n\n\ndef main(lr: float = 0.1, depth: int = 4):\n    pass\n\n\ntyper.run(main)\n"
    knobs = _knobs(source)
    assert list(knobs) == ["lr", "depth"] and knobs["lr"].source == "typer"
    _only_literal_changed(source, "depth", 8, "8")


def test_a_click_command_gives_each_option_once_and_its_undeclared_defaults() -> None:
    source = """\
import click


@click.command()
@click.option("--lr", default=1e-3, type=float)
@click.option("--use-bn/--no-use-bn", default=False)
@click.option("--batch-size", "bs", default=32)
@click.argument("data")
def train(lr, use_bn, bs, data, hidden=64):
    pass


if __name__ == "__main__":
    train()
"""
    knobs = _knobs(source)
    assert list(knobs) == ["lr", "use_bn", "bs", "hidden"]
    assert [knobs[n].source for n in knobs] == ["click", "click", "click", "click"]
    assert knobs["use_bn"].flags == ("--use-bn", "--no-use-bn")
    assert knobs["lr"].text == "1e-3"  # the option's default, not a second knob for the parameter
    _only_literal_changed(source, "use_bn", True, "True")
    _only_literal_changed(source, "hidden", 128, "128")


def test_main_called_under_the_main_guard_leaves_out_what_the_call_passes() -> None:
    knobs = _knobs(MAIN)
    assert list(knobs) == ["lr", "depth", "dropout"]  # warmup is passed; helper and other not run
    assert all(k.source == "main" and k.flags == () for k in knobs.values())
    _only_literal_changed(MAIN, "dropout", 0.2, "0.2")


def test_a_function_whose_arguments_cannot_be_read_gives_no_knobs() -> None:
    for call in ("main(**vars(args))", "main(*sys.argv[1:])", "main(1, 2, 3)"):
        assert _knobs(MAIN.replace("sys.exit(main(warmup=10))", call)) == {}, call
    assert set(_knobs(MAIN.replace("sys.exit(main(warmup=10))", "main(0.1, 4)"))) == {"dropout", "warmup"}
    spawned = MAIN.replace("sys.exit(main(warmup=10))", "main()\n    mp.spawn(main, nprocs=2)")
    assert _knobs(spawned) == {}  # named other than in a call: what it gets cannot be read
    decorated = MAIN.replace("def main(", "@hydra.main(config_path='conf')\ndef main(")
    assert _knobs(decorated.replace("sys.exit(main(warmup=10))", "main()")) == {}


def test_a_function_never_run_gives_no_knobs() -> None:
    assert _knobs(MAIN.replace('if __name__ == "__main__":\n    sys.exit(main(warmup=10))\n', "")) == {}


def test_constructor_defaults_where_the_file_builds_the_class_without_them() -> None:
    source = """\
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, vocab, hidden=64, dropout=0.0, layers=2):
        super().__init__()


def main(lr=1e-3):
    model = Net(100, layers=3)


if __name__ == "__main__":
    main()
"""
    knobs = _knobs(source)
    assert list(knobs) == ["hidden", "dropout", "lr", "layers"]  # layers: the 3 the call passes
    assert knobs["hidden"].source == "constructor" and knobs["layers"].source == "call"
    _only_literal_changed(source, "hidden", 128, "128")
    assert list(_knobs(source.replace("Net(100, layers=3)", "Net(100, 32)"))) == ["dropout", "layers", "lr"]
    library = source.split("\n\ndef main")[0] + "\n"
    assert _knobs(library) == {}  # a module with no entry: who builds Net, and how, is elsewhere


def test_a_class_built_under_the_main_guard_gives_its_defaults_the_call_leaves_out() -> None:
    """A Lightning script builds its module under ``if __name__ == "__main__":`` with no entry
    function; ``save_hyperparameters()`` keeps the ``__init__`` defaults, which then apply."""
    source = """\
import lightning as L


class LitModel(L.LightningModule):
    def __init__(self, lr: float = 1e-3, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.save_hyperparameters()


if __name__ == "__main__":
    model = LitModel(hidden=128)
    L.Trainer(max_epochs=3).fit(model)
"""
    knobs = _knobs(source)
    assert {n: (k.value, k.source) for n, k in knobs.items() if n != "Trainer.max_epochs"} == {
        "lr": (1e-3, "constructor"),
        "dropout": (0.1, "constructor"),
        "hidden": (128, "call"),  # the value passed, not the dead default 64
    }
    _only_literal_changed(source, "lr", 3e-4, "3e-4")


def test_a_name_taken_by_another_knob_is_qualified_with_the_function() -> None:
    source = (
        "LR = 1e-3\nlr = 0.1\n\n\ndef main(lr=3e-3):\n    pass\n\n\nif __name__ == '__main__':\n    main()\n"
    )
    knobs = _knobs(source)
    assert list(knobs) == ["LR", "lr", "main.lr"]
    _only_literal_changed(source, "main.lr", 0.01, "1e-2")


def test_a_class_the_entry_function_builds_counts_even_when_the_entry_has_no_defaults() -> None:
    source = "class Net:\n    def __init__(self, hidden=64):\n        pass\n\n\ndef main():\n    Net()\n\n\nmain()\n"
    assert list(_knobs(source)) == ["hidden"]  # a bare main() ends the script: it runs
    guarded = source.replace("\nmain()\n", '\nif __name__ == "__main__":\n    main()\n')
    assert list(_knobs(guarded)) == ["hidden"]
    assert _knobs(source.replace("\nmain()\n", "\n")) == {}  # nothing runs main: a library


def test_fire_component_by_keyword_and_a_subclassed_class() -> None:
    assert list(_knobs(FIRE.replace("fire.Fire(main)", "fire.Fire(component=main)")))[:1] == ["lr"]
    source = (
        "class Net:\n    def __init__(self, hidden=64):\n        pass\n\n\n"
        "class Big(Net):\n    def __init__(self):\n        super().__init__(hidden=512)\n\n\n"
        'def main():\n    Net()\n\n\nif __name__ == "__main__":\n    main()\n'
    )
    assert list(_knobs(source.replace("class Big(Net)", "class Big"))) == ["hidden"]
    assert _knobs(source) == {}  # a subclass may pass the value on: left out


FIRE_CLASS = """\
import fire


class Trainer:
    def __init__(self, lr=0.01, momentum=0.0, seed=0):
        self.lr, self.momentum = lr, momentum

    def train(self, epochs=5, batch_size=10):
        print(f"lr {self.lr} momentum {self.momentum} batch {batch_size}")

    def evaluate(self, split="val"):
        pass


if __name__ == "__main__":
    fire.Fire(Trainer)
"""
# A stand-in for fire (not a dependency of nightlab): flags go to __init__ or the method by name.
FIRE_CLASS_STUB = """\
import ast
import inspect
import sys


def Fire(component):
    words = sys.argv[1:]
    method = next((w for w in words if not w.startswith("--")), None)
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
    init = inspect.signature(component).parameters
    obj = component(**{k: ast.literal_eval(v) for k, v in flags.items() if k in init})
    if method:
        getattr(obj, method)(**{k: ast.literal_eval(v) for k, v in flags.items() if k not in init})
"""


def test_fire_on_a_class_reads_init_and_the_method_the_command_calls(tmp_path: Path) -> None:
    def knobs(command: str, source: str = FIRE_CLASS) -> dict[str, Knob]:
        return {k.name: k for k in find_all_knobs({"train.py": source}, command).knobs}

    found = knobs("python train.py train --seed=$NIGHTLAB_SEED")
    assert list(found) == ["lr", "momentum", "seed", "epochs", "batch_size"]
    assert {k.source for k in found.values()} == {"fire"} and found["batch_size"].flags == ("--batch_size",)
    assert list(knobs("python train.py --lr=0.1 evaluate")) == ["lr", "momentum", "seed", "split"]
    assert list(knobs("python other.py train")) == ["lr", "momentum", "seed"]  # no method of this file
    assert list(_knobs(FIRE_CLASS)) == ["lr", "momentum", "seed"]  # read alone: the command is unknown
    built = FIRE_CLASS.replace("    fire.Fire(Trainer)", "    Trainer(momentum=0.9)\n    fire.Fire(Trainer)")
    assert "momentum" not in knobs("python train.py train", built)  # a call in the file passes it
    instance = FIRE_CLASS.replace("fire.Fire(Trainer)", "fire.Fire(Trainer(seed=1))")
    # the instance's seed=1 is the value that applies (the default is dead): that literal is the knob
    assert list(knobs("python train.py train", instance)) == [
        "lr",
        "momentum",
        "epochs",
        "batch_size",
        "seed",
    ]
    assert knobs("python train.py train", instance)["seed"].source == "call"
    command = "python train.py train"
    changed = set_all_knobs({"train.py": FIRE_CLASS}, {"lr": 0.05, "batch_size": 32}, command)
    (tmp_path / "train.py").write_text(changed["train.py"])
    (tmp_path / "fire.py").write_text(FIRE_CLASS_STUB)
    run = subprocess.run([sys.executable, "train.py", "train"], cwd=tmp_path, capture_output=True, text=True)
    assert run.stdout.strip() == "lr 0.05 momentum 0.0 batch 32", run.stderr


JSONARGPARSE_CLI = """\
from jsonargparse import CLI


def main(lr: float = 0.01, momentum: float = 0.0, epochs: int = 5):
    print(f"lr {lr} momentum {momentum}")


if __name__ == "__main__":
    CLI(main)
"""
# A stand-in for jsonargparse's CLI (not a dependency of nightlab): `--key value` into keywords.
JSONARGPARSE_STUB = """\
import ast
import sys


def CLI(component):
    words = sys.argv[1:]
    component(**{k[2:]: ast.literal_eval(v) for k, v in zip(words[::2], words[1::2])})


auto_cli = CLI
"""


def test_jsonargparse_cli_and_auto_cli_read_the_function_defaults(tmp_path: Path) -> None:
    for source in (JSONARGPARSE_CLI, JSONARGPARSE_CLI.replace("CLI", "auto_cli")):
        knobs = _knobs(source)
        assert list(knobs) == ["lr", "momentum", "epochs"]
        assert knobs["lr"].source == "jsonargparse" and knobs["lr"].flags == ("--lr",)
    files = JSONARGPARSE_CLI.replace(
        "CLI(main)", 'CLI(main, parser_kwargs={"default_config_files": ["c.yaml"]})'
    )
    assert _knobs(files) == {}  # c.yaml's values win over main's defaults, and are not in the source
    assert find_all_knobs({"train.py": JSONARGPARSE_CLI}, "python train.py --config=c.yaml").knobs == []
    space = build_space({"train.py": JSONARGPARSE_CLI}, SearchSettings(), command="python train.py --lr 0.1")
    assert "set by the run command" in space.pinned["lr"]
    (tmp_path / "train.py").write_text(set_knobs(JSONARGPARSE_CLI, {"momentum": 0.5}))
    (tmp_path / "jsonargparse.py").write_text(JSONARGPARSE_STUB)
    run = subprocess.run(
        [sys.executable, "train.py", "--lr", "0.1"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.stdout.strip() == "lr 0.1 momentum 0.5", run.stderr


def test_lightning_cli_reads_the_module_and_data_module_defaults() -> None:
    """``LightningCLI(Model, Data)`` makes each ``__init__`` default an option, ``--model.lr``
    and ``--data.batch_size``; with a ``--config`` file on the command, what applies is unread."""
    source = """\
import lightning as L
from lightning.pytorch.cli import LightningCLI


class Model(L.LightningModule):
    def __init__(self, lr: float = 1e-3, hidden: int = 64):
        super().__init__()


class Data(L.LightningDataModule):
    def __init__(self, batch_size: int = 32):
        super().__init__()


if __name__ == "__main__":
    LightningCLI(Model, datamodule_class=Data)
"""
    knobs = _knobs(source)
    assert {n: (k.value, k.flags) for n, k in knobs.items()} == {
        "model.lr": (1e-3, ("--model.lr",)),
        "model.hidden": (64, ("--model.hidden",)),
        "data.batch_size": (32, ("--data.batch_size",)),
    }
    _only_literal_changed(source, "model.lr", 3e-4, "3e-4")
    assert {k.name for k in find_knobs(source, command="python train.py fit --config c.yaml")} == set()


def test_tyro_cli_of_a_function_and_of_a_dataclass_with_a_default_instance() -> None:
    """``tyro.cli(train)`` makes the function's defaults options (``--hidden-dim``);
    ``tyro.cli(Config, default=Config(batch_size=64))`` runs with the instance's values, so its
    literals are the knobs and the fields it passes are not."""
    function = (
        "import tyro\n\n\ndef train(lr: float = 3e-4, hidden_dim: int = 64) -> None:\n    pass\n\n\n"
        'if __name__ == "__main__":\n    tyro.cli(train)\n'
    )
    knobs = _knobs(function)
    assert {n: (k.value, k.flags) for n, k in knobs.items()} == {
        "lr": (3e-4, ("--lr",)),
        "hidden_dim": (64, ("--hidden-dim",)),
    }
    dataclass = (
        "from dataclasses import dataclass\nimport tyro\n\n\n@dataclass\nclass Config:\n"
        "    lr: float = 3e-4\n    batch_size: int = 32\n\n\n"
        'if __name__ == "__main__":\n    cfg = tyro.cli(Config, default=Config(batch_size=64))\n'
    )
    assert {n: k.value for n, k in _knobs(dataclass).items()} == {"lr": 3e-4, "batch_size": 64}
