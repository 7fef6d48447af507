"""Loading a transformers model prints nothing of torchao's own (its unloadable CUDA kernels on a CPU)."""

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")

SCRIPT = """
import sys
from quantlens.demo import lm
lm.model()
print("torchao" in sys.modules)
"""


def test_loading_a_transformers_model_prints_no_torchao_lines() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Failed to load" not in r.stderr and "register_constant" not in r.stderr, r.stderr[-2000:]
    if importlib.util.find_spec("torchao") is not None:
        assert r.stdout.split()[-1] == "True"  # imported (by transformers anyway), only quietly
