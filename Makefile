# Entry points for people and CI. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# Tools of the project's venv come first: `mlflow run --env-manager local` and
# `mlflow models serve` start `python`/`uvicorn` from PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# One tracking store for `make run` and `make up`: the local stack's SQLite database in STACK_DIR, written
# directly by `make run` and served by the stack's tracking server, so `make up` serves what `make run` registered.
STACK_DIR ?= $(CURDIR)/.stack
MLFLOW_TRACKING_URI ?= sqlite:///$(abspath $(STACK_DIR))/mlflow.db
export MLFLOW_TRACKING_URI
# The project's experiment, where the gateway's training jobs and `make up` write too; an experiment
# already chosen in the shell wins (`mlflow run` refuses to be given two).
EXPERIMENT ?= tabular-classifier
# More arguments for `mlflow run`: make run ARGS="-e tune -P max_trials=5"
ARGS ?=
EXPERIMENT_FLAG = $(if $(MLFLOW_EXPERIMENT_NAME)$(MLFLOW_EXPERIMENT_ID),,--experiment-name $(EXPERIMENT))

.PHONY: help setup setup-dev run score test up down status bench bench-spark clean

help:
	@echo "make setup  - create $(VENV) and install what running needs (requirements.txt)"
	@echo "make setup-dev - add PySpark (the score entry point) and the test and benchmark tools"
	@echo "make run    - setup, then train and register the default model (mlflow run .); more: ARGS=\"-P data_path=... -P target=...\""
	@echo "make score  - batch scoring on Spark (mlflow run . -e score); ARGS=\"-P model_uri=... -P input_path=...\""
	@echo "make test   - setup, then check the import rules (.importlinter) and run the unit and integration tests"
	@echo "make up     - start tracking server, model server and gateway (trains the default model if needed)"
	@echo "make down   - stop what make up started"
	@echo "make bench  - serving and training benchmark (needs wrk; installs it with apt-get if missing)"
	@echo "make bench-spark - batch scoring: Spark local[*] against pyfunc.predict in one process"
	@echo "make clean  - stop the stack and remove the local tracking store ($(STACK_DIR), mlruns/)"

# Two layers: what running needs (`make run`, `make up`: requirements.txt), and on top of it
# PySpark and the test and benchmark tools (requirements-dev.txt), installed by the targets that use them.
setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-spark.txt requirements-dev.txt
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

run: setup
	@mkdir -p $(STACK_DIR)
	mlflow run . --env-manager local $(EXPERIMENT_FLAG) $(ARGS)

score: setup-dev
	mlflow run . -e score --env-manager local $(EXPERIMENT_FLAG) $(ARGS)

# Two modules at a time: most of a module's time is waiting on the processes it started (training runs,
# servers coming up), and a module's tests share one stack, so whole files go to a worker.
test: setup-dev
	lint-imports
	pytest -n 2 --dist loadfile

up: setup
	python -m stack up

down:
	python -m stack down

status:
	python -m stack status

bench: setup-dev
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	python -m bench.run

bench-spark: setup-dev
	python -m bench.spark_score

clean:
	-@python -m stack down 2>/dev/null
	rm -rf $(STACK_DIR) mlruns mlflow.db
