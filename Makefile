# The two commands a new machine needs: `make demo` and `make test`.
# Both create their own virtualenv in .venv and install guardpool into it with
# the exact versions the test suite runs with (requirements/dev.lock), so a new
# release of any dependency cannot turn the suite red or change behaviour.
# `make lock` refreshes that lock (see requirements/README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK := requirements/dev.lock
# pip itself is pinned too: its resolver decides what a constraints file means.
PIP_VERSION := 25.3
# uv only compiles the lock; nothing at test time needs it.
UV_VERSION := 0.13.9
SECONDS ?= 60

.PHONY: demo test lint typecheck unit bench fuzz lock clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check 'pip==$(PIP_VERSION)'
	$(PY) -m pip install -q --disable-pip-version-check -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m guardpool demo
	@echo
	@echo "guardpool is installed in $(VENV): run $(VENV)/bin/guardpool --help"
	@echo "(or 'source $(VENV)/bin/activate' and then just 'guardpool ...')"

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

# Re-resolve every dependency of the test suite to the newest versions the
# ranges in pyproject.toml allow, and write them to the lock. The lock is for
# the platform CI runs on (CPython 3.11, x86_64 manylinux): uv's --universal
# mode ignores wheel tags and picked an atheris with no cp311 wheel.
# Review the diff, run `make test`, commit both files.
lock:
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --disable-pip-version-check 'uv==$(UV_VERSION)'
	.lock-venv/bin/uv pip compile pyproject.toml --extra dev \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    --no-header --quiet -o $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .lock-venv .mypy_cache .ruff_cache .pytest_cache .hypothesis
