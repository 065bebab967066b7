"""Train the straightforward GPT (naive_gpt.py) the way one would first write it, in a workspace.

equal_time.py copies this file and naive_gpt.py into a workspace (next to its data.py and
harness.py) and runs it like train.py: the same train loader, seconds/tokens budget (training time only), export and
separate evaluation, so its val_bpb is comparable with train.py's. The recipe is nanoGPT's:
AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), gradient clipping at 1.0, a short linear
warmup then cosine decay to a tenth of the peak learning rate. The shape (depth, width, heads,
MLP ratio, batch) comes from the environment so that it matches the train.py it is compared
with: NAIVE_LR, NAIVE_DEPTH, NAIVE_WIDTH, NAIVE_HEADS, NAIVE_MLP_RATIO, NAIVE_BATCH.
"""

from __future__ import annotations

import math
import os
import resource
import time

import data
import harness
import torch

from naive_gpt import NaiveGPT

T_START = time.time()


def lr_at(progress: float, peak: float, warmup: float = 0.02, floor: float = 0.1) -> float:
    if progress < warmup:
        return peak * (progress + 1e-8) / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))
    return peak * (floor + (1 - floor) * cosine)


def main() -> None:
    env = os.environ
    lr = float(env.get("NAIVE_LR", "1e-3"))
    depth, width = int(env.get("NAIVE_DEPTH", "4")), int(env.get("NAIVE_WIDTH", "128"))
    heads, mlp_ratio = int(env.get("NAIVE_HEADS", "4")), int(env.get("NAIVE_MLP_RATIO", "4"))
    batch = int(env.get("NAIVE_BATCH", "16"))
    seed = harness.get_seed()
    harness.seed_everything(seed)
    torch.set_flush_denormal(True)  # as train.py does on CPU
    budget = harness.get_budget()
    seq_len = data.SEQ_LEN
    loader = harness.make_train_loader(batch, seq_len, seed=seed)  # builds the synthetic data if missing
    vocab = data.get_tokenizer().vocab_size
    model = NaiveGPT(vocab, seq_len, depth, width, heads, mlp_ratio, bias=False)
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW(
        [dict(params=decay, weight_decay=0.1), dict(params=rest, weight_decay=0.0)], lr=lr, betas=(0.9, 0.95)
    )
    print(
        f"naive GPT: depth {depth} width {width} heads {heads} lr {lr} batch {batch} x {seq_len}", flush=True
    )
    training_seconds, tokens, step = 0.0, 0, 0
    while not budget.exhausted(training_seconds, tokens, step):
        t0 = time.time()
        for group in opt.param_groups:
            group["lr"] = lr_at(budget.progress(training_seconds, tokens, step), lr)
        x, y = next(loader)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        harness.check_loss(loss.item(), step)
        if step >= 1:  # the first step is warm-up, untimed, as in train.py on CPU
            training_seconds += time.time() - t0
        step += 1
        tokens += batch * seq_len
    total_seconds = time.time() - T_START
    memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.eval()
    val_bpb = harness.finish(model)  # export; evaluated here too unless nightlab evaluates it
    print("---")  # the summary block, in train.py's format
    if val_bpb is not None:
        print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"total_seconds:    {total_seconds:.1f}")
    print(f"peak_memory_mb:   {memory_mb:.1f}")
    print(f"total_tokens_M:   {tokens / 1e6:.3f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {sum(p.numel() for p in model.parameters()) / 1e6:.3f}")
    print(f"depth:            {depth}", flush=True)


if __name__ == "__main__":
    main()
