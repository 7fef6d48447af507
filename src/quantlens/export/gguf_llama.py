"""What llama.cpp's converter (convert_hf_to_gguf.py, ``LlamaModel``) writes for a Llama-family model.

* names: ``gguf.get_tensor_name_map(LLAMA, n_blocks)`` (``model.layers.3.self_attn.q_proj.weight``
  -> ``blk.3.attn_q.weight``, ``model.embed_tokens.weight`` -> ``token_embd.weight``, ...);
* the Q/K row permutation: rows of ``attn_q`` (``h`` = query heads) and ``attn_k`` (``h`` = key/value
  heads) are reordered from HF's rotate-half layout to ggml's interleaved rope::

      permute(w, h)   = w.reshape(h, 2, rows / h / 2, cols).swapaxes(1, 2).reshape(rows, cols)
      unpermute(w, h) = w.reshape(h, rows / h / 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)

  Blocks run along each row, so a row permutation commutes with every GGUF type's quantization;
* metadata: ``llama.block_count``, ``context_length``, ``embedding_length``,
  ``feed_forward_length``, ``attention.head_count``/``head_count_kv``,
  ``attention.layer_norm_rms_epsilon``, ``rope.freq_base``, ``rope.dimension_count``,
  ``vocab_size`` (and linear rope scaling when the config has it).

Only ``LlamaForCausalLM`` (``model_type`` ``llama``: Llama 2/3, SmolLM, TinyLlama, ...) is known;
:func:`check_family` refuses any other in one line.

Example:
    >>> import torch
    >>> w = torch.arange(8.0).reshape(4, 2)
    >>> torch.equal(unpermute(permute(w, 1), 1), w)
    True
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from quantlens.errors import QuantlensError

__all__ = ["KNOWN_FAMILIES", "check_family", "gguf_names", "permute", "unpermute", "permute_heads", "write_metadata"]

KNOWN_FAMILIES = {"llama": "LlamaForCausalLM"}


def check_family(model: Any) -> Any:
    """``model.config`` of a Llama-family transformers model, else a one-line error."""
    cfg = getattr(model, "config", None)
    family = getattr(cfg, "model_type", None)
    if family not in KNOWN_FAMILIES or type(model).__name__ != KNOWN_FAMILIES[family]:
        known = ", ".join(f"{v} (model_type {k!r})" for k, v in KNOWN_FAMILIES.items())
        what = f"{type(model).__name__}" + (f" (model_type {family!r})" if family else " (no transformers config)")
        raise QuantlensError(f"the GGUF writer knows {known}; {what} is not one")
    return cfg


def gguf_names(model: Any) -> dict[str, str]:
    """HF parameter name -> GGUF tensor name, for every parameter of ``model``."""
    import gguf

    cfg = check_family(model)
    nmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(cfg.num_hidden_layers))
    out: dict[str, str] = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        new = nmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise QuantlensError(f"the GGUF writer has no llama.cpp name for the parameter {name}")
        out[name] = new
    return out


def permute(w: Tensor, heads: int) -> Tensor:
    """HF rows -> llama.cpp rows (module docstring)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: Tensor, heads: int) -> Tensor:
    """llama.cpp rows -> HF rows, the inverse of :func:`permute`."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_heads(model: Any, gguf_name: str) -> Optional[int]:
    """The head count the converter permutes ``gguf_name``'s rows with (None: not permuted)."""
    cfg = check_family(model)
    if gguf_name.endswith("attn_q.weight"):
        return int(cfg.num_attention_heads)
    if gguf_name.endswith("attn_k.weight"):
        return int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    return None


def _rope_theta(cfg: Any) -> Optional[float]:
    theta = getattr(cfg, "rope_theta", None)
    params = getattr(cfg, "rope_parameters", None) or {}
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta")
    return None if theta is None else float(theta)


def write_metadata(writer: Any, model: Any, name: str) -> None:
    """The ``general.name`` and ``llama.*`` keys convert_hf_to_gguf.py writes for ``model``."""
    cfg = check_family(model)
    heads = int(cfg.num_attention_heads)
    writer.add_name(name)
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_block_count(int(cfg.num_hidden_layers))
    writer.add_feed_forward_length(int(cfg.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(cfg, "num_key_value_heads", None) or heads))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    theta = _rope_theta(cfg)
    if theta is not None:
        writer.add_rope_freq_base(theta)
    head_dim = getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // heads
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_vocab_size(int(cfg.vocab_size))
    scaling = getattr(cfg, "rope_scaling", None)
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "linear" and "factor" in scaling:
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
