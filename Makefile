# Two commands do everything on a fresh machine:
#   make demo   trains the SST Tree-LSTM briefly and compares batching policies
#   make test   checks formatting and lint (ruff), then runs the test suite
# Both create the virtual environment (.venv) and install the package first.
# make notebooks re-executes notebooks/*.ipynb in place (full sizes), storing their outputs.
# make bench-device DATA=dir OUT=dir runs the Tree-LSTM and lattice benchmarks on a machine whose python3
#   already has JAX for its accelerator (no virtual environment, nothing fetched); DATA holds trees/ and
#   lattice/ (synthetic data without it); each model runs in its own process and writes
#   OUT/bench_device_MODEL.{json,md} (BENCH_ARGS: more flags for edbatch bench).
# make test-device runs the batched-against-unbatched checks (values and gradients) and the
#   no-recompilation check on such a machine, with float32 matrix products at full precision
#   (TEST_ARGS: more flags for pytest).
# make device-check DATA=dir OUT=dir does both there as one prepared run: the machine and package versions,
#   each model's benchmark, a Tree-LSTM variant with XLA's command buffers for loops, then the tests, each
#   step under its own time limit, all logged to OUT/log.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint format notebooks install clean bench-device test-device device-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/edbatch demo $(ARGS)

test: $(VENV)/.installed lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=12 $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format --quiet .
	$(VENV)/bin/ruff check --quiet --fix .

notebooks: $(VENV)/.installed
	EDBATCH_NOTEBOOK_QUICK=0 JUPYTER_PATH=$(abspath $(VENV))/share/jupyter $(PY) -c 'import sys, nbclient, nbformat; \
	[(print("executing", p, flush=True), nbformat.write(nbclient.execute(nbformat.read(p, as_version=4), \
	kernel_name="python3", timeout=1800, record_timing=False), p)) for p in sys.argv[1:]]' notebooks/*.ipynb

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

OUT ?= .
DEVICE_BENCH := --policy agenda,fsm --layout dynet,planned --mode infer,train --batches 4 --rounds 3 --floor
# Engines per model: both on the Tree-LSTM; the fused engine alone on lattices, whose stepwise rows
# (hundreds of small programs to compile per mini-batch shape) do not fit the device run's time limit.
DEVICE_ENGINES_treelstm := fused,stepwise
DEVICE_ENGINES_lattice_lstm := fused

DEVICE_MODELS ?= treelstm lattice_lstm

bench-device:
	mkdir -p $(OUT)
	python3 -c 'import jax; print("devices:", jax.devices())'
	$(foreach model,$(DEVICE_MODELS),PYTHONPATH=$(CURDIR) PYTHONUNBUFFERED=1 python3 -m edbatch_jax.apps.cli bench \
		--model $(model) $(if $(DATA),--data-root $(DATA)) $(DEVICE_BENCH) --engine $(or $(DEVICE_ENGINES_$(model)),fused) \
		$(BENCH_ARGS) --json $(OUT)/bench_device_$(model)$(DEVICE_TAG).json --markdown $(OUT)/bench_device_$(model)$(DEVICE_TAG).md &&) true

test-device:
	JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=$(CURDIR) \
		python3 -m pytest -q -p no:cacheprovider -n 8 --durations=8 $(DEVICE_TESTS) -k '$(DEVICE_TEST_SELECT)' $(TEST_ARGS)

DEVICE_BENCH_S ?= 240
DEVICE_TEST_S ?= 140
# A variant of the Tree-LSTM run with XLA's GPU command buffers extended to loops and conditionals, so that
# the fused program's loop need not return to the host every iteration (written as bench_device_treelstm_cmdbuf.*).
DEVICE_VARIANT_XLA_FLAGS ?= --xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL
DEVICE_VARIANT_S ?= 90

device-check:
	mkdir -p $(OUT)
	{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true; \
	  nproc; python3 -c 'import jax, jaxlib, flax, optax, numpy; print("jax", jax.__version__, "jaxlib", \
	  jaxlib.__version__, "flax", flax.__version__, "optax", optax.__version__, "numpy", numpy.__version__, jax.devices())'; \
	} 2>&1 | tee $(OUT)/log
	for model in $(DEVICE_MODELS); do \
		timeout $(DEVICE_BENCH_S) $(MAKE) --no-print-directory bench-device DEVICE_MODELS=$$model 2>&1 | tee -a $(OUT)/log; \
	done
	XLA_FLAGS="$(DEVICE_VARIANT_XLA_FLAGS)" timeout $(DEVICE_VARIANT_S) $(MAKE) --no-print-directory bench-device \
		DEVICE_MODELS=treelstm DEVICE_ENGINES_treelstm=fused DEVICE_TAG=_cmdbuf BENCH_ARGS="--policy fsm --layout dynet" \
		2>&1 | tee -a $(OUT)/log
	timeout $(DEVICE_TEST_S) $(MAKE) --no-print-directory test-device 2>&1 | tee -a $(OUT)/log
