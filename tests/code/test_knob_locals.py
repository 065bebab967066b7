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
