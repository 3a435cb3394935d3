# Two entry points (see README): `make demo` and `make test`. Both install into .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export HF_HUB_OFFLINE ?= 1
# Test files run in parallel, a file per worker process (tests in one file share its fixtures and fixed paths);
# the tests marked `alone` (several Ray nodes, timed recoveries) run after them, on their own.
TEST_WORKERS ?= 2

.PHONY: install demo test bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'

demo: install
	$(BIN)/doodl-ray run jobs/digits-demo.yaml
	$(BIN)/doodl-ray sheet out/digits-demo --out out/digits-demo/contact-sheet.png

test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20 -m 'not alone' tests
	$(BIN)/python -m pytest -q --durations=5 -m alone tests

bench: install
	$(BIN)/doodl-ray bench grad
