"""A straightforward PyTorch GPT: the yardstick the template's train.py is measured against.

It is what one writes first (nanoGPT's shape): learned position embeddings, LayerNorm, one
matmul for q, k and v, SDPA with is_causal, a GELU MLP, an untied lm_head, AdamW. Used by
tokens_per_second.py (throughput at the same shape) and equal_time.py (val_bpb after the same
number of training seconds). No imports from the template, so it can be copied anywhere.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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
    """model(idx) -> logits [B, T, vocab]; model(idx, targets) -> mean cross-entropy."""

    def __init__(
        self, vocab: int, seq_len: int, depth: int, width: int, n_head: int, mlp_ratio: int, bias: bool
    ):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(NaiveBlock(width, n_head, mlp_ratio, bias) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width, bias=bias)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        for name, p in self.named_parameters():  # GPT-2 init: N(0, 0.02) for matrices and tables
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
