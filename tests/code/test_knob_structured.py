"""Hydra structured configs (dataclasses in a ConfigStore): fields named as Hydra places them,
only the selected group option gives knobs, the defaults list's choice is a knob, a switch lands
its values in the newly selected class, and the run sees the edit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nightlab.agents.search.agent import SearchAgent
from nightlab.agents.search.settings import SearchSettings
from nightlab.agents.search.space import build_space
from nightlab.code.knobs import apply_changes, find_all_knobs, plan_changes, set_all_knobs

TRAIN = """\
from dataclasses import dataclass, field
from typing import Any, List

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class AdamConfig:
    lr: float = 0.01
    betas: tuple = (0.9, 0.999)


@dataclass
class SGDConfig:
    lr: float = 0.05
    momentum: float = 0.5


@dataclass
class DataConfig:
    batch_size: int = 10


@dataclass
class TrainConfig:
    defaults: List[Any] = field(default_factory=lambda: [{"optim": "adam"}, "_self_"])
    optim: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    dropout: float = 0.1


cs = ConfigStore.instance()
cs.store(name="config", node=TrainConfig)
cs.store(group="optim", name="adam", node=AdamConfig)
cs.store(group="optim", name="sgd", node=SGDConfig)


@hydra.main(version_base=None, config_name="config")
def main(cfg: TrainConfig) -> None:
    print(f"{type(cfg.optim).__name__} lr {cfg.optim.lr} batch {cfg.data.batch_size} dropout {cfg.dropout}")


if __name__ == "__main__":
    main()
"""
# Stand-ins for hydra and omegaconf (not dependencies of nightlab): the stored primary, its
# defaults list's group options (the command's `group=option` first), `a.b=value` overrides.
STUBS = {
    "omegaconf.py": "MISSING = '???'\n",
    "hydra/core/__init__.py": "",
    "hydra/core/config_store.py": """\
class ConfigStore:
    nodes = {}

    @classmethod
    def instance(cls):
        return cls()

    def store(self, name, node, group=None):
        self.nodes[(group, name)] = node
""",
    "hydra/__init__.py": """\
import ast
import sys

from hydra.core.config_store import ConfigStore


def main(version_base, config_name):
    def wrap(function):
        def run():
            cfg = ConfigStore.nodes[(None, config_name)]()
            words = dict(w.split("=", 1) for w in sys.argv[1:])
            for entry in cfg.defaults:
                for group, option in (entry.items() if isinstance(entry, dict) else []):
                    setattr(cfg, group, ConfigStore.nodes[(group, words.pop(group, option))]())
            for key, value in words.items():
                *path, last = key.split(".")
                target = cfg
                for part in path:
                    target = getattr(target, part)
                setattr(target, last, ast.literal_eval(value))
            function(cfg)
        return run
    return wrap
""",
}


def _knobs(command: str = "python train.py") -> dict[str, str]:
    found = find_all_knobs({"train.py": TRAIN}, command)
    return {k.name: f"{k.source} {k.value}" for k in found.knobs}


def test_fields_are_named_where_hydra_places_them_and_only_the_selected_option_counts() -> None:
    assert _knobs() == {
        "optim.lr": "dataclass 0.01",
        "optim.betas": "dataclass (0.9, 0.999)",
        "data.batch_size": "dataclass 10",
        "optim": "hydra adam",
        "dropout": "dataclass 0.1",
    }  # SGDConfig, not selected, gives nothing
    found = find_all_knobs({"train.py": TRAIN})
    assert found.selected_by["optim.lr"] == (("optim", "adam"),)
    assert next(k for k in found.knobs if k.name == "optim").choices == ("adam", "sgd")
    chosen = _knobs("python train.py optim=sgd")
    assert chosen["optim.lr"] == "dataclass 0.05" and "optim.momentum" in chosen
    assert "optim.lr" not in _knobs("python train.py ~optim")
    space = build_space(
        {"train.py": TRAIN}, SearchSettings(), command="python train.py optim=sgd data.batch_size=4"
    )
    assert "set by the run command" in space.pinned["optim"]
    assert "set by the run command" in space.pinned["data.batch_size"]


def test_a_plain_dataclass_of_no_store_keeps_its_name() -> None:
    plain = TRAIN.replace('cs.store(name="config", node=TrainConfig)\n', "")
    assert "dropout" in _knobs() and "batch_size" not in _knobs()
    found = {k.name for k in find_all_knobs({"train.py": plain}).knobs}
    assert {"batch_size", "dropout"} <= found  # no primary stored: DataConfig is read as itself


def test_a_switch_edits_the_choice_and_the_new_options_class_and_the_run_sees_both(tmp_path: Path) -> None:
    changed = set_all_knobs({"train.py": TRAIN}, {"optim": "sgd", "optim.lr": 0.1, "data.batch_size": 32})
    after = changed["train.py"]
    assert '{"optim": "sgd"}' in after and "lr: float = 0.01" in after  # Adam's lr untouched
    assert "lr: float = 0.1\n    momentum" in after and "batch_size: int = 32" in after
    for path, text in {**STUBS, "train.py": after}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    run = subprocess.run(
        [sys.executable, "train.py", "dropout=0.2"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.stdout.strip() == "SGDConfig lr 0.1 batch 32 dropout 0.2", run.stderr


def test_the_search_agent_switches_the_group_and_records_the_new_classs_values() -> None:
    files = {"train.py": TRAIN}
    agent = SearchAgent(SearchSettings())
    space = build_space(files, SearchSettings())
    centre = space.current()
    only = agent._proposal(space, files, centre, {**centre, "optim": "sgd"}, "", {})
    assert only.meta["knobs"]["optim.lr"] == 0.05 and only.meta["knobs"]["optim.momentum"] == 0.5
    both = agent._proposal(space, files, centre, {**centre, "optim": "sgd", "optim.lr": 0.1}, "", {})
    after = apply_changes(files, plan_changes(files, {"optim": "sgd", "optim.lr": 0.1}))["train.py"]
    assert both.meta["changed"] == ["optim", "optim.lr"] and "lr: float = 0.1\n    momentum" in after
    assert space.found.origins()["optim=sgd:optim.lr"] == 0.05  # SGD's own first value


def test_dataclasses_in_one_file_stored_from_another() -> None:
    # config.py holds the dataclasses; train.py stores them, as a ConfigStore app split in two.
    config = TRAIN.split("\n\ncs = ConfigStore.instance()")[0] + "\n"
    stores = TRAIN.split("\n\ncs = ConfigStore.instance()")[1]
    main = "import hydra\nimport config\nfrom hydra.core.config_store import ConfigStore\n"
    main += "from config import TrainConfig as TC\n\ncs = ConfigStore.instance()" + stores
    main = main.replace("node=TrainConfig", "node=TC").replace("node=AdamConfig", "node=config.AdamConfig")
    main = main.replace("node=SGDConfig", "node=config.SGDConfig")
    files = {"config.py": config, "train.py": main}
    knobs = {k.name: k.path for k in find_all_knobs(files, "python train.py optim=sgd").knobs}
    assert knobs == {
        "optim.lr": "config.py",
        "optim.momentum": "config.py",
        "data.batch_size": "config.py",
        "optim": "config.py",
        "dropout": "config.py",
    }
    out = set_all_knobs(files, {"optim": "sgd", "optim.lr": 0.2})
    assert set(out) == {"config.py"} and '{"optim": "sgd"}' in out["config.py"]
    assert "lr: float = 0.2\n    momentum" in out["config.py"]
    # Read alone, config.py has no store: its dataclasses are plain ones, as before.
    assert {"lr", "SGDConfig.lr", "batch_size"} <= {
        k.name for k in find_all_knobs({"config.py": config}).knobs
    }
