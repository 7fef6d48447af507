"""``python -m benchmarks.cnn_formats``: EfficientNet-Lite0 (ImageNet weights, real photos) under
``mxfp8``, ``fp8-e4m3`` and ``int8`` weights (8-bit or float activations), exact cells, top-1 agreement.

Prints each format's five worst layers, its summed degradation and the cone engine's time.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--formats", default="mxfp8,fp8-e4m3,int8")
    ap.add_argument("--a-bits", default="8", help="activation bits, or none")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    import quantlens as ql
    from benchmarks.data import photo_crops
    from benchmarks.models import efficientnet_lite0

    formats = args.formats.split(",")
    t0 = time.perf_counter()
    r = ql.analyze(efficientnet_lite0(), photo_crops(args.images, args.batch), formats=formats, metric="agreement",
                   a_bits=None if args.a_bits == "none" else int(args.a_bits),
                   model_name="efficientnet-lite0")
    out = {"seconds": time.perf_counter() - t0, "images": args.images, "formats": r.w_bits, "summed": {}, "worst": {}}
    for f in r.w_bits:
        out["summed"][f] = r.summed_degradation(f)
        out["worst"][f] = [(c.layer, c.degradation, c.ci_low, c.ci_high) for c in r.worst(f, 5)]
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
