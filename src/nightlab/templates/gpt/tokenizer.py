"""Tokenizers of the GPT research target (frozen: data.py loads them, prepare.py trains BPE).

Both expose what train.py and the evaluation need: `vocab_size`, `encode`, `decode`,
`token_bytes` (UTF-8 bytes per token id, 0 for special tokens: the bits-per-byte denominator)
and `encode_documents` (how documents are joined into one token stream).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

BOS_TOKEN = "<|bos|>"  # BPE only: starts every document, has no bytes, is never scored


class ByteTokenizer:
    """One token per UTF-8 byte: no training, no vocabulary file, bits per byte = bits per token."""

    vocab_size = 256
    bos_id = None

    def __init__(self) -> None:
        self.token_bytes = torch.ones(256, dtype=torch.long)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        """Documents are joined by a blank line, which is scored like any other bytes."""
        return [self.encode(text + "\n\n") for text in texts]


def _byte_stand_ins() -> dict[str, int]:
    """The printable character that byte-level BPE uses for each byte (the GPT-2 convention)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


class BPETokenizer:
    """Byte-level BPE from the `tokenizers` library, trained once on the train split."""

    # Words, numbers of up to two digits, punctuation runs, newlines, spaces (GPT-4 style split).
    SPLIT = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"

    def __init__(self, path: Path, vocab_size: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.vocab_size = vocab_size  # the model's output size; a small corpus may learn fewer ids
        self.bos_id = self.tok.token_to_id(BOS_TOKEN)
        stand_ins = _byte_stand_ins()
        lengths = torch.zeros(vocab_size, dtype=torch.long)
        for i in range(self.tok.get_vocab_size()):
            piece = self.tok.id_to_token(i)
            if i != self.bos_id:
                lengths[i] = sum(1 for ch in piece if ch in stand_ins)
        self.token_bytes = lengths

    @classmethod
    def train(cls, texts: Iterator[str], path: Path, vocab_size: int) -> BPETokenizer:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(cls.SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[BOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tok.save(str(tmp))
        os.replace(tmp, path)
        return cls(path, vocab_size)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        """Each document starts with BOS (zero bytes: never scored); encoded in parallel."""
        return [[self.bos_id, *enc.ids] for enc in self.tok.encode_batch(texts, add_special_tokens=False)]
