# cmd-ray: `make demo` installs and runs the embedded default; `make test` installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_CONFIG ?= configs/demo.yaml

.PHONY: install demo test lint clean

$(BIN)/cmd-ray: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/cmd-ray

demo: install
	$(BIN)/cmd-ray synth --out data/demo --config $(DEMO_CONFIG)
	$(BIN)/python jobs/distill.py --config $(DEMO_CONFIG)

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q --durations=15

clean:
	rm -rf data/demo ray_results mlflow.db mlartifacts
