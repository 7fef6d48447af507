"""Noise split by source: each part equals a naive oracle (only that source quantized, full
forward passes), and the parts add up to the cell within the network's measured additivity."""

from __future__ import annotations

import math

from support.models import tiny_data, tiny_net
from support.oracle import naive_sweep
from support.report_helpers import write_run

import quantlens as ql
from quantlens.network.measure import quantize_network
from quantlens.cli import main
from quantlens.report.insights import causes


def _run():
    m, d = tiny_net(), tiny_data(n_batches=2, batch=8)
    return m, d, ql.analyze(m, d, w_bits=[3, 6], metric="kl", method=ql.Exact(split_noise=True))


def test_each_part_equals_naive_oracle():
    m, d, r = _run()
    for only, attr in (("weights", "noise_weights"), ("input", "noise_input"), ("output", "noise_output")):
        oracle = naive_sweep(m, d, [3, 6], 8, only=only)
        for (name, b), (noise, _, _) in oracle.items():
            got = getattr(r.cell(name, b), attr)
            assert abs(got - noise) <= 1e-5 * noise + 1e-10, (only, name, b, got, noise)


def test_parts_add_up_within_measured_additivity():
    m, d, r = _run()
    net = quantize_network(m, d, ql.QuantConfig.uniform(r.layer_names, w_bits=3), metric="kl")
    additivity = abs(net.noise / sum(c.noise for c in r.at(3)) - 1)  # the paper's relation, measured on this network
    assert additivity > 0.05
    # every layer but the logits layer (whose output quantizer rounds the logits the others feed)
    for c in r.at(3)[:-1]:
        total = sum(c.noise_parts.values())
        assert abs(total / c.noise - 1) <= additivity, (c.layer, total, c.noise)
        assert c.noise_source in ("weights", "input", "output")


def test_float_activations_have_weights_only_and_report_names_source(tmp_path):
    m, d = tiny_net(), tiny_data(n_batches=1, batch=8)
    r = ql.analyze(m, d, w_bits=[4], a_bits=None, metric="kl", method=ql.Exact(split_noise=True))
    for c in r.cells:
        assert math.isnan(c.noise_input) and math.isnan(c.noise_output)
        assert abs(c.noise_weights - c.noise) <= 1e-9 + 1e-6 * c.noise and c.noise_source == "weights"
    _, _, r = _run()
    back = ql.SweepResult.from_json(r.to_json())
    assert [c.noise_output for c in back.cells] == [c.noise_output for c in r.cells]
    info = {l.name: l for l in r.layers}
    c = max(r.at(3), key=lambda c: c.noise)
    assert any(f"the noise comes from its {'weights' if c.noise_source == 'weights' else c.noise_source}" in w
               for w in causes(r, info[c.layer], c, True))
    write_run(r, tmp_path)
    assert main(["report", str(tmp_path), "--bits", "3"]) == 0
    assert "noise source@3b" in (tmp_path / "report.html").read_text()
