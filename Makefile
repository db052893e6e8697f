# Custom Layers: build the book, run the tests. See README.md.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# nbval runs the longest notebooks first (about a minute each, measured), so that the two workers
# finish together instead of one waiting for the other's last long notebook; the others follow.
NOTEBOOKS_LONGEST := book/convolutions.ipynb book/quantization.ipynb book/citizen.ipynb book/losses.ipynb \
                     book/practice.ipynb
NOTEBOOKS := $(NOTEBOOKS_LONGEST) $(filter-out $(NOTEBOOKS_LONGEST),$(sort $(wildcard book/*.ipynb)))

VENDOR := book/_static/vendor

.PHONY: install book test unit nbval site-test site-check no-site-check bench lab execute clean

install: $(STAMP)

# (pip byte-compiles what it installs, about half of the install time here; not to be skipped
# with --no-compile: where PYTHONDONTWRITEBYTECODE is set, every process would then compile
# every module it imports, every time.)
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

## make book: create .venv, install, build the site into _build/html (notebooks are not re-run)
book: $(STAMP) $(VENDOR)/.done
	$(BIN)/jupyter-book build . -W -n --keep-going

# The site serves its own JavaScript (no CDN at view time): the ipywidgets HTML
# manager, require.js and MathJax 3, fetched from the npm registry at build time by
# a Python script (no Node.js needed), each tarball checked against its integrity hash.
$(VENDOR)/.done: book/_ext/fetch_vendor.py
	$(BIN)/python book/_ext/fetch_vendor.py $(VENDOR)

## make test: unit tests, every notebook under strict nbval, then the site in a browser
## (the browser part runs when Chromium is installed, and says so when it is skipped)
# With Chromium, the site is built while the unit tests run: the build is one process, and
# beside the two test workers it costs about half its own time instead of all of it
# (--output-sync, where this make has it, prints each one's output whole, when it is done).
# The browser check itself runs last, alone: it keeps both cores busy, and beside the unit
# tests it cost more than its own time (measured: 79 s more for a 53 s check).
# Every part runs even when an earlier one fails (as -k would), and the target fails if any did.
CHROMIUM := $(shell command -v chromium 2>/dev/null)
BESIDE   := $(if $(CHROMIUM),-j2 $(if $(filter output-sync,$(.FEATURES)),--output-sync=target) unit book,unit)
test: $(STAMP)
	@status=0; \
	$(MAKE) --no-print-directory -k $(BESIDE) || status=1; \
	$(MAKE) --no-print-directory nbval || status=1; \
	$(MAKE) --no-print-directory $(if $(CHROMIUM),site-check,no-site-check) || status=1; \
	exit $$status

no-site-check:
	@echo "site-test skipped: Chromium is not installed (Debian: apt-get install chromium)"

# One pytest-xdist worker per core (WORKERS=1 runs in one process). --dist loadscope keeps each
# test module, and each notebook, on one worker, so a notebook's cells run in order in one kernel.
# xdist hands out the modules with the most tests first; the notebooks go in the order above.
WORKERS ?= $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)))" 2>/dev/null || echo 2)
XDIST   := $(if $(filter 1,$(WORKERS)),,-n $(WORKERS) --dist loadscope)
XDIST_IN_ORDER := $(if $(XDIST),$(XDIST) --no-loadscope-reorder)

# One code path for the notebooks whatever x86-64 CPU runs them (Intel or AMD, AVX2 with or
# without AVX-512), so that their stored outputs can be reproduced bit for bit: MKL takes the
# path its conditional numerical reproducibility documents as the same on every x86 CPU,
# ATen's and oneDNN's kernels are held to their AVX2 forms, and the thread count is fixed.
# Without these, float32 matrix products differ in their last bits between CPUs, and a few
# epochs of training show it in the third decimal of a printed accuracy.
REPRO_ENV := MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2

# glibc hands freed memory back to the OS, so every fresh full-size temporary of an
# eager Python layer page-faults again (PyTorch's CPU allocator is plain malloc): the
# benchmarks keep freed memory in the process, for ours and torch's alike, as a
# long-running training process (or tcmalloc/jemalloc) does.
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296

# Tests only: with one worker per core, each with its own OpenMP threads, a thread that waits
# for work sleeps instead of spinning on a core another worker needs (about a sixth faster
# here). It changes no computed value, only how idle threads wait; the few notebook asserts on
# live timings compare forms timed side by side, under the same setting. (Not for benchmarks.)
# Freed memory also stays in the process (BENCH_ENV above): a chapter's full-batch
# evaluations no longer page-fault their large temporaries in afresh every time (about 5% faster).
# Inductor compiles in the test process itself (TORCHINDUCTOR_COMPILE_THREADS=1) instead of starting
# a pool of compile workers in each test process and kernel: on two busy cores the pool's start-up
# costs more than it saves (measured: the compile-backend kernel tests 9 s faster). Same generated code.
TEST_ENV := OMP_WAIT_POLICY=PASSIVE TORCHINDUCTOR_COMPILE_THREADS=1 $(BENCH_ENV)

# (nbval's plugin is off for the unit tests: importing it costs 2-3 s in each process)
unit: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest tests/ -q -p no:nbval $(XDIST)

nbval: $(STAMP)
	$(TEST_ENV) $(REPRO_ENV) MPLBACKEND=module://matplotlib_inline.backend_inline \
	$(BIN)/python -m pytest --nbval $(NOTEBOOKS) --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600 -q $(XDIST_IN_ORDER)

## make site-test: build the site, open every page in headless Chromium, check links
## (`make site-test SCREENSHOTS=1` also saves a screenshot of each chapter in _build/screenshots/)
site-test: book
	$(MAKE) --no-print-directory site-check

# the browser check alone, on the site as last built
site-check: $(STAMP)
	$(BIN)/python tests/site_check.py $(if $(filter 1,$(SCREENSHOTS)),--screenshots) _build/html

## make bench: time and memory of every layer and every fast kernel against its PyTorch built-in
## (benchmarks/results.* and benchmarks/kernels_results.*); `make bench STRICT=1` fails on a missed target
# Both benchmarks always run (a missed target of the first must not hide the second's table);
# with STRICT=1 the target fails when either missed one.
bench: $(STAMP)
	@status=0; \
	$(BENCH_ENV) $(BIN)/python -m benchmarks $(if $(STRICT),--strict) $(BENCH_ARGS) || status=1; \
	$(BENCH_ENV) $(BIN)/python -m benchmarks.kernels $(if $(STRICT),--strict) $(BENCH_ARGS) || status=1; \
	exit $$status

## make lab: JupyterLab on the book
lab: $(STAMP)
	$(REPRO_ENV) $(BIN)/jupyter lab book/

## make execute: re-run every notebook in place (seeded, so outputs are reproducible)
execute: $(STAMP)
	$(REPRO_ENV) $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.timeout=900 --ExecutePreprocessor.kernel_name=python3 $(NOTEBOOKS)

clean:
	rm -rf _build .pytest_cache $(VENDOR)
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
