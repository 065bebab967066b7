"""``nightlab init --script`` on training scripts in the shapes researchers write them
(tests/fixtures/scripts: nanoGPT, timm, CleanRL, flax, ...): what it commits, what it reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import git, nightlab
from nightlab.agents.search.settings import SearchSettings
from nightlab.agents.search.space import Domain, build_space
from nightlab.code.knobs import apply_changes, plan_changes
from nightlab.config import load_config
from nightlab.errors import UserError
from nightlab.workspace.script_init import guess_metric, init_script, script_notes

SCRIPTS = Path(__file__).parent.parent / "fixtures" / "scripts"


def copy(name: str, tmp_path: Path) -> Path:
    """A fresh copy of the fixture folder ``name`` (no git yet, as a user's folder may be)."""
    return Path(shutil.copytree(SCRIPTS / name, tmp_path / name))


def test_nanogpts_configurator_is_committed_so_a_run_finds_it(tmp_path: Path) -> None:
    """nanoGPT's train.py runs ``exec(open('configurator.py').read())``: init committed train.py
    and model.py only, so every run's worktree lacked configurator.py and failed at once."""
    folder = copy("nanogpt", tmp_path)
    *_, committed = init_script(folder, "train.py")
    assert "configurator.py" in committed
    assert "configurator.py" in git(folder, "ls-files").split()
    assert load_config(folder).target.editable == ["train.py", "model.py"]  # run beside, not settings


def test_the_metric_printed_by_a_module_the_script_runs_is_found(tmp_path: Path) -> None:
    """flax's main.py only parses flags and calls train.train_and_evaluate, which prints
    ``eval_accuracy``: init refused (``names no validation metric``) until --metric was given."""
    folder = copy("flax", tmp_path)
    name, direction, _ = init_script(folder, "main.py")
    assert (name, direction) == ("eval_accuracy", "maximize")
    assert load_config(folder).target.editable == ["main.py", "train.py", "configs/default.py"]


def test_what_a_script_prints_names_the_metric_before_its_variables() -> None:
    """``val_loss = evaluate()`` comes first, but the log says ``val_acc1``; an RL script's
    evaluation is a return (CleanRL-style ``eval_return``), timm's a top-1 accuracy."""
    script = "val_loss = evaluate()\nprint(f'val_acc1: {acc:.2f}')\n"
    assert guess_metric(script) == "val_acc1"
    assert guess_metric("x = 1\n", "print('eval_return', r)\n") == "eval_return"
    assert (
        guess_metric("print('top-1', a)\n", "test_loss = 0\n") == "test_loss"
    )  # code when no string names one


def test_a_script_python_3_cannot_read_is_refused_in_one_line(tmp_path: Path) -> None:
    """A Python 2 script was taken (nightlab.toml written and committed) and every run failed."""
    (tmp_path / "train.py").write_text('LR = 0.1\nprint "val_loss", LR\n')
    done = nightlab("init", str(tmp_path), "--script", "train.py")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: train.py: not valid Python (Missing parentheses")
    assert "line 2" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nightlab.toml").exists()


def test_show_space_reads_a_latin_1_script(tmp_path: Path) -> None:
    """``nightlab agent show-space`` on a script saved in Latin-1 (with its coding line): a
    UnicodeDecodeError traceback, though runs read it from git as bytes."""
    (tmp_path / "train.py").write_bytes(
        b"# -*- coding: latin-1 -*-\n# r\xe9glages\nLR = 3e-4\nprint('val_loss', 1)\n"
    )
    init_script(tmp_path, "train.py")
    shown = nightlab("agent", "show-space", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "LR    train.py:3  3e-4" in shown.stdout


def test_the_pytorch_mnist_example_end_to_end(tmp_path: Path) -> None:
    """pytorch/examples' mnist/main.py: init read ``test_loss`` (a variable) as the metric, whose
    pattern never matches what it prints (``Test set: Average loss: 0.0345``), so no run had a
    metric; and the search flipped --no-cuda, --no-mps and --dry-run and sent StepLR's gamma of
    0.7 up to 7."""
    folder = copy("mnist", tmp_path)
    name, direction, _ = init_script(folder, "main.py")
    config = load_config(folder)
    assert (name, direction) == ("test_loss", "minimize")
    printed = f"\nTest set: Average loss: {0.0345:.4f}, Accuracy: {9890}/{10000} ({98.9:.0f}%)\n"
    assert float(re.search(config.metric.pattern, printed, re.MULTILINE).group(1)) == 0.0345
    files = {"main.py": (folder / "main.py").read_text()}
    space = build_space(files, SearchSettings(), command=config.target.run)
    searched = {dim.knob: dim.domain for dim in space.dims}
    assert set(searched) == {"dropout1.p", "dropout2.p", "batch_size", "lr", "gamma", "StepLR.step_size"}
    assert searched["gamma"].high < 1.0
    assert {"no_cuda", "no_mps", "dry_run", "seed", "epochs", "log_interval", "save_model"} <= set(
        space.pinned
    )


def test_a_lightning_cli_script_runs_its_fit_subcommand(tmp_path: Path) -> None:
    """``LightningCLI(Model, Data)`` without a subcommand prints its usage and exits 2: init
    wrote ``run = "python main.py"``, so every run failed."""
    folder = copy("lightning_cli", tmp_path)
    init_script(folder, "main.py")
    config = load_config(folder)
    assert config.target.run == "python main.py fit"
    files = {"main.py": (folder / "main.py").read_text()}
    space = build_space(files, SearchSettings(), command=config.target.run)
    assert {d.knob for d in space.dims} == {"model.lr", "model.hidden", "data.batch_size"}


def test_a_lightning_module_and_its_trainer(tmp_path: Path) -> None:
    """A LightningModule with save_hyperparameters, built as ``LitResNet(lr=0.1, hidden_dim=512,
    max_epochs=args.epochs)``: the values the call passes are the knobs, the Trainer's machine
    settings and the seed are not searched."""
    folder = copy("lightning", tmp_path)
    init_script(folder, "train.py")
    config = load_config(folder)
    assert config.target.run == "python train.py"
    files = {"train.py": (folder / "train.py").read_text()}
    space = build_space(files, SearchSettings(), command=config.target.run)
    searched = {d.knob for d in space.dims}
    assert {
        "lr",
        "hidden_dim",
        "batch_size",
        "weight_decay",
        "dropout",
        "Trainer.gradient_clip_val",
    } <= searched
    assert space.knobs["lr"].value == 0.1 and space.knobs["hidden_dim"].value == 512  # what the call passes
    assert not searched & {"seed", "epochs", "num_workers", "data_dir", "Trainer.devices"}


def test_a_script_whose_path_has_a_space_or_a_quote_runs(tmp_path: Path) -> None:
    """``my exp/train v2.py``: the run command was ``python my exp/train v2.py`` (python looked
    for ``my``), and a ``"`` in a name ended nightlab.toml's string early."""
    (tmp_path / "my exp").mkdir()
    for name in ("train v2.py", 'say "hi".py'):
        script = tmp_path / "my exp" / name
        script.write_text("import os\nprint('val_loss:', 0.25)\n")
        (tmp_path / "nightlab.toml").unlink(missing_ok=True)
        init_script(tmp_path, f"my exp/{name}")
        config = load_config(tmp_path)
        assert config.target.editable == [f"my exp/{name}"]
        ran = subprocess.run(["bash", "-c", config.target.run], cwd=tmp_path, capture_output=True, text=True)
        assert ran.returncode == 0 and "val_loss: 0.25" in ran.stdout, ran.stderr


def space_of(folder: Path) -> tuple[set[str], set[str]]:
    """The knobs searched and the knobs pinned in the workspace ``folder``, as show-space has them."""
    config = load_config(folder)
    files = {p: (folder / p).read_text() for p in config.target.editable}
    space = build_space(files, SearchSettings(), command=config.target.run)
    return {d.knob for d in space.dims}, set(space.pinned)


@pytest.mark.parametrize(
    ("name", "script", "searched", "pinned"),
    [
        (
            "hf_trainer", "train_hf.py",
            {"TrainingArguments.learning_rate", "TrainingArguments.per_device_train_batch_size",
             "TrainingArguments.weight_decay", "TrainingArguments.warmup_ratio", "TrainingArguments.lr_scheduler_type"},
            {"TrainingArguments.num_train_epochs"},
        ),
        ("hf_argparser", "run_classification.py", {"classifier_dropout"}, {"max_seq_length", "preprocessing_num_workers"}),
        ("xgb", "train.py", {"max_depth", "eta", "subsample", "colsample_bytree", "lambda"}, {"SEED", "nthread"}),
        ("wandb_sweep", "train.py", {"learning_rate", "batch_size", "dropout", "hidden"}, {"epochs"}),
        ("simple_parsing", "train.py", {"lr", "batch_size", "weight_decay", "warmup_steps", "optimizer"}, {"seed"}),
        ("accelerate", "train.py", {"lr", "batch_size"}, {"seed", "num_epochs"}),
        (
            "omegaconf", "train.py",
            {"model.depth", "model.width", "model.dropout", "optim.lr", "optim.betas", "optim.weight_decay"},
            {"seed", "trainer.max_steps", "trainer.devices"},
        ),
        (
            "deepspeed", "train.py", {"TrainingArguments.learning_rate"},
            {"zero_optimization.stage", "zero_optimization.reduce_bucket_size", "fp16.loss_scale_window", "steps_per_print"},
        ),
    ],
)  # fmt: skip
def test_the_shapes_researchers_write_are_searched_where_the_method_is(
    tmp_path: Path, name: str, script: str, searched: set[str], pinned: set[str]
) -> None:
    """init --script, then show-space's space: the method's settings searched, the seed, the
    budget and the machine pinned (what each shape got wrong is in the commits that added it)."""
    folder = copy(name, tmp_path)
    init_script(folder, script)
    found, held = space_of(folder)
    assert searched <= found, searched - found
    assert pinned <= held, pinned - held
    assert not found & pinned


def test_a_setting_read_from_the_environment_without_a_default_is_noted(tmp_path: Path) -> None:
    """``LR = float(os.environ["LR"])``, driven by a sweep launcher: ``python train.py`` fails with
    a KeyError in every run, and the learning rate is no knob; init said nothing of it."""
    (tmp_path / "train.py").write_text(
        "import os\nLR = float(os.environ['LR'])\n"
        "BS = int(os.environ['BS']) if 'BS' in os.environ else 64\n"
        "rank = int(os.environ['LOCAL_RANK'])\nprint('val_loss', LR)\n"
    )
    init_script(tmp_path, "train.py")
    notes = [n for n in script_notes(tmp_path, "train.py") if "environment" in n]
    assert notes == [
        "note: train.py:2 reads LR from the environment with no default: a run fails without it, "
        "and no edit can search it; give a default (os.environ.get('LR', ...))"
    ]


def test_init_names_the_line_of_a_null_byte(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_bytes(b"import os\n\x00print('val_loss', 1)\n")
    with pytest.raises(UserError, match=r"^train.py: not valid Python \(.*null bytes, line 2\)"):
        init_script(tmp_path, "train.py")


def test_modded_nanogpts_hyperparameters(tmp_path: Path) -> None:
    """modded-nanogpt's ``@dataclass class Hyperparameters`` with ``weight_decay : float = 0``:
    read as the int 0, it was searched over 0..10 (a weight decay of 8); and ``warmdown_iters``,
    the schedule's shape like a warm-up, was pinned as the budget."""
    folder = copy("modded_nanogpt", tmp_path)
    init_script(folder, "train_gpt2.py")
    config = load_config(folder)
    files = {p: (folder / p).read_text() for p in config.target.editable}
    space = build_space(files, SearchSettings(), command=config.target.run)
    domains = {d.knob: d.domain for d in space.dims}
    assert domains["weight_decay"].high == pytest.approx(0.3) and not domains["weight_decay"].is_int
    assert "warmdown_iters" in domains and "num_iterations" in space.pinned
    assert {"val_loss_every", "val_tokens", "sequence_length", "save_every"} <= set(space.pinned)


def test_a_kaggle_cfg_script(tmp_path: Path) -> None:
    """A Kaggle notebook's ``class CFG`` printing ``avg_val_loss``: init refused it (no metric it
    recognised), and its ``apex`` switch (NVIDIA apex AMP, a package to install) was searched."""
    folder = copy("kaggle_cfg", tmp_path)
    name, direction, _ = init_script(folder, "train.py")
    assert (name, direction) == ("avg_val_loss", "minimize")
    config = load_config(folder)
    line = "Epoch 3 - avg_val_loss: 0.4321"
    assert float(re.search(config.metric.pattern, line).group(1)) == 0.4321
    found, held = space_of(folder)
    assert {"lr", "batch_size", "weight_decay", "smoothing", "scheduler", "factor"} <= found
    assert {
        "apex",
        "debug",
        "seed",
        "epochs",
        "n_fold",
        "trn_fold",
        "target_size",
        "train",
        "num_workers",
    } <= held
    assert space_of_domain(folder, "factor").high < 1.0  # ReduceLROnPlateau's factor stays a decay


def space_of_domain(folder: Path, knob: str) -> Domain:
    config = load_config(folder)
    files = {p: (folder / p).read_text() for p in config.target.editable}
    return next(
        d.domain
        for d in build_space(files, SearchSettings(), command=config.target.run).dims
        if d.knob == knob
    )


def test_a_notebook_is_refused_with_how_to_export_it(tmp_path: Path) -> None:
    (tmp_path / "train.ipynb").write_text('{"cells": []}')
    with pytest.raises(
        UserError, match=r"a notebook; export it as a script first \(jupyter nbconvert --to script"
    ):
        init_script(tmp_path, "train.ipynb")


def test_diffusers_train_unconditional(tmp_path: Path) -> None:
    """diffusers' train_unconditional.py: ``--lr_scheduler`` lists its values in its help
    (``Choose between ["linear", "cosine", ...]``) and was pinned as a string with no choices;
    ``--resolution`` and ``--logger`` were searched."""
    folder = copy("diffusers", tmp_path)
    init_script(folder, "train_unconditional.py")
    found, held = space_of(folder)
    assert {"learning_rate", "lr_scheduler", "adam_beta1", "adam_weight_decay", "train_batch_size"} <= found
    assert {"resolution", "logger", "local_rank", "num_epochs", "checkpointing_steps", "output_dir"} <= held


def test_a_pyg_scripts_dataset_is_pinned_and_its_computed_defaults_are_searched(tmp_path: Path) -> None:
    """PyTorch Geometric's gcn.py: ``--dataset`` with choices Cora|CiteSeer|PubMed was searched (a
    run on another graph scores another problem), and ``--lr`` with ``default=1e-2 / 2`` was no
    knob, so the learning rate was never searched. A move writes the number over the expression."""
    folder = copy("pyg_gcn", tmp_path)
    init_script(folder, "gcn.py")
    found, held = space_of(folder)
    assert {"lr", "weight_decay", "dropout", "hidden_channels"} <= found
    assert {"dataset", "seed", "epochs"} <= held and "dataset" not in found
    assert space_of_domain(folder, "lr").low < 5e-3 < space_of_domain(folder, "lr").high
    files = {"gcn.py": (folder / "gcn.py").read_text()}
    after = apply_changes(files, plan_changes(files, {"lr": 2e-3, "hidden_channels": 64}))["gcn.py"]
    assert 'parser.add_argument("--lr", type=float, default=2e-3)  # half' in after
    assert 'parser.add_argument("--hidden_channels", type=int, default=2**6)\n' in after


def test_an_sb3_gae_lambda_is_searched_below_one(tmp_path: Path) -> None:
    """rl-zoo's PPO hyperparameters for CartPole (``"gae_lambda": 0.8``): the lambda was searched
    on a log scale in [0.08, 8.0]; a GAE lambda above 1 weighs later returns more than earlier
    ones, a value no recipe uses, so the first looks upward were spent on runs that diverge."""
    folder = copy("sb3", tmp_path)
    init_script(folder, "train_ppo.py")
    found, held = space_of(folder)
    assert {"learning_rate", "batch_size", "gamma", "gae_lambda", "ent_coef"} <= found
    assert {"seed", "n_timesteps", "tensorboard_log", "verbose"} <= held
    lam = space_of_domain(folder, "gae_lambda")
    assert 0 < lam.low < 0.8 < lam.high < 1.0


def test_torchvisions_detection_reference_resume_and_parser_switches_are_pinned(tmp_path: Path) -> None:
    """torchvision's references/detection/train.py: ``--start_epoch`` (a resume's first epoch:
    10 skips ten of the 26) was searched over 0..10, and ``get_args_parser(add_help=True)``'s
    ``add_help`` flipped; neither is the method. The optimizer's settings stay searched."""
    folder = copy("tv_detection", tmp_path)
    assert init_script(folder, "train.py")[:2] == ("bbox_mAP", "maximize")
    found, held = space_of(folder)
    assert {"lr", "momentum", "weight_decay", "lr_gamma", "batch_size"} <= found
    assert {"start_epoch", "add_help", "epochs", "workers", "device", "dataset"} <= held
    assert not {"start_epoch", "add_help"} & found


def test_fastais_error_rate_and_a_detectors_map_are_metrics() -> None:
    """fastai prints ``valid_error_rate`` (its ``error_rate`` metric), a detector ``bbox_mAP`` or
    ``val_mAP``: init refused each script as naming no validation metric. ``map(...)`` in code is
    no metric."""
    assert guess_metric('print(f"valid_error_rate: {err:.4f}")\n') == "valid_error_rate"
    assert guess_metric('print(f"bbox_mAP={m:.4f}")\n') == "bbox_mAP"
    assert guess_metric('print(f"epoch {e} val_mAP {m}")\n') == "val_mAP"
    assert guess_metric("xs = list(map(float, ys))\nprint('done')\n") is None


def test_fastais_dropout_is_searched_below_one_and_its_epochs_are_the_budget(tmp_path: Path) -> None:
    """``vision_learner(..., ps=0.5)`` is fastai's dropout: searched on a log scale it reached
    5.0; ``fit_one_cycle(5, ...)``'s ``n_epoch`` (singular) was searched, not pinned as the budget."""
    folder = copy("fastai", tmp_path)
    init_script(folder, "train.py")
    found, held = space_of(folder)
    assert {"vision_learner.ps", "vision_learner.wd", "fit_one_cycle.lr_max"} <= found
    assert {"fit_one_cycle#1.n_epoch", "fit_one_cycle#2.n_epoch"} <= held
    assert space_of_domain(folder, "vision_learner.ps").high < 1.0


def test_gradient_accumulation_is_searched_as_the_batch_not_pinned_as_the_budget(tmp_path: Path) -> None:
    """An Accelerate fine-tuning script (``accelerate launch --config_file accelerate_config.yaml
    train.py``): ``--gradient_accumulation_steps 4`` is the effective batch, yet it was pinned as
    the budget for ending in ``steps``; the epochs stay the budget."""
    folder = copy("accelerate_lm", tmp_path)
    init_script(folder, "train.py")
    found, held = space_of(folder)
    assert {"gradient_accumulation_steps", "learning_rate", "per_device_train_batch_size"} <= found
    assert {"num_train_epochs", "seed", "report_to", "output_dir"} <= held


def test_a_correlation_metric_is_found_and_maximised(tmp_path: Path) -> None:
    """sentence-transformers prints ``eval_spearman``: init refused the script as naming no
    metric, and given ``--metric eval_spearman`` it minimised the correlation, so the search
    would keep every change that made the embeddings worse."""
    folder = copy("sentence_transformers", tmp_path)
    assert init_script(folder, "train_sts.py")[:2] == ("eval_spearman", "maximize")
    found, held = space_of(folder)
    assert {"learning_rate", "warmup_fraction", "train_batch_size"} <= found and "num_epochs" in held
