# The README's two commands: `make demo` and `make test`. Each creates or updates the
# project's virtual environment (.venv) first, so a fresh clone needs nothing else.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test test-fast bench env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[blender,smpl,ray,dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/btdm demo --out out/demo

# The whole suite in one pytest-xdist worker per core this process may use (TEST_WORKERS=0: in this one
# process, in order), each test file in one worker (its module fixtures start once), then its 15 slowest
# tests. The cores are counted here: xdist's `auto` counts physical cores once psutil is installed (1 on
# a 2-vCPU machine with hyperthreads).
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)))")
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

# The inner loop: everything but the tests marked slow (more than ~30 s on a 2-core machine).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" --durations=10 tests

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf out .pytest_cache
