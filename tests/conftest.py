import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # the shared helpers: models, helpers, oracle, archgen, ...



# Tests run tiny models: one intra-op thread is faster than two, and immune to a busy machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_captures():
    """Each test captures its models anew: the process's capture cache holds nothing from another test
    (a test that patches a capture path must reach it)."""
    from quantlens.graph.capture_cache import capture_cache

    capture_cache().clear()
    yield
    capture_cache().clear()


@pytest.fixture(scope="session")
def demo_model():
    """The digits CNN with its shipped weights (loaded, not trained: the same bits on every machine)."""
    from quantlens.demo import digits as demo

    return demo.model()


@pytest.fixture(scope="session")
def demo_data():
    from quantlens.demo import digits as demo

    return demo.data()
