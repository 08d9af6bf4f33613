# qwen-serve — the README's commands. `make` lists them.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
PIP       := $(BIN)/pip
STAMP     := $(VENV)/.installed
REF_STAMP := $(VENV)/.reference

.DEFAULT_GOAL := help
.PHONY: help install reference browser test lint typecheck test-native serve download bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml native/CMakeLists.txt $(wildcard native/src/*.c native/src/*.h native/include/*.h)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools
	$(PIP) install -q scikit-build-core
	# simde-py ships only an sdist: build it in pip's isolated environment
	$(PIP) install -q "simde-py>=0.8.2"
	$(PIP) install -q --no-build-isolation -e ".[serve,test]"
	touch $@

install: $(STAMP) ## create .venv and build libqwen + the package into it

# The official implementation (PyTorch) that the parity tests compare against.
# torch==2.13.0 is a CPU build; qwen-asr is installed without its heavy extras.
$(REF_STAMP): $(STAMP)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q transformers==4.57.6 accelerate==1.12.0 librosa
	$(PIP) install -q --no-deps qwen-asr==0.0.6
	$(PIP) install -q nagisa==0.2.11 soynlp==0.0.493 qwen-omni-utils sox
	touch $@

reference: $(REF_STAMP) ## install the official qwen-asr reference (torch, CPU)

# Debian's Chromium and its driver for tests/browser (the playground page); no download of a browser
# by a test tool. Needs root; elsewhere it says what to run.
browser: ## install chromium + chromium-driver (apt-get, as root) for the browser tests
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
		echo "run as root: apt-get update && apt-get install -y chromium chromium-driver"; exit 1; \
	fi

PY_SOURCES := qwen_serve tests benchmarks native/tools

lint: $(STAMP) ## ruff: the checks and the formatting
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)

typecheck: $(STAMP) ## mypy
	$(BIN)/mypy

test: $(REF_STAMP) lint typecheck ## everything: lint, types, native + Python tests, parity vs the reference
	$(BIN)/python -m pytest -q

serve: $(STAMP) ## start the server (serve_config.yaml) on QWEN_HOST:QWEN_PORT
	$(BIN)/python -m qwen_serve download --if-missing
	$(BIN)/python -m qwen_serve serve serve_config.yaml

download: $(STAMP) ## fetch Qwen/Qwen3-ASR-0.6B and -1.7B into ./models
	$(BIN)/python -m qwen_serve download

bench: $(REF_STAMP) ## speed vs the official implementation (full-size random 0.6B)
	$(BIN)/python benchmarks/bench_engine.py

clean: ## remove build products
	rm -rf build $(VENV)
