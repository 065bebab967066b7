"""A class's defaults in one editable file, built in another: ``@dataclass class TrainConfig`` in
config.py and ``cfg = TrainConfig(noise=0.2)`` in train.py. Only the defaults no call passes are
knobs, and an edit of one reaches the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nightlab.code.knobs import find_all_knobs, set_all_knobs

CONFIG = """\
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class TrainConfig:
    kind: ClassVar[str] = "train"
    lr: float = 0.01
    momentum: float = 0.0
    noise: float = 0.1
    steps: int = field(default=100, init=False)
"""
MODEL = """\
class Optim:
    def __init__(self, lr=0.05, momentum=0.0, weight_decay=0.0):
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
"""
TRAIN = """\
import model
from config import TrainConfig


def main():
    cfg = TrainConfig(noise=0.2)
    opt = model.Optim(momentum=0.5)
    print(f"lr {cfg.lr} noise {cfg.noise} opt {opt.lr} {opt.momentum} {opt.weight_decay}")


if __name__ == "__main__":
    main()
"""


def _where(files: dict[str, str]) -> dict[str, str]:
    return {k.name: f"{k.path}:{k.source}" for k in find_all_knobs(files).knobs}


def test_a_default_another_file_passes_is_no_knob() -> None:
    knobs = _where({"config.py": CONFIG, "model.py": MODEL, "train.py": TRAIN})
    assert knobs == {
        "kind": "config.py:dataclass",  # a class constant, as before: no call passes it
        "lr": "config.py:dataclass",
        "momentum": "config.py:dataclass",
        "steps": "config.py:dataclass",  # init=False: no call can pass it
        "model.py:lr": "model.py:constructor",
        "weight_decay": "model.py:constructor",
        "noise": "train.py:call",  # the value that applies: cfg = TrainConfig(noise=0.2)
    }  # noise's default (TrainConfig(noise=0.2)) and Optim's momentum (Optim(momentum=0.5)) are dead
    # Read alone, config.py keeps every field and model.py, a library nothing builds, gives none.
    assert "noise" in _where({"config.py": CONFIG}) and _where({"model.py": MODEL}) == {}


def test_positional_and_unreadable_calls_through_any_import() -> None:
    positional = TRAIN.replace("TrainConfig(noise=0.2)", "TrainConfig(0.02, 0.9)")
    assert set(_where({"config.py": CONFIG, "train.py": positional})) == {"kind", "noise", "steps"}
    spread = TRAIN.replace("TrainConfig(noise=0.2)", "TrainConfig(**overrides)")
    assert set(_where({"config.py": CONFIG, "train.py": spread})) == set()  # which fields: unknown
    aliased = "import config as C\n\ncfg = C.TrainConfig(lr=0.1)\n"
    assert _where({"config.py": CONFIG, "run.py": aliased}) == {
        "kind": "config.py:dataclass", "momentum": "config.py:dataclass", "noise": "config.py:dataclass",
        "steps": "config.py:dataclass", "lr": "run.py:call",  # the lr the call passes applies
    }  # fmt: skip
    relative = "from .config import TrainConfig as TC\n\ncfg = TC(momentum=0.9)\n"
    found = _where({"pkg/config.py": CONFIG, "pkg/train.py": relative, "other/config.py": "lr = 1\n"})
    assert found["momentum"] == "pkg/train.py:call" and found["noise"] == "pkg/config.py:dataclass"
    module = "from . import config\n\ncfg = config.TrainConfig(noise=0.3)\n"
    assert _where({"pkg/config.py": CONFIG, "pkg/train.py": module})["noise"] == "pkg/train.py:call"
    # The same rule in the file itself: the argparse default is the knob, not the dead field.
    local = CONFIG + "import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr', default=0.3)\n"
    local += "cfg = TrainConfig(lr=p.parse_args().lr)\n"
    assert _where({"config.py": local})["lr"] == "config.py:argparse"


def test_a_constructor_another_file_subclasses_or_annotates() -> None:
    subclassed = TRAIN + "\n\nclass Big(model.Optim):\n    pass\n"
    assert not any(n.endswith("weight_decay") for n in _where({"model.py": MODEL, "train.py": subclassed}))
    annotated = "from model import Optim\n\n\ndef f(o: Optim) -> None:\n    pass\n\n\nf(Optim())\n"
    assert set(_where({"model.py": MODEL, "train.py": annotated})) == {"lr", "momentum", "weight_decay"}


def test_edits_round_trip_through_the_run(tmp_path: Path) -> None:
    files = {"config.py": CONFIG, "model.py": MODEL, "train.py": TRAIN}
    changed = set_all_knobs(files, {"lr": 0.02, "weight_decay": 0.1})
    assert set(changed) == {"config.py", "model.py"}
    assert changed["config.py"] == CONFIG.replace("lr: float = 0.01", "lr: float = 0.02")
    for path, text in {**files, **changed}.items():
        (tmp_path / path).write_text(text)
    out = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "lr 0.02 noise 0.2 opt 0.05 0.5 0.1"
