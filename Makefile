# Two entry points for a newcomer: `make figures` (train + regenerate every figure on the CPU
# defaults) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel; GPU users: install your CUDA torch into the venv first, then `make setup TORCH=torch`.
TORCH  ?= torch==2.13.0
EXTRAS ?= notebooks,test,bench

.PHONY: setup test figures bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $@

test: setup
	$(BIN)/python -m pytest

figures: setup
	$(BIN)/python -m hrm_agent render --out figures

bench: setup
	$(BIN)/python -m hrm_agent bench env --json

clean:
	rm -rf build runs .hypothesis
