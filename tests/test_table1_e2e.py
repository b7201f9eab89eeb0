"""``cmd-ray table1`` end to end on tiny settings: every row of Table 1 (one seed) trained in dependency order on a
real local Ray cluster, B3 and the D rows' start merged, every row tracked on synthetic TIR sequences, the table
logged to MLflow (sqlite) under one parent run with a child run per row, the best row registered; then a rerun that
trains nothing and registers nothing new."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from cmd_ray import cli
from cmd_ray.config import SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.distill.merge import branch_prefixes
from cmd_ray.mlflow_runs import store_client
from cmd_ray.models.checkpoint import load_state_dict
from cmd_ray.models.dimpnet import build_model
from cmd_ray.models.loading import checkpoint_file
from cmd_ray.table1 import ROW_TAG, merged_uri, read_merged_from, row_config, run_table1
from cmd_ray.train.teacher import TEACHER_SOURCE_TAG, resolve_start
from cmd_ray.vocabulary import VARIANT_NAMES

pytestmark = pytest.mark.e2e

# Paper rates on purpose (no distill.lr_* here): each row must train at its own.
TINY_TABLE = (
    "model.preset=tiny",
    "tracker.preset=tiny",
    "distill.samples_per_epoch=8",
    "distill.batch_size=4",
    "distill.epochs=1",
    "distill.val_samples=0",  # rows are compared by tracking; no validation stream keeps the 8 trainings short
    "tune.metric=loss",
    "data.cpus_per_actor=0.5",
    "scaling.cpus_per_worker=0.5",
    "data.progress=false",
    "evaluation.num_workers=2",
    "evaluation.cpus_per_task=1",
)


def _weights(uri: str) -> dict[str, torch.Tensor]:
    return load_state_dict(checkpoint_file(uri))


def test_table1_trains_every_row_in_dependency_order_and_logs_the_table(ray_session, tmp_path, capsys):
    summary = write_synthetic_dataset(
        str(tmp_path / "data"),
        SynthConfig(num_pairs=16, num_rgb_sequences=0, num_tir_sequences=2, sequence_length=8),
        progress=False,
    )
    teacher_cfg = load_config(None, ["model.preset=tiny"])
    torch.manual_seed(0)
    torch.save(build_model(teacher_cfg).state_dict(), tmp_path / "teacher.pt")
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        *TINY_TABLE,
        f"data.uri={summary.pairs_uri}",
        f"model.init_checkpoint={tmp_path / 'teacher.pt'}",
        f"evaluation.root={summary.tir_sequences_uri}",
        f"evaluation.results_dir={tmp_path / 'results'}",
        f"storage.storage_path={tmp_path / 'ray_results'}",
        f"mlflow.tracking_uri={db}",
        "mlflow.registered_model_name=table1-e2e",
        "table1.run_name=t1e2e",
    ]
    cfg = load_config(None, overrides)

    result = run_table1(cfg)

    assert result.rows == VARIANT_NAMES
    assert [s.row for s in result.summaries] == list(VARIANT_NAMES)
    assert not any(r.done_before for r in result.runs if r.row != "A1")
    runs = {r.row: r for r in result.runs}

    # the dependency chain: B3 = B1 with B2's IoU-Net test branch; the D rows start from B3 with C1's classifier,
    # merged when each starts (distill.start, as jobs/distill.py is given it)
    b1, b2, c1, b3 = (_weights(runs[row].weights) for row in ("B1", "B2", "C1", "B3"))
    test_branch = branch_prefixes("test")
    for key, value in b3.items():
        source = b2 if key.startswith(test_branch) else b1
        assert torch.equal(value, source[key]), key
    d_start = (runs["B3"].weights, runs["C1"].weights)
    assert runs["D3"].d_start == d_start
    start = torch.load(io.BytesIO(resolve_start(row_config(cfg, "D3", 0, d_start)).weights), weights_only=True)
    for key, value in start.items():
        source = c1 if key.startswith("classifier.") else b3
        assert torch.equal(value, source[key]), key
    assert not torch.equal(b1["bb_regressor.conv3_1r.0.weight"], b2["bb_regressor.conv3_1r.0.weight"])

    client = store_client(db)
    children = client.search_runs(
        [client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
        f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    by_row = {run.data.tags[ROW_TAG]: run for run in children if ROW_TAG in run.data.tags}
    assert set(by_row) == set(VARIANT_NAMES)
    for row in ("D1", "D3", "D5"):
        tags = by_row[row].data.tags
        assert (tags["cmd_ray.start"], tags["cmd_ray.variant"]) == ("merge(B3,C1)", row)
        assert (tags["cmd_ray.start_b3"], tags["cmd_ray.start_c1"]) == d_start
        assert by_row[row].data.params["distill.start.b3"] == runs["B3"].weights
        assert float(by_row[row].data.params["distill.lr_tcl"]) == 2e-8
        assert float(by_row[row].data.params["distill.lr_bbe"]) == 1e-7
    assert float(by_row["B1"].data.params["distill.lr_bbe"]) == 1e-6
    assert float(by_row["C1"].data.params["distill.lr_tcl"]) == 1e-6
    assert by_row["C1"].data.tags[TEACHER_SOURCE_TAG] == str(tmp_path / "teacher.pt")
    assert by_row["D5"].data.params["data.boxes"] == "detection"
    assert "tir/success" in by_row["D3"].data.metrics

    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(result.parent_run_id, "table1")} == {
        "table1/table1.json",
        "table1/table1.txt",
        "table1/table1.png",
    }
    d3 = next(s for s in result.summaries if s.row == "D3")
    assert parent.data.metrics["D3/success_mean"] == pytest.approx(d3.mean["success"])
    # each row's paired difference to A1 over the 2 sequences, in the text and in the table's JSON
    assert "95% CI" in result.table and d3.paired["success"].num_sequences == 2
    assert parent.data.metrics["D3/success_ci_low"] == pytest.approx(d3.paired["success"].low)
    table_json = json.loads(Path(client.download_artifacts(result.parent_run_id, "table1/table1.json")).read_text())
    assert {"success_ci_low", "success_ci_high", "success_ci_excludes_zero"} <= set(table_json["columns"])
    # the merged file records its sources
    assert read_merged_from(merged_uri(cfg, "B3", 0))["base"]["run_id"] == runs["B1"].run_id
    version = client.get_model_version_by_alias("table1-e2e", "candidate")
    assert version.run_id == by_row[result.best_row].info.run_id

    # a rerun trains, merges and registers nothing new, and prints the same table
    assert cli.main(["table1", *overrides]) == 0
    out = capsys.readouterr().out
    assert result.table in out
    assert f"rows x seeds:  {len(VARIANT_NAMES) - 1} ({len(VARIANT_NAMES) - 1} complete before this run" in out
    assert client.get_model_version_by_alias("table1-e2e", "candidate").version == version.version
