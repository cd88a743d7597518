# Two commands do everything on a fresh machine with Python 3.11, git and make:
#   make run    create .venv, install, fetch TREC, run the pipeline
#   make test   install if needed, run the test suite
#   make bench  install if needed, fetch TREC, run the speed benchmark (bench/speed.py, ~45 min)
#   make airflow  Apache Airflow in .venv-airflow, for the DAG (pipeline/airflow_dag.py)
# All reuse .venv while pyproject.toml is unchanged (.venv-airflow while its requirements are).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Airflow does not install beside the pinned TensorFlow family (it takes protobuf 7): its own
# venv, from a fully pinned list (orchestration/airflow-requirements.txt says how it was made).
AIRFLOW_VENV  := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_REQS  := orchestration/airflow-requirements.txt

DATASET       ?= trec
DATA_DIR      ?= data
PIPELINE_ROOT ?= pipeline_root
RUN_ARGS      ?=
BENCH_ARGS    ?=

export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run test bench install airflow data clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

airflow: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): $(AIRFLOW_REQS)
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r $(AIRFLOW_REQS)
	touch $(AIRFLOW_STAMP)

data: $(DATA_DIR)/$(DATASET).csv

$(DATA_DIR)/$(DATASET).csv: | $(STAMP)
	$(PY) local_runner.py data $(DATASET) --out $(DATA_DIR)

run: $(STAMP) data
	$(PY) local_runner.py run --input $(DATA_DIR)/$(DATASET).csv --pipeline-root $(PIPELINE_ROOT) $(RUN_ARGS)

# Two pytest workers (pytest-xdist), a test file each: most tests wait on subprocesses that
# import TensorFlow, so two of them share 2 cores well (23.5 min -> 13.6 min here).
# tests/test_airflow.py runs the DAG in .venv-airflow.
test: $(STAMP) $(AIRFLOW_STAMP)
	$(PY) -m pytest -n 2 --dist loadfile tests

# Not part of `make test`: wall-time ratios need a quiet machine (bench/results/speed.md).
bench: $(STAMP)
	$(PY) bench/speed.py $(BENCH_ARGS)

clean:
	rm -rf $(PIPELINE_ROOT) $(DATA_DIR)
