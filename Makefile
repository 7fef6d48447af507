# Two commands do all the set-up on a fresh machine (Python 3.10+):
#   make demo   -- create .venv, install quantlens, run the embedded demo
#   make test   -- create .venv, install quantlens with test dependencies, run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# constraints.txt pins the local CPU wheel of torch on our machines; users bring their own torch.
PIPFLAGS := -q --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-fast venv install install-dev bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install $(PIPFLAGS) -e '.[dev]'
	# onnx2torch without its torchvision dependency: PyPI's torchvision does not import beside
	# our CPU torch, and quantlens only needs torchvision for NMS / RoIAlign nodes
	$(PIP) install $(PIPFLAGS) --no-deps 'onnx2torch>=1.5'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/quantlens demo --out quantlens-demo

test: install
	$(BIN)/python -m pytest tests

# the quick loop while working: everything but the end-to-end tests marked `slow`
test-fast: install
	$(BIN)/python -m pytest tests -m "not slow"

bench: install
	$(PIP) install $(PIPFLAGS) -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: BENCH_ARGS = --quick
bench-quick: bench

clean:
	rm -rf $(VENV) quantlens-demo .pytest_cache
