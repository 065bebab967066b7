"""Settings dicts built by code: a merge (``config = {**defaults, "lr": 1e-2}``) decides which
literal applies, and an ``argparse.Namespace(...)`` built under ``if __name__ == "__main__":``
holds a script's settings. An overridden entry was a knob whose edits changed nothing; a
namespace of settings gave no knob at all."""

from __future__ import annotations

from nightlab.code.knobs import find_knobs, set_knobs

MERGED = """\
defaults = {"lr": 3e-3, "batch_size": 64, "optim": {"eps": 1e-8, "wd": 0.1}, "dropout": 0.1}
config = {**defaults, "lr": 1e-2, "betas": (0.9, 0.95), "optim": {"eps": 1e-6}}
run_cfg = dict(config, batch_size=128)
late = {"dropout": 0.5, **defaults}
final = run_cfg | {"warmup": 10}
opts = {"smoothing": 0.1, **dict(globals().get("overrides", {}))}
lookup = {"a": 1}
"""


def test_a_merge_keeps_the_literal_that_applies() -> None:
    """Each key's knob is the literal the merged dict ends with: a later key replaces a spread
    one (also a whole nested dict, through ``dict(base, k=v)`` and ``base | {...}``), a later
    spread replaces an earlier key; a spread that cannot be read leaves its neighbours knobs."""
    found = {k.name: (k.value, k.line) for k in find_knobs(MERGED)}
    assert found == {
        "dropout": (0.1, 1),  # late's own dropout is replaced by **defaults after it
        "lr": (1e-2, 2),  # defaults' lr is replaced by config's
        "betas": ((0.9, 0.95), 2),
        "optim.eps": (1e-6, 2),  # config's optim replaces defaults' optim, wd included
        "batch_size": (128, 3),
        "warmup": (10, 5),
        "smoothing": (0.1, 6),  # vars(...) may or may not set it: the literal applies when not
    }  # `lookup` is no settings name and merges no settings: not read
    edited = set_knobs(MERGED, {"lr": 0.02, "batch_size": 256})
    scope: dict = {}
    exec(compile(edited, "train.py", "exec"), scope)
    assert scope["final"]["lr"] == 0.02 and scope["final"]["batch_size"] == 256


NAMESPACE = """\
import argparse
from types import SimpleNamespace


def main(args):
    return args.lr * args.batch_size


if __name__ == "__main__":
    args = argparse.Namespace(lr=3e-3, batch_size=64, betas=(0.9, 0.999))
    hparams = SimpleNamespace(width=32)
    result = {"lr": 5.0}
    main(args)
"""


def test_a_namespace_of_settings_under_main_is_knobs() -> None:
    """``args = argparse.Namespace(...)`` and ``SimpleNamespace`` under ``if __name__ ==
    "__main__":`` are settings (a plain dict there of another name is not), and can be set."""
    assert {k.name: k.value for k in find_knobs(NAMESPACE)} == {
        "lr": 3e-3,
        "batch_size": 64,
        "betas": (0.9, 0.999),
        "width": 32,
    }
    edited = set_knobs(NAMESPACE, {"lr": 1e-3, "width": 64})
    assert "argparse.Namespace(lr=1e-3, batch_size=64" in edited and "SimpleNamespace(width=64)" in edited
