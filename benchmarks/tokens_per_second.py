"""CPU training throughput of the template's train.py against a straightforward PyTorch GPT.

Both models get the same shape (depth, width, heads, MLP ratio, vocabulary, sequence length,
batch) and random tokens, so the data loader is out of the picture. One "step" is a forward,
a backward and an optimizer step (Muon + AdamW for train.py, AdamW for the baseline). The two
alternate in short rounds so that a busy shared machine slows both alike; the ratio of each
round is reported and the median ratio is the headline.

    python benchmarks/tokens_per_second.py --rounds 5 --steps 5 --threads 2
    python benchmarks/tokens_per_second.py --rounds 30 --steps 1 --ablate   # what each feature costs
    git show HEAD:src/nightlab/templates/gpt/train.py > /tmp/before.py
    python benchmarks/tokens_per_second.py --against /tmp/before.py          # a change, side by side

The baseline (naive_gpt.py) is what one writes first: learned position embeddings, LayerNorm,
fused QKV, SDPA with is_causal, GELU MLP, untied lm_head, torch.optim.AdamW; once without biases
("naive") and once with biases in the Linear and LayerNorm layers, nanoGPT's default
("naive+bias"). What the extra per-token work buys is equal_time.py's question.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from naive_gpt import NaiveGPT

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "nightlab" / "templates" / "gpt"


def timed_steps(step, n: int) -> float:
    """Seconds for n calls of step()."""
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


# What each of train.py's extra features costs: that feature switched off, everything else as
# shipped. Names are train.py's knobs, or its functions replaced (maths broken on purpose: only
# the time counts here).
ABLATIONS: dict[str, dict[str, object]] = {
    "no Newton-Schulz (MUON_NS_STEPS=0)": {"MUON_NS_STEPS": 0},
    "no RMSNorm/QK-norm (identity)": {"norm": lambda x: x},
    "no RoPE (identity)": {"apply_rotary": lambda x, cos, sin: x.float()},
    "no value embeddings": {"VALUE_EMBEDS": False},
    "no logit soft cap": {"LOGIT_SOFTCAP": 0.0},
    "GELU instead of relu2": {"ACTIVATION": "gelu"},
    "full attention in every layer": {"WINDOW_PATTERN": "L"},
}


def load_train(tag: str, overrides: dict[str, object], path: Path = TEMPLATE / "train.py"):
    """A fresh copy of the template's train.py module (or of `path`) with some constants or
    functions replaced.

    Each copy is its own module object, so several variants live in one process and alternate
    round by round (the only comparison that survives a shared machine's drifting load).
    """
    spec = importlib.util.spec_from_file_location(f"train_{tag}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, value in overrides.items():
        if not hasattr(module, name):
            raise SystemExit(f"train.py has no {name!r} to override")
        setattr(module, name, value)
    return module


def parse_sets(items: list[str]) -> dict[str, object]:
    knobs: dict[str, object] = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name.isupper():
            raise SystemExit(f"--set {item}: expected KNOB=VALUE with an UPPER_CASE knob of train.py")
        try:
            knobs[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--set {item}: {value!r} is not a Python literal") from None
    return knobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median reported)")
    parser.add_argument("--steps", type=int, default=5, help="steps per model per round")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="override one of train.py's constants for this measurement, e.g. WINDOW_PATTERN='SSSL'",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="FILE",
        help="another train.py (an earlier version, a variant) timed in the same rounds",
    )
    parser.add_argument(
        "--ablate",
        action="store_true",
        help="also time train.py with each extra feature switched off, and all of them off",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # train.py does this on CPU; process-wide, so every model gets it
    sys.path.insert(0, str(TEMPLATE))
    import data  # noqa: E402  (the template's frozen settings; train.py imports them)

    knobs = parse_sets(args.set)
    variants = {"train.py": load_train("shipped", knobs)}
    if args.against:
        variants["against"] = load_train("against", knobs, args.against)
    if args.ablate:
        for i, (label, overrides) in enumerate(ABLATIONS.items()):
            variants[label] = load_train(f"ablation{i}", {**knobs, **overrides})
        everything = {k: v for overrides in ABLATIONS.values() for k, v in overrides.items()}
        variants["all of the above off"] = load_train("bare", {**knobs, **everything})
    train = variants["train.py"]
    torch.manual_seed(0)
    vocab, seq_len, batch = data.VOCAB_SIZE, data.SEQ_LEN, train.DEVICE_BATCH_SIZE
    x = torch.randint(0, vocab, (batch, seq_len))
    y = torch.randint(0, vocab, (batch, seq_len))

    models: dict[str, tuple[nn.Module, object]] = {}
    for name, module in variants.items():
        model = module.GPT(vocab, seq_len)
        opts = module.build_optimizers(model)

        def step(model: nn.Module = model, opts: list = opts) -> None:
            model(x, y).backward()
            for opt in opts:
                opt.step()
            model.zero_grad(set_to_none=True)

        models[name] = (model, step)
    width = models["train.py"][0].width
    n_head = width // train.HEAD_DIM
    for name, bias in (("naive", False), ("naive+bias", True)):
        model = NaiveGPT(vocab, seq_len, train.DEPTH, width, n_head, train.MLP_RATIO, bias)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            model(x, y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        models[name] = (model, step)

    sizes = ", ".join(
        f"{k} {sum(p.numel() for p in models[k][0].parameters()) / 1e6:.2f}M"
        for k in ("train.py", "naive", "naive+bias")
    )
    print(
        f"shape: depth {train.DEPTH} width {width} heads {n_head} mlp x{train.MLP_RATIO} vocab {vocab} seq {seq_len} "
        f"batch {batch} window {train.WINDOW_PATTERN} act {train.ACTIVATION} | params {sizes} | "
        f"threads {args.threads} | torch {torch.__version__}"
    )
    for _, step in models.values():
        timed_steps(step, 2)  # warm-up: allocator, optimizer state
    tokens = args.steps * batch * seq_len
    seconds: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.rounds):
        for name, (_, step) in models.items():
            seconds[name].append(timed_steps(step, args.steps))
        row = " | ".join(f"{k} {tokens / seconds[k][-1]:,.0f}" for k in ("train.py", "naive", "naive+bias"))
        print(f"round {r + 1}: tok/s {row}", flush=True)
    ours = seconds["train.py"]
    print(f"median train.py: {tokens / statistics.median(ours):,.0f} tok/s")
    for name in ("naive", "naive+bias"):
        ratio = statistics.median(b / a for a, b in zip(ours, seconds[name], strict=True))
        print(
            f"median {name}: {tokens / statistics.median(seconds[name]):,.0f} tok/s | train.py / {name} = {ratio:.2f}x "
            f"(best rounds: {min(seconds[name]) / min(ours):.2f}x)"
        )
    if args.against:
        ratio = statistics.median(b / a for a, b in zip(ours, seconds["against"], strict=True))
        print(
            f"median {args.against.name}: {tokens / statistics.median(seconds['against']):,.0f} tok/s | "
            f"train.py / {args.against.name} = {ratio:.3f}x (best rounds: "
            f"{min(seconds['against']) / min(ours):.3f}x; per-round ratios "
            f"{min(b / a for a, b in zip(ours, seconds['against'], strict=True)):.2f}-"
            f"{max(b / a for a, b in zip(ours, seconds['against'], strict=True)):.2f})"
        )
    if args.ablate:
        # Paired by round: what a variant saves is the median over rounds of (shipped - variant)
        # within the round, so that load drifting between rounds cancels out.
        ms = {k: [1e3 * t / args.steps for t in v] for k, v in seconds.items()}
        shipped = statistics.median(ms["train.py"])
        print(
            f"\nms per step (median): train.py as shipped {shipped:.1f}, naive {statistics.median(ms['naive']):.1f}"
        )
        for name in [*ABLATIONS, "all of the above off"]:
            saved = statistics.median(a - b for a, b in zip(ms["train.py"], ms[name], strict=True))
            ratio = statistics.median(n / v for n, v in zip(ms["naive"], ms[name], strict=True))
            print(
                f"{name:40s} saves {saved:6.1f} ms ({100 * saved / shipped:5.1f} %) of a step "
                f"-> {ratio:.2f}x naive"
            )


if __name__ == "__main__":
    main()
