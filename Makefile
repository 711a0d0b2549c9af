# avbalance: `make install`, `make test`, `make demo`. `make help` lists the targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help install test test-all mutate mutate-rerun demo clean reproduce-table data-avdigits data-cremad data-ave data-kinetics_sounds data-vggsound data-custom
RAW ?= raw
DATA ?= data

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

install:  ## create .venv and install the pinned dependencies and the package
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --no-cache-dir -q -e .

test:  ## fast tests (under 5 minutes on 2 cores)
	$(BIN)/python -m pytest -q -m "not slow"

test-all:  ## every test, slow ones included
	$(BIN)/python -m pytest -q

# Mutation testing (mutmut, the `dev` extra; core modules in pyproject.toml's [tool.mutmut]). Each mutant
# runs only the fast tests that reach the mutated function, with a time limit ((their time + 30 s) x 4).
# Without MODULE it continues: mutants already tested keep their result unless their function's code
# changed (mutmut's own bookkeeping; rm -rf mutants for a fresh run). MODULE: a module
# (avbalance.evaluate), a package (avbalance.methods) or a glob of mutant names: those are all re-run.
MODULE ?=
MUTATE_JOBS ?= 2
MUTANTS = $(if $(MODULE),$(if $(or $(findstring *,$(MODULE)),$(findstring __mutmut_,$(MODULE))),$(MODULE),$(MODULE).*),)
mutate:  ## mutation testing of the core: make mutate [MODULE=avbalance.evaluate] (slow: see README, Tests)
	@$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install --no-cache-dir -q -e '.[dev]'
	rm -rf mutants/tests
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(if $(MUTANTS),'$(MUTANTS)'); \
	  rc=$$?; $(BIN)/python scripts/mutation_report.py $(if $(MUTANTS),'$(MUTANTS)'); exit $$rc

mutate-rerun:  ## re-run the mutants named in scripts/mutation_rerun.txt (survivors that tests added later kill)
	rm -rf mutants/tests
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(MUTATE_JOBS) $$(cat scripts/mutation_rerun.txt); \
	  rc=$$?; $(BIN)/python scripts/mutation_report.py; exit $$rc

demo:  ## train on the built-in toy dataset (CPU, about a minute)
	$(BIN)/python train.py

# The paper's tables (tables/) through Hydra sweeps -> results/<table>_<protocol>.md/.csv/.png.
# DATASETS, TABLES, PROTOCOLS: comma-separated (default: each table's own); SMOKE=1: tiny toy settings.
reproduce-table:  ## the paper's tables: make reproduce-table [DATASETS=toy,avdigits] [TABLES=main] [PROTOCOLS=fair] [SMOKE=1] [LAUNCHER=pack|slurm LAUNCHER_ARGS="..."]
	$(BIN)/python scripts/reproduce_table.py $(if $(DATASETS),--datasets $(DATASETS)) $(if $(TABLES),--tables $(TABLES)) $(if $(PROTOCOLS),--protocols $(PROTOCOLS)) $(if $(SMOKE),--smoke) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(LAUNCHER_ARGS),--launcher-args '$(LAUNCHER_ARGS)')

clean:  ## remove run outputs and caches
	rm -rf runs outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

data-avdigits:  ## prepare the real small avdigits set (FSDD + MNIST: ../shared/data if there, else downloaded)
	$(BIN)/python -m data_prep.avdigits --out $(DATA)/avdigits $(ARGS)

# Split lists: SPLITS=<dir> if given, else the lists in RAW, else the project's (data_prep/splits).
# ARGS passes more options, e.g. ARGS="--overwrite" or ARGS="--audio-dir <dir of wavs>".
data-cremad:  ## prepare CREMA-D: make data-cremad RAW=<dir with AudioWAV/ VideoFlash/> [SPLITS=<dir>]
	$(BIN)/python -m data_prep.cremad --raw $(RAW) --out $(DATA)/cremad $(if $(SPLITS),--splits $(SPLITS)) $(ARGS)

data-ave:  ## prepare AVE: make data-ave RAW=<dir with AVE/*.mp4> [SPLITS=<dir>]
	$(BIN)/python -m data_prep.ave --raw $(RAW) --out $(DATA)/ave $(if $(SPLITS),--splits $(SPLITS)) $(ARGS)

data-kinetics_sounds:  ## prepare Kinetics-Sounds: make data-kinetics_sounds RAW=<folder of clips> [SPLITS=<dir>]
	$(BIN)/python -m data_prep.kinetics_sounds --raw $(RAW) --out $(DATA)/kinetics_sounds $(if $(SPLITS),--splits $(SPLITS)) $(ARGS)

data-vggsound:  ## prepare VGGSound: make data-vggsound RAW=<dir with video/ and vggsound.csv> [SPLITS=<dir>]
	$(BIN)/python -m data_prep.vggsound --raw $(RAW) --out $(DATA)/vggsound --jpeg $(if $(SPLITS),--splits $(SPLITS)) $(ARGS)

data-custom:  ## prepare your own data: make data-custom MANIFEST=<clips.csv>
	$(BIN)/python -m data_prep.custom --manifest $(MANIFEST) --out $(DATA)/custom $(ARGS)
