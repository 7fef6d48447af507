"""A tiny causal LM made of repeated blocks (pure torch, traceable), and its token batches."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.q_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        self.up_proj = nn.Linear(d, 2 * d)
        self.down_proj = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        a = (self.q_proj(h) @ h.transpose(1, 2)) / 4.0
        a = a.masked_fill(torch.ones_like(a).tril() == 0, -1e4).softmax(-1)  # causal
        x = x + self.o_proj(a @ h)
        return x + self.down_proj(F.silu(self.up_proj(self.norm(x))))


class TinyLM(nn.Module):
    """Embedding, ``layers.{0,1,2}`` blocks (roles q_proj, o_proj, up_proj, down_proj), ``lm_head``."""

    def __init__(self, vocab: int = 17, d: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(blocks))
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for blk in self.layers:
            x = blk(x)
        return self.lm_head(x)


def tiny_lm(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM().eval()


def token_data(n_batches: int = 2, batch: int = 3, seq: int = 12, vocab: int = 17, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (batch, seq), generator=g), None) for _ in range(n_batches)]


def lm_user_file(tmp_path: Path) -> str:
    p = tmp_path / "user_lm.py"
    p.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from support.lm_models import tiny_lm, token_data

        def model():
            return tiny_lm()

        def data():
            return token_data()
    """))
    return str(p)


def tiny_llama(use_cache: bool = False):
    """A 2-block Hugging Face Llama (width 32, vocabulary 64, ``use_cache=False`` by default): captured by torch.export."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=64, use_cache=use_cache, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def llama_ids(n: int = 2, batch: int = 2, length: int = 8) -> list[dict]:
    """``n`` batches of ``{"input_ids": [batch, length]}`` for :func:`tiny_llama`."""
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (batch, length), generator=g)} for _ in range(n)]
