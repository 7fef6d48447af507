"""Mergeable sums of a sweep over part of the data and part of the layers.

Two states computed on different data shards (or layer groups, processes, machines) merge
into the state of one serial run: every field is a sum, a count, or a min/max.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantlens.metrics.task import Metric
from quantlens.quant.observers import MinMaxObserver
from quantlens.engine.accumulate import CellAccumulator, ChannelStats

__all__ = ["SweepState"]


@dataclass
class SweepState:
    """Mergeable sums of a sweep over part of the data (and possibly part of the layers)."""

    cells: dict[tuple[int, int], CellAccumulator]
    baseline: Metric
    channels: dict[int, ChannelStats]
    in_range: dict[int, MinMaxObserver]
    out_range: dict[int, MinMaxObserver]
    num_samples: int = 0
    batches: int = 0

    def merge(self, other: "SweepState") -> "SweepState":
        """Sums of both. Cells and layers present in only one side are kept as they are."""

        def merged(a: dict, b: dict) -> dict:
            out = dict(a)
            for k, v in b.items():
                out[k] = out[k].merge(v) if k in out else v
            return out

        return SweepState(
            merged(self.cells, other.cells),
            self.baseline.merge(other.baseline),
            merged(self.channels, other.channels),
            merged(self.in_range, other.in_range),
            merged(self.out_range, other.out_range),
            self.num_samples + other.num_samples,
            self.batches + other.batches,
        )

    def to_dict(self) -> dict:
        return {
            "cells": [[i, b, acc.state()] for (i, b), acc in self.cells.items()],
            "baseline": self.baseline.state(),
            "channels": {str(i): c.state() for i, c in self.channels.items()},
            "in_range": {str(i): o.to_dict() for i, o in self.in_range.items()},
            "out_range": {str(i): o.to_dict() for i, o in self.out_range.items()},
            "num_samples": self.num_samples,
            "batches": self.batches,
        }
