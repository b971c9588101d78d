# Two entry points for a newcomer: `make figures` (train + regenerate every figure on the CPU
# defaults) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch for a venv that has none yet, from PyTorch's CPU index (the CPU build, no CUDA wheels)
# when that index answers within 5 s; otherwise from pip's own configuration, which on Linux
# x86_64 with plain PyPI is the CUDA build (~3 GB with its nvidia-* wheels). A torch already in
# the venv is kept: GPU users install their CUDA torch into $(VENV) first. `TORCH_INDEX=` skips
# the CPU index.
TORCH  ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
EXTRAS ?= notebooks,test,bench
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
# Notebooks run with notebooks/ as working directory, as in JupyterLab and under nbval.
PAPERMILL := $(BIN)/papermill --cwd notebooks -k python3 --no-progress-bar
# Extra papermill arguments for `make figures`, e.g. FIGURE_ARGS="-p num_envs 1024".
FIGURE_ARGS ?=

.PHONY: setup test test-cuda figures notebooks pretrained bench clean ptxas

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@if $(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)"; then \
	  echo "setup: keeping the torch already in $(VENV)"; \
	elif [ -n "$(TORCH_INDEX)" ] && $(BIN)/python -c "import sys, urllib.request as r; r.urlopen(sys.argv[1], timeout=5).close()" \
	    "$(TORCH_INDEX)/torch/" 2>/dev/null; then \
	  echo "setup: $(TORCH) from $(TORCH_INDEX)"; \
	  $(BIN)/pip install --quiet --index-url "$(TORCH_INDEX)" "$(TORCH)"; \
	else \
	  echo "setup: $(TORCH) from pip's own configuration (the CPU index '$(TORCH_INDEX)' did not answer within 5 s)"; \
	  $(BIN)/pip install --quiet "$(TORCH)"; \
	fi
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

# Unit tests, then every notebook through nbval (stored outputs from `make notebooks`).
test: setup
	$(BIN)/python -m pytest

# The CUDA tests with the machine's own $(PYTHON), torch and pytest: no venv and no notebook
# plugins, as on a lent GPU machine (`make test` runs them too where the venv's torch has CUDA).
# The quick ones first: the first compiled run of test_fast_path took over a minute on an H100,
# and a device command cut short still reports what passed. The emulated-graph tests are
# CPU tests that CI runs.
# test_fused runs whole there: its kernels on the GPU instead of Triton's interpreter.
CUDA_TESTS := tests/test_envs.py tests/test_model.py tests/test_trainer.py tests/test_fused.py \
	tests/test_fast_path.py tests/test_optim.py tests/test_fused_swiglu.py
test-cuda:
	$(PYTHON) -m pytest -o addopts="" -p no:cacheprovider -ra -k "(cuda or fused) and not emulated" \
	  $(CUDA_TESTS)

# A newer ptxas for a GPU window (`gpu-job --ptxas .ptxas/ptxas.xz`, README "Training on a
# GPU"): CUDA 13.1's, from PyPI's nvidia-cuda-nvcc wheel (Triton 3.6 bundles 12.8's),
# xz-compressed to ~10 MB for the window's 64-MiB working tree to carry. Not committed.
PTXAS_WHEEL ?= nvidia-cuda-nvcc==13.1.80
ptxas: .ptxas/ptxas.xz
.ptxas/ptxas.xz:
	mkdir -p .ptxas
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
	  --python-version 3.12 --implementation cp -d .ptxas "$(PTXAS_WHEEL)"
	$(PYTHON) -c "import glob, lzma, zipfile; wheel = zipfile.ZipFile(glob.glob('.ptxas/*.whl')[0]); \
	  ptxas = wheel.read('nvidia/cu13/bin/ptxas'); \
	  open('.ptxas/ptxas.xz', 'wb').write(lzma.compress(ptxas, preset=9))"
	rm .ptxas/*.whl

# The main job: run every notebook in order at CPU-sized defaults; executed copies go to
# build/notebooks/, figures to figures/.
# Passing figures_dir (its default) is what drops the CI-sized parameters stored in the
# notebooks: papermill replaces a stored injected cell only when given a parameter.
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

# Retrain the committed CPU agents (pretrained/<name>/): the CNN baselines, and the HRM at the
# CPU profiles. An HRM agent with a GPU run (pretrained/gpu-runs/<name>/) is the paper-profile
# one that run exported, and is kept (README, "Training on a GPU").
PRETRAINED := fourrooms-cnn:--profile=cpu-cnn-fourrooms maze-cnn:--profile=cpu-cnn-maze \
  fourrooms-carry-z:--profile=cpu-fourrooms:--carry-z fourrooms-reset-z:--profile=cpu-fourrooms:--reset-z \
  maze-carry-z:--profile=cpu-maze:--carry-z maze-reset-z:--profile=cpu-maze:--reset-z
pretrained: setup
	for spec in $(PRETRAINED); do \
	  name=$${spec%%:*}; args=$$(echo $${spec#*:} | tr ':' ' '); run=runs/pretrained/$$name; \
	  if [ -d pretrained/gpu-runs/$$name ]; then echo "pretrained/$$name: kept (its GPU run)"; continue; fi; \
	  $(BIN)/python -m hrm_agent train $$args --out $$run --overwrite --no-progress && \
	  $(BIN)/python -m hrm_agent export --checkpoint $$run/checkpoint.pt --out pretrained/$$name/agent.pt && \
	  cp $$run/metrics.jsonl $$run/config.json pretrained/$$name/ || exit 1; \
	done

bench: setup
	$(BIN)/python -m hrm_agent bench env --json
	$(BIN)/python -m hrm_agent bench model --json
	$(BIN)/python -m hrm_agent bench train --json

clean:
	rm -rf build runs .hypothesis
