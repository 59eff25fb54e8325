# The two commands of the README: `make train` and `make test`. Each sets up .venv first.
# torch is installed on its own first and pinned, so that no dependency pulls another build:
# on this CPU-only machine `torch==2.13.0` is a local CPU wheel; on a CUDA machine PyPI's
# wheel of the same version has CUDA. Override with TORCH_SPEC=... if you need another build.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,sweep
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup train test lint format
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# make train ARGS="model.latent_dim=8 trainer.max_epochs=5"
train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

# make test PYTEST_ARGS="-m 'not slow'"
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
