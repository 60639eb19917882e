# The README's commands. Each creates .venv through scripts/install.sh on first use.
#   make reproduce   the main job: a quick CPU reproduction (float NIN on CIFAR-10 for now)
#   make test        the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# Data root: $NETSHRINK_DATA, else ../shared/datasets beside the checkout, else the user cache
# (downloaded there with checksum checks when absent).
DATA_DIR ?= $(or $(NETSHRINK_DATA),$(wildcard ../shared/datasets),$(HOME)/.cache/netshrink/data)
RUN_DIR ?= runs/reproduce
PYTEST_ARGS ?=

.PHONY: install test reproduce clean

$(VENV)/.installed: scripts/install.sh constraints.txt $(wildcard packages/*/pyproject.toml) benchmarks/pyproject.toml
	bash scripts/install.sh --venv $(VENV) --dev
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

reproduce: install
	$(VENV)/bin/bench train --model nin --dataset cifar10 --width 0.5 --epochs 4 --lr 0.05 \
	  --data-dir "$(DATA_DIR)" --download --resume --out $(RUN_DIR)/nin-float

clean:
	rm -rf $(VENV) runs results .pytest_cache

# Micro-benchmarks (pytest-benchmark): timings, not tests; not part of `make test`.
bench-micro: install
	$(PY) -m pytest benchmarks/micro --benchmark-only -s -p no:cacheprovider
.PHONY: bench-micro
