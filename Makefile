# minifm: the workbook and its library. `make workbook` and `make test` work from a fresh clone.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup workbook test lab bench lint

# torch goes first, pinned, so pip takes the CPU build on disk rather than a CUDA build;
# constraints.txt pins every other package to the versions the stored notebook outputs used.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

workbook: setup
	$(BIN)/python scripts/run_workbook.py

test: setup
	$(BIN)/python -m pytest

lab: setup
	$(BIN)/jupyter lab notebooks/

bench: setup
	$(BIN)/python benchmarks/vit.py
	$(BIN)/python benchmarks/attention.py
	$(BIN)/python benchmarks/diffusion.py

lint: setup
	$(BIN)/ruff check minifm tests benchmarks scripts
	$(BIN)/ruff format --check minifm tests benchmarks scripts
