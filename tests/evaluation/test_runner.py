"""The evaluation runner: config validation and planning (no Ray), and runs on the shared local Ray cluster."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from cmd_ray.config import ConfigError, SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.evaluation.results import ResultsError, prepare_tracker_dir, read_result, result_paths, write_result
from cmd_ray.evaluation.runner import (
    EvaluationError,
    check_twins,
    load_sequences,
    plan,
    run_evaluation,
    tracker_meta,
)
from cmd_ray.mlflow_runs import store_client

STATIC_PAIR = "evaluation.trackers=[{name: first, kind: static}, {name: second, kind: static}]"


@pytest.fixture(scope="module")
def seq_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    cfg = SynthConfig(num_pairs=1, num_rgb_sequences=0, num_tir_sequences=3, sequence_length=6)
    return write_synthetic_dataset(str(root), cfg, progress=False).tir_sequences_uri


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> str:
    """One sqlite store for the module (creating one costs seconds); each test logs to its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _cfg(tmp_path, seq_root, *overrides, db: str | None = None):
    return load_config(
        None,
        [
            f"evaluation.root={seq_root}",
            f"evaluation.results_dir={tmp_path / 'results'}",
            f"mlflow.tracking_uri={db or f'sqlite:///{tmp_path}/mlflow.db'}",
            f"mlflow.experiment=eval-{tmp_path.name}",
            "evaluation.num_workers=2",
            STATIC_PAIR,
            *overrides,
        ],
    )


# ------------------------------------------------------------------------------------------------- no Ray


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evaluation.trackers=[{name: a, kind: static}, {name: a, kind: static}]", "unique"),
        ("evaluation.trackers=[{name: d, kind: dimp}]", "needs a model"),
        ("evaluation.trackers=[{name: s, kind: static, model: x.pt}]", "uses no model"),
        ("evaluation.trackers=[{name: 'a/b', kind: static}]", "evaluation.trackers.0.name"),
        ("evaluation.trackers=[{name: plots, kind: static}]", "plots"),
        ("evaluation.trackers=[]", "at least one tracker"),
        ("evaluation.benchmark=otb", "evaluation.benchmark"),
        ("evaluation.protocol=vot", "evaluation.protocol"),
        ("evaluation.num_workers=0", "evaluation.num_workers"),
        ("evaluation.gpus_per_task=2", "evaluation.gpus_per_task"),
        ("evaluation.sequences=[a, a]", "repeated"),
        ("evaluation.lsotb_subset=118", "evaluation.lsotb_subset"),
        ("evaluation.root=s3://", "root 's3://' names no bucket"),
        ("evaluation.results_dir=gs://bucket/results", "results_dir must be a local folder, file:// or s3://"),
        ("evaluation.trackers=[{name: rgb_twins, kind: static}]", "results_dir/rgb_twins holds"),
        ("evaluation.rgb_root=data/demo/tir_sequences", "rgb_root must hold the RGB twins"),
        ("evaluation.rgb_root=twins", "gap_reference 'teacher' is not one of the trackers \\['static'\\]"),
        ("evaluation.rgb_root=gs://b/twins", "rgb_root must be a local folder"),
        ("evaluation.seed_groups={g: [static, nope]}", "seed_groups.g names trackers that are not evaluated"),
        ("evaluation.seed_groups={g: [static]}", "seed_groups.g must list at least 2 trackers"),
        (
            "evaluation.trackers=[{name: a, kind: static}, {name: b, kind: static}, {name: teacher, kind: static}]\n"
            "evaluation.seed_groups={a: [a, b]}",
            "a group cannot take the name of a tracker",
        ),
        (
            "evaluation.trackers=[{name: a, kind: static}, {name: b, kind: static}, {name: teacher, kind: static}]\n"
            "evaluation.seed_groups={g: [a, b], h: [b, teacher]}",
            "a seed of one group only, repeated: \\['b'\\]",
        ),
        (
            "evaluation.trackers=[{name: a, kind: static}, {name: b, kind: static}]\n"
            "evaluation.seed_groups={g: [a, b]}",
            "gap_reference 'teacher' \\(the seed groups' reference\\) is not a tracker",
        ),
    ],
)
def test_bad_evaluation_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override.split("\n"))


def test_default_evaluation_config():
    ev = load_config().evaluation
    assert (ev.benchmark, ev.root, ev.protocol, ev.results_dir) == (
        "synthetic",
        "data/demo/tir_sequences",
        "lsotb",
        "results",
    )
    assert [(t.name, t.kind, t.model) for t in ev.trackers] == [("static", "static", None)]
    cfg = load_config(None, ["evaluation.trackers=[{name: cmd, model: 'models:/cmd-ray-tracker@candidate'}]"])
    assert cfg.evaluation.trackers[0].kind == "dimp"


def test_load_sequences_names_a_bad_root(tmp_path, seq_root):
    cfg = _cfg(tmp_path, seq_root)
    assert [s.name for s in load_sequences(cfg)] == ["synth_tir_000", "synth_tir_001", "synth_tir_002"]
    with pytest.raises(EvaluationError, match="nowhere"):
        load_sequences(_cfg(tmp_path, tmp_path / "nowhere"))
    with pytest.raises(EvaluationError, match="synth_tir_404"):
        load_sequences(_cfg(tmp_path, seq_root, "evaluation.sequences=[synth_tir_404]"))


def test_rgb_twins_must_match_their_tir_sequences(tmp_path, seq_root):
    import shutil

    twins = str(Path(seq_root).parent / "tir_sequences_rgb")
    cfg = _cfg(tmp_path, seq_root, f"evaluation.rgb_root={twins}", "evaluation.gap_reference=first")
    tir, rgb = load_sequences(cfg), load_sequences(cfg, "rgb")
    assert [s.name for s in rgb] == [s.name for s in tir]
    assert rgb[0].frames[0].startswith(twins) and rgb[0].ground_truth.tolist() == tir[0].ground_truth.tolist()
    check_twins(tir, rgb, twins)

    odd = tmp_path / "odd"
    shutil.copytree(twins, odd)
    shutil.rmtree(odd / "synth_tir_002")
    gt = odd / "synth_tir_001" / "groundtruth_rect.txt"
    gt.write_text("1,1,5,5\n" + "".join(gt.read_text().splitlines(keepends=True)[1:]))
    odd_cfg = _cfg(tmp_path, seq_root, f"evaluation.rgb_root={odd}", "evaluation.gap_reference=first")
    with pytest.raises(EvaluationError, match=r"lacks the RGB twins of \['synth_tir_002'\]"):
        check_twins(tir, load_sequences(odd_cfg, "rgb"), str(odd))
    with pytest.raises(EvaluationError, match=r"not pixel-aligned twins: \['synth_tir_001'\]"):
        check_twins(tir[:2], load_sequences(odd_cfg, "rgb"), str(odd))
    with pytest.raises(EvaluationError, match=r"evaluation\.rgb_root is not set"):
        load_sequences(_cfg(tmp_path, seq_root), "rgb")


def test_cli_evaluate_fails_before_any_cluster_work(tmp_path, capsys):
    from cmd_ray import cli

    db = f"mlflow.tracking_uri=sqlite:///{tmp_path}/never.db"
    assert cli.main(["evaluate", f"evaluation.root={tmp_path / 'nowhere'}", db]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli.main(["evaluate", "evaluation.trackers=[{name: d, kind: dimp}]"]) == 2
    assert "needs a model" in capsys.readouterr().err
    assert not (tmp_path / "never.db").exists()  # no MLflow run was opened


def test_plan_skips_complete_results(tmp_path, seq_root):
    cfg = _cfg(tmp_path, seq_root)
    sequences = load_sequences(cfg)
    dirs = {"first": tmp_path / "first", "second": tmp_path / "second"}
    seq = sequences[1]
    write_result(dirs["first"], seq.name, np.ones((len(seq), 4)), np.ones(len(seq)))
    write_result(dirs["second"], seq.name, np.ones((len(seq) - 1, 4)), np.ones(len(seq) - 1))  # one frame short
    todo, skipped = plan(cfg, sequences, dirs)
    assert skipped == 1 and len(todo) == 5
    assert ("first", seq.name) not in [(t.name, s.name) for t, s in todo]
    cfg.evaluation.overwrite = True
    assert plan(cfg, sequences, dirs) == (
        [(t, s) for t in cfg.evaluation.trackers for s in sequences],
        0,
    )


def test_a_tracker_change_retracks_and_an_unchanged_rerun_reuses(tmp_path, seq_root, caplog):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")  # tracker_meta only stamps the file: size and modification time
    trackers = f"evaluation.trackers=[{{name: d, kind: dimp, model: '{weights}'}}, {{name: s, kind: static}}]"
    cfg = _cfg(tmp_path, seq_root, trackers)
    sequences = load_sequences(cfg)
    dirs = {t.name: tmp_path / "results" / t.name for t in cfg.evaluation.trackers}

    def prepare_and_plan(cfg):
        for i, t in enumerate(cfg.evaluation.trackers):
            prepare_tracker_dir(dirs[t.name], tracker_meta(cfg, t, i, sequences))
        return plan(cfg, sequences, dict(dirs))

    assert prepare_and_plan(cfg)[1] == 0
    for t in cfg.evaluation.trackers:
        for seq in sequences:
            write_result(dirs[t.name], seq.name, np.ones((len(seq), 4)), np.ones(len(seq)))
    assert prepare_and_plan(cfg) == ([], 6)  # unchanged: every result reused

    flipped = _cfg(tmp_path, seq_root, trackers, f"tracker.use_iou_net={not cfg.tracker.use_iou_net}")
    with caplog.at_level(logging.WARNING, logger="cmd_ray.evaluation.results"):
        todo, skipped = prepare_and_plan(flipped)
    # the dimp tracker is tracked again; the static baseline does not use the tracker's parameters
    assert skipped == 3 and {(t.name, s.name) for t, s in todo} == {("d", s.name) for s in sequences}
    assert f"tracker.use_iou_net: {cfg.tracker.use_iou_net} → {flipped.tracker.use_iou_net}" in caplog.text

    for seq in sequences:
        write_result(dirs["d"], seq.name, np.ones((len(seq), 4)), np.ones(len(seq)))
    assert prepare_and_plan(flipped) == ([], 6)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the weights file rewritten in place
    todo, skipped = prepare_and_plan(flipped)
    assert skipped == 3 and {t.name for t, _ in todo} == {"d"}


# ------------------------------------------------------------------------------------------------- on Ray


@pytest.mark.e2e
def test_evaluates_skips_on_rerun_and_retracks_an_incomplete_sequence(ray_session, tmp_path, seq_root, mlflow_db):
    cfg = _cfg(tmp_path, seq_root, "evaluation.plots=false", db=mlflow_db)
    first = run_evaluation(cfg, progress=False)
    assert (first.tracked, first.skipped) == (6, 0)
    assert list(first.scores) == ["first", "second"]
    for name in ("first", "second"):
        for s in ("synth_tir_000", "synth_tir_001", "synth_tir_002"):
            boxes, times = read_result(tmp_path / "results" / name, s)
            assert boxes.shape == (6, 4) and times.shape == (6,)
            np.testing.assert_array_equal(boxes, np.repeat(boxes[:1], 6, axis=0))  # static: the first box
    assert first.scores["first"].success == pytest.approx(first.scores["second"].success)
    assert "deltas to first" in first.table and "(+0.000)" in first.table
    assert first.plots == [] and not (tmp_path / "results" / "plots").exists()
    with (tmp_path / "results" / "per_sequence.csv").open() as f:  # beside ope_tables.txt
        rows = list(csv.DictReader(f))
    assert [(r["tracker"], r["sequence"]) for r in rows][:2] == [("first", "synth_tir_000"), ("first", "synth_tir_001")]
    assert len(rows) == 6 and all(r["fps"] == "" and r["frames"] == "6" for r in rows)  # static: no speed
    per_seq = first.scores["first"].per_sequence["synth_tir_000"]
    assert float(rows[0]["success_auc"]) == pytest.approx(per_seq.success_score, abs=1e-6)
    assert (tmp_path / "results" / "per_sequence.json").is_file()

    second = run_evaluation(cfg, progress=False)
    assert (second.tracked, second.skipped) == (0, 6)
    assert second.scores["first"].success == first.scores["first"].success

    # A result file cut short (a run killed during a non-atomic write would leave one) is tracked again, alone.
    boxes_path = Path(result_paths(tmp_path / "results" / "second", "synth_tir_001")[0])
    boxes_path.write_text(boxes_path.read_text().splitlines(keepends=True)[0])
    third = run_evaluation(cfg, progress=False)
    assert (third.tracked, third.skipped) == (1, 5)
    assert read_result(tmp_path / "results" / "second", "synth_tir_001")[0].shape == (6, 4)

    overwrite = run_evaluation(
        _cfg(tmp_path, seq_root, "evaluation.plots=false", "evaluation.overwrite=true", db=mlflow_db), progress=False
    )
    assert (overwrite.tracked, overwrite.skipped) == (6, 0)

    client = store_client(mlflow_db)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["first/success"] == pytest.approx(first.scores["first"].success)
    assert run.data.metrics["sequences_tracked"] == 6
    assert client.get_run(second.run_id).data.metrics["sequences_skipped"] == 6
    assert run.data.params["evaluation.num_workers"] == "2"
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"ope_tables.txt", "per_sequence.csv", "per_sequence.json"} <= artifacts


@pytest.mark.e2e
def test_a_failing_sequence_is_reported_and_the_others_are_kept(ray_session, tmp_path, seq_root, mlflow_db):
    import shutil

    root = tmp_path / "seqs"
    shutil.copytree(seq_root, root)
    (root / "synth_tir_002" / "img" / "0003.jpg").write_bytes(b"not a jpeg")
    cfg = _cfg(tmp_path, root, "evaluation.trackers=[{name: only, kind: static}]", db=mlflow_db)
    with pytest.raises(EvaluationError, match=r"1 of 3 sequence task\(s\) failed.*\n.*only/synth_tir_002.*0003\.jpg"):
        run_evaluation(cfg, progress=False)
    assert read_result(tmp_path / "results" / "only", "synth_tir_000")[0].shape == (6, 4)
    assert not Path(result_paths(tmp_path / "results" / "only", "synth_tir_002")[0]).exists()
    client = store_client(mlflow_db)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"


def test_results_of_another_model_are_not_mixed_in(tmp_path, seq_root, mlflow_db):
    cfg = _cfg(tmp_path, seq_root, "evaluation.trackers=[{name: t, kind: static}]", db=mlflow_db)
    from cmd_ray.evaluation.results import ResultMeta, write_meta

    write_meta(
        tmp_path / "results" / "t",
        ResultMeta("t", "dimp", "old.pt", None, "synthetic", str(seq_root), None, "lsotb", ("synth_tir_000",)),
    )
    with pytest.raises(ResultsError, match="kind: 'dimp' there, 'static' now"):
        run_evaluation(cfg, progress=False)


@pytest.mark.parametrize("overwrite", ["false", "true"])
def test_another_tools_result_files_are_never_overwritten(tmp_path, seq_root, capsys, overwrite):
    """A tracker folder without meta.json that holds result files of the evaluated sequences is another tool's: the
    job refuses it (rc 2, one line naming the file), ``evaluation.overwrite=true`` included, and writes nothing."""
    from cmd_ray import cli

    sequences = load_sequences(_cfg(tmp_path, seq_root))
    foreign = tmp_path / "results" / "second"
    foreign.mkdir(parents=True)
    for seq in sequences:
        (foreign / f"{seq.name}.txt").write_text("1,2,3,4\n" * 5)  # 5 lines: not a complete result here
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in foreign.iterdir()}
    cfg = _cfg(tmp_path, seq_root, f"evaluation.overwrite={overwrite}")
    with pytest.raises(ResultsError, match="was not written by cmd-ray"):
        run_evaluation(cfg, progress=False)
    args = [f"evaluation.root={seq_root}", f"evaluation.results_dir={tmp_path / 'results'}", STATIC_PAIR]
    rc = cli.main(
        ["evaluate", *args, f"mlflow.tracking_uri=sqlite:///{tmp_path}/never.db", f"evaluation.overwrite={overwrite}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    first = sequences[0].name
    assert err[0].startswith(
        f"cmd-ray evaluate: {foreign / first}.txt was not written by cmd-ray ({foreign} has no meta.json"
    )
    assert "evaluation.overwrite=true" in err[0] and "evaluation.results_dir" in err[0]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in foreign.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["second"]  # "first" was not created either
    assert not (tmp_path / "never.db").exists()


def test_a_folder_of_unrelated_files_is_still_usable(tmp_path, seq_root):
    """Only result files of this evaluation's sequences make a folder another tool's: a README does not."""
    from cmd_ray.evaluation.results import check_not_foreign

    sequences = [s.name for s in load_sequences(_cfg(tmp_path, seq_root))]
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "README.txt").write_text("notes\n")
    check_not_foreign(tmp_path / "t", sequences)
    (tmp_path / "t" / f"{sequences[1]}_time.txt").write_text("0.1\n")
    with pytest.raises(ResultsError, match=rf"{sequences[1]}_time\.txt was not written by cmd-ray"):
        check_not_foreign(tmp_path / "t", sequences)
