"""A YAML list of numbers written as a block, one item a line (``betas:`` then ``- 0.9``), is a
knob as the flow list ``[0.9, 0.98]`` is, and so is a JSON list over several lines; rewriting one
changes the numbers and nothing else."""

from __future__ import annotations

import tomllib
import yaml

from nightlab.code.knobs import find_knobs, set_all_knobs, set_knobs

CONFIG = """\
optim:
  betas:   # adam
    - 0.9   # beta1
    - 0.98
  eps: 1.0e-8
layers:
- 64
- 128
mixed:
  - 1
  - two
nested:
  - [1, 2]
  - [3, 4]
"""


def test_block_lists_of_numbers_are_knobs_rewritten_in_place() -> None:
    knobs = {k.name: k for k in find_knobs(CONFIG, "config.yaml")}
    assert {n: k.value for n, k in knobs.items()} == {
        "optim.betas": [0.9, 0.98],
        "optim.eps": 1e-8,
        "layers": [64, 128],
    }  # not a list of mixed items, nor a list of lists
    out = set_knobs(CONFIG, {"optim.betas": [0.85, 0.999], "layers": [32, 256]}, "config.yaml")
    assert out == CONFIG.replace("0.9 ", "0.85 ").replace("0.98\n", "0.999\n").replace(
        "- 64", "- 32"
    ).replace("- 128", "- 256")
    loaded = yaml.safe_load(out)
    assert loaded["optim"]["betas"] == [0.85, 0.999] and loaded["layers"] == [32, 256]


def test_a_json_list_written_one_number_a_line_is_a_knob() -> None:
    """``json.dump(config, f, indent=2)`` writes a list one item a line: still a knob."""
    text = '{\n  "betas": [\n    0.9,\n    0.98\n  ],\n  "lr": 0.001\n}\n'
    assert {k.name: k.value for k in find_knobs(text, "config.json")} == {"betas": [0.9, 0.98], "lr": 0.001}
    out = set_knobs(text, {"betas": [0.8, 0.99]}, "config.json")
    assert out == text.replace("0.9,", "0.8,").replace("0.98", "0.99")


def test_a_toml_array_over_several_lines_is_one_knob_rewritten_in_place() -> None:
    """Its literal was the ``[`` alone before: setting it wrote a second list into the file."""
    text = 'lr = 0.1\nbetas = [\n  0.9,  # beta1\n  0.98,\n]\nname = "x"\n'
    knobs = {k.name: k for k in find_knobs(text, "config.toml")}
    assert knobs["betas"].value == [0.9, 0.98] and knobs["betas"].text.endswith("]")
    out = set_knobs(text, {"betas": [0.8, 0.99]}, "config.toml")
    assert out == text.replace("0.9,", "0.8,").replace("0.98,", "0.99,")
    assert tomllib.loads(out)["betas"] == [0.8, 0.99]


def test_a_block_list_given_another_length_stays_a_block_list() -> None:
    """``[scales.*] constants`` may give a list another length: a block list at column 0
    (``layers:`` then ``- 1``) was rewritten as ``[1]`` at column 0, which is no YAML."""
    text = "model:\n  widths:\n    - 64\n    - 128\n  lr: 0.1\nlayers:\n- 1\n- 2\ntop: 3\n"
    out = set_all_knobs({"c.yaml": text}, {"model.widths": [64, 128, 256], "layers": [8, 16, 32]})["c.yaml"]
    assert (
        out
        == "model:\n  widths:\n    - 64\n    - 128\n    - 256\n  lr: 0.1\nlayers:\n- 8\n- 16\n- 32\ntop: 3\n"
    )
    assert yaml.safe_load(out) == {
        "model": {"widths": [64, 128, 256], "lr": 0.1},
        "layers": [8, 16, 32],
        "top": 3,
    }
