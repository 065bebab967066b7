"""A jsonargparse parser built from signatures (``add_function_arguments``,
``add_class_arguments``, ``add_method_arguments``): the defaults it takes are knobs named as its
command line names them, what overrides them is left out, and an edit reaches the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nightlab.agents.search.settings import SearchSettings
from nightlab.agents.search.space import build_space
from nightlab.code.knobs import find_all_knobs, find_knobs, set_knobs

TRAIN = """\
from jsonargparse import ArgumentParser


class Optim:
    def __init__(self, lr: float = 0.01, momentum: float = 0.0):
        self.lr, self.momentum = lr, momentum

    def schedule(self, warmup: int = 10):
        pass


def train(optim: Optim, batch_size: int = 10, noise: float = 0.1, act: str = "relu"):
    print(f"lr {optim.lr} momentum {optim.momentum} batch {batch_size}")


if __name__ == "__main__":
    parser = ArgumentParser()
    parser.add_class_arguments(Optim, "optim")
    parser.add_method_arguments(Optim, "schedule", nested_key="sched")
    parser.add_function_arguments(train, "train", skip={"optim"})
    cfg = parser.parse_args()
    init = parser.instantiate_classes(cfg)
    train(init.optim, **cfg.train)
"""
# A stand-in for jsonargparse (not a dependency of nightlab): each added signature's defaults,
# overridden by `--key.name=value` flags, under its nested key.
STUB = """\
import ast
import inspect
import sys
from types import SimpleNamespace


class ArgumentParser:
    def __init__(self):
        self.groups = {}

    def add_class_arguments(self, cls, key):
        self._add(cls.__init__, key, cls)

    def add_method_arguments(self, cls, method, nested_key):
        self._add(getattr(cls, method), nested_key, None)

    def add_function_arguments(self, function, key, skip=()):
        self._add(function, key, None, skip)

    def _add(self, function, key, cls, skip=()):
        params = inspect.signature(function).parameters.values()
        values = {p.name: p.default for p in params if p.default is not p.empty and p.name not in skip}
        self.groups[key] = (cls, values)

    def parse_args(self):
        for word in sys.argv[1:]:
            name, value = word[2:].split("=", 1)
            key, param = name.split(".")
            self.groups[key][1][param] = ast.literal_eval(value)
        return SimpleNamespace(**{k: v for k, (_, v) in self.groups.items()})

    def instantiate_classes(self, cfg):
        return SimpleNamespace(**{k: c(**v) for k, (c, v) in self.groups.items() if c})
"""


def _knobs(source: str) -> dict[str, str]:
    return {k.name: f"{k.source} {' '.join(k.flags)}" for k in find_knobs(source, "train.py")}


def test_each_added_signature_gives_its_defaults_under_its_nested_key() -> None:
    assert _knobs(TRAIN) == {
        "optim.lr": "jsonargparse --optim.lr",
        "optim.momentum": "jsonargparse --optim.momentum",
        "sched.warmup": "jsonargparse --sched.warmup",
        "train.batch_size": "jsonargparse --train.batch_size",
        "train.noise": "jsonargparse --train.noise",
        "train.act": "jsonargparse --train.act",
    }  # `optim` is skipped; train(**cfg.train) passes the parser's values, which are these
    space = build_space({"train.py": TRAIN}, SearchSettings(), command="python train.py --optim.lr=0.1")
    assert "set by the run command" in space.pinned["optim.lr"]


def test_what_overrides_the_defaults_is_left_out() -> None:
    main = "    parser = ArgumentParser()\n"
    preset = TRAIN.replace(main, main + '    parser.set_defaults({"train.noise": 0.3}, act="gelu")\n')
    assert "train.noise" not in _knobs(preset) and "optim.lr" in _knobs(preset)
    assert "train.batch_size" not in _knobs(TRAIN.replace("**cfg.train)", "batch_size=4, **cfg.train)"))
    unread = TRAIN.replace(main, main + "    parser.set_defaults(overrides)\n")
    assert _knobs(unread) == {}  # which keys it sets cannot be read
    files = TRAIN.replace("ArgumentParser()", 'ArgumentParser(default_config_files=["train.yaml"])')
    assert _knobs(files) == {}  # the config file's values win, and they are not in the source
    assert _knobs(TRAIN.replace("from jsonargparse import", "from mylib import")) == {}
    command = {k.name for k in find_all_knobs({"train.py": TRAIN}, "python train.py --config exp.yaml").knobs}
    assert command == set()  # the file the command passes overrides what it sets


def test_an_edit_reaches_the_run(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(set_knobs(TRAIN, {"optim.momentum": 0.5, "train.batch_size": 32}))
    (tmp_path / "jsonargparse.py").write_text(STUB)
    run = subprocess.run(
        [sys.executable, "train.py", "--optim.lr=0.2"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.stdout.strip() == "lr 0.2 momentum 0.5 batch 32", run.stderr
