# Two entry points (see README): `make demo` and `make test`. Both install into .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export HF_HUB_OFFLINE ?= 1

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
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/doodl-ray bench grad
