"""Train the demo models once with their own training code and write their shipped files.

Writes, in ``src/quantlens/demo/weights/``:

* ``digits-cnn-v2.safetensors``: the digits CNN (one thread, seconds);
* ``byte-llama-v1-docstrings.json.gz`` (``text``): the LM demo's train / held-out split of this
  Python's standard-library docstrings (another Python build has other docstrings, so the
  split ships rather than being collected on each machine);
* ``byte-llama-v1.safetensors`` (``lm``): the LM demo trained on the shipped split (torch's
  default threads, minutes; needs transformers).

The weights carry their training environment in the file's metadata
(:func:`quantlens.demo.shipped.save`). Another CPU or library build trains other weights:
commit the files, then re-measure every demo number in README.md and docs/
(``tests/demo/test_readme_demo.py`` checks the README's demo table and docs/llm.md's figures
against the shipped files).

Run:  PYTHONPATH=src python scripts/ship_demo_weights.py [digits] [text] [lm]
      (``text`` changes the LM's data: retrain ``lm`` after it)
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from quantlens.demo import digits, lm, shipped

OUT = Path(__file__).resolve().parents[1] / "src" / "quantlens" / "demo" / "weights"


def main(argv: list[str]) -> int:
    for which in argv or ["digits", "lm"]:
        if which == "text":
            train, held_out = lm.split_docstrings(lm.docstrings(), seed=0, held_out=0.1)
            meta = {"python": sys.version.split()[0], "seed": 0, "held_out_share": 0.1}
            path = shipped.write_json({**meta, "train": train, "held_out": held_out}, OUT / lm.TEXT)
        elif which == "digits":
            path = shipped.save(digits._train(), OUT / f"{digits.TRAIN_VERSION}.safetensors", digits.TRAINED_BY, threads=1)
        elif which == "lm":
            path = shipped.save(lm._train(), OUT / f"{lm.LM_VERSION}.safetensors", lm.TRAINED_BY, torch.get_num_threads())
        else:
            raise SystemExit(f"unknown demo file {which!r}: digits, text or lm")
        path.chmod(0o644)
        data = path.read_bytes()
        print(f"{path}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
