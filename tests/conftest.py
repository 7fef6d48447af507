import os
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # the shared helpers: models, helpers, oracle, archgen, ...



# Tests run tiny models: one intra-op thread is faster than two, and immune to a busy machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _quantlens_cache(tmp_path_factory):
    """Share one trained demo model across the test session, away from the user's cache."""
    if "QUANTLENS_CACHE" not in os.environ:
        os.environ["QUANTLENS_CACHE"] = str(tmp_path_factory.mktemp("qlcache"))
    yield


@pytest.fixture(scope="session")
def demo_model():
    from quantlens.demo import digits as demo

    return demo.model()


@pytest.fixture(scope="session")
def demo_data():
    from quantlens.demo import digits as demo

    return demo.data()
