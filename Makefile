# The README's commands. Each creates .venv through scripts/install.sh on first use.
#   make reproduce   the main job: every results table, quick profile, on the CPU
#   make test        the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# Data root: $NETSHRINK_DATA, else ../shared/datasets beside the checkout, else the user cache
# (downloaded there with checksum checks when absent).
DATA_DIR ?= $(or $(NETSHRINK_DATA),$(wildcard ../shared/datasets),$(HOME)/.cache/netshrink/data)
RESULTS ?= results
RUNS ?= runs
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per CPU; each runs torch single-threaded (OMP_NUM_THREADS=1
# unless set), since two workers with two threads each on two cores oversubscribe them. Tests
# of multi-threaded code set their thread count themselves. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= auto

.PHONY: install test reproduce clean

$(VENV)/.installed: scripts/install.sh constraints.txt $(wildcard packages/*/pyproject.toml) benchmarks/pyproject.toml
	bash scripts/install.sh --venv $(VENV) --dev
	touch $@

install: $(VENV)/.installed

test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

reproduce: install
	$(VENV)/bin/bench reproduce --table all --profile quick --data-dir "$(DATA_DIR)" --download \
	  --results "$(RESULTS)" --runs "$(RUNS)"

clean:
	rm -rf $(VENV) runs results .pytest_cache

# Micro-benchmarks (pytest-benchmark): timings, not tests; not part of `make test`.
bench-micro: install
	$(PY) -m pytest benchmarks/micro --benchmark-only -s -p no:cacheprovider
.PHONY: bench-micro
