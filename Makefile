# portrait_toon: every command a user needs. Hydra overrides pass straight through:
#   make train experiment=demo trainer.max_steps=500      make preview debug=tiny
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
# Wheel index for the torch install only; empty = pip's own index (public PyPI: a CUDA build on
# Linux). CPU-only: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
# Command-line `key=value` words become Hydra overrides (ARGS="..." also works); a script
# without Hydra (make gpu-check) takes its own options from ARGS.
ARGS ?=
HYDRA_ARGS = $(filter-out ARGS=% PYTHON=% TORCH_SPEC=% TORCH_INDEX=%,$(MAKEOVERRIDES)) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help install demo train synthesize preview stylize export app evaluate ablation weights test test-full bench gpu-check lint format lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-11s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	@# torch first, pinned and from TORCH_INDEX when given (README "Installing PyTorch")
	$(VENV)/bin/pip install -q $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH_SPEC)"
	$(VENV)/bin/pip install -q "$(TORCH_SPEC)" -r requirements.lock
	$(VENV)/bin/pip install -q --no-deps -e ".[dev,app,export]"
	@# the wheel carries the shift-tolerant LPIPS VGG16 weights used offline (we load the file only)
	$(VENV)/bin/pip install -q --no-deps stlpips-pytorch==0.0.2
	touch $(STAMP)

install: $(STAMP) ## make .venv with pinned torch, locked deps, the project (editable) and stlpips weights

demo: $(STAMP) ## train on the embedded world (no downloads) and write demo_report.png + metrics.json
	$(PY) train.py experiment=demo $(HYDRA_ARGS)

train: $(STAMP) ## train the stylization network (Hydra overrides pass through)
	$(PY) train.py $(HYDRA_ARGS)

synthesize: $(STAMP) ## write synthetic pairs to resumable shards
	$(PY) synthesize.py $(HYDRA_ARGS)

preview: $(STAMP) ## one PNG grid per synthesis stage for a few seeds
	$(PY) synthesize.py task=preview $(HYDRA_ARGS)

stylize: $(STAMP) ## stylize images: make stylize ckpt=PATH input=DIR output=DIR
	$(PY) stylize.py $(HYDRA_ARGS)

export: $(STAMP) ## export F for other runtimes: make export ckpt=PATH [format=onnx|torchscript|exported_program]
	$(PY) export.py $(HYDRA_ARGS)

app: $(STAMP) ## web page on localhost: make app [ckpt=PATH] (default: newest trained)
	$(PY) app.py $(HYDRA_ARGS)

evaluate: $(STAMP) ## held-out metrics + report of a trained run: make evaluate experiment=demo ckpt_path=RUN_DIR
	$(PY) evaluate.py $(HYDRA_ARGS)

ablation: $(STAMP) ## the paper's baseline and each method step, one report: make ablation [debug=tiny]
	$(PY) ablation.py $(HYDRA_ARGS)

weights: $(STAMP) ## fetch the public checkpoints into paths.weights_dir (needs internet)
	$(PY) scripts/fetch_weights.py $(HYDRA_ARGS)

test: $(STAMP) ## the default test suite (fast, no GPU, no downloads)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m pytest -q

test-full: $(STAMP) ## every test, slow ones included
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP) ## CPU speed/memory benchmarks (JSON on stdout; the GPU ones: make gpu-check)
	@for b in benchmarks/*.py; do case $$b in */common.py|*/gpu_*) continue;; esac; \
		echo "== $$b"; $(PY) $$b || exit 1; done

gpu-check: $(STAMP) ## on a CUDA machine: GPU tests, GPU/DDP trainings and GPU figures in < 5 min -> JSON
	$(PY) benchmarks/gpu_check.py $(ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## ruff autofix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lock: $(STAMP) ## regenerate requirements.lock from the venv
	$(VENV)/bin/pip freeze --exclude-editable | grep -viE '^(torch==|stlpips|portrait)' > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean: ## remove caches and run outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache outputs multirun logs wandb
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
