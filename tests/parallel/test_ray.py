"""The Ray backend on a local 2-CPU Ray instance: same cells as the serial sweep (1e-6),
through the API and the CLI, and a rerun skips the tasks its cache already holds.

Ray comes with the ``dev`` extra (``pip install -e '.[dev]'``), so these run in CI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import ray
import torch
from support.helpers import close
from support.models import tiny_data, tiny_net, user_file

import quantlens as ql
from quantlens.sweep.collect import collect
from quantlens.sweep.api import make_config
from quantlens.parallel import SweepRecipe
from quantlens.sweep.run import run_sweep
from quantlens.parallel.ray_executor import RayExecutor, group_layers

pytestmark = [pytest.mark.slow, pytest.mark.ray]
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def _close(a, b, rel=1e-6):
    return close(a, b, rel, 1e-12 * rel)


def _same_cells(a: dict, b: dict) -> None:
    assert a["num_samples"] == b["num_samples"] and _close(a["baseline"], b["baseline"])
    assert len(a["cells"]) == len(b["cells"])
    for x, y in zip(a["cells"], b["cells"]):
        assert (x["layer"], x["w_bits"]) == (y["layer"], y["w_bits"])
        for k in ("noise", "sqnr_db", "metric", "degradation", "mean_shift", "w_clip", "ci_low", "ci_high", "samples"):  # intervals merge too
            assert _close(x[k], y[k]), (x["layer"], x["w_bits"], k, x[k], y[k])


def test_group_layers_balances_cost():
    groups = group_layers([0, 1, 2, 3, 4], [10.0, 8.0, 5.0, 3.0, 1.0], 2)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3, 4]
    # largest first, each to the lighter set (ties: the first): 10 | 8, 5 -> 10 + 3 | 13 -> 13 + 1 | 13
    assert groups == [[0, 3, 4], [1, 2]]
    loads = [sum([10.0, 8.0, 5.0, 3.0, 1.0][i] for i in g) for g in groups]
    assert loads == [14.0, 13.0]  # the best split of 27 into two sets
    assert group_layers([0, 1, 2], [1.0, 1.0, 1.0], 5) == [[0], [1], [2]]  # never more sets than layers


def test_ray_api_and_cli_equal_serial(local_ray, tmp_path):
    data = tiny_data(n_batches=3)
    serial = ql.analyze(tiny_net(), data, w_bits=(3, 8), metric="kl")
    r = ql.analyze(tiny_net(), data, w_bits=(3, 8), metric="kl", backend=RayExecutor(groups=3, shard_batches=2))
    _same_cells(r.to_dict(), serial.to_dict())

    user = user_file(tmp_path, n_batches=3)
    from quantlens.cli import main

    args = ["analyze", "--model", f"{user}:model", "--data", f"{user}:data", "--metric", "kl", "--w-bits", "3,8",
            "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "serial"), "--no-cache"]) == 0
    assert main(args + ["--out", str(tmp_path / "ray"), "--backend", "ray", "--ray-groups", "2"]) == 0
    _same_cells(json.loads((tmp_path / "ray" / "results.json").read_text()),
                json.loads((tmp_path / "serial" / "results.json").read_text()))
    assert not (tmp_path / "ray" / ".quantlens-cache").exists()


def test_ray_rerun_skips_finished_tasks(local_ray, tmp_path):
    data = tiny_data(n_batches=2)
    cfg = make_config((4,), 8)
    recipe = SweepRecipe(tiny_net(), data[0], cfg, "kl")
    ex = RayExecutor(groups=2, shard_batches=1)
    sweep, state, store = run_sweep(recipe, data, executor=ex, cache=tmp_path / "c")
    tasks = sorted((tmp_path / "c" / "tasks").glob("*.json"))
    assert len(tasks) == 4
    tasks[1].unlink()
    with pytest.warns(ql.QuantlensWarning, match="3 of 4 task"):
        sweep2, state2, _ = run_sweep(recipe, data, executor=ex, cache=tmp_path / "c")
    assert collect(sweep2, state2).cells == collect(sweep, state).cells
    serial = ql.analyze(tiny_net(), data, w_bits=(4,), metric="kl")
    _same_cells(collect(sweep2, state2).to_dict(), serial.to_dict())


class _DiesOnceInAWorker(torch.nn.Module):
    """The tiny net; the first Ray worker that unpickles it dies (``os._exit``), as a lost machine would."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.net = tiny_net()
        self.driver_pid = os.getpid()
        self.marker = str(marker)

    def forward(self, x):
        return self.net(x)

    def __setstate__(self, state):
        super().__setstate__(state)
        if os.getpid() != self.driver_pid and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)


def test_a_task_whose_worker_dies_is_retried_not_lost(local_ray, tmp_path):
    marker = tmp_path / "died"
    data = tiny_data(n_batches=2)
    model = _DiesOnceInAWorker(marker).eval()
    r = ql.analyze(model, data, w_bits=(4,), metric="kl", backend=RayExecutor(groups=2, shard_batches=1))
    assert marker.exists()  # a worker really died
    serial = ql.analyze(model, data, w_bits=(4,), metric="kl")
    _same_cells(r.to_dict(), serial.to_dict())
