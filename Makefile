# Two commands for a fresh machine: `make demo` (the main job on the offline sample city)
# and `make test` (the test suite). Both set up .venv first; set-up is idempotent.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup system ee-scripts demo test test-unit lint docs bench mutate clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium for the map screenshot test (Debian packages; needs root).
system:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium for the browser tests (sudo apt-get install chromium)"; fi; }

# The @google/earthengine npm client for tests/test_ee_script.py (npm registry only).
ee_scripts/node_modules/.package-lock.json: ee_scripts/package-lock.json
	cd ee_scripts && npm ci --no-audit --no-fund

ee-scripts: ee_scripts/node_modules/.package-lock.json

demo: setup
	$(BIN)/aether demo

lint: setup
	$(BIN)/ruff check aether tests pipelines
	$(BIN)/mypy

# The docs site in strict mode: a broken link, nav entry or API reference fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# Both tiers; `slow` tests run only with AETHER_ALL_TESTS=1 (as .ci/run sets) or `-m slow`.
test: setup system ee-scripts lint docs
	$(BIN)/pytest -q -n auto --dist loadfile --durations=25

# The fast tier alone (no servers, no subprocesses): under a minute.
test-unit: setup
	$(BIN)/pytest -q tests/unit

bench: setup
	$(BIN)/python tests/benchmarks/bench_zonal.py

# Mutation testing (not in CI: an hour or more): mutmut over the [tool.mutmut] scope of
# pyproject.toml, one process, then the score per module and the survivors.
# MUTANTS='aether.ml.step* aether.execution.jobs*' narrows it to some modules.
mutate: setup
	$(BIN)/mutmut run --max-children 1 $(MUTANTS)
	$(BIN)/python tests/mutation_score.py

clean:
	rm -rf $(VENV) aether-data site mutants
