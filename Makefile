# dimlab developer and user entry points. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 are the matching pair on these machines (torchvision is needed by
# torch-fidelity, i.e. by FID). See README "Install" for why the pins are explicit.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: help install test test-gpu lint format demo shards-cifar10 kernels ablation-cifar ablation-demo finetune-512 finetune-demo clean

help:
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

install: ## create .venv and install dimlab with the dev and fid extras (CPU-capable)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev,fid]'

test: ## run the test suite (GPU tests skip without CUDA)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-gpu: ## run only the GPU / CUDA-kernel tests
	$(BIN)/python -m pytest -q -m "gpu or cuda_kernels" $(PYTEST_ARGS)

lint: ## ruff lint + format check
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: ## apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts

kernels: ## build + install mamba-ssm / causal-conv1d wheels for the local GPU arch only
	bash scripts/build_kernels.sh

demo: ## train a small class-conditional DiM on sklearn digits (CPU, offline) and write a sample grid
	$(BIN)/python -m dimlab.demos.digits $(DEMO_ARGS)

shards-cifar10: ## CIFAR-10 -> data/cifar10 shards (CIFAR_ARCHIVE=path/to/cifar-10-python.tar.gz, else downloaded)
	$(BIN)/dimlab shards cifar10 data/cifar10 $(if $(CIFAR_ARCHIVE),--archive $(CIFAR_ARCHIVE))

ABLATION_FLAGS = $(if $(ABLATION_STEPS),--set trainer.max_steps=$(ABLATION_STEPS)) $(if $(ABLATION_BATCH),--set data.batch_size=$(ABLATION_BATCH)) $(if $(ABLATION_DEVICES),--set trainer.devices=$(ABLATION_DEVICES)) $(ABLATION_ARGS)

ablation-cifar: ## DiM-S/2 component ablation on CIFAR-10 (+U-ViT-S/2, plain Mamba); ABLATION_STEPS/BATCH/DEVICES
	@test -f data/cifar10/manifest.json || $(MAKE) shards-cifar10
	$(BIN)/dimlab ablate ablations/cifar10.yaml $(ABLATION_FLAGS)

ablation-demo: ## the same ablation on digits: CPU, offline, minutes; ends with the results table
	@test -f data/digits/manifest.json || $(BIN)/dimlab shards digits data/digits --size 8
	$(BIN)/dimlab ablate ablations/digits.yaml $(ABLATION_FLAGS)

CKPT_256 ?= runs/imagenet256_dim_h2/checkpoints/last.ckpt
DATA_512 ?= data/imagenet512_latents
DEVICES ?= auto
FT_CONFIG ?= experiments/imagenet512/dim_h2_ft.yaml

finetune-512: ## fine-tune DiM-H/2 256 -> 512 (CKPT_256=..., DATA_512=..., DEVICES=...); checks inputs first
	$(BIN)/dimlab check-finetune --config $(FT_CONFIG) --ckpt $(CKPT_256) --data $(DATA_512)
	$(BIN)/dimlab fit --config $(FT_CONFIG) --model.init_from=$(CKPT_256) --data.train_shards=$(DATA_512) --trainer.devices=$(DEVICES)

finetune-demo: ## CPU toy weak-to-strong: digits 8 px -> 16 px, fresh vs initialised from the 8 px model
	$(BIN)/python -m dimlab.demos.finetune --data-root data --out runs/finetune_demo

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
