"""Token-shaped test subjects: logits with padding, a tokenizer-shaped model and its batches, tiny GPT-2s."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["inputs_of", "padded_logits", "TokenNet", "token_data", "token_batches", "gpt2"]


def inputs_of(**kw):
    try:
        from quantlens.data.batches import Inputs  # the lead's mapping batches
    except ImportError:
        return SimpleNamespace(args=(), kwargs=kw)
    return Inputs((), kw)


def padded_logits(seed=0, b=5, t=9, v=13):
    """Logits, ids, a mask with right and left padding, labels with some -100."""
    g = torch.Generator().manual_seed(seed)
    y_ref = torch.randn(b, t, v, generator=g)
    y = y_ref + 0.8 * torch.randn(b, t, v, generator=g)
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 6:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    mask[2, 2:] = 0
    labels = ids.clone()
    labels[3, :4] = -100  # a prompt that is not scored
    return y_ref, y, ids, mask, labels


class TokenNet(nn.Module):
    """A tokenizer-shaped model: ``forward(input_ids, attention_mask, scale=1.0)``."""

    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.q = nn.Linear(d, d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, scale: float = 1.0) -> dict:
        h = self.emb(input_ids)
        h = h + self.q(h) * scale
        h = self.norm(h + self.down(F.gelu(self.up(h))))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return {"logits": self.head(pooled), "hidden": h}


def token_data(n: int = 3, batch: int = 4, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        length = 6 + 2 * k  # padded to a different length per batch
        ids = torch.randint(0, 50, (batch, length), generator=g)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length // 2:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "scale": 0.5, "labels": torch.randint(0, 5, (batch,), generator=g)})
    return out


def token_batches(vocab, n=2, b=3, t=16, seed=0, labels=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        mask[0, t - 5 :] = 0  # right padding
        mask[1, t - 2 :] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        if labels:
            batch["labels"] = ids.masked_fill(mask == 0, -100)
        out.append(batch)
    return out


def gpt2(seed=0):
    """A 2-block GPT-2 with random weights (transformers)."""
    import transformers

    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, use_cache=False)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()
