# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow install clean-venv

# (Re)install whenever pyproject.toml changes; the stamp records the last successful install.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# Train the default model on the built-in toy-birds data, then sample a few prompts from it.
demo: $(STAMP)
	$(PY) -m diffusion.tools.demo

clean-venv:
	rm -rf $(VENV)
