"""The knobs of training scripts in the shapes researchers write them (tests/fixtures/scripts),
read and set as the search agent does: which are found, and that a move lands where it acts."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomlkit
import yaml

from nightlab.code.knobs import KnobValue, apply_changes, find_all_knobs, plan_changes
from nightlab.errors import UserError

SCRIPTS = Path(__file__).parent.parent / "fixtures" / "scripts"


def files(name: str) -> dict[str, str]:
    """The fixture folder ``name``'s files, as the editable files of a workspace."""
    root = SCRIPTS / name
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def knobs(name: str, only: list[str] | None = None) -> dict[str, KnobValue]:
    found = find_all_knobs({p: t for p, t in files(name).items() if only is None or p in only})
    return {k.name: k.value for k in found.knobs}


def moved(name: str, values: dict[str, KnobValue]) -> dict[str, str]:
    """The files after the search agent's move to ``values``; each Python file still parses."""
    before = files(name)
    after = {**before, **apply_changes(before, plan_changes(before, values))}
    for path, text in after.items():
        if path.endswith(".py"):
            ast.parse(text)
    return after


def test_cleanrl_settings_computed_after_parsing_are_no_knobs() -> None:
    """CleanRL's ppo.py: ``args = tyro.cli(Args)``, then ``args.batch_size = int(args.num_envs *
    args.num_steps)``. The fields' defaults (``batch_size: int = 0``) never apply, yet both
    batch sizes were searched: every such experiment measured only noise."""
    found = knobs("cleanrl")
    assert "batch_size" not in found and "minibatch_size" not in found
    assert found["learning_rate"] == 2.5e-4 and found["num_minibatches"] == 4  # what it is computed from
    after = moved("cleanrl", {"num_minibatches": 8})
    assert "    num_minibatches: int = 8\n" in after["ppo.py"]


def test_timms_yaml_made_the_parsers_defaults_so_their_default_is_dead() -> None:
    """timm's train.py: ``cfg = yaml.safe_load(f)`` then ``parser.set_defaults(**cfg)``. The
    ``default=`` of every option config.yaml sets never applies, yet each was searched beside
    the YAML's value (``train.py:drop``, ``train.py:batch_size`` ...): only noise measured."""
    found = knobs("timm")
    assert found["drop"] == 0.2 and found["batch_size"] == 256  # config.yaml's
    assert not [name for name in found if name.startswith("train.py:")]
    assert found["momentum"] == 0.9 and found["mixup"] == 0.0  # options the YAML leaves alone
    assert "lr: 0.4\n" in moved("timm", {"lr": 0.4})["config.yaml"]


def test_a_config_merged_into_the_parsed_arguments_is_what_applies() -> None:
    """``vars(args).update(json.load(open("hparams.json")))``: the JSON's values win."""
    found = find_all_knobs(
        {
            "train.py": (
                "import argparse, json\np = argparse.ArgumentParser()\n"
                "p.add_argument('--lr', type=float, default=0.1)\n"
                "p.add_argument('--wd', type=float, default=0.01)\nargs = p.parse_args()\n"
                "hp = json.load(open('hparams.json'))\nvars(args).update(hp)\n"
            ),
            "hparams.json": '{"lr": 0.5}',
        }
    )
    assert {k.name: (k.path, k.value) for k in found.knobs} == {
        "lr": ("hparams.json", 0.5),
        "wd": ("train.py", 0.01),
    }


def test_settings_read_from_the_environment_in_every_spelling_are_knobs_that_act(tmp_path: Path) -> None:
    """A script a sweep launcher drives through the environment: ``float(os.environ["LR"]) if
    "LR" in os.environ else 3e-4``, ``int(os.environ.get("BATCH_SIZE") or 64)``,
    ``os.environ.setdefault(...)`` and ``default=`` gave no knob, so the learning rate and the
    batch were never searched. A move must still run: a number written bare into
    ``setdefault("X", "0.1")`` raised TypeError (only strings may be stored in the environment)."""
    found = knobs("envs")
    assert {n: found[n] for n in ("LR", "BATCH_SIZE", "LABEL_SMOOTHING", "DROPOUT", "HIDDEN")} == {
        "LR": 3e-4, "BATCH_SIZE": 64, "LABEL_SMOOTHING": 0.1, "DROPOUT": 0.1, "HIDDEN": 256,
    }  # fmt: skip
    assert "LOCAL_RANK" not in found  # a launcher sets it
    values = {"LR": 1e-3, "BATCH_SIZE": 32, "LABEL_SMOOTHING": 0.2, "DROPOUT": 0.3, "HIDDEN": 128}
    script = tmp_path / "train.py"
    script.write_text(moved("envs", values)["train.py"])
    assert 'setdefault("LABEL_SMOOTHING", "0.2")' in script.read_text()
    unset = {k: v for k, v in os.environ.items() if k not in values}
    ran = subprocess.run(
        [sys.executable, str(script)],
        env={**unset, "STEPS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "config: lr=0.001 batch_size=32 hidden=128 label_smoothing=0.2 dropout=0.3" in ran.stdout


def test_a_latin_1_script_is_read_and_set_with_its_bytes_kept() -> None:
    """A script saved in Latin-1 with its coding line, read as git's files are (undecodable bytes
    kept as surrogates): every reader raised UnicodeEncodeError (show-space's traceback)."""
    raw = b"# -*- coding: latin-1 -*-\n# r\xe9glages\nLR = 3e-4  # d\xe9faut\n"
    text = raw.decode("utf-8", errors="surrogateescape")
    found = find_all_knobs({"train.py": text})
    assert [(k.name, k.value) for k in found.knobs] == [("LR", 3e-4)]
    after = apply_changes({"train.py": text}, plan_changes({"train.py": text}, {"LR": 1e-3}))["train.py"]
    assert after.encode("utf-8", errors="surrogateescape") == raw.replace(b"3e-4", b"1e-3")


def test_a_file_nested_too_deeply_is_named_in_one_line() -> None:
    """A thousand levels of brackets (a generated JSON, an expression) ended in a RecursionError
    traceback from the parser; it is a one-line error naming the file."""
    for path, text in (("config.json", "[" * 3000 + "]" * 3000), ("train.py", "LR = " + "-" * 5000 + "1\n")):
        with pytest.raises(UserError, match=f"^{path}: nested too deeply to read"):
            find_all_knobs({"a.py": "LR = 1\n", path: text})


def test_toml_inline_tables_give_their_knobs() -> None:
    """``opt = {lr = 3e-4, betas = [0.9, 0.95]}`` in a TOML config gave no knob: the optimizer's
    settings of such a file were never searched."""
    text = (
        "[optim]\n"
        'opt = {lr = 3e-4, betas = [0.9, 0.95], name = "adamw", sched = {warmup = 100}}  # AdamW\n'
        "wd = 0.1\n"
    )
    found = {k.name: k.value for k in find_all_knobs({"config.toml": text}).knobs}
    assert found == {
        "optim.opt.lr": 3e-4, "optim.opt.betas": [0.9, 0.95], "optim.opt.name": "adamw",
        "optim.opt.sched.warmup": 100, "optim.wd": 0.1,
    }  # fmt: skip
    files = {"config.toml": text}
    values = {"optim.opt.lr": 1e-3, "optim.opt.betas": [0.8, 0.99], "optim.opt.sched.warmup": 200}
    after = apply_changes(files, plan_changes(files, values))["config.toml"]
    assert (
        'opt = {lr = 1e-3, betas = [0.8, 0.99], name = "adamw", sched = {warmup = 200}}  # AdamW\n' in after
    )
    assert tomlkit.parse(after).unwrap()["optim"]["opt"]["betas"] == [0.8, 0.99]


def test_keras_settings_bound_after_the_model_are_knobs() -> None:
    """The Keras MNIST example sets ``batch_size = 128`` and ``epochs = 15`` after building the
    model and hands them to ``model.fit``: past the leading block they were read as state, so
    the batch size was never searched."""
    found = knobs("keras")
    assert found["batch_size"] == 128 and found["epochs"] == 15 and found["Adam.learning_rate"] == 1e-3
    after = moved("keras", {"batch_size": 64})["mnist_convnet.py"]
    assert "\nbatch_size = 64\n" in after


def test_a_name_bound_again_after_the_leading_block_stays_state() -> None:
    source = "import torch\ntorch.manual_seed(0)\nstep = 0\nwarm = 10\nfor _ in range(3):\n    step += 1\nrun(step, warm)\n"
    assert [k.name for k in find_all_knobs({"train.py": source}).knobs] == ["warm"]


def test_options_merged_over_a_loaded_yaml_make_its_keys_dead() -> None:
    """``cfg.update({k: v for k, v in vars(args).items() if v is not None})`` after loading the
    YAML: ``--amp`` (store_true, False by default) always overwrites ``amp: true``, yet the YAML's
    ``amp`` was searched; options whose default is None leave the YAML's value alone."""
    found = knobs("yaml_over_argparse")
    assert "amp" not in found
    assert found["lr"] == 1e-3 and found["batch_size"] == 32 and found["model.depth"] == 4
    every = files("yaml_over_argparse")
    every["train.py"] = every["train.py"].replace(" if v is not None})", "})")
    assert {"lr", "batch_size", "amp"}.isdisjoint(k.name for k in find_all_knobs(every).knobs)


def test_a_yaml_merged_over_a_structured_config_makes_its_fields_defaults_dead() -> None:
    """``OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load("config.yaml"))``: the
    YAML's ``lr`` wins, yet the dataclass's ``lr: float = 3e-4`` was searched beside it."""
    script = (
        "from dataclasses import dataclass\nfrom omegaconf import OmegaConf\n\n\n@dataclass\nclass Config:\n"
        "    lr: float = 3e-4\n    batch_size: int = 64\n\n\n"
        "def main():\n    base = OmegaConf.load('config.yaml')\n"
        "    cfg = OmegaConf.merge(OmegaConf.structured(Config), base, OmegaConf.from_cli())\n    print(cfg)\n"
    )
    found = find_all_knobs({"train.py": script, "config.yaml": "lr: 1.0e-3\n"})
    assert {k.name: (k.path, k.value) for k in found.knobs} == {
        "lr": ("config.yaml", 1e-3),
        "batch_size": ("train.py", 64),  # the YAML leaves it alone
    }


def test_a_null_byte_is_named_with_its_line() -> None:
    """A file with a NUL byte (a bad copy, a binary pasted in): the error said ``line None``."""
    with pytest.raises(
        UserError, match=r"^train.py: not valid Python \(.*null bytes, line 3\); fix the file$"
    ):
        find_all_knobs({"train.py": "import os\nLR = 1\nB\x00 = 2\n"})


def test_an_empty_or_cut_off_json_config_says_so() -> None:
    """An empty hparams.json, or one cut off mid-write: 'not valid JSON (string index out of range)'."""
    for text, said in (
        ("  \n", "the file is empty"),
        ('{"lr": 0.1,\n "wd": ', "it ends inside a value, line 2"),
    ):
        with pytest.raises(UserError, match=rf"^hparams.json: not valid JSON \({said}\)$"):
            find_all_knobs({"hparams.json": text})


def test_a_dataclass_built_from_a_loaded_yaml_keeps_the_defaults_the_yaml_leaves() -> None:
    """``cfg = Config(**yaml.safe_load(f))`` with a config.yaml that sets only ``lr``: every field
    of Config was dropped (a ``**`` call may pass anything), so batch_size was never searched;
    the YAML's keys are what it passes."""
    script = (
        "import sys\nimport yaml\nfrom dataclasses import dataclass\n\n\n@dataclass\nclass Config:\n"
        "    lr: float = 3e-4\n    batch_size: int = 64\n\n\n"
        "def main():\n    with open('config.yaml') as f:\n        cfg = Config(**yaml.safe_load(f))\n    print(cfg)\n"
    )
    found = find_all_knobs({"train.py": script, "config.yaml": "lr: 1.0e-3\n"})
    assert {k.name: (k.path, k.value) for k in found.knobs} == {
        "lr": ("config.yaml", 1e-3),
        "batch_size": ("train.py", 64),
    }
    unknown = script.replace("open('config.yaml')", "open(sys.argv[1])")  # which keys it sets is unknown
    assert find_all_knobs({"train.py": unknown}).knobs == []


def test_a_whole_number_declared_float_is_a_float_knob() -> None:
    """``weight_decay: float = 0``, ``type=float, default=0``, ``def main(dropout: float = 0)``:
    read as ints, they were searched over whole numbers (a dropout of 8 fails, a decay of 8
    diverges); written back they become ``0.05``."""
    source = (
        "import argparse\nfrom dataclasses import dataclass\nfrom typing import Optional\n\n\n@dataclass\n"
        "class H:\n    weight_decay: float = 0\n    clip: Optional[float] = 1\n    layers: int = 3\n\n\n"
        "p = argparse.ArgumentParser()\np.add_argument('--wd', type=float, default=0)\n\n\n"
        "def main(dropout: float = 0):\n    pass\n\n\nmain()\n"
    )
    kinds = {k.name: (k.kind, k.value) for k in find_all_knobs({"train.py": source}).knobs}
    assert kinds == {
        "weight_decay": ("float", 0.0), "clip": ("float", 1.0), "layers": ("int", 3),
        "wd": ("float", 0.0), "dropout": ("float", 0.0),
    }  # fmt: skip
    after = moved_text(source, {"weight_decay": 0.05, "wd": 0.1, "dropout": 0.2})
    assert (
        "weight_decay: float = 0.05\n" in after
        and "default=0.1)" in after
        and "dropout: float = 0.2)" in after
    )


def moved_text(source: str, values: dict[str, KnobValue]) -> str:
    files = {"train.py": source}
    return apply_changes(files, plan_changes(files, values))["train.py"]


def test_a_quick_scripts_positional_fallbacks_are_knobs_unless_the_command_gives_them() -> None:
    """``lr = float(sys.argv[1]) if len(sys.argv) > 1 else 3e-4``: run as ``python train.py``,
    the fallback is what trains, and it gave no knob; with ``python train.py 1e-3`` it never
    applies."""
    source = (
        "import sys\nlr = float(sys.argv[1]) if len(sys.argv) > 1 else 3e-4\n"
        "EPOCHS = int(sys.argv[2]) if len(sys.argv) > 2 else 10\n"
    )
    assert {k.name: (k.value, k.source) for k in find_all_knobs({"train.py": source}, "python train.py").knobs} == {
        "lr": (3e-4, "argv"), "EPOCHS": (10, "argv"),
    }  # fmt: skip
    assert [k.name for k in find_all_knobs({"train.py": source}, "python train.py 1e-3").knobs] == ["EPOCHS"]
    assert "else 1e-3\n" in moved_text(source, {"lr": 1e-3})


def test_yaml_anchors_are_set_where_written_and_aliases_still_resolve() -> None:
    """A config sharing settings through anchors: ``<<: *optim`` merges, ``head_weight_decay:
    *wd`` and ``teacher: *model`` alias. Reading it raised KeyError (a traceback: a merged key has
    no position of its own), and a move of ``weight_decay: &wd 0.05`` wrote over ``&wd``, so
    ``*wd`` named no anchor and the YAML no longer loaded."""
    found = knobs("yaml_anchors")
    assert found["optim_defaults.weight_decay"] == 0.05 and found["finetune.lr"] == 1e-4
    assert found["model.depth"] == 12
    inherited = {"pretrain.lr", "finetune.weight_decay", "finetune.head_weight_decay", "teacher.depth"}
    assert inherited.isdisjoint(found)  # the anchor's knob sets them
    moves = {
        "optim_defaults.lr": 1e-3,
        "optim_defaults.weight_decay": 0.1,
        "finetune.lr": 2e-4,
        "model.depth": 6,
    }
    after = yaml.safe_load(moved("yaml_anchors", moves)["config.yaml"])
    assert after["pretrain"]["lr"] == 1e-3 and after["finetune"]["lr"] == 2e-4
    assert after["finetune"]["weight_decay"] == after["finetune"]["head_weight_decay"] == 0.1
    assert after["teacher"]["depth"] == 6


def test_a_structured_config_merged_over_a_yaml_makes_the_keys_it_shares_dead() -> None:
    """``OmegaConf.merge(OmegaConf.load("config.yaml"), OmegaConf.structured(TrainConfig), ...)``:
    the dataclass is merged last, so its ``lr: float = 3e-4`` applies; yet the YAML's ``lr`` was
    searched as ``lr`` and the default that applies as ``train.py:lr`` beside it (the YAML's
    moves measured only noise). Keys the dataclass lacks, or leaves MISSING, stay the YAML's."""
    found = {k.name: (k.path, k.value) for k in find_all_knobs(files("omegaconf_defaults")).knobs}
    assert found["lr"] == ("train.py", 3e-4) and found["batch_size"] == ("train.py", 64)
    assert found["warmup_steps"] == ("config.yaml", 500) and found["data_dir"] == ("config.yaml", "./data")
    assert not [name for name in found if name.startswith("train.py:")]
    assert "    lr: float = 1e-3\n" in moved("omegaconf_defaults", {"lr": 1e-3})["train.py"]


def test_positional_fallbacks_in_main_are_knobs_unless_the_command_gives_them() -> None:
    """The same fallbacks as local settings of ``main()`` (``lr = float(sys.argv[1]) if
    len(sys.argv) > 1 else 3e-3``): only module level was read, so the script had nothing to
    search (``Adam(lr=lr)`` passes a variable). Given ``python train.py 1e-2``, ``lr``'s
    fallback never applies and is no knob; the block reads on past it."""
    script = files("argv_main")
    found = find_all_knobs(script, "python train.py")
    assert {k.name: (k.value, k.source) for k in found.knobs} == {
        "lr": (3e-3, "argv"), "hidden": (64, "argv"), "epochs": (20, "argv"),
    }  # fmt: skip
    assert [k.name for k in find_all_knobs(script, "python train.py 1e-2").knobs] == ["hidden", "epochs"]
    after = moved("argv_main", {"lr": 1e-2, "hidden": 128})["train.py"]
    assert "lr = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-2\n" in after
    assert "hidden = int(sys.argv[2]) if len(sys.argv) > 2 else 128\n" in after


def test_an_sb3_algorithms_constructor_keywords_are_knobs() -> None:
    """``PPO("MlpPolicy", env, ..., vf_coef=0.5, max_grad_norm=0.5)``: the literals of
    stable-baselines3's constructor were no knobs (only the hyperparams dict's were)."""
    found = knobs("sb3")
    assert found["PPO.vf_coef"] == 0.5 and found["PPO.max_grad_norm"] == 0.5
    assert found["learning_rate"] == 1e-3  # the dict's, which the call reads by key
    after = moved("sb3", {"PPO.vf_coef": 0.25})["train_ppo.py"]
    assert "        vf_coef=0.25,\n" in after


def test_a_fastai_scripts_learner_and_one_cycle_settings_are_knobs() -> None:
    """fastai's pets example, through ``from fastai.vision.all import *``: ``vision_learner(...,
    ps=0.5, wd=1e-2)`` and ``learn.fit_one_cycle(5, lr_max=1e-3, pct_start=0.25)`` gave no knob,
    so init --script had nothing to search."""
    found = knobs("fastai")
    assert found["vision_learner.ps"] == 0.5 and found["vision_learner.wd"] == 1e-2
    assert found["fit_one_cycle.lr_max"] == 1e-3 and found["fit_one_cycle.pct_start"] == 0.25
    after = moved("fastai", {"fit_one_cycle.lr_max": 3e-3, "vision_learner.ps": 0.3})["train.py"]
    assert "learn.fit_one_cycle(5, lr_max=3e-3, pct_start=0.25)\n" in after
    assert "ps=0.3, wd=1e-2)" in after


def test_a_flax_modules_fields_are_knobs_where_they_apply() -> None:
    """A flax ``nn.Module``'s fields are its constructor's parameters (``features: int = 256``,
    ``dropout_rate: float = 0.1``, built as ``MLP(features=512)``), but no ``@dataclass`` says so:
    neither the dropout nor the width was a knob, only the optax calls' arguments were."""
    found = knobs("optax_flax")
    assert found["dropout_rate"] == 0.1 and found["features"] == 512  # the call's: 256 never applies
    assert found["warmup_cosine_decay_schedule.peak_value"] == 1e-3 and found["adamw.weight_decay"] == 1e-4
    after = moved("optax_flax", {"features": 1024, "dropout_rate": 0.2})["train.py"]
    assert "    model = MLP(features=1024)\n" in after and "    dropout_rate: float = 0.2\n" in after
    assert "    features: int = 256\n" in after


def test_settings_after_a_logging_setup_are_knobs() -> None:
    """sentence-transformers' training examples open with ``logging.basicConfig(...)``, then
    ``learning_rate = 2e-5`` and ``warmup_fraction = 0.1``: the call ended the settings block, so
    both were no knobs (only those passed straight to a call were read)."""
    found = knobs("sentence_transformers")
    assert found["learning_rate"] == 2e-5 and found["warmup_fraction"] == 0.1
    assert found["train_batch_size"] == 16
    after = moved("sentence_transformers", {"learning_rate": 5e-5})["train_sts.py"]
    assert "\nlearning_rate = 5e-5\n" in after
