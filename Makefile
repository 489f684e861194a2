# Two commands from a fresh clone:  `make demo` runs the demo, `make test` runs the tests.
# The first run creates .venv and installs matrl with its dependencies into it (~6 GB: torch with
# the matching torchvision, Ray, ...); later runs reinstall only when pyproject.toml has changed.
#
#   make demo                          matrl demo (writes runs/demo/report.md)
#   make test                          the fast test suite (README's test command)
#   make test PYTEST_ARGS="-m slow"    pass arguments to pytest
#   make install                       only create/update .venv
#   make clean-venv                    delete .venv
#
# Variables: PYTHON (the interpreter that creates the venv, Python >= 3.11), VENV (its folder),
# ENSURE_CHROMIUM (the step that installs headless Chromium for the HTML-report tests).

PYTHON ?= python3
VENV ?= .venv
PIP_INSTALL ?= pip install -e ".[dev]"
PYTEST_ARGS ?=
DEMO_ARGS ?=
ENSURE_CHROMIUM ?= bash tools/ensure_chromium.sh

STAMP := $(VENV)/.matrl-installed

.PHONY: demo test install chromium clean-venv

# As if .venv were activated: tools the tests and jobs start (matrl, ray, python) are the venv's.
RUN_IN_VENV = PATH="$(abspath $(VENV))/bin:$$PATH" VIRTUAL_ENV="$(abspath $(VENV))"

demo: $(STAMP)
	$(RUN_IN_VENV) $(VENV)/bin/matrl demo $(DEMO_ARGS)

test: $(STAMP) chromium
	$(RUN_IN_VENV) $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

install: $(STAMP)

chromium:
	@$(ENSURE_CHROMIUM)

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "matrl needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) -V 2>&1). Run: make PYTHON=python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)

# The stamp is newer than pyproject.toml once the install of that pyproject.toml has succeeded.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/$(PIP_INSTALL)
	@touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
