# Two entry points for a newcomer: `make figures` (train + regenerate every figure on the CPU
# defaults) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel; GPU users: install your CUDA torch into the venv first, then `make setup TORCH=torch`.
TORCH  ?= torch==2.13.0
EXTRAS ?= notebooks,test,bench
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
# Notebooks run with notebooks/ as working directory, as in JupyterLab and under nbval.
PAPERMILL := $(BIN)/papermill --cwd notebooks -k python3 --no-progress-bar
# Extra papermill arguments for `make figures`, e.g. FIGURE_ARGS="-p num_envs 1024".
FIGURE_ARGS ?=

.PHONY: setup test figures notebooks pretrained bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $@

# Unit tests, then every notebook through nbval (stored outputs from `make notebooks`).
test: setup
	$(BIN)/python -m pytest

# The main job: run every notebook in order at CPU-sized defaults; executed copies go to
# build/notebooks/, figures to figures/.
figures: setup
	mkdir -p build/notebooks
	for nb in $(NOTEBOOKS); do \
	  $(PAPERMILL) $$nb build/notebooks/$$(basename $$nb) -p figures_dir ../figures $(FIGURE_ARGS) || exit 1; \
	done

# Refresh the outputs stored in the notebooks (CI-sized parameters from notebooks/ci/).
notebooks: setup
	for nb in $(NOTEBOOKS); do \
	  params=notebooks/ci/$$(basename $$nb .ipynb).yaml; \
	  $(PAPERMILL) $$nb $$nb $$( [ -f $$params ] && echo -f $$params ) || exit 1; \
	done

# Retrain the committed agents (pretrained/): both envs x Carry Z / Reset Z, CPU profiles.
pretrained: setup
	for env in fourrooms maze; do for cond in carry-z reset-z; do \
	  $(BIN)/python -m hrm_agent train --profile cpu-$$env --$$cond --out runs/pretrained/$$env-$$cond --overwrite --no-progress && \
	  $(BIN)/python -m hrm_agent export --checkpoint runs/pretrained/$$env-$$cond/checkpoint.pt --out pretrained/$$env-$$cond/agent.pt && \
	  cp runs/pretrained/$$env-$$cond/metrics.jsonl runs/pretrained/$$env-$$cond/config.json pretrained/$$env-$$cond/ || exit 1; \
	done; done

bench: setup
	$(BIN)/python -m hrm_agent bench env --json
	$(BIN)/python -m hrm_agent bench model --json
	$(BIN)/python -m hrm_agent bench train --json

clean:
	rm -rf build runs .hypothesis
