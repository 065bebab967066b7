"""CPU training throughput of the template's train.py against a straightforward PyTorch GPT.

Both models get the same shape (depth, width, heads, MLP ratio, vocabulary, sequence length,
batch) and random tokens, so the data loader is out of the picture. One "step" is a forward,
a backward and an optimizer step (Muon + AdamW for train.py, AdamW for the baseline). The two
alternate in short rounds so that a busy shared machine slows both alike; the ratio of each
round is reported and the median ratio is the headline.

    python benchmarks/tokens_per_second.py --rounds 5 --steps 5 --threads 2

The baseline is what one writes first: learned position embeddings, LayerNorm, fused QKV, SDPA
with is_causal, GELU MLP, untied lm_head, torch.optim.AdamW; once without biases ("naive") and
once with biases in the Linear and LayerNorm layers, nanoGPT's default ("naive+bias").
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "nightlab" / "templates" / "gpt"


class NaiveBlock(nn.Module):
    def __init__(self, width: int, n_head: int, mlp_ratio: int, bias: bool):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(width, bias=bias)
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.ln2 = nn.LayerNorm(width, bias=bias)
        self.fc = nn.Linear(width, mlp_ratio * width, bias=bias)
        self.out = nn.Linear(mlp_ratio * width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class NaiveGPT(nn.Module):
    """A plain GPT-2-style model, the reference point for throughput."""

    def __init__(
        self, vocab: int, seq_len: int, depth: int, width: int, n_head: int, mlp_ratio: int, bias: bool
    ):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(NaiveBlock(width, n_head, mlp_ratio, bias) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width, bias=bias)
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def timed_steps(step, n: int) -> float:
    """Seconds for n calls of step()."""
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # train.py does this on CPU; process-wide, so both models get it
    sys.path.insert(0, str(TEMPLATE))
    import prepare  # noqa: E402  (the template's frozen module; train.py imports it)
    import train  # noqa: E402

    for item in args.set:
        name, _, value = item.partition("=")
        if not hasattr(train, name) or not name.isupper():
            raise SystemExit(f"--set {item}: train.py has no knob {name!r}")
        setattr(train, name, ast.literal_eval(value))
    torch.manual_seed(0)
    vocab, seq_len, batch = prepare.VOCAB_SIZE, prepare.SEQ_LEN, train.DEVICE_BATCH_SIZE
    x = torch.randint(0, vocab, (batch, seq_len))
    y = torch.randint(0, vocab, (batch, seq_len))
    ours = train.GPT(vocab, seq_len)
    width, n_head = ours.width, ours.width // train.HEAD_DIM
    opts = train.build_optimizers(ours)

    def ours_step() -> None:
        ours(x, y).backward()
        for opt in opts:
            opt.step()
        ours.zero_grad(set_to_none=True)

    models = {"train.py": (ours, ours_step)}
    for name, bias in (("naive", False), ("naive+bias", True)):
        model = NaiveGPT(vocab, seq_len, train.DEPTH, width, n_head, train.MLP_RATIO, bias)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            model(x, y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        models[name] = (model, step)

    sizes = ", ".join(
        f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" for k, (m, _) in models.items()
    )
    print(
        f"shape: depth {train.DEPTH} width {width} heads {n_head} mlp x{train.MLP_RATIO} vocab {vocab} seq {seq_len} "
        f"batch {batch} window {train.WINDOW_PATTERN} act {train.ACTIVATION} | params {sizes} | "
        f"threads {args.threads} | torch {torch.__version__}"
    )
    for _, step in models.values():
        timed_steps(step, 2)  # warm-up: allocator, optimizer state
    tokens = args.steps * batch * seq_len
    tps: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.rounds):
        for name, (_, step) in models.items():
            tps[name].append(tokens / timed_steps(step, args.steps))
        row = " | ".join(f"{k} {v[-1]:,.0f}" for k, v in tps.items())
        print(f"round {r + 1}: tok/s {row}", flush=True)
    ours_tps = tps.pop("train.py")
    median = statistics.median(ours_tps)
    print(f"median train.py: {median:,.0f} tok/s")
    for name, values in tps.items():
        ratio = statistics.median(a / b for a, b in zip(ours_tps, values, strict=True))
        print(f"median {name}: {statistics.median(values):,.0f} tok/s | train.py / {name} = {ratio:.2f}x")


if __name__ == "__main__":
    main()
