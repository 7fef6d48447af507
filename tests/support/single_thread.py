"""Module fixtures that run tiny-model tests on one intra-op thread, then restore the count.

The issue-5 tests run many small forward passes; on a shared 2-core machine the OpenMP pool
of 2 threads spins against other jobs and makes an 8x8 convolution ~300x slower than on one
thread. Import ``one_thread`` (or, in modules that use the demo, ``one_thread_demo``) into a
test module to apply it to that module only. ``one_thread_demo`` first loads the shared demo
model (its shipped weights).
"""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


def _single() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    yield from _single()


@pytest.fixture(autouse=True, scope="module")
def one_thread_demo(demo_model) -> Iterator[None]:  # noqa: ANN001 - the session's demo model, loaded first
    yield from _single()
