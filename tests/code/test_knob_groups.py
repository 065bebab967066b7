"""Parameter groups an expert script builds by code rather than writing out: a comprehension over
a literal table, appends in a loop, a group whose rate scales the base one (``LR * 0.1``). Their
literals set the groups' values as surely as written-out dicts do, so each is a knob, named after
the group's index in ``optimizer.param_groups``; an edit reaches that group (real torch)."""

from __future__ import annotations

from nightlab.code.knobs import find_knobs, set_knobs

BUILT = """\
import torch

LR = 3e-4
model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
decay = [p for p in model.parameters() if p.ndim >= 2]
no_decay = [p for p in model.parameters() if p.ndim < 2]
groups = [{"params": p, "weight_decay": wd} for p, wd in ((decay, 0.1), (no_decay, 0.0))]
opt = torch.optim.AdamW(groups, lr=LR)

looped = []
for params, wd in [(decay, 0.05), (no_decay, 0.0)]:
    looped.append({"params": params, "weight_decay": wd})
opt2 = torch.optim.SGD(looped, lr=0.1)

head = {"params": decay, "weight_decay": 0.1}
rest = {"params": no_decay, "weight_decay": 0.0, "lr": LR * 0.1}
opt3 = torch.optim.Adam([head, rest], lr=LR)

shared = [{"params": p, "lr": 1e-2} for p in model.parameters()]
opt4 = torch.optim.RMSprop(shared)

scaled = [{"params": p, "lr": LR * mult} for p, mult in ((decay, 10.0), (no_decay, 1.0))]
opt5 = torch.optim.Adagrad(scaled)
"""


def _values(source: str) -> dict[str, object]:
    return {k.name: k.value for k in find_knobs(source)}


def test_groups_built_by_comprehension_loop_or_scaled_rate_are_knobs() -> None:
    assert _values(BUILT) == {
        "LR": 3e-4,
        "AdamW.group0.weight_decay": 0.1,
        "SGD.group0.weight_decay": 0.05,
        "SGD.lr": 0.1,
        "Adam.group0.weight_decay": 0.1,
        "Adam.group1.lr_scale": 0.1,
        "RMSprop.groups.lr": 1e-2,
        "Adagrad.group0.lr_scale": 10.0,
        "Adagrad.group1.lr_scale": 1.0,
    }  # never a no-decay group's 0.0, never "params"
    edited = set_knobs(
        BUILT,
        {"AdamW.group0.weight_decay": 0.2, "SGD.group0.weight_decay": 0.01, "Adam.group1.lr_scale": 0.5,
         "RMSprop.groups.lr": 0.02, "Adagrad.group0.lr_scale": 5.0},
    )  # fmt: skip
    scope: dict = {}
    exec(compile(edited, "train.py", "exec"), scope)
    assert [g["weight_decay"] for g in scope["opt"].param_groups] == [0.2, 0.0]
    assert [g["weight_decay"] for g in scope["looped"]] == [0.01, 0.0]
    assert [g["lr"] for g in scope["opt3"].param_groups] == [3e-4, 3e-4 * 0.5]
    assert {g["lr"] for g in scope["opt4"].param_groups} == {0.02}
    assert [g["lr"] for g in scope["opt5"].param_groups] == [3e-4 * 5.0, 3e-4]


def test_groups_whose_index_cannot_be_known_give_no_indexed_knob() -> None:
    """A loop over something that is not a literal table makes an unknown number of groups: a
    value the loop variable carries has no group to name, and neither do groups after it."""
    source = (
        "import torch\nm = torch.nn.Linear(2, 2)\ngroups = []\n"
        "for p in m.parameters():\n    groups.append({'params': [p], 'lr': 0.1})\n"
        "groups.append({'params': [], 'lr': 0.5})\nopt = torch.optim.SGD(groups)\n"
    )
    assert _values(source) == {}


def test_groups_joined_with_plus_are_read_and_a_keyword_every_group_overrides_is_no_knob() -> None:
    """``AdamW([{"params": head, "lr": 1e-3}] + [{"params": body, "lr": 1e-4}], lr=3e-4)``: the
    groups gave no knob, and ``lr=3e-4`` (a default no group takes) was searched: only noise."""
    source = (
        "import torch\n"
        "opt = torch.optim.AdamW(\n"
        "    [{'params': head, 'lr': 1e-3}] + [{'params': body, 'lr': 1e-4, 'weight_decay': 0.05}],\n"
        "    lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95),\n"
        ")\n"
    )
    assert {k.name: k.value for k in find_knobs(source)} == {
        "AdamW.group0.lr": 1e-3, "AdamW.group1.lr": 1e-4, "AdamW.group1.weight_decay": 0.05,
        "AdamW.weight_decay": 0.1, "AdamW.betas": (0.9, 0.95),
    }  # fmt: skip
    assert "'lr': 2e-4, 'weight_decay'" in set_knobs(source, {"AdamW.group1.lr": 2e-4})
    partly = "import torch\nopt = torch.optim.SGD([{'params': a, 'lr': 0.1}] + rest, lr=0.01)\n"
    assert {k.name for k in find_knobs(partly)} == {"SGD.group0.lr", "SGD.lr"}  # rest may take lr=0.01
