# Two commands for a newcomer:  `make demo`  and  `make test`.
PYTHON ?= python3
# torch is installed first, and only if missing, so a GPU user's own torch is kept; on the
# project's CPU machines torch==2.13.0 resolves to the CPU wheel on disk.
TORCH_SPEC ?= torch==2.13.0
DATA_DIR ?= $(if $(SCMIXVAE_DATA_DIR),$(SCMIXVAE_DATA_DIR),../shared/data)
DEMO_OUT ?= outputs/pbmc3k_mixscvi.h5ad
DEMO_EPOCHS ?= 50
# The single-cell benchmark (protocols 1-3, hours on 2 CPU cores; resumable) and its cost runs.
BENCH_ARGS ?= --datasets sorted_pbmc mouse_bladder worm_neuron --seeds 0 1 2 3 4 \
	--max-epochs 100 --patience 10 --resume

.PHONY: install demo test test-all lint bench

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[test,notebooks]"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: install lint
	SCMIXVAE_DATA_DIR=$(DATA_DIR) $(PYTHON) -m pytest

test-all: install
	SCMIXVAE_DATA_DIR=$(DATA_DIR) $(PYTHON) -m pytest -m ""

demo: install
	SCMIXVAE_DATA_DIR=$(DATA_DIR) $(PYTHON) -m scmixvae.cli fit pbmc3k $(DEMO_OUT) \
		--n-components 5 --epochs $(DEMO_EPOCHS) --n-top-genes 2000 --overwrite

bench: install
	SCMIXVAE_DATA_DIR=$(DATA_DIR) $(PYTHON) -m benchmarks.singlecell $(BENCH_ARGS)
	$(PYTHON) -m benchmarks.cost
