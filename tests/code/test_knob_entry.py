"""Knobs in the defaults of the function a script runs (fire, typer, click, ``main()`` under
``__main__``, constructors), and only where those defaults apply; each rewritten in place."""

from __future__ import annotations

import ast

from nightlab.code.knobs import find_knobs, set_knobs
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
    assert list(knobs) == ["hidden", "dropout", "lr"]
    assert knobs["hidden"].source == "constructor"
    _only_literal_changed(source, "hidden", 128, "128")
    assert list(_knobs(source.replace("Net(100, layers=3)", "Net(100, 32)"))) == ["dropout", "layers", "lr"]
    library = source.split("\n\ndef main")[0] + "\n"
    assert _knobs(library) == {}  # a module with no entry: who builds Net, and how, is elsewhere


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
