"""The language-model demo: a small Llama trained on the standard library's own docstrings.

A Llama-style causal LM (``transformers``' ``LlamaForCausalLM``, ``use_cache=False``): 4
blocks, width 128, a byte-level vocabulary (256 bytes + BOS, EOS, PAD). The text is the
documentation strings of about 70 standard-library modules and their public classes and
functions (``inspect.getdoc``; real English technical text that ships with every Python),
split by docstring with a seeded shuffle: 90% to train on, 10% held out. That text differs
between Python builds, so the split ships (``weights/byte-llama-v1-docstrings.json.gz``,
:func:`split`). Training is seeded and short (:data:`TRAIN_STEPS` AdamW steps of 16 x 128
bytes, about 11 GFLOP each); it ran once and its weights ship too
(``weights/byte-llama-v1.safetensors``, :mod:`.shipped`), which :func:`model` loads.
``model(retrain=True)`` trains anew (a few minutes; threads follow torch's default), which
gives the shipped weights only on the CPU, library build and thread count they were trained
with.

Needs the ``lm`` extra (``pip install 'quantlens[lm]'``). The functions double as ``MOD:FN``
targets: ``--model quantlens.demo.lm:model --data quantlens.demo.lm:data --output-key logits``.

Example:
    >>> from quantlens.demo.lm import model, data                              # doctest: +SKIP
    >>> ql.analyze(model(), data(), metric="perplexity", output_key="logits")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from quantlens.demo import shipped
from quantlens.errors import QuantlensError

__all__ = [
    "LM_VERSION", "TRAIN_STEPS", "VOCAB", "BOS", "EOS", "PAD", "docstrings", "split", "encode", "lm_config",
    "model", "data", "train_stream", "TRAINED_BY", "TEXT", "split_docstrings", "shipped_text",
]

LM_VERSION = "byte-llama-v1"  # the shipped weights' file name
TEXT = f"{LM_VERSION}-docstrings.json.gz"  # the shipped train / held-out text
TRAIN_STEPS = 150
TRAINED_BY = f"quantlens.demo.lm._train(steps={TRAIN_STEPS}, seed=0)"
BATCH, SEQ = 16, 128
BOS, EOS, PAD = 256, 257, 258
VOCAB = 260  # 256 bytes, 3 specials, one spare (a multiple of 4)

_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections contextlib copy csv dataclasses datetime decimal "
    "difflib email enum fractions functools glob gzip hashlib heapq hmac html http.client inspect io ipaddress "
    "itertools json logging math mimetypes operator os pathlib pickle pprint queue random re shlex shutil socket "
    "sqlite3 statistics string struct subprocess tarfile tempfile textwrap threading time timeit tokenize traceback "
    "types typing unittest urllib.parse uuid warnings weakref zipfile zlib"
).split()


def _transformers() -> Any:
    from quantlens.core.quiet import preload_torchao

    preload_torchao()
    try:
        import transformers
    except ImportError:
        raise QuantlensError("the LM demo needs transformers: pip install 'quantlens[lm]'") from None
    return transformers


def docstrings() -> list[str]:
    """The docstrings of the modules above and of their public classes, methods and functions
    (at least 40 characters, each once), in a fixed order: this Python's own, so another
    Python build gives other text (the demo uses the shipped :func:`split` instead). Names a
    module loads lazily (its ``__all__``) count whether or not they were loaded, and methods
    other packages patch onto a class do not (``transformers`` adds some to ``logging.Logger``)."""
    docs: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _MODULES:
            try:
                mod = importlib.import_module(name)
            except ImportError:  # a Python built without it (sqlite3, zlib)
                continue
            docs.append(inspect.getdoc(mod) or "")
            for key in sorted(set(vars(mod)) | set(getattr(mod, "__all__", ()))):
                obj = getattr(mod, key, None)
                if key.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                    continue
                docs.append(inspect.getdoc(obj) or "")
                if inspect.isclass(obj):
                    for attr in sorted(vars(obj)):
                        member = getattr(obj, attr, None)
                        if attr.startswith("_") or not callable(member):
                            continue
                        if getattr(member, "__module__", None) not in (None, mod.__name__):
                            continue  # patched on by another package
                        docs.append(inspect.getdoc(member) or "")
    return [d for d in dict.fromkeys(docs) if len(d) >= 40]


def split_docstrings(docs: list[str], seed: int = 0, held_out: float = 0.1) -> tuple[list[str], list[str]]:
    """``(train, held out)``: a seeded shuffle of ``docs``, the last ``held_out`` share held out."""
    perm = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, int(round(held_out * len(docs))))
    return [docs[i] for i in perm[:-n_test]], [docs[i] for i in perm[-n_test:]]


def split(seed: int = 0, held_out: float = 0.1) -> tuple[list[str], list[str]]:
    """``(train, held out)`` docstrings. The default split ships with quantlens
    (``weights/byte-llama-v1-docstrings.json.gz``, :func:`split_docstrings` of :func:`docstrings`
    made once), so every machine trains on and analyses the same text; another ``seed`` or
    ``held_out`` splits this Python's own :func:`docstrings`."""
    if (seed, held_out) != (0, 0.1):
        return split_docstrings(docstrings(), seed, held_out)
    return shipped_text()


def shipped_text() -> tuple[list[str], list[str]]:
    """The shipped ``(train, held out)`` docstrings."""
    text = shipped.read_json(TEXT)
    return list(text["train"]), list(text["held_out"])


def encode(texts: list[str]) -> torch.Tensor:
    """One stream of token ids: ``BOS utf-8 bytes EOS`` per text."""
    ids: list[int] = []
    for t in texts:
        ids += [BOS, *t.encode("utf-8"), EOS]
    return torch.tensor(ids, dtype=torch.long)


def lm_config() -> Any:
    """The ``LlamaConfig`` of the demo model."""
    tf = _transformers()
    return tf.LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=2 * SEQ, use_cache=False, tie_word_embeddings=False,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )


def train_stream(seed: int = 0) -> torch.Tensor:
    return encode(split(seed)[0])


def _train(steps: int = TRAIN_STEPS, seed: int = 0) -> Any:
    tf = _transformers()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = tf.LlamaForCausalLM(lm_config())
    stream = train_stream(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    warm = 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    net.train()
    for _ in range(steps):
        start = torch.randint(0, len(stream) - SEQ - 1, (BATCH,), generator=g)
        x = torch.stack([stream[s : s + SEQ + 1] for s in start.tolist()])
        logits = net(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    return net.eval()


def model(retrain: bool = False, path: Optional[Path] = None) -> Any:
    """The trained byte-level Llama (eval mode): the shipped weights (or the safetensors file
    ``path``); ``retrain=True`` trains it anew instead, with a one-line warning that this
    reproduces the shipped weights only where they were trained."""
    tf = _transformers()
    if retrain:
        shipped.warn_retrain(LM_VERSION)
        return _train()
    return shipped.load(tf.LlamaForCausalLM(lm_config()), LM_VERSION, path)


def data(batch_size: int = 4, seq_len: int = SEQ, batches: int = 2, seed: int = 0) -> list[tuple[Any, None]]:
    """Held-out text as ``batches`` batches of ``batch_size`` x ``seq_len`` token ids (no labels:
    the metric predicts each next token of the ids)."""
    stream = encode(split(seed)[1])
    need = batches * batch_size * seq_len
    if len(stream) < need:
        raise QuantlensError(f"the held-out text has {len(stream)} tokens, fewer than {need}: ask for fewer batches")
    ids = stream[:need].reshape(batches, batch_size, seq_len)
    return [_batch(ids[i]) for i in range(batches)]


def _batch(ids: torch.Tensor) -> tuple[Any, None]:
    return ({"input_ids": ids}, None)
