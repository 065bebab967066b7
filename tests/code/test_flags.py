"""``{flags:FILE}``: an editable file of settings becomes the command line the script accepts."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from nightlab.code.flags import expand_flags

ARGPARSE_SCRIPT = """\
import argparse, json
from argparse import BooleanOptionalAction
parser = argparse.ArgumentParser()
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--no-shuffle", action="store_true")
parser.add_argument("--amp", dest="use_amp", action="store_false")
parser.add_argument("--compile", action=BooleanOptionalAction, default=True)
parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=False)
print(json.dumps(vars(parser.parse_args())))
"""


def test_a_configurator_script_gets_key_value_literals(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("exec(open('configurator.py').read())\n")
    (tmp_path / "flags.toml").write_text("n_layer = 6\ncompile = false\n")
    command = expand_flags("python train.py {flags:flags.toml}", tmp_path)
    assert command == "python train.py --n_layer=6 --compile=False"


def test_an_argparse_script_gets_its_own_option_strings_and_switches(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(ARGPARSE_SCRIPT)
    (tmp_path / "flags.toml").write_text(
        "batch_size = 64\nlr = 0.003\nno_shuffle = true\nuse_amp = false\ncompile = false\nema = true\n"
    )
    command = expand_flags(f"{shlex.quote(sys.executable)} train.py {{flags:flags.toml}}", tmp_path)
    assert command.endswith("train.py --batch-size=64 --lr=0.003 --no-shuffle --amp --no-compile --ema")
    parsed = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr  # argparse refuses --no-shuffle=True
    assert json.loads(parsed.stdout) == {
        "batch_size": 64, "lr": 0.003, "no_shuffle": True, "use_amp": False, "compile": False, "ema": True
    }  # fmt: skip


def test_a_switch_left_at_its_default_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(ARGPARSE_SCRIPT)
    (tmp_path / "flags.yaml").write_text("no-shuffle: false\nuse_amp: true\n")
    command = expand_flags("python train.py {flags:flags.yaml} --seed 1", tmp_path)
    assert command == "python train.py  --seed 1"


TYPER_SCRIPT = """\
import json
from typing import Annotated
import typer

app = typer.Typer()


@app.command()
def train(
    grad_clip: float = typer.Option(1.0),
    batch_size: Annotated[int, typer.Option("--bs")] = 64,
    use_bn: bool = False,
    fast: Annotated[bool, typer.Option("--fast")] = False,
):
    print(json.dumps(dict(grad_clip=grad_clip, batch_size=batch_size, use_bn=use_bn, fast=fast)))


if __name__ == "__main__":
    app()
"""

CLICK_SCRIPT = """\
import json
import click


@click.command()
@click.option("--grad-clip", default=1.0)
@click.option("--use-bn/--no-use-bn", default=True)
@click.option("--amp", is_flag=True)
@click.option("--hidden-size", "width", default=64)
def train(grad_clip, use_bn, amp, width):
    print(json.dumps(dict(grad_clip=grad_clip, use_bn=use_bn, amp=amp, width=width)))


if __name__ == "__main__":
    train()
"""


def _ran(tmp_path: Path, script: str, flags: str) -> tuple[str, dict]:
    (tmp_path / "train.py").write_text(script)
    (tmp_path / "flags.toml").write_text(flags)
    command = expand_flags(f"{shlex.quote(sys.executable)} train.py {{flags:flags.toml}}", tmp_path)
    parsed = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr  # "No such option: --grad_clip" before
    return command.split("train.py", 1)[1].strip(), json.loads(parsed.stdout)


def test_a_typer_command_gets_its_dashed_options_and_boolean_pairs(tmp_path: Path) -> None:
    flags = "grad_clip = 0.5\nbatch_size = 32\nuse_bn = true\nfast = true\n"
    words, values = _ran(tmp_path, TYPER_SCRIPT, flags)
    assert words == "--grad-clip=0.5 --bs=32 --use-bn --fast"
    assert values == {"grad_clip": 0.5, "batch_size": 32, "use_bn": True, "fast": True}
    words, values = _ran(tmp_path, TYPER_SCRIPT, "use_bn = false\nfast = false\n")
    assert words == "--no-use-bn"
    assert values["use_bn"] is False and values["fast"] is False


def test_a_click_command_gets_its_declared_options_and_switches(tmp_path: Path) -> None:
    flags = "grad_clip = 0.5\nuse_bn = false\namp = true\nwidth = 32\n"
    words, values = _ran(tmp_path, CLICK_SCRIPT, flags)
    assert words == "--grad-clip=0.5 --no-use-bn --amp --hidden-size=32"
    assert values == {"grad_clip": 0.5, "use_bn": False, "amp": True, "width": 32}


def test_a_tyro_function_gets_dashed_options_and_boolean_pairs(tmp_path: Path) -> None:
    """tyro spells ``hidden_dim`` as ``--hidden-dim`` and a boolean as ``--x``/``--no-x``, as
    typer does (tyro is not installed here: the words are checked, not a run)."""
    (tmp_path / "train.py").write_text(
        "import tyro\n\n\ndef train(hidden_dim: int = 64, use_bn: bool = True) -> None:\n    pass\n\n\n"
        'if __name__ == "__main__":\n    tyro.cli(train)\n'
    )
    (tmp_path / "flags.toml").write_text("hidden_dim = 128\nuse_bn = false\n")
    command = expand_flags("python train.py {flags:flags.toml}", tmp_path)
    assert command == "python train.py --hidden-dim=128 --no-use-bn"
