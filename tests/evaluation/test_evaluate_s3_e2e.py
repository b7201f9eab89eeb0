"""Evaluation without a shared disk, end to end on Ray: benchmark, checkpoint and results in S3 (moto).

The same evaluation runs once with local folders and once with ``s3://`` root and results_dir (the local copy of the
benchmark deleted first, so any task reading the driver's disk would fail): the S3 run writes every result, table
and plot to the bucket, a rerun tracks nothing, and the scores equal those of the local run.
"""

from __future__ import annotations

import shutil
import uuid

import pytest
import torch

from cmd_ray import storage
from cmd_ray.config import SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.evaluation.plots import PLOT_FILES
from cmd_ray.evaluation.runner import TABLES_FILE, run_evaluation
from cmd_ray.models.dimpnet import build_model
from cmd_ray.models.training_state import TRAINING_STATE_FILE, save_training_state

SEQUENCES = [f"synth_tir_{i:03d}" for i in range(3)]


def _upload(local, uri: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            storage.write_bytes(storage.join(uri, p.relative_to(local).as_posix()), p.read_bytes())


@pytest.mark.e2e
def test_evaluate_with_root_and_results_in_s3(ray_session, s3_server, tmp_path):
    bucket = s3_server.make_bucket(f"eval-e2e-{uuid.uuid4().hex[:8]}")
    write_synthetic_dataset(
        str(tmp_path / "data"),
        SynthConfig(num_pairs=1, num_rgb_sequences=0, num_tir_sequences=3, sequence_length=8),
        progress=False,
    )
    local_root = tmp_path / "data" / "tir_sequences"
    s3_root = f"s3://{bucket}/tir_sequences"
    _upload(local_root, s3_root)
    # A tiny random-init network as a cmd-ray checkpoint folder, in S3 only.
    net_cfg = load_config(None, ["model.preset=tiny"])
    torch.manual_seed(0)
    (tmp_path / "ckpt").mkdir()
    state = {"model": build_model(net_cfg).state_dict(), "config": net_cfg.model_dump(mode="json")}
    save_training_state(tmp_path / "ckpt", state)
    ckpt = f"s3://{bucket}/ckpt"
    storage.write_bytes(f"{ckpt}/{TRAINING_STATE_FILE}", (tmp_path / "ckpt" / TRAINING_STATE_FILE).read_bytes())

    def cfg(root: str, results: str, experiment: str):
        return load_config(
            None,
            [
                f"evaluation.root={root}",
                f"evaluation.results_dir={results}",
                f"evaluation.trackers=[{{name: static, kind: static}}, {{name: dimp, kind: dimp, model: '{ckpt}'}}]",
                "evaluation.num_workers=2",
                "evaluation.cpus_per_task=1",
                "tracker.preset=tiny",
                f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"mlflow.experiment={experiment}",
            ],
        )

    local = run_evaluation(cfg(str(local_root), str(tmp_path / "results"), "local"), progress=False)
    assert (local.tracked, local.skipped) == (6, 0)

    shutil.rmtree(local_root)  # from here on, a task that read the driver's disk would fail
    s3_results = f"s3://{bucket}/results"
    first = run_evaluation(cfg(s3_root, s3_results, "s3"), progress=False)
    assert (first.tracked, first.skipped) == (6, 0)
    assert first.results_dir == s3_results and first.tracker_dirs["dimp"] == f"{s3_results}/dimp"
    keys = set(s3_server.list_keys(bucket, "results/"))
    for tracker in ("static", "dimp"):
        assert f"results/{tracker}/meta.json" in keys
        for s in SEQUENCES:
            assert {f"results/{tracker}/{s}.txt", f"results/{tracker}/{s}_time.txt"} <= keys
    assert {f"results/plots/{f}" for f in PLOT_FILES.values()} | {f"results/{TABLES_FILE}"} <= keys
    assert first.plots == [f"{s3_results}/plots/{f}" for f in PLOT_FILES.values()]
    assert "Per attribute — Success" in storage.read_bytes(f"{s3_results}/{TABLES_FILE}").decode()
    assert all(p.startswith(str(tmp_path / "results")) for p in local.plots)

    # The same scores as with local folders (same frames, same weights, one thread per task).
    for tracker in ("static", "dimp"):
        a, b = local.scores[tracker], first.scores[tracker]
        assert (b.success, b.precision, b.norm_precision) == pytest.approx(
            (a.success, a.precision, a.norm_precision), abs=1e-9
        )
    assert first.table.splitlines()[3].split()[:4] == local.table.splitlines()[3].split()[:4]

    # A rerun finds every result in S3 complete: no task runs, the scores are the same.
    again = run_evaluation(cfg(s3_root, s3_results, "s3"), progress=False)
    assert (again.tracked, again.skipped, again.tracking_wall_s) == (0, 6, 0.0)
    assert again.scores["dimp"].success == first.scores["dimp"].success
