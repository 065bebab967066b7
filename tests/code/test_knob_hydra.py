"""Hydra config trees: group choices are knobs, only the selected option file gives knobs (named
by the package Hydra places it at), edits land in the file the run loads; plain YAML unchanged;
a name two files give is qualified, not dropped. In process, through the search agent, and end
to end through the real CLI."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from helpers import nightlab, script_workspace
from nightlab.agents.search.agent import SearchAgent
from nightlab.agents.search.settings import SearchSettings
from nightlab.agents.search.space import build_space
from nightlab.code.knobs import find_all_knobs, find_knobs, plan_changes, set_all_knobs
from nightlab.errors import UserError
from nightlab.types import Context, Direction, HistoryEntry

# The new-user pass's layout (/tmp/np12/hydra_app), its lr written so PyYAML reads a float.
APP = {
    "conf/config.yaml": (
        "defaults:\n  - optim: adam\n  - model: mlp\n  - _self_\n\nseed: 0\n"
        "trainer:\n  max_epochs: 6\n  batch_size: 64\n  grad_clip: 1.0\n"
    ),
    "conf/optim/adam.yaml": "name: adam\nlr: 1.0e-3\nbetas: [0.9, 0.999]\nweight_decay: 0.0\n",
    "conf/optim/sgd.yaml": "name: sgd\nlr: 0.05\nmomentum: 0.9\nweight_decay: 0.0\n",
    "conf/model/mlp.yaml": "hidden_dim: 64\nnum_layers: 2\ndropout: 0.0\n",
}


def knobs_of(files: dict[str, str], command: str = "") -> dict:
    return {k.name: k for k in find_all_knobs(files, command).knobs}


def test_a_group_choice_is_a_knob_and_only_the_selected_file_gives_knobs() -> None:
    knobs = knobs_of(APP)
    optim = knobs["optim"]
    assert (optim.value, optim.choices, optim.path, optim.line) == (
        "adam",
        ("adam", "sgd"),
        "conf/config.yaml",
        2,
    )
    assert knobs["model"].choices == ("mlp",)
    assert {n: k.path for n, k in knobs.items() if n.startswith("optim.")} == {
        "optim.name": "conf/optim/adam.yaml",
        "optim.lr": "conf/optim/adam.yaml",
        "optim.betas": "conf/optim/adam.yaml",
        "optim.weight_decay": "conf/optim/adam.yaml",
    }  # sgd.yaml, not selected, gives nothing: no momentum, no second lr
    assert knobs["model.hidden_dim"].path == "conf/model/mlp.yaml" and knobs["trainer.batch_size"].value == 64
    assert not any(k.path == "conf/optim/sgd.yaml" for k in knobs.values())
    assert find_all_knobs(APP).selected_by["optim.lr"] == (("optim", "adam"),)


def test_switching_the_group_and_its_lr_at_once_edits_the_newly_selected_file() -> None:
    out = set_all_knobs(APP, {"optim": "sgd", "optim.lr": 0.1})
    assert set(out) == {"conf/config.yaml", "conf/optim/sgd.yaml"}  # adam.yaml, unloaded, untouched
    assert out["conf/config.yaml"] == APP["conf/config.yaml"].replace("optim: adam", "optim: sgd")
    assert out["conf/optim/sgd.yaml"] == APP["conf/optim/sgd.yaml"].replace("lr: 0.05", "lr: 0.1")
    # On the switched code, the same name is sgd.yaml's lr, and an edit goes there.
    switched = {**APP, **out}
    knobs = knobs_of(switched)
    assert (knobs["optim.lr"].path, knobs["optim.lr"].value) == ("conf/optim/sgd.yaml", 0.1)
    assert knobs["optim.momentum"].value == 0.9 and "optim.betas" not in knobs
    assert set_all_knobs(switched, {"optim.lr": 0.02}) == {
        "conf/optim/sgd.yaml": APP["conf/optim/sgd.yaml"].replace("lr: 0.05", "lr: 0.02")
    }
    # A value the new option file has no knob for is left out; an option without a file is refused.
    changes = plan_changes(switched, {"optim": "adam", "optim.momentum": 0.5})
    assert [(c.knob.name, c.knob.path, c.text) for c in changes] == [("optim", "conf/config.yaml", "adam")]
    with pytest.raises(UserError, match="options adam, sgd"):
        set_all_knobs(APP, {"optim": "rmsprop"})


def test_nested_groups_packages_and_defaults_list_forms() -> None:
    files = {
        "conf/train.yaml": (
            "# the primary config\n"
            "defaults: [model: cnn, model/encoder: small, data@train_data: cifar, /aug: flip,"
            " optional sched: missing, opt: '???', _self_]\n"
            "lr: 0.1\n"
            "hydra:\n  job:\n    chdir: true\n"
        ),
        "conf/model/cnn.yaml": "defaults:\n  - head: linear\n  - _self_\nchannels: 32\nact: ${oc.env:ACT}\n",
        "conf/model/vit.yaml": "patch: 16\n",
        "conf/model/head/linear.yaml": "bias: true\n",
        "conf/model/head/mlp.yaml": "hidden: 128\n",
        "conf/model/encoder/small.yaml": "width: 64\n",
        "conf/model/encoder/big.yaml": "width: 512\n",
        "conf/data/cifar.yaml": "batch: 128\nroot: ???\n",
        "conf/aug/flip.yaml": "# @package _global_\np_flip: 0.5\n",
        "conf/opt/sgd.yaml": "lr: 0.2\n",
    }
    found = find_all_knobs(files)
    knobs = {k.name: k for k in found.knobs}
    assert knobs["model"].choices == ("cnn", "vit") and knobs["model/encoder"].choices == ("big", "small")
    assert knobs["model/head"].path == "conf/model/cnn.yaml"  # a group of the selected cnn.yaml
    assert knobs["data@train_data"].value == "cifar" and knobs["train_data.batch"].value == 128
    assert knobs["model.channels"].value == 32 and knobs["model.encoder.width"].value == 64
    assert knobs["model.head.bias"].value is True and knobs["p_flip"].value == 0.5  # @package _global_
    assert found.selected_by["model.head.bias"] == (("model", "cnn"), ("model/head", "linear"))
    for absent in ("model.patch", "model.head.hidden", "opt", "opt.lr", "sched", "train_data.root"):
        assert absent not in knobs  # unselected, mandatory (???) or missing
    assert "model.act" not in knobs and not any(n.startswith("hydra") for n in knobs)
    assert knobs["lr"].value == 0.1
    # Switching an outer group and a group its old option file held: the outer first.
    out = set_all_knobs(files, {"model": "vit", "model/encoder": "big", "model.encoder.width": 256})
    assert "model: vit" in out["conf/train.yaml"] and "model/encoder: big" in out["conf/train.yaml"]
    assert out["conf/model/encoder/big.yaml"] == "width: 256\n"
    assert "conf/model/cnn.yaml" not in out and "conf/model/encoder/small.yaml" not in out


def test_self_order_override_and_the_run_command_decide_who_owns_a_name() -> None:
    group = {"conf/optim/adam.yaml": "lr: 0.001\n", "conf/optim/sgd.yaml": "lr: 0.05\n"}
    last = {"conf/config.yaml": "defaults:\n  - optim: adam\noptim:\n  lr: 0.3\n", **group}
    first = {"conf/config.yaml": "defaults:\n  - _self_\n  - optim: adam\noptim:\n  lr: 0.3\n", **group}
    assert knobs_of(last)["optim.lr"].path == "conf/config.yaml"  # _self_ implicitly last: it wins
    assert knobs_of(first)["optim.lr"].path == "conf/optim/adam.yaml"
    override = {
        "conf/config.yaml": "defaults:\n  - base\n  - override optim: sgd\n",
        "conf/base.yaml": "defaults:\n  - optim: adam\nepochs: 3\n",
        **group,
    }
    knobs = knobs_of(override)
    assert (knobs["optim"].path, knobs["optim"].line, knobs["optim"].value) == ("conf/config.yaml", 3, "sgd")
    assert knobs["optim.lr"].value == 0.05 and knobs["epochs"].path == "conf/base.yaml"
    # The run command's choice is what runs: its file's values are the knobs, the choice is pinned.
    chosen = knobs_of({"conf/config.yaml": "defaults:\n  - optim: adam\n", **group}, "python t.py optim=sgd")
    assert chosen["optim.lr"].path == "conf/optim/sgd.yaml"
    space = build_space(
        {"conf/config.yaml": "defaults:\n  - optim: adam\n", **group},
        SearchSettings(),
        command="python t.py optim=sgd",
    )
    assert "set by the run command" in space.pinned["optim"]
    fast = {"conf/config.yaml": "defaults:\n  - optim: adam\n  - _self_\nepochs: 5\n", **group}
    fast["conf/exp/fast.yaml"] = "# @package _global_\nepochs: 2\n"
    assert knobs_of(fast, "python t.py +exp=fast")["epochs"].path == "conf/exp/fast.yaml"
    assert knobs_of(fast)["epochs"].path == "conf/config.yaml"  # not selected: not a knob
    assert list(knobs_of(fast, "python t.py ~optim")) == ["epochs"]


def test_plain_yaml_keeps_its_knobs_and_a_name_two_files_give_is_qualified() -> None:
    plain = "optim:\n  lr: 3.0e-4  # peak\nsteps: 100\ndefaults: [1, 2]\n"
    files = {"config.yaml": plain, "other.yaml": "optim:\n  lr: 0.1\n"}
    found = find_all_knobs(files)
    assert found.knobs[: len(find_knobs(plain, "config.yaml"))] == find_knobs(plain, "config.yaml")
    names = [k.name for k in found.knobs]
    assert names == ["optim.lr", "steps", "other.yaml:optim.lr"]  # was silently dropped
    assert set_all_knobs(files, {"other.yaml:optim.lr": 0.2}) == {"other.yaml": "optim:\n  lr: 0.2\n"}
    space = build_space(files, SearchSettings())
    assert "other.yaml:optim.lr" in {d.knob for d in space.dims}


# -- the search agent ---------------------------------------------------------------------------
def compose(files: dict[str, str]) -> dict:
    """What Hydra hands the script, for APP's simple shape."""
    import yaml

    primary = yaml.safe_load(files["conf/config.yaml"])
    cfg = {k: v for k, v in primary.items() if k != "defaults"}
    for entry in primary["defaults"]:
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            cfg[group] = yaml.safe_load(files[f"conf/{group}/{option}.yaml"])
    return cfg


def loss(cfg: dict) -> float:
    best = {"adam": 1e-3, "sgd": 0.05}[cfg["optim"]["name"]]
    base = {"adam": 1.0, "sgd": 0.8}[cfg["optim"]["name"]]
    return base + (math.log10(float(cfg["optim"]["lr"]) / best)) ** 2 + cfg["model"]["dropout"]


def entry(
    id_: int, metric: float, decision: str, meta: dict | None = None, description: str = ""
) -> HistoryEntry:
    return HistoryEntry(
        id=id_,
        description=description or decision,
        status="ok",
        decision=decision,
        reason="",
        metric=metric,
        spread=None,
        runs=1,
        delta=None,
        meta=json.loads(json.dumps(meta or {})),
    )


def apply(files: dict[str, str], edits) -> dict[str, str]:
    out = dict(files)
    for edit in edits:
        if edit.search is None:
            out[edit.path] = edit.replace
        else:
            assert out[edit.path].count(edit.search) == 1
            out[edit.path] = out[edit.path].replace(edit.search, edit.replace)
    return out


@pytest.mark.parametrize("start", ["adam", "sgd"])
def test_the_search_never_edits_an_option_file_hydra_does_not_load(start: str) -> None:
    files = dict(APP)
    files["conf/config.yaml"] = files["conf/config.yaml"].replace("optim: adam", f"optim: {start}")
    agent = SearchAgent(SearchSettings(max_knobs_per_move=2))
    best = loss(compose(files))
    history = [entry(1, best, "baseline")]
    agent.observe(history[0])
    touched: set[str] = set()
    switched = 0
    for i in range(2, 26):
        context = Context(files, list(history), "val_loss", Direction("minimize"), best, 0.003)
        proposal = agent.propose(context)
        assert proposal is not None
        new = apply(files, proposal.edits)
        cfg = compose(new)
        for edit in proposal.edits:  # a switch with a new lr edits the option file now selected
            assert edit.path in (
                "conf/config.yaml",
                f"conf/optim/{cfg['optim']['name']}.yaml",
                "conf/model/mlp.yaml",
            )
            touched.add(edit.path)
        assert proposal.meta["knobs"]["optim.lr"] == float(cfg["optim"]["lr"])  # what the run reads
        if "optim" in proposal.meta["changed"]:  # a switch keeps the new file's own values
            assert not any(name.startswith("optim.") for name in proposal.meta["changed"])
            switched += 1
        metric = loss(cfg)
        decision = "keep" if metric < best else "discard"
        if decision == "keep":
            files, best = new, metric
        history.append(entry(i, metric, decision, proposal.meta, proposal.description))
        agent.observe(history[-1])
    assert f"conf/optim/{start}.yaml" in touched and switched


def test_a_proposal_switching_the_optimizer_records_the_new_files_values() -> None:
    agent = SearchAgent(SearchSettings())
    space = build_space(APP, SearchSettings())
    centre = space.current()
    both = agent._proposal(space, APP, centre, {**centre, "optim": "sgd", "optim.lr": 0.1}, "", {})
    assert {e.path for e in both.edits} == {"conf/config.yaml", "conf/optim/sgd.yaml"}
    assert both.description == "optim adam → sgd, optim.lr 0.05 → 0.1"
    assert both.meta["knobs"]["optim.lr"] == 0.1 and both.meta["changed"] == ["optim", "optim.lr"]
    only = agent._proposal(space, APP, centre, {**centre, "optim": "sgd"}, "", {})
    assert [e.path for e in only.edits] == ["conf/config.yaml"]
    assert only.meta["knobs"]["optim.lr"] == 0.05 and only.meta["knobs"]["optim.momentum"] == 0.9
    # Once SGD is the incumbent, the baseline's Adam lr no longer sets the lr's domain.
    switched = {**APP, **set_all_knobs(APP, {"optim": "sgd"})}
    lr = next(d for d in build_space(switched, SearchSettings(), origin=centre).dims if d.knob == "optim.lr")
    assert lr.domain.low <= 0.05 <= lr.domain.high
    # With the other option files' first values kept beside the baseline's (as the agent keeps
    # them), SGD's lr domain stays the one of its own first value as kept changes move it.
    origin = {**centre, **space.found.origins()}
    assert origin["optim=sgd:optim.lr"] == 0.05 and origin["optim=sgd:optim.momentum"] == 0.9
    moved = {**switched, **set_all_knobs(switched, {"optim.lr": 0.4})}
    kept = next(d for d in build_space(moved, SearchSettings(), origin=origin).dims if d.knob == "optim.lr")
    drifted = next(
        d for d in build_space(moved, SearchSettings(), origin=centre).dims if d.knob == "optim.lr"
    )
    assert kept.domain == lr.domain != drifted.domain


# -- end to end ----------------------------------------------------------------------------------
TRAIN = """\
import os, random, math
import yaml

# Hydra's composition for this shape: each group's selected option file at cfg[group], then _self_.
primary = yaml.safe_load(open("conf/config.yaml"))
cfg = {}
for entry in primary["defaults"]:
    if entry == "_self_":
        cfg.update({k: v for k, v in primary.items() if k != "defaults"})
    else:
        ((group, option),) = entry.items()
        cfg[group] = yaml.safe_load(open(f"conf/{group}/{option}.yaml"))
name, lr = cfg["optim"]["name"], float(cfg["optim"]["lr"])
best = {"adam": 1e-3, "sgd": 0.05}[name]
noise = random.Random(int(os.environ.get("NIGHTLAB_SEED", "0"))).gauss(0, 0.001)
print(f"optim={name} lr={lr}")
print(f"val loss {({'adam': 1.0, 'sgd': 0.8}[name] + math.log10(lr / best) ** 2 + noise):.4f}")
"""


@pytest.mark.slow
def test_show_space_and_a_try_through_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "hydra_app"
    files = {**APP, "train.py": TRAIN, ".gitignore": "run/\n"}
    script_workspace(root, files, ["conf/**/*.yaml"], ["train.py"], "python train.py")

    shown = nightlab("agent", "show-space", str(root))
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip()}
    assert "conf/config.yaml:2 hydra" in rows["optim"] and "{'adam', 'sgd'}" in rows["optim"]
    assert "conf/optim/adam.yaml:2" in rows["optim.lr"]
    assert "sgd.yaml" not in shown.stdout and "momentum" not in shown.stdout

    # The edit a proposal switching to SGD at lr 0.02 makes, then one experiment of it.
    files = {rel: (root / rel).read_text() for rel in APP}
    for rel, text in set_all_knobs(files, {"optim": "sgd", "optim.lr": 0.02}).items():
        (root / rel).write_text(text)
    tried = nightlab("try", "-m", "optim sgd at lr 0.02", str(root))
    assert tried.returncode == 0, tried.stderr
    result = dict(
        line.split(":", 1) for line in tried.stdout.split("---\n", 1)[1].splitlines() if ":" in line
    )
    # SGD at 0.02 reads 0.8 + log10(0.4)**2 = 0.958: the run loaded sgd.yaml with the new lr.
    assert float(result["val_loss"].split()[0]) == pytest.approx(0.958, abs=0.01)
    con = sqlite3.connect(root / ".nightlab" / "ledger.db")
    diff = con.execute("SELECT diff FROM experiments ORDER BY id DESC LIMIT 1").fetchone()[0]
    con.close()
    assert "+  - optim: sgd" in diff and "+lr: 0.02" in diff and "adam.yaml" not in diff

    shown = nightlab("agent", "show-space", str(root))  # the checkout now selects SGD
    rows = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip()}
    assert "conf/optim/sgd.yaml:2" in rows["optim.lr"] and "0.02" in rows["optim.lr"]
    assert "optim.momentum" in rows and "adam.yaml" not in shown.stdout


def test_yml_configs_are_hydra_configs_where_the_defaults_list_names_them_so() -> None:
    # Hydra loads optim/adam.yml only for `- optim: adam.yml` (a bare `adam` means adam.yaml).
    app = {
        "conf/config.yml": "defaults:\n  - optim: adam.yml\n  - _self_\nepochs: 3\n",
        "conf/optim/adam.yml": "lr: 0.001\n",
        "conf/optim/sgd.yml": "lr: 0.05\nmomentum: 0.9\n",
    }
    knobs = knobs_of(app)
    assert (knobs["optim"].value, knobs["optim"].choices) == ("adam.yml", ("adam.yml", "sgd.yml"))
    assert knobs["optim.lr"].path == "conf/optim/adam.yml" and "optim.momentum" not in knobs
    out = set_all_knobs(app, {"optim": "sgd.yml", "optim.lr": 0.1})
    assert out == {
        "conf/config.yml": app["conf/config.yml"].replace("adam.yml", "sgd.yml"),
        "conf/optim/sgd.yml": "lr: 0.1\nmomentum: 0.9\n",
    }
    # `- optim: adam` makes Hydra look for adam.yaml: adam.yml's lr is never loaded, no knob.
    bare = {**app, "conf/config.yml": "defaults:\n  - optim: adam\nepochs: 3\n"}
    assert "optim.lr" not in knobs_of(bare) and "conf/optim/adam.yml:lr" not in knobs_of(bare)
    assert knobs_of(bare)["optim"].choices == ("adam.yml", "sgd.yml")  # the names Hydra loads


def test_a_nested_group_the_run_command_selects_gives_the_selected_files_values() -> None:
    # /tmp/knobs_np/hydra_cmd: mlp.yaml lists `- encoder: large`; the command picks small.
    app = {
        **APP,
        "conf/model/mlp.yaml": "defaults:\n  - encoder: large\nhidden_dim: 64\n",
        "conf/model/encoder/large.yaml": "width: 64\n",
        "conf/model/encoder/small.yaml": "width: 16\n",
    }
    command = "python train.py optim=sgd model/encoder=small"
    knobs = knobs_of(app, command)
    assert knobs["model.encoder.width"].path == "conf/model/encoder/small.yaml"
    assert knobs["optim.lr"].path == "conf/optim/sgd.yaml" and "model/encoder" not in knobs
    out = set_all_knobs(app, {"model.encoder.width": 32, "optim.lr": 0.1}, command)
    assert set(out) == {"conf/model/encoder/small.yaml", "conf/optim/sgd.yaml"}
