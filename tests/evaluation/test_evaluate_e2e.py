"""``cmd-ray evaluate`` end to end: 4 synthetic TIR sequences and their RGB twins, a static baseline and a tiny DiMP
checkpoint, 2 Ray workers, result files, plots, the modality gap, the MLflow run (sqlite) with metrics and artifacts, a
rerun that skips everything, and ``cmd-ray compare`` on the folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmd_ray import cli
from cmd_ray.config import SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.evaluation.results import read_meta, read_result
from cmd_ray.mlflow_runs import store_client
from cmd_ray.models.dimpnet import build_model
from cmd_ray.models.training_state import save_training_state

SEQUENCES = [f"synth_tir_{i:03d}" for i in range(4)]


@pytest.mark.e2e
def test_evaluate_static_and_dimp_on_two_workers(ray_session, tmp_path, capsys):
    summary = write_synthetic_dataset(
        str(tmp_path / "data"),
        SynthConfig(num_pairs=1, num_rgb_sequences=0, num_tir_sequences=4, sequence_length=15),
        progress=False,
    )
    # A tiny random-init network saved as a cmd-ray checkpoint folder (training_state.pt holds its config).
    net_cfg = load_config(None, ["model.preset=tiny"])
    torch.manual_seed(0)
    net = build_model(net_cfg)
    (tmp_path / "ckpt").mkdir()
    save_training_state(tmp_path / "ckpt", {"model": net.state_dict(), "config": net_cfg.model_dump(mode="json")})

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = tmp_path / "results"
    # two "seeds" of one row: the same network twice, so every paired difference to the reference is exactly 0
    ckpt = tmp_path / "ckpt"
    dimps = ", ".join(f"{{name: {n}, kind: dimp, model: '{ckpt}'}}" for n in ("dimp", "seed0", "seed1"))
    trackers = f"[{{name: static, kind: static}}, {dimps}]"
    argv = [
        "evaluate",
        f"evaluation.root={summary.tir_sequences_uri}",
        f"evaluation.rgb_root={summary.tir_twins_uri}",
        "evaluation.gap_reference=dimp",
        "evaluation.seed_groups={same: [seed0, seed1]}",
        f"evaluation.results_dir={results}",
        f"evaluation.trackers={trackers}",
        "evaluation.num_workers=2",
        "evaluation.cpus_per_task=1",
        "tracker.preset=tiny",
        "tracker.target_not_found_threshold=0.0",  # the random network's low peaks still move the box
        f"mlflow.tracking_uri={db}",
        "mlflow.experiment=eval-e2e",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 sequences x 4 trackers; 32 tracked" in out and "0 skipped" in out  # both passes
    paired = out[out.index("Paired comparison — protocol: lsotb") :].splitlines()
    same = next(line for line in paired if line.startswith("same "))
    assert "+0.000  [+0.000, +0.000]" in same and same.rstrip().endswith("2")  # Δ, its interval, 2 seeds
    static_row = next(line for line in paired if line.startswith("static "))
    assert static_row.rstrip().endswith("1")
    assert "same: +0% ± 0% (2 seeds: seed0 +0%, seed1 +0%)" in out or "same: – (no gap to close)" in out
    assert "OPE — protocol: lsotb — dataset: synthetic — deltas to static" in out
    assert "Per attribute — Success" in out and "MLflow run:" in out
    assert "Modality gap of dimp (RGB twins − TIR)" in out and "dataset: synthetic (RGB twins)" in out

    for tracker in ("static", "dimp", "seed0", "seed1"):
        meta = read_meta(results / tracker)
        assert meta.sequences == tuple(SEQUENCES) and meta.benchmark == "synthetic"
        for s in SEQUENCES:
            boxes, times = read_result(results / tracker, s)
            assert boxes.shape == (15, 4) and times.shape == (15,) and np.all(np.isfinite(boxes))
    assert read_meta(results / "dimp").model == str(tmp_path / "ckpt")
    twin_meta = read_meta(results / "rgb_twins" / "dimp")
    assert twin_meta.root == summary.tir_twins_uri and twin_meta.sequences == tuple(SEQUENCES)
    twin_boxes = read_result(results / "rgb_twins" / "dimp", SEQUENCES[0])[0]
    # colour frames, another input: the network follows other peaks than on the TIR frames
    assert twin_boxes.shape == (15, 4) and not np.allclose(twin_boxes, read_result(results / "dimp", SEQUENCES[0])[0])
    plots = sorted(p.name for p in (results / "plots").iterdir())
    assert plots == ["norm_precision_plot.png", "precision_plot.png", "success_plot.png"]
    assert all((results / "plots" / p).stat().st_size > 5000 for p in plots)

    client = store_client(db)
    (run,) = client.search_runs([client.get_experiment_by_name("eval-e2e").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["cmd_ray.job"] == "evaluate"
    for tracker in ("static", "dimp"):
        for metric in ("success", "precision", "norm_precision"):
            assert 0.0 <= run.data.metrics[f"{tracker}/{metric}"] <= 1.0
    assert run.data.metrics["dimp/fps"] > 0 and "static/fps" not in run.data.metrics  # the baseline has no speed
    assert run.data.metrics["sequences_tracked"] == 32
    assert run.data.metrics["paired/same/success_delta"] == 0.0
    metrics = run.data.metrics
    gap = metrics["rgb_twins/dimp/success"] - metrics["dimp/success"]
    assert metrics["gap/success"] == pytest.approx(gap)
    if gap > 0:  # the static baseline's share of the random network's gap
        closed = (metrics["static/success"] - metrics["dimp/success"]) / gap
        assert metrics["static/gap_closed_success"] == pytest.approx(closed)
    else:
        assert "static/gap_closed_success" not in metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "results", "ope_tables.txt"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {f"plots/{p}" for p in plots}
    dimp_files = {a.path for a in client.list_artifacts(run.info.run_id, "results/dimp")}
    assert "results/dimp/meta.json" in dimp_files and "results/dimp/synth_tir_003_time.txt" in dimp_files

    # A rerun finds every result complete: nothing is tracked, the scores are the same.
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "0 tracked" in out and "32 skipped" in out
    runs = client.search_runs([client.get_experiment_by_name("eval-e2e").experiment_id], order_by=["start_time DESC"])
    assert runs[0].data.metrics["sequences_skipped"] == 32
    assert runs[0].data.metrics["dimp/success"] == run.data.metrics["dimp/success"]

    assert cli.main(["compare", str(results)]) == 0
    out = capsys.readouterr().out
    assert "deltas to static" in out and next(line for line in out.splitlines() if line.startswith("dimp"))
