# The project's commands. `make run` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint completions man bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## Run the daemon in the foreground on a local demo config under .demo/.
run: $(STAMP)
	$(PY) -m chasquid.daemon.demo .demo
	$(VENV)/bin/chasquid --config_dir=.demo/config -v=1 --alsologtostderr

## Run the whole test suite.
test: $(STAMP)
	$(PY) -m pytest -n 2 tests

## ruff, mypy and the import contract (pyproject.toml's [tool.importlinter]): all must be clean.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## Regenerate the shell completion scripts in completions/.
completions: $(STAMP)
	$(PY) -m chasquid_util.completions completions

## Regenerate the man pages in docs/man/ from the tools' help and docs/configuration.md.
man: $(STAMP)
	$(PY) -m chasquid_util.manpages docs

## Load benchmarks (not part of the test suite).
bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .demo
