# The two commands of the README: `make train` and `make test`. Each sets up .venv first.
# torch is installed on its own first and pinned, so that no dependency pulls another build.
# pip takes `torch==2.13.0` from the indexes it is configured with: PyPI's Linux wheel has
# CUDA; a CPU-only build comes from a CPU index or a local wheel that pip is pointed at.
# Override with TORCH_SPEC=... if you need another build.
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
