import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # the shared helpers: models, helpers, oracle, archgen, ...



# Tests run tiny models: one intra-op thread is faster than two, and immune to a busy machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_model():
    """The digits CNN with its shipped weights (loaded, not trained: the same bits on every machine)."""
    from quantlens.demo import digits as demo

    return demo.model()


@pytest.fixture(scope="session")
def demo_data():
    from quantlens.demo import digits as demo

    return demo.data()
