# One command each: `make demo`, `make test`. Everything installs into .venv/.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export JAX_PLATFORMS ?= cpu
export XLA_PYTHON_CLIENT_PREALLOCATE ?= false

.PHONY: setup test test-slow demo parity bench gpu-check lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: this is the CPU wheel on the machine's disk; anything looser pulls CUDA.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[jax,video,dev,example]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

demo: setup
	$(VENV)/bin/dfc demo

# Every torch policy on the tiny configurations; bf16 and mixed are each measured against both flax-era
# norm numerics (docs/PARITY.md). The committed copies of these reports are docs/parity/tiny-*.
parity: setup
	$(VENV)/bin/dfc parity --suite all --config tiny --precision fp32 --report reports/parity-fp32
	$(VENV)/bin/dfc parity --suite all --config tiny --precision bf16 --report reports/parity-bf16
	$(VENV)/bin/dfc parity --suite all --config tiny --precision mixed --report reports/parity-mixed

bench: setup
	$(PY) -m bench.run
	$(PY) -m bench.batch_bench

# The CUDA readiness check (bench/gpu_check): no `setup` (a lent GPU has no package registry: it runs the
# image's python3), and JAX_PLATFORMS=cpu above is dropped unless DEVICE=cpu sets it back.
# `make gpu-check DEVICE=cpu CONFIG=tiny` runs every stage's plumbing on tiny sizes on a CPU.
DEVICE ?= cuda
CONFIG ?= $(if $(filter cpu,$(DEVICE)),tiny,published)
GPU_CHECK_OUT ?= reports/gpu-check
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	env -u JAX_PLATFORMS $(if $(filter cpu,$(DEVICE)),JAX_PLATFORMS=cpu) $(GPU_PY) -m bench.gpu_check \
		--device $(DEVICE) --config $(CONFIG) --out $(GPU_CHECK_OUT) $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache reports
