# The two commands a new machine needs: `make demo` and `make test`.
# Both create their own virtualenv in .venv and install guardpool into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SECONDS ?= 60

.PHONY: demo test lint typecheck unit bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m guardpool demo

lint: $(STAMP)
	$(VENV)/bin/ruff check guardpool tests bench fuzz examples
	$(VENV)/bin/ruff format --check guardpool

typecheck: $(STAMP)
	$(VENV)/bin/mypy guardpool

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

fuzz: $(STAMP)
	$(PY) -m fuzz.run --seconds $(SECONDS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
