# Two commands do everything on a fresh machine:
#   make demo   trains the SST Tree-LSTM briefly and compares batching policies
#   make test   runs the test suite
# Both create the virtual environment (.venv) and install the package first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/edbatch demo $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
