# Two entry points: `make book` builds the website, `make test` runs every check.
# Both set up the environment first (.venv, created once and reused) and the data.
# `make robustness` re-executes every chapter with other seeds and other CPU kernels (CI runs it).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BUILD_FLAGS := -W -n --keep-going
NOTEBOOKS := chapters

.PHONY: setup data book test lint unit notebooks build-strict site robustness bench serve clean

setup: $(INSTALLED) data

# Re-installs only when requirements.txt or pyproject.toml change.
$(INSTALLED): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# A C++ compiler for torch.compile (the Performance chapter compiles batch norm), then
# Fashion-MNIST, offline: Debian's copy (installed with apt where it is missing and apt is usable),
# decompressed where torchvision looks. Elsewhere torchvision downloads it on first use.
data: $(INSTALLED)
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null \
	    && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && apt-get install -y -q --no-install-recommends dataset-fashion-mnist \
	    || echo "apt could not install dataset-fashion-mnist; torchvision will download it"; \
	fi
	@if ! command -v c++ >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -q && apt-get install -y -q --no-install-recommends g++) \
	    || echo "apt could not install g++: torch.compile (chapter Performance) needs a C++ compiler"; \
	fi
	$(BIN)/python -m bnlib.data

# Each language is its own edition (its interface, search and sidebar in that language alone),
# built from the root _config.yml and _toc.yml by scripts/editions.py, English first (the French
# chapters then read the experiments it cached), and put side by side in _build/html/{fr,en}
# under a page that lets the reader choose. A plain `jupyter-book build .` builds both languages
# as one book instead.
#
# The notebooks are executed first, JOBS at a time, into the cache the builds read
# (scripts/execute.py): on two cores that takes about two thirds of the time of one at a time.
EDITIONS := en fr
JOBS ?= 2
book: setup
	$(BIN)/python scripts/editions.py configs
	$(BIN)/python scripts/execute.py --jobs $(JOBS) $(EDITIONS)
	for lang in $(EDITIONS); do \
	  $(BIN)/jupyter-book build $(BUILD_FLAGS) . --path-output _build/editions/$$lang \
	    --config _build/editions/$$lang/_config.yml --toc _build/editions/$$lang/_toc.yml \
	    || exit 1; \
	done
	$(BIN)/python scripts/editions.py site
	@echo "The book is in $(CURDIR)/_build/html/index.html (make serve to browse it)"

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The unit tests and the site's tests run JOBS at a time too (pytest-xdist): on two cores, about
# two thirds of the time of one at a time.
unit: setup
	$(BIN)/python -m pytest -n $(JOBS) tests

# Each edition's notebooks JOBS at a time (pytest-xdist, one notebook per worker), the French
# after the English (they read the experiments it cached), every kernel on one thread as in
# make book.
NBVAL = for lang in $(EDITIONS); do \
	  OMP_NUM_THREADS=1 $(BIN)/python -m pytest --nbval-lax -n $(JOBS) --dist loadscope \
	    $(NOTEBOOKS)/$$lang || exit 1; \
	done
notebooks: setup
	$(NBVAL)

build-strict: book

# The built website: offline, bilingual, Colab links, then every page in Debian's Chromium.
site: build-strict
	$(BIN)/python -m pytest -n $(JOBS) site_tests

test: lint unit notebooks build-strict site

# The verdicts are not the luck of one draw, nor of one machine: every chapter again, every assert
# checked, with every seed shifted (BNLIB_SEED_OFFSET), a fresh experiment cache, and other CPU
# kernels than this CPU's (other rounding, as on another machine): the AVX2 ones where PyTorch
# would use AVX-512, else the generic ones (ROBUST_KERNELS=default forces those: 2 to 3 times
# slower).
ROBUST_OFFSET ?= 1000
ROBUST_KERNELS ?= $(shell $(BIN)/python -c "import torch; \
  print('avx2' if torch.backends.cpu.get_cpu_capability() == 'AVX512' else 'default')")
ROBUST_CACHE := $(CURDIR)/_build/robustness-cache
robustness: setup
	rm -rf $(ROBUST_CACHE)
	export BNLIB_SEED_OFFSET=$(ROBUST_OFFSET) BNLIB_CACHE=$(ROBUST_CACHE) \
	  ATEN_CPU_CAPABILITY=$(ROBUST_KERNELS); $(NBVAL)

# Batch norm implementations side by side (time, memory saved for backward), then the CNN.
bench: setup
	$(BIN)/python benchmarks/batch_norm.py

serve:
	$(BIN)/python -m http.server --directory _build/html --bind 127.0.0.1 8000

clean:
	rm -rf _build
