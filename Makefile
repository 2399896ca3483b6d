# Two commands do the whole set-up on a fresh machine with Python 3.10+:
#   make run    installs into a virtual environment and runs `agentlab run` (the embedded default)
#   make test   installs into the same environment (with test extras) and runs the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.agentlab-installed

.PHONY: run test install bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,ann,ray]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/agentlab run

test: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
