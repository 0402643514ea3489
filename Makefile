# reward-triton: `make demo` runs the whole job on the embedded demo model, `make test` passes the tests.
# Python 3.11 or 3.12 (NVIDIA's Triton TRT-LLM containers from 25.01 ship 3.12): the first one found.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || echo python3.11)
VENV := .venv
# SYSTEM_PYTHON=1 (NVIDIA's Triton TRT-LLM container): no virtualenv; this project goes into the container's own
# Python without replacing its torch / TensorRT-LLM (`pip install --no-deps -e .` and the few pure-Python packages
# the converter needs), and mpirun is the container's Open MPI (docs/production.md).
SYSTEM_PYTHON ?=
ifeq ($(SYSTEM_PYTHON),1)
PY := $(PYTHON)
MPIRUN := mpirun
STAMP := build/.system-python-installed
SYSTEM_DEPS := sentencepiece pyyaml tensorstore safetensors ml_dtypes tqdm "tritonclient[grpc,http]" mpi4py
else
PY := $(VENV)/bin/python
MPIRUN := $(VENV)/bin/mpirun
STAMP := $(VENV)/.installed
endif

.PHONY: install test lint format bench bench-convert bench-engine engine serve perf demo
.DEFAULT_GOAL := help

help:
	@echo "make demo | install | test | lint | bench [bench-convert|bench-engine] | engine [NEMO= TP= PP= DTYPE= BACKEND=torch|tensorrtllm BATCH_INVARIANT=1 RENDER_ARGS=] | serve | perf"

ifeq ($(SYSTEM_PYTHON),1)
$(STAMP): pyproject.toml
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q $(SYSTEM_DEPS)
	mkdir -p $(dir $(STAMP)) && touch $(STAMP)
else
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)
endif

install: $(STAMP)

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# `make bench`: conversion throughput (tooling.bench_convert) and engine speed against Hugging Face on the same weights,
# threads and dtype (tooling.bench_engine; BENCH_ENGINE_ARGS e.g. `--device cuda --preset llama2-13b`).
BENCH_ENGINE_ARGS ?= --device cpu --preset cpu-nemotron,cpu-llama --dtype float32,bfloat16 --json build/bench/engine.json
bench: bench-convert bench-engine

bench-convert: install
	$(PY) -m tooling.bench_convert

bench-engine: install
	$(PY) -m tooling.bench_engine $(BENCH_ENGINE_ARGS)

# ---- serving: `make engine` renders model_repository/, `make serve` runs tritonserver on it, `make perf` measures.
# The embedded demo checkpoint (demo/README.md) is the default NEMO; `NEMO=build/fixture-nemotron` (or -llama)
# generates and serves a random-weight fixture instead.
DEMO_NEMO := demo/checkpoint
NEMO ?= $(DEMO_NEMO)
TP ?= 1
PP ?= 1
NP ?= 1
MPIRUN_ARGS ?= --allow-run-as-root --oversubscribe
TRTLLM_BUILD_ARGS ?=
# BACKEND=tensorrtllm: KV_CACHE_REUSE=0 renders enable_kv_cache_reuse "false"; ENGINE_DIR_IN_CONTAINER=/engines/x
# writes the engine path as the serving container sees it; RENDER_ARGS passes more render options.
# BACKEND=torch: BATCH_INVARIANT=1 adds --batch-invariant (one forward per sequence, so a conversation's scores never
# depend on what it was batched with; docs/client.md).
KV_CACHE_REUSE ?= 1
ENGINE_DIR_IN_CONTAINER ?=
BATCH_INVARIANT ?=
RENDER_ARGS ?=
RENDER_FLAGS = $(if $(filter 0,$(KV_CACHE_REUSE)),--no-kv-cache-reuse) \
	$(if $(ENGINE_DIR_IN_CONTAINER),--engine-dir-in-container $(ENGINE_DIR_IN_CONTAINER)) \
	$(if $(filter 1 true yes,$(BATCH_INVARIANT)),--batch-invariant) $(RENDER_ARGS)
CONVERT_ARGS ?=
DTYPE ?= bfloat16
BACKEND ?= torch
MAX_BATCH_SIZE ?= 64
ENGINE_DIR ?= build/engine
CHECKPOINT := $(ENGINE_DIR)/checkpoint
TRTLLM_ENGINE := $(ENGINE_DIR)/trtllm
REPOSITORY := model_repository
SERVE_ARGS ?=
PERF_CONCURRENCY ?= 1:16
# e.g. PERF_ARGS='--baseline build/perf-before/perf.json --output build/perf-after': tokens/s before/after
PERF_ARGS ?=

build/fixture-%: | $(STAMP)
	$(PY) -m tooling.fixtures --arch $* --format zarr --seq-length 512 --out $@

# hidden 512, 8 layers (the engine benchmark's shape): `make engine perf NEMO=build/fixture-large-nemotron`
build/fixture-large-%: | $(STAMP)
	$(PY) -m tooling.bench_fixture --arch $* --seq-length 512 --out $@

engine: install $(filter build/fixture-%,$(NEMO))
ifeq ($(shell test "$(NP)" -gt 1 2>/dev/null && echo mpi),mpi)
	$(MPIRUN) $(MPIRUN_ARGS) -n $(NP) $(PY) -m build_engine.mpi_convert \
		--nemo $(NEMO) --output $(CHECKPOINT) --tp $(TP) --pp $(PP) --dtype $(DTYPE) --no-progress $(CONVERT_ARGS)
else
	$(PY) -m build_engine convert --nemo $(NEMO) --output $(CHECKPOINT) --tp $(TP) --pp $(PP) --dtype $(DTYPE) --no-progress $(CONVERT_ARGS)
endif
ifeq ($(BACKEND),tensorrtllm)
	$(PY) -m build_engine.trtllm_build --checkpoint $(CHECKPOINT) --output $(TRTLLM_ENGINE) --max-batch-size $(MAX_BATCH_SIZE) \
		$(TRTLLM_BUILD_ARGS)
	$(PY) -m build_engine.repository --checkpoint $(CHECKPOINT) --backend tensorrtllm --engine-dir $(TRTLLM_ENGINE) \
		--repository $(REPOSITORY) --max-batch-size $(MAX_BATCH_SIZE) $(RENDER_FLAGS)
else
	$(PY) -m build_engine.repository --checkpoint $(CHECKPOINT) --backend $(BACKEND) --repository $(REPOSITORY) \
		--max-batch-size $(MAX_BATCH_SIZE) $(RENDER_FLAGS)
endif

# The whole job on the embedded demo model: install, convert + render, start tritonserver, score samples, stop.
demo: engine
	$(PY) -m demo.run --repository $(REPOSITORY)
	@case "$(NEMO)" in \
	$(DEMO_NEMO)) echo "note: the demo model is a toy trained on synthetic arithmetic (sums and differences up to 99, \
	products up to 12 x 12) and capital-city questions; its scores mean something there and nowhere else \
	(demo/README.md).";; \
	build/fixture-*) echo "note: $(NEMO) is a RANDOM-WEIGHT fixture: the pipeline is real, these scores mean nothing.";; \
	esac

$(REPOSITORY)/ensemble/config.pbtxt:
	$(MAKE) engine

# OPENAI_PORT=9000 also runs reward-openai (the OpenAI-compatible reward API, docs/openai.md) beside tritonserver;
# it answers 503 until the ensemble is ready. OPENAI_TRITON_URL must match tritonserver's gRPC port. Ctrl-C, SIGTERM
# or SIGHUP (to make or its process group) stops both and ends the recipe cleanly; both run in the background so
# that the shell's traps fire at once (a shell defers a trap until its foreground command ends).
OPENAI_PORT ?=
OPENAI_HOST ?= 0.0.0.0
OPENAI_TRITON_URL ?= localhost:8001
OPENAI_ARGS ?=

serve: install $(REPOSITORY)/ensemble/config.pbtxt
ifeq ($(OPENAI_PORT),)
	$(VENV)/bin/tritonserver --model-repository=$(REPOSITORY) $(SERVE_ARGS)
else
	$(VENV)/bin/tritonserver --model-repository=$(REPOSITORY) $(SERVE_ARGS) & triton=$$!; \
	$(VENV)/bin/reward-openai --url $(OPENAI_TRITON_URL) --host $(OPENAI_HOST) --port $(OPENAI_PORT) $(OPENAI_ARGS) & \
	gateway=$$!; trap 'kill $$triton $$gateway 2>/dev/null; wait $$triton $$gateway 2>/dev/null' EXIT; \
	trap 'exit 0' INT TERM HUP; wait $$gateway
endif

$(VENV)/bin/perf_analyzer: | $(STAMP)
	$(PY) -m tooling.perf install

perf: install $(REPOSITORY)/ensemble/config.pbtxt $(VENV)/bin/perf_analyzer
	$(PY) -m tooling.perf run --repository $(REPOSITORY) --concurrency $(PERF_CONCURRENCY) $(PERF_ARGS)
