"""How the GPT template's files fit together, read from their source (nothing is run here).

One job per file and no import cycle among them: data.py (settings, the read side of the data)
at the bottom, prepare.py (the setup command), harness.py (what train.py calls), evaluation.py
(the metric, its own command) and train.py (the one file the agent edits) on top. The template
runs without nightlab installed, every file but train.py is frozen, and the literals that
`nightlab init` rewrites (sizes, DATASET) each live in exactly one file.
"""

from __future__ import annotations

import ast
import json
import re
import sys

from gpt_kit import FROZEN, TEMPLATE

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

OWN = {p.stem for p in TEMPLATE.glob("*.py")}
# What the template may import besides itself and the standard library: the training stack, and
# the optional libraries prepare.py uses for BPE and parquet (imported only when needed).
THIRD_PARTY = {"torch", "numpy", "tokenizers", "pyarrow"}


def imports_of(name: str) -> set[str]:
    """Top-level module names `name`.py imports, at module level or inside a function."""
    tree = ast.parse((TEMPLATE / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_template_has_one_file_per_job() -> None:
    assert OWN == {"data", "prepare", "harness", "evaluation", "train", "tokenizer", "corpus", "sources"}


def test_no_import_cycle_among_the_template_files() -> None:
    graph = {name: imports_of(name) & OWN - {name} for name in OWN}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(name) :], name])
        if name in done:
            return
        visiting.append(name)
        for other in sorted(graph[name]):
            visit(other)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    # The layers: the settings at the bottom, train.py on top, the evaluation beside the harness.
    assert graph["data"] == {"tokenizer"}
    assert graph["tokenizer"] == graph["corpus"] == graph["sources"] == set()
    assert graph["prepare"] == {"data", "tokenizer", "corpus", "sources"}
    assert graph["evaluation"] == {"data"}  # never the training side
    assert graph["harness"] == {"data", "prepare"}  # the training side holds no scoring code
    assert graph["train"] == {"data", "harness"}
    assert not any("train" in imported for imported in graph.values())


def test_the_template_runs_without_nightlab() -> None:
    for name in sorted(OWN):
        outside = imports_of(name) - OWN - set(sys.stdlib_module_names)
        assert outside <= THIRD_PARTY, (name, outside)


def test_dataset_is_a_plain_literal_in_data_py_only() -> None:
    """`nightlab init --dataset` rewrites the literal where it is defined: there must be one place."""
    defining = [
        p.name for p in sorted(TEMPLATE.glob("*.py")) if re.search(r"^DATASET = ", p.read_text(), re.M)
    ]
    assert defining == ["data.py"]
    assert re.search(r'^DATASET = "synthetic"  # ', (TEMPLATE / "data.py").read_text(), re.M)


def test_no_template_file_writes_to_its_own_source() -> None:
    """Nothing rewrites itself (set_dataset is gone): `__file__` only locates a sibling to run."""
    for path in sorted(TEMPLATE.glob("*.py")):
        for line in path.read_text().splitlines():
            if "__file__" in line:
                assert "with_name(" in line and "write" not in line, (path.name, line)


def test_sizes_toml_names_real_constants_and_ships_the_cpu_values() -> None:
    """`nightlab init --size` rewrites [size.<file>] literals: every name must exist, cpu as shipped."""
    sizes = tomllib.loads((TEMPLATE / "sizes.toml").read_text())
    assert set(sizes["cpu"]) == set(sizes["gpu"]) == {"train", "data", "budget", "space"}
    for table in ("train", "data"):
        text = (TEMPLATE / f"{table}.py").read_text()
        assert set(sizes["gpu"][table]) == set(sizes["cpu"][table])
        for name in sizes["gpu"][table]:
            assert re.search(rf"^{name} = [^#\n]+  # ", text, re.M), name
        for name, value in sizes["cpu"][table].items():
            literal = json.dumps(value) if isinstance(value, str) else repr(value)
            assert re.search(rf"^{name} = {re.escape(literal)}  # ", text, re.M), name
    config = tomllib.loads((TEMPLATE / "nightlab.toml").read_text())
    assert config["budget"] == sizes["cpu"]["budget"]
    assert sizes["gpu"]["data"]["EVAL_TOKENS"] % sizes["gpu"]["data"]["SEQ_LEN"] == 0


def test_template_nightlab_toml_is_valid_and_freezes_every_file_but_train_py() -> None:
    from nightlab.config import load_config

    config = load_config(TEMPLATE)
    assert config.target.editable == ["train.py"]
    assert sorted(config.target.frozen) == sorted(FROZEN)
    assert config.target.setup == "python prepare.py" and config.target.run == "python train.py"
    assert config.target.evaluate == "python evaluation.py"
    assert config.metric.holdout == "holdout_bpb" and config.budget.seconds == 60
