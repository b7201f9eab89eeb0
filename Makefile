# cmd-ray: `make demo` installs and runs the embedded default; `make test` installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_CONFIG ?= configs/demo.yaml

.PHONY: install demo demo-seeds table1-demo test lint clean

# Installs the pinned, hash-checked versions of requirements-test.lock (the image installs requirements.lock, the
# same pins without the test tools; cluster/lock.sh rewrites both from pyproject.toml), then the package itself.
$(BIN)/cmd-ray: pyproject.toml requirements-test.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-test.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/cmd-ray

# The upper bound: the teacher fine-tuned with labels on the labeled TIR training split.
TIR_LABELS := pretrain.sequences_uri=data/demo/tir_train_sequences \
	pretrain.init_checkpoint=models:/cmd-ray-demo-teacher@candidate pretrain.run_name=demo-tir-labels \
	pretrain.registered_model_name=cmd-ray-demo-tir-labels pretrain.epochs=6 pretrain.lr_step=4

# The whole story on synthetic data: an RGB teacher is trained on labeled RGB sequences; the upper bound fine-tunes
# it with TIR labels; the D3 loss distills it on unlabeled RGB-TIR pairs (keeping the epoch that tracks the TIR
# validation split best); all are evaluated on the TIR test sequences and their RGB twins (the modality gap).
demo: install
	$(BIN)/cmd-ray synth --out data/demo --config $(DEMO_CONFIG)
	$(BIN)/cmd-ray untrained --out data/demo/untrained.pt --config $(DEMO_CONFIG)
	$(BIN)/python jobs/pretrain.py --config $(DEMO_CONFIG)
	$(BIN)/python jobs/pretrain.py --config $(DEMO_CONFIG) $(TIR_LABELS)
	$(BIN)/python jobs/distill.py --config $(DEMO_CONFIG)
	$(BIN)/python jobs/evaluate.py --config $(DEMO_CONFIG) evaluation.overwrite=true

# The distilled tracker's spread over seeds, after `make demo` (its seed 0): seeds 1 and 2 distill from the same
# teacher (each seeds its sample stream and its workers), then the teacher and the three seeds are evaluated together.
SEED_TRACKERS := [{name: teacher, kind: dimp, model: "models:/cmd-ray-demo-teacher@candidate"}, \
	{name: d3-seed0, kind: dimp, model: "models:/cmd-ray-demo-tracker@candidate"}, \
	{name: d3-seed1, kind: dimp, model: "models:/cmd-ray-demo-tracker-seed1@candidate"}, \
	{name: d3-seed2, kind: dimp, model: "models:/cmd-ray-demo-tracker-seed2@candidate"}]

demo-seeds: install
	for seed in 1 2; do \
		$(BIN)/python jobs/distill.py --config $(DEMO_CONFIG) distill.seed=$$seed storage.run_name=demo-distill-seed$$seed \
			mlflow.registered_model_name=cmd-ray-demo-tracker-seed$$seed || exit 1; \
	done
	$(BIN)/python jobs/evaluate.py --config $(DEMO_CONFIG) evaluation.results_dir=results/demo-seeds \
		evaluation.overwrite=true 'evaluation.trackers=$(SEED_TRACKERS)' \
		'evaluation.seed_groups={d3-from-teacher: [d3-seed0, d3-seed1, d3-seed2]}'

# The paper's Table 1 on the demo's data: every row, 5 seeds (mean ± std, paired intervals against A1), after
# `make demo` (it needs the teacher).
table1-demo: install
	$(BIN)/python jobs/table1.py --config $(DEMO_CONFIG)

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports  # the layer contracts in pyproject.toml ([tool.importlinter])

test: lint
	$(BIN)/python -m pytest -q --durations=15

clean:
	rm -rf data/demo ray_results results mlflow.db mlartifacts
