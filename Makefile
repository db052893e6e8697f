# Custom Layers: build the book, run the tests. See README.md.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard book/*.ipynb))

.PHONY: install book test unit nbval lab execute clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

## make book: create .venv, install, build the site into _build/html (notebooks are not re-run)
book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going

## make test: unit tests, then every notebook under strict nbval
test: unit nbval

unit: $(STAMP)
	$(BIN)/python -m pytest tests/ -q

nbval: $(STAMP)
	MPLBACKEND=module://matplotlib_inline.backend_inline \
	$(BIN)/python -m pytest --nbval $(NOTEBOOKS) --nbval-sanitize-with tests/nbval_sanitize.cfg -q

## make lab: JupyterLab on the book
lab: $(STAMP)
	$(BIN)/jupyter lab book/

## make execute: re-run every notebook in place (seeded, so outputs are reproducible)
execute: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.timeout=900 --ExecutePreprocessor.kernel_name=python3 $(NOTEBOOKS)

clean:
	rm -rf _build .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
