# Two commands for a newcomer: `make quickstart` and `make test`. Both create .venv and install into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests and the quickstart never touch the Hugging Face Hub.
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install quickstart test clean

install: $(VENV)/.installed

# torch is pinned and installed first when missing: a looser requirement would pull the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[training,dev]"
	touch $@

quickstart: install
	$(PY) scripts/quickstart.py

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) outputs .pytest_cache
