# Two commands do everything on a fresh machine with Python 3.11, git and make:
#   make run    create .venv, install, fetch TREC, run the pipeline
#   make test   install if needed, run the test suite
#   make bench  install if needed, fetch TREC, run the speed benchmark (bench/speed.py, ~45 min)
# All reuse .venv while pyproject.toml is unchanged.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

DATASET       ?= trec
DATA_DIR      ?= data
PIPELINE_ROOT ?= pipeline_root
RUN_ARGS      ?=
BENCH_ARGS    ?=

export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run test bench install data clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

data: $(DATA_DIR)/$(DATASET).csv

$(DATA_DIR)/$(DATASET).csv: | $(STAMP)
	$(PY) local_runner.py data $(DATASET) --out $(DATA_DIR)

run: $(STAMP) data
	$(PY) local_runner.py run --input $(DATA_DIR)/$(DATASET).csv --pipeline-root $(PIPELINE_ROOT) $(RUN_ARGS)

# Two pytest workers (pytest-xdist), a test file each: most tests wait on subprocesses that
# import TensorFlow, so two of them share 2 cores well (23.5 min -> 13.6 min here).
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile tests

# Not part of `make test`: wall-time ratios need a quiet machine (bench/results/speed.md).
bench: $(STAMP)
	$(PY) bench/speed.py $(BENCH_ARGS)

clean:
	rm -rf $(PIPELINE_ROOT) $(DATA_DIR)
