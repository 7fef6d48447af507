"""``python -m benchmarks.smollm_gguf --plan DIR --out DIR``: SmolLM2-135M's plan over GGUF types, to a GGUF file and back.

For the plan in ``DIR/plan.json`` (from ``quantlens plan --formats gguf-q4_0,gguf-q8_0,bf16``)
and a variant of it with K-quants (each ``mlp.down_proj`` the plan put in ``gguf-q4_0`` as
``gguf-q4_k``, in ``gguf-q8_0`` as ``gguf-q6_k``: their rows of 1536 hold super-blocks of 256):

1. ``export_gguf`` (the tokenizer copied from the demo's own GGUF) and ``verify_gguf``: every
   tensor's type and dequantized values against the plan and the simulation;
2. an independent reader: transformers loads the written GGUF (its own Q/K un-permutation and
   dequantization through ``gguf``) and its logits are compared with the simulated model's
   (the float model with each planned weight replaced by ``quantize_weight``), on the data;
3. perplexity of float, simulation and reloaded file; file size; seconds per step.

Writes one JSON file (``OUT/smollm_gguf.json``) and prints the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
import warnings
from pathlib import Path

import torch


def _perplexity(model, data) -> tuple[float, list[torch.Tensor]]:  # noqa: ANN001
    nll, n, logits = 0.0, 0, []
    with torch.no_grad():
        for b in data:
            y = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            logits.append(y)
            lp = torch.log_softmax(y[:, :-1], dim=-1)
            nll -= float(lp.gather(-1, b["input_ids"][:, 1:, None]).sum())
            n += b["input_ids"][:, 1:].numel()
    return math.exp(nll / n), logits


def _simulated(model, config):  # noqa: ANN001
    from quantlens.quant.quantizer import quantize_weight

    sim = copy.deepcopy(model)
    with torch.no_grad():
        for name, lq in config.layers:
            if lq.weight is not None:
                m = sim.get_submodule(name)
                m.weight = torch.nn.Parameter(quantize_weight(m.weight.detach(), lq.weight).weight, requires_grad=False)
    return sim


def _k_variant(config):  # noqa: ANN001
    from quantlens.core.layer_config import LayerQuant, QuantConfig
    from quantlens.quant.spec import QuantSpec

    swap = {"gguf-q4_0": "gguf-q4_k", "gguf-q8_0": "gguf-q6_k"}
    layers = []
    for name, lq in config.layers:
        f = lq.weight.format if lq.weight is not None else None
        if name.endswith("mlp.down_proj") and f in swap:
            lq = LayerQuant(weight=QuantSpec(format=swap[f]), act=lq.act)
        layers.append((name, lq))
    return QuantConfig(tuple(layers))


def hand_plan():  # noqa: ANN201
    """Layers 0, 15 and 29 in every non-K type (q/k Q4_0, v Q8_0, o Q5_0, gate Q4_1, up MXFP4, down Q4_0 / Q8_0), lm_head BF16."""
    from quantlens.core.layer_config import LayerQuant, QuantConfig
    from quantlens.quant.spec import QuantSpec

    roles = {"self_attn.q_proj": "gguf-q4_0", "self_attn.k_proj": "gguf-q4_0", "self_attn.v_proj": "gguf-q8_0",
             "self_attn.o_proj": "gguf-q5_0", "mlp.gate_proj": "gguf-q4_1", "mlp.up_proj": "gguf-mxfp4"}
    fmt = {f"model.layers.{i}.{r}": f for i in (0, 15, 29) for r, f in roles.items()}
    fmt.update({"model.layers.0.mlp.down_proj": "gguf-q4_0", "model.layers.15.mlp.down_proj": "gguf-q4_0",
                "model.layers.29.mlp.down_proj": "gguf-q8_0", "lm_head": "bf16"})
    return QuantConfig(tuple((n, LayerQuant(weight=QuantSpec(format=f), act=None)) for n, f in fmt.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", required=True, help="a `quantlens plan` output directory (plan.json) or file, or 'hand'")
    ap.add_argument("--out", required=True)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import transformers

    from quantlens.demo import smollm
    from quantlens.export.gguf import export_gguf, read_plan
    from quantlens.quant.formats import get_format
    from quantlens.runtime.gguf_check import verify_gguf

    out = Path(args.out)
    model, data = smollm.model(), smollm.data(windows=args.windows, tokens=args.tokens)
    ppl_float, y_float = _perplexity(model, data)
    plan = hand_plan() if args.plan == "hand" else read_plan(args.plan)
    result: dict = {"windows": args.windows, "tokens": args.tokens, "float_perplexity": ppl_float, "runs": {}}
    for label, cfg in (("plan", plan), ("plan_k", _k_variant(plan))):
        d = out / label
        d.mkdir(parents=True, exist_ok=True)
        cfg.to_json(d / "quant_config.json")
        t0 = time.perf_counter()
        res = export_gguf(model, d / "quant_config.json", d, tokenizer_gguf=smollm.gguf_path(), model_name="quantlens.demo.smollm:model")
        t_export = time.perf_counter() - t0
        t0 = time.perf_counter()
        ver = verify_gguf(res.path, model, d / "quant_config.json")
        t_verify = time.perf_counter() - t0
        ver.to_json(d / "verify.json")
        sim = _simulated(model, cfg)
        ppl_sim, y_sim = _perplexity(sim, data)
        t0 = time.perf_counter()
        back = transformers.AutoModelForCausalLM.from_pretrained(str(d), gguf_file=res.path.name, dtype=torch.float32,
                                                                  use_cache=False).eval()
        t_reload = time.perf_counter() - t0
        ppl_back, y_back = _perplexity(back, data)
        diff = max(float((a - b).abs().max()) for a, b in zip(y_sim, y_back))
        agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(y_sim, y_back)) / sum(a[..., 0].numel() for a in y_sim)
        planned = [t for t in res.tensors if t.fmt is not None]
        params = dict(model.named_parameters(remove_duplicate=False))
        n_planned = sum(params[t.source].numel() for t in planned)
        bits = sum(params[t.source].numel() * get_format(t.fmt).effective_bits for t in planned) / max(1, n_planned)
        run = {
            "types": res.type_counts, "planned_tensors": len(planned), "planned_effective_bits": bits,
            "file_mb": res.path.stat().st_size / 2**20, "type_file_lines": len(res.type_file.read_text().splitlines()),
            "all_types_match": ver.all_types_match, "all_values_equal": ver.all_values_equal, "max_abs_diff": ver.max_abs_diff,
            "values_compared": sum(t.num_values for t in ver.tensors),
            "simulated_perplexity": ppl_sim, "reloaded_perplexity": ppl_back,
            "reloaded_vs_simulated_max_logit_diff": diff, "reloaded_vs_simulated_token_agreement": agree,
            "seconds": {"export": t_export, "verify": t_verify, "transformers_reload": t_reload},
        }
        result["runs"][label] = run
        print(label, json.dumps(run, indent=1))
    (out / "smollm_gguf.json").write_text(json.dumps(result, indent=1))
    print(f"float perplexity {ppl_float:.4f}; wrote {out / 'smollm_gguf.json'}")


if __name__ == "__main__":
    main()
