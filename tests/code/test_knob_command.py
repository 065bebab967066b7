"""Knobs the run command sets on its command line: editing them changes nothing a run sees."""

from __future__ import annotations

from nightlab.code.knobs import find_all_knobs, find_knobs, set_by_command

ARGPARSE = """\
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--hidden", type=int, default=32)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("-w", "--wd", dest="weight_decay", type=float, default=0.0)
parser.add_argument("--compile", action="store_true", default=False)
parser.add_argument("--seed", type=int, default=0)
"""
NANOGPT_CONFIG = "learning_rate = 1e-3\nn_layer = 2\nn_embd = 32\ndropout = 0.0\n"
YAML = "optim:\n  lr: 0.01\nmodel:\n  width: 32\n"


def _set(command: str, source: str, path: str = "train.py") -> dict[str, str]:
    return set_by_command(command, find_knobs(source, path))


def test_long_options_with_or_without_equals_and_switches() -> None:
    assert _set("python train.py --lr=0.01 --hidden 64", ARGPARSE) == {
        "lr": "--lr=0.01",
        "hidden": "--hidden 64",
    }
    # dashes and underscores alike; a switch sets its knob with no value; a dest of another name
    assert _set("python train.py --batch_size=8 --compile --wd 0.1", ARGPARSE) == {
        "batch_size": "--batch_size=8",
        "compile": "--compile",
        "weight_decay": "--wd 0.1",
    }
    assert _set("python train.py --batch-size 8 -w 0.1", ARGPARSE) == {
        "batch_size": "--batch-size 8",
        "weight_decay": "-w 0.1",
    }


def test_nanogpt_flags_override_the_config_file() -> None:
    command = "python train.py config/small.py --learning_rate=0.001 --n_layer=2"
    assert _set(command, NANOGPT_CONFIG, "config/small.py") == {
        "learning_rate": "--learning_rate=0.001",
        "n_layer": "--n_layer=2",
    }


def test_what_is_not_an_override() -> None:
    # nightlab's own {flags:FILE} passes the searched knobs; interpreter options, positional
    # words, negative numbers and quoted text are not options of the script's knobs
    assert _set("python train.py {flags:flags.toml}", ARGPARSE) == {}
    assert _set("python -u train.py config/lr.py -1 'a --seedling'", ARGPARSE) == {}
    assert _set("python train.py --learning-rate-warmup 5", ARGPARSE) == {}  # not a prefix match
    assert _set("python train.py 'unbalanced --lr=1", ARGPARSE) == {"lr": "--lr=1"}  # still read


def test_dotted_names_and_hydra_overrides() -> None:
    # --lr names the last part of optim.lr; a bare override names the full path only
    assert _set("python train.py --lr=0.1", YAML, "config.yaml") == {"optim.lr": "--lr=0.1"}
    assert _set("python train.py model.width=64 lr=3", YAML, "config.yaml") == {
        "model.width": "model.width=64"
    }
    assert _set("python train.py ++optim.lr=0.1", YAML, "config.yaml") == {"optim.lr": "++optim.lr=0.1"}


def test_a_config_file_the_run_command_names_makes_the_scripts_same_settings_dead() -> None:
    """nanoGPT: ``python train.py config/small.py`` and ``exec(open('configurator.py').read())``
    set ``batch_size`` from the config file; train.py's own ``batch_size = 12`` never applies, so it
    is no knob (an experiment on it would measure only noise). Without such a command, it is."""
    files = {
        "train.py": "batch_size = 12\nlearning_rate = 6e-4\ndropout = 0.0\nexec(open('configurator.py').read())\n",
        "configurator.py": "import sys\nfor arg in sys.argv[1:]:\n    exec(open(arg).read())\n",
        "config/small.py": "batch_size = 64\nlearning_rate = 1e-3\n",
    }
    found = find_all_knobs(files, "python train.py config/small.py")
    assert {(k.path, k.name, k.value) for k in found.knobs} == {
        ("config/small.py", "batch_size", 64),
        ("config/small.py", "learning_rate", 1e-3),
        ("train.py", "dropout", 0.0),
    }
    assert "train.py:batch_size" in {k.name for k in find_all_knobs(files, "python train.py").knobs}
