# Quick start: `make run` (demo exporter on :10150) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test test-fast lint typecheck pytest bench clean docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/gcore-gpu-image-exporter --demo --interval 5s $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy --strict exporter tests bench deploy/prometheus/render_rules.py grafana docs

pytest: $(VENV)/.installed-test
	$(BIN)/pytest

test: lint typecheck pytest

# The tests without those marked slow (end-to-end with Prometheus, soak, bench smoke, wheel
# install): under a minute, for while you work; `make test` runs everything.
test-fast: $(VENV)/.installed-test
	$(BIN)/pytest -m "not slow" -n 2  # two workers (pytest-xdist): about 50 s on 2 cores

# One table (also written to bench-results.json): 1k, 10k and 50k discovered images and 2,000
# explicit ids, next to prometheus_client's stock handler and a prebuilt buffer; then the scrape
# load with and without TLS. About 10 minutes.
bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.table --json bench-results.json
	$(BIN)/python -m bench.scrape_load

# The parts of docs/*.md that restate code (between GENERATED markers); tests/test_docs.py checks them.
docs: $(VENV)/.installed
	$(BIN)/python docs/generate.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
