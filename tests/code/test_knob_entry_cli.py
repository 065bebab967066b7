"""End to end with the real CLI: a fire script whose settings are ``main()``'s defaults, a fire
class (``__init__`` and the method the command calls) and an absl script with an ml_collections
config show their knobs in ``nightlab agent show-space``, and the search agent's experiment edits
one of those literals and nothing else (and the run sees it).

fire, absl and ml_collections are not nightlab's dependencies, so each workspace carries a frozen
stand-in of the few names its script uses: the knobs are read from the source alone, and the run
only has to turn the values into a metric.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from helpers import git, nightlab, script_workspace
from nightlab.code.knobs import find_all_knobs, find_knobs, set_knobs

FIRE_STUB = """\
import ast
import sys


def Fire(component=None):
    kwargs = {}
    for arg in sys.argv[1:]:
        key, _, value = arg[2:].partition("=")
        kwargs[key.replace("-", "_")] = ast.literal_eval(value)
    return component(**kwargs)
"""
FIRE_TRAIN = """\
import random
import fire


def main(lr=0.1, n_layer=4, epochs=3, seed=0,
         activation="relu"):
    loss = 1.0 + 10 * (lr - 0.3) ** 2 + abs(n_layer - 8) / 100 + random.Random(seed).gauss(0, 0.002)
    print(f"epochs {epochs}: val loss {loss:.4f}")


if __name__ == "__main__":
    fire.Fire(main)
"""

ABSL_FLAGS_STUB = """\
class _Flags:
    pass


FLAGS = _Flags()


def _define(name, default, *args, **kwargs):
    setattr(FLAGS, name, default)


DEFINE_float = DEFINE_integer = DEFINE_string = DEFINE_bool = DEFINE_boolean = DEFINE_enum = _define
"""
ABSL_APP_STUB = """\
import ast
import sys

from absl import flags


def run(main):
    for arg in sys.argv[1:]:
        key, _, value = arg[2:].partition("=")
        setattr(flags.FLAGS, key, ast.literal_eval(value))
    main(sys.argv[:1])
"""
ABSL_TRAIN = """\
import random

from absl import app, flags

from configs.default import get_config

FLAGS = flags.FLAGS
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_float("weight_decay", 5e-4, "L2 weight decay.")
flags.DEFINE_enum("lr_schedule", "cosine", ["constant", "cosine", "step"], "Schedule.")


def main(argv):
    del argv
    cfg = get_config()
    noise = random.Random(FLAGS.seed).gauss(0, 0.002)
    loss = 1.0 + 10 * (cfg.learning_rate - 0.3) ** 2 + abs(cfg.model.hidden - 128) / 1000 + noise
    print(f"epochs {cfg.num_epochs}: val loss {loss:.4f}")


if __name__ == "__main__":
    app.run(main)
"""
ABSL_CONFIG = """\
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.learning_rate = 0.1
    config.num_epochs = 8
    config.model = ml_collections.ConfigDict()
    config.model.hidden = 64
    return config
"""


def _workspace(root: Path, files: dict[str, str], editable: list[str]) -> Path:
    frozen = sorted(set(files) - set(editable))
    return script_workspace(root, files, editable, frozen, "python train.py --seed=$NIGHTLAB_SEED")


def _space(root: Path) -> dict[str, str]:
    space = nightlab("agent", "show-space", str(root))
    assert space.returncode == 0, space.stderr + space.stdout
    return {line.split()[0]: " ".join(line.split()) for line in space.stdout.splitlines() if line.strip()}


def _one_experiment_edits_only_knob_literals(root: Path, editable: list[str]) -> None:
    result = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "1")
    assert result.returncode == 0, result.stderr + result.stdout
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    rows = con.execute(
        "SELECT status, base_commit, [commit] FROM experiments WHERE kind = 'candidate'"
    ).fetchall()
    con.close()
    assert len(rows) == 1 and rows[0][0] == "ok", rows
    _, base, commit = rows[0]
    changed = git(root, "diff", "--name-only", base, commit).split()
    assert changed and set(changed) <= set(editable)
    for path in changed:
        old, new = git(root, "show", f"{base}:{path}"), git(root, "show", f"{commit}:{path}")
        before, after = (
            {k.name: k.value for k in find_knobs(old, path)},
            {k.name: k.value for k in find_knobs(new, path)},
        )
        moved = {name: value for name, value in after.items() if before[name] != value}
        assert moved and set(after) == set(before)
        assert set_knobs(old, moved, path) == new  # the experiment is exactly those literals
    assert git(root, "status", "--porcelain") == ""


def test_a_fire_script_is_searched_through_its_entry_defaults(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", {"train.py": FIRE_TRAIN, "fire.py": FIRE_STUB}, ["train.py"])
    rows = _space(root)
    assert "train.py:5 fire" in rows["lr"] and "log" in rows["lr"]
    assert "train.py:5 fire" in rows["n_layer"] and "pinned" not in rows["n_layer"]
    assert "the budget" in rows["epochs"]  # the same pins as any other knob
    assert "set by the run command" in rows["seed"]
    assert "train.py:6 fire" in rows["activation"]
    _one_experiment_edits_only_knob_literals(root, ["train.py"])


def test_an_absl_script_and_its_config_function_are_searched(tmp_path: Path) -> None:
    files = {
        "train.py": ABSL_TRAIN,
        "configs/__init__.py": "",
        "configs/default.py": ABSL_CONFIG,
        "absl/__init__.py": "",
        "absl/flags.py": ABSL_FLAGS_STUB,
        "absl/app.py": ABSL_APP_STUB,
        "ml_collections/__init__.py": "class ConfigDict:\n    pass\n",
    }
    editable = ["configs/default.py", "train.py"]
    root = _workspace(tmp_path / "ws", files, editable)
    rows = _space(root)
    assert "train.py:9 absl" in rows["weight_decay"] and "log" in rows["weight_decay"]
    assert (
        "{'constant', 'cosine', 'step'}" in rows["lr_schedule"]
        and "choices in train.py" in rows["lr_schedule"]
    )
    assert "set by the run command" in rows["seed"]
    assert "configs/default.py:6 ml_collections" in rows["learning_rate"]
    assert "configs/default.py:9 ml_collections" in rows["model.hidden"]
    assert "the budget" in rows["num_epochs"]
    _one_experiment_edits_only_knob_literals(root, editable)


FIRE_CLASS_TRAIN = """\
import random
import fire


class Trainer:
    def __init__(self, lr=0.1, seed=0):
        self.lr, self.seed = lr, seed

    def train(self, batch_size=16, epochs=3):
        noise = random.Random(self.seed).gauss(0, 0.002)
        loss = 1.0 + 10 * (self.lr - 0.3) ** 2 + abs(batch_size - 64) / 1000 + noise
        print(f"ran lr={self.lr} batch_size={batch_size}")
        print(f"val loss {loss:.4f}")


if __name__ == "__main__":
    fire.Fire(Trainer)
"""
# fire's class handling as far as the script uses it: flags to __init__ or the named method.
FIRE_CLASS_STUB = """\
import ast
import inspect
import sys


def Fire(component):
    words = sys.argv[1:]
    method = next(w for w in words if not w.startswith("--"))
    flags = {k: ast.literal_eval(v) for k, v in (w[2:].split("=", 1) for w in words if w.startswith("--"))}
    init = inspect.signature(component).parameters
    obj = component(**{k: v for k, v in flags.items() if k in init})
    getattr(obj, method)(**{k: v for k, v in flags.items() if k not in init})
"""


def test_a_fire_class_is_searched_and_the_run_sees_the_edit(tmp_path: Path) -> None:
    command = "python train.py train --seed=$NIGHTLAB_SEED"
    files = {"train.py": FIRE_CLASS_TRAIN, "fire.py": FIRE_CLASS_STUB}
    root = script_workspace(tmp_path / "ws", files, ["train.py"], ["fire.py"], command)
    rows = _space(root)
    assert "train.py:6 fire" in rows["lr"] and "train.py:9 fire" in rows["batch_size"]
    assert "the budget" in rows["epochs"] and "set by the run command" in rows["seed"]
    result = nightlab("run", str(root), "--plain", "--tag", "t", "-n", "1")
    assert result.returncode == 0, result.stderr + result.stdout
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    commit, log = con.execute(
        "SELECT e.[commit], r.log_tail FROM experiments e JOIN runs r ON r.experiment_id = e.id"
        " WHERE e.kind = 'candidate'"
    ).fetchone()
    con.close()
    ran = {
        k.name: k.value
        for k in find_all_knobs({"train.py": git(root, "show", f"{commit}:train.py")}, command).knobs
    }
    assert ran != {"lr": 0.1, "seed": 0, "batch_size": 16, "epochs": 3}  # the experiment moved one
    assert f"ran lr={ran['lr']} batch_size={ran['batch_size']}" in log
