"""The settings block a script's ``main`` opens with (``lr = 1e-3`` as its first statements) is
knobs: such a script had none there. State after it, or a counter at the top, is not."""

from __future__ import annotations

from nightlab.code.knobs import find_knobs, set_knobs

SCRIPT = """\
import sys

lr = 0.5


def main():
    \"\"\"Train.\"\"\"
    # hyperparameters
    lr = 1e-3
    batch_size: int = 64
    betas = (0.9, 0.95)
    step = 0
    best_loss = 1e9
    total_loss = 0.0
    model = object()
    hidden = 128  # after the model: state, not a setting
    return lr, batch_size


def helper():
    width = 32


@decorated
def other():
    depth = 4


if __name__ == "__main__":
    sys.exit(main())
"""


def test_the_settings_block_main_opens_with_is_knobs() -> None:
    """Only the function the script runs, only the leading literal assignments, not a counter or
    a running best; a name the module took is qualified with the function."""
    found = {k.name: (k.value, k.source) for k in find_knobs(SCRIPT)}
    assert found == {
        "lr": (0.5, "setting"),
        "main.lr": (1e-3, "local"),
        "batch_size": (64, "local"),
        "betas": ((0.9, 0.95), "local"),
    }
    edited = set_knobs(SCRIPT, {"main.lr": 3e-3, "batch_size": 128})
    assert "    lr = 3e-3\n    batch_size: int = 128\n" in edited and "\nlr = 0.5\n" in edited


def test_environment_defaults_in_the_settings_block_main_opens_with_are_knobs() -> None:
    """``wd = float(os.environ.get("WD", "0.1"))`` at the top of ``main``: the default applies
    whenever the variable is unset, as in a run; a variable the harness sets gives none."""
    source = (
        "import os\n\n\ndef main():\n"
        '    wd = float(os.environ.get("WD", "0.1"))\n'
        '    warmup = float(os.getenv("WARMUP_RATIO", 0.05))\n'
        "    hidden = 64\n"
        '    rank = int(os.environ.get("RANK", 0))\n'
        "    print(wd, warmup, hidden, rank)\n\n\n"
        'if __name__ == "__main__":\n    main()\n'
    )
    knobs = {k.name: k for k in find_knobs(source)}
    assert {n: (k.value, k.source) for n, k in knobs.items()} == {
        "wd": (0.1, "env"),
        "warmup": (0.05, "env"),
        "hidden": (64, "local"),  # the block goes on past an environment default; RANK ends it
    }
    assert 'os.environ.get("WD", "0.2")' in set_knobs(source, {"wd": 0.2})
