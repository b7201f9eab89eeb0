"""Evaluation without a shared disk (no Ray): benchmarks read from S3, result files written to S3 atomically,
completeness found from one listing, meta.json, scoring, plots and ``cmd-ray compare`` on ``s3://`` folders —
each checked against moto in server mode and, where it applies, against the same files on local disk."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from cmd_ray import cli, storage
from cmd_ray.config import SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.evaluation import results as results_mod
from cmd_ray.evaluation.benchmarks import read_lsotb_tir, read_ptb_tir, read_synthetic
from cmd_ray.evaluation.loading import run_sequence
from cmd_ray.evaluation.plots import PLOT_FILES, write_plots
from cmd_ray.evaluation.results import (
    ResultMeta,
    ResultsError,
    complete_sequences,
    frame_rate,
    has_complete_result,
    load_results,
    prepare_tracker_dir,
    read_meta,
    read_result,
    score_directory,
    write_meta,
    write_result,
)
from cmd_ray.evaluation.runner import plan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GT = np.array([[10.0, 10.0, 20.0, 20.0]] * 5)  # a fixed 20x20 target on 5 frames


def _frames(img_dir: Path, n: int, digits: int) -> None:
    img_dir.mkdir(parents=True)
    for i in range(1, n + 1):
        (img_dir / f"{i:0{digits}d}.jpg").write_bytes(b"")  # the readers list frames, they do not decode them


def _gt_lines(n: int, sep: str = ",") -> str:
    return "".join(sep.join(str(v) for v in (i + 1, 2, 10, 20)) + "\n" for i in range(n))


def _lsotb(root: Path) -> None:
    """Both LSOTB-TIR ground-truth layouts, attributes for one sequence, and cat_D_001 (left out by '119')."""
    (root / "anno" / "att").mkdir(parents=True)
    for name, n in (("cat_D_001", 3), ("airplane_H_001", 12)):
        _frames(root / name / "img", n, 4)
        (root / "anno" / f"{name}.txt").write_text(_gt_lines(n))
    (root / "anno" / "att" / "airplane_H_001.txt").write_text(",".join(["0", "1"] * 8) + "\n")
    _frames(root / "person_S_002" / "img", 2, 4)
    (root / "person_S_002" / "groundtruth_rect.txt").write_text(_gt_lines(2, "\t"))


def _write_benchmark(root: Path, attributes: dict[str, dict[str, int]]) -> None:
    for name, flags in attributes.items():
        _frames(root / name / "img", len(GT), 4)
        (root / name / "groundtruth_rect.txt").write_text("".join(",".join(map(str, b)) + "\n" for b in GT))
        (root / name / "attributes.txt").write_text("".join(f"{k},{v}\n" for k, v in flags.items()))


def _write_tracker(results: Path, name: str, index: int, root: Path, seqs: list[str], boxes: np.ndarray) -> None:
    for s in seqs:
        write_result(results / name, s, boxes, np.full(len(boxes), 0.01))
    meta = ResultMeta(name, "dimp", f"models:/{name}@candidate", None, "synthetic", str(root), None, "lsotb")
    write_meta(results / name, ResultMeta(**{**meta.__dict__, "sequences": tuple(seqs), "index": index}))


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh bucket per test (moto's state lives as long as the session's server)."""
    return s3_server.make_bucket(f"eval-{uuid.uuid4().hex[:12]}")


def upload_tree(local: Path, uri: str) -> None:
    """Copy every file below ``local`` to ``uri/<relative path>``."""
    for p in sorted(local.rglob("*")):
        if p.is_file():
            storage.write_bytes(storage.join(uri, p.relative_to(local).as_posix()), p.read_bytes())


def _same_sequences(local: list, remote: list, local_root: Path, remote_root: str) -> None:
    assert [s.name for s in remote] == [s.name for s in local]
    for a, b in zip(local, remote, strict=True):
        assert [str(Path(f).relative_to(local_root)) for f in a.frames] == [f[len(remote_root) + 1 :] for f in b.frames]
        assert all(f.startswith(f"{remote_root}/") for f in b.frames)
        np.testing.assert_array_equal(a.ground_truth, b.ground_truth)
        assert a.attributes == b.attributes


# ------------------------------------------------------------------------------------------------- benchmarks


def test_lsotb_reader_on_s3_matches_local(tmp_path, bucket):
    _lsotb(tmp_path)
    uri = f"s3://{bucket}/lsotb"
    upload_tree(tmp_path, uri)
    for subset in ("119", "120"):
        _same_sequences(read_lsotb_tir(tmp_path, subset), read_lsotb_tir(uri, subset), tmp_path, uri)
    # Picking sequences lists only their folders (and anno/): the same sequences come back.
    picked = read_lsotb_tir(uri + "/", "120", sequences=["cat_D_001"])
    _same_sequences(read_lsotb_tir(tmp_path, "120", ["cat_D_001"]), picked, tmp_path, uri)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_lsotb_tir(uri, sequences=["nope"])


def test_ptb_and_synthetic_readers_on_s3_match_local(tmp_path, bucket):
    ptb = tmp_path / "ptb"
    (ptb / "tiranno" / "att").mkdir(parents=True)
    _frames(ptb / "tirsequences" / "classroom1" / "img", 3, 8)
    (ptb / "tiranno" / "classroom1.txt").write_text(_gt_lines(3, " "))
    (ptb / "tiranno" / "att" / "classroom1.txt").write_text("1,0,0,0,0,0,0,0,0,1\n")
    upload_tree(ptb, f"s3://{bucket}/ptb")
    _same_sequences(read_ptb_tir(ptb), read_ptb_tir(f"s3://{bucket}/ptb"), ptb, f"s3://{bucket}/ptb")

    synth = tmp_path / "synth"
    for name in ("synth_tir_000", "synth_tir_001"):
        _frames(synth / name / "img", 4, 4)
        (synth / name / "groundtruth_rect.txt").write_text(_gt_lines(4))
    (synth / "synth_tir_000" / "attributes.txt").write_text("occlusion,1\nfast_motion,0\n")
    upload_tree(synth, f"s3://{bucket}/synth")
    remote = read_synthetic(f"s3://{bucket}/synth")
    _same_sequences(read_synthetic(synth), remote, synth, f"s3://{bucket}/synth")
    assert remote[0].frames[0] == f"s3://{bucket}/synth/synth_tir_000/img/0001.jpg"

    # Errors name the S3 object, as they name the file locally.
    storage.write_bytes(f"s3://{bucket}/synth/synth_tir_001/groundtruth_rect.txt", b"1,2,3\n")
    with pytest.raises(ValueError, match=rf"s3://{bucket}/synth/synth_tir_001/groundtruth_rect\.txt:1"):
        read_synthetic(f"s3://{bucket}/synth")
    assert read_synthetic(f"s3://{bucket}/empty") == []  # S3 has no folders: an empty prefix holds no sequences


# ------------------------------------------------------------------------------------------------- result files


def test_result_files_on_s3_are_two_objects_and_read_back(bucket, s3_server):
    d = f"s3://{bucket}/results/dimp"
    boxes = np.array([[1.5, 2.25, 10.0, 20.125], [3.0, 4.0, 5.0, 6.0], [np.nan, 1.0, 2.0, 3.0]])
    times = np.array([0.25, 0.000125, 1.5])
    assert write_result(d, "seq_1", boxes, times) == f"{d}/seq_1.txt"
    # One object per file and nothing else: no temporary keys, no folder markers.
    assert s3_server.list_keys(bucket) == ["results/dimp/seq_1.txt", "results/dimp/seq_1_time.txt"]
    got_boxes, got_times = read_result(d, "seq_1")
    np.testing.assert_allclose(got_boxes, boxes, atol=5e-5)
    np.testing.assert_allclose(got_times, times, atol=5e-10)
    assert has_complete_result(d, "seq_1", 3) and not has_complete_result(d, "seq_1", 4)
    with pytest.raises(ResultsError, match=rf"result file not found: {d}/nope\.txt"):
        read_result(d, "nope")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_completeness_from_one_listing(where, tmp_path, bucket, monkeypatch):
    d = str(tmp_path / "t") if where == "local" else f"s3://{bucket}/results/t"
    write_result(d, "full", np.ones((4, 4)), np.ones(4))
    write_result(d, "short", np.ones((3, 4)), np.ones(3))  # one frame short
    write_result(d, "no_times", np.ones((4, 4)), np.ones(4))
    storage.delete_file(f"{d}/no_times_time.txt")
    storage.write_bytes(f"{d}/bad.txt", b"garbage\n")
    storage.write_bytes(f"{d}/bad_time.txt", b"0.1\n")
    listings, reads = [], []
    real_list, real_read = storage.iter_relative_files, storage.read_bytes
    monkeypatch.setattr(storage, "iter_relative_files", lambda *a, **k: listings.append(a[0]) or real_list(*a, **k))
    monkeypatch.setattr(storage, "read_bytes", lambda uri, *a, **k: reads.append(uri) or real_read(uri, *a, **k))
    counts = {"full": 4, "short": 4, "no_times": 4, "bad": 1, "missing": 4}
    assert complete_sequences(d, counts) == {"full"}
    assert len(listings) == 1  # the folder is listed once ...
    # ... and only the pairs it shows are read: no request for 'missing' or for the lone 'no_times' box file.
    read = [Path(u).name for u in reads]
    assert len(read) == len(set(read))  # each at most once
    assert {"full.txt", "full_time.txt", "short.txt", "short_time.txt", "bad.txt"} <= set(read)
    assert set(read) <= {"full.txt", "full_time.txt", "short.txt", "short_time.txt", "bad.txt", "bad_time.txt"}
    assert complete_sequences(str(tmp_path / "never") if where == "local" else f"s3://{bucket}/never", counts) == set()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_killed_rewrite_never_leaves_a_mixed_pair(where, tmp_path, bucket, monkeypatch):
    """The box file is the pair's commit marker: a run killed between the two writes of a re-track leaves no box
    file, so the old boxes can never pass as complete next to the new times."""
    d = str(tmp_path / "t") if where == "local" else f"s3://{bucket}/results/t"
    write_result(d, "s", np.ones((4, 4)), np.full(4, 0.5))
    assert has_complete_result(d, "s", 4)
    real_write = results_mod.atomic_write_text

    def killed_at_the_box_file(path, text, endpoint_url=None):
        if str(path).endswith("/s.txt"):
            raise KeyboardInterrupt("killed")
        real_write(path, text, endpoint_url)

    monkeypatch.setattr(results_mod, "atomic_write_text", killed_at_the_box_file)
    with pytest.raises(KeyboardInterrupt):
        write_result(d, "s", np.full((4, 4), 2.0), np.full(4, 0.25))
    assert not has_complete_result(d, "s", 4)
    monkeypatch.setattr(results_mod, "atomic_write_text", real_write)
    write_result(d, "s", np.full((4, 4), 2.0), np.full(4, 0.25))
    boxes, times = read_result(d, "s")
    assert boxes[0, 0] == 2.0 and times[0] == 0.25


def _meta(**changes) -> ResultMeta:
    base = dict(
        tracker="t",
        kind="dimp",
        model="s3://models/b1.pt",
        model_version=None,
        benchmark="synthetic",
        root="s3://data/tir",
        lsotb_subset=None,
        protocol="lsotb",
        sequences=("a",),
        index=0,
    )
    return ResultMeta(**{**base, **changes})


def test_meta_on_s3(bucket):
    d = f"s3://{bucket}/results/t"
    with pytest.raises(ResultsError, match=r"no meta\.json"):
        read_meta(d)
    prepare_tracker_dir(d, _meta())
    merged = prepare_tracker_dir(d + "/", _meta(sequences=("b", "a")))
    assert merged.sequences == ("a", "b") and read_meta(d) == merged
    with pytest.raises(ResultsError, match=r"root: 's3://data/tir' there, 's3://data/other' now"):
        prepare_tracker_dir(d, _meta(root="s3://data/other"))
    storage.write_bytes(f"{d}/meta.json", b"{not json")
    with pytest.raises(ResultsError, match="cannot read"):
        read_meta(d)


# ------------------------------------------------------------------------------------------------- scoring and compare


@pytest.fixture
def both_stores(tmp_path, bucket):
    """The same benchmark and two trackers' results on local disk and in S3 (meta roots pointing at their own
    store's benchmark)."""
    root = tmp_path / "seqs"
    _write_benchmark(root, {"s1": {"occlusion": 1, "distractor": 0}, "s2": {"occlusion": 0, "distractor": 0}})
    lost = GT.copy()
    lost[1:, 0] += 30
    local = tmp_path / "results"
    _write_tracker(local, "lost", 0, root, ["s1", "s2"], lost)
    _write_tracker(local, "perfect", 1, root, ["s1", "s2"], GT)
    s3_root, s3_results = f"s3://{bucket}/seqs", f"s3://{bucket}/results"
    upload_tree(root, s3_root)
    for name in ("lost", "perfect"):
        for s in ("s1", "s2"):
            boxes, times = read_result(local / name, s)
            write_result(f"{s3_results}/{name}", s, boxes, times)
        meta = read_meta(local / name)
        write_meta(f"{s3_results}/{name}", ResultMeta(**{**meta.__dict__, "root": s3_root}))
    return local, s3_results


def test_scores_and_compare_on_s3_equal_local(both_stores, tmp_path, bucket, s3_server, capsys):
    local, remote = both_stores
    seqs = read_synthetic(tmp_path / "seqs")
    for name in ("lost", "perfect"):
        a, b = score_directory(local / name, seqs), score_directory(f"{remote}/{name}", seqs)
        assert (a.success, a.precision, a.norm_precision) == (b.success, b.precision, b.norm_precision)
        assert frame_rate(local / name, ["s1", "s2"]) == frame_rate(f"{remote}/{name}", ["s1", "s2"])
    loaded = load_results([remote])
    assert [r.label for r in loaded] == ["lost", "perfect"]
    assert loaded[0].directory == f"{remote}/lost"

    assert cli.main(["compare", str(local)]) == 0
    local_out = capsys.readouterr().out
    assert cli.main(["compare", remote, "--plots", f"s3://{bucket}/compare-plots"]) == 0
    remote_out = capsys.readouterr().out
    tables = [line for line in remote_out.splitlines() if not line.startswith("plot: ")]
    assert tables == local_out.splitlines() and "deltas to lost" in local_out
    assert s3_server.list_keys(bucket, "compare-plots/") == sorted(f"compare-plots/{f}" for f in PLOT_FILES.values())

    assert cli.main(["compare", f"s3://{bucket}/nothing-here"]) == 2
    assert "holds no tracker results" in capsys.readouterr().err


def test_write_plots_to_s3_uploads_pngs(both_stores, tmp_path, bucket):
    seqs = read_synthetic(tmp_path / "seqs")
    scores = {"perfect": score_directory(tmp_path / "results" / "perfect", seqs)}
    uris = write_plots(scores, f"s3://{bucket}/out/plots/", norm_precision=False)
    assert uris == [f"s3://{bucket}/out/plots/{PLOT_FILES['success']}", f"s3://{bucket}/out/plots/precision_plot.png"]
    assert all(storage.read_bytes(u).startswith(PNG_MAGIC) for u in uris)


# --------------------------------------------------------------------------------------------- the task and the plan


@pytest.fixture
def s3_sequences(tmp_path, bucket) -> str:
    cfg = SynthConfig(
        num_pairs=1, image_width=64, image_height=48, num_rgb_sequences=0, num_tir_sequences=2, sequence_length=5
    )
    uri = f"s3://{bucket}/synth"
    write_synthetic_dataset(uri, cfg, progress=False, workers=1, io_workers=1)
    return f"{uri}/tir_sequences"


def test_task_reads_frames_from_s3_and_the_plan_skips_its_result(s3_sequences, bucket, tmp_path, s3_server):
    cfg = load_config(
        None,
        [
            f"evaluation.root={s3_sequences}",
            f"evaluation.results_dir=s3://{bucket}/results",
            "evaluation.trackers=[{name: static, kind: static}]",
        ],
    )
    seqs = read_synthetic(s3_sequences)
    dirs = {"static": f"s3://{bucket}/results/static"}
    todo, skipped = plan(cfg, seqs, dirs)
    assert (len(todo), skipped) == (2, 0)
    seq = seqs[0]
    run = run_sequence(
        tracker_name="static",
        kind="static",
        sequence=seq.name,
        frames=list(seq.frames),
        init_box=list(seq.ground_truth[0]),
        out_dir=dirs["static"],
    )
    assert run.result_path == f"{dirs['static']}/{seq.name}.txt" and run.num_frames == 5
    assert s3_server.list_keys(bucket, "results/") == [
        f"results/static/{seq.name}.txt",
        f"results/static/{seq.name}_time.txt",
    ]
    todo, skipped = plan(cfg, seqs, dirs)
    assert skipped == 1 and [s.name for _, s in todo] == [seqs[1].name]
    cfg.evaluation.overwrite = True
    assert plan(cfg, seqs, dirs)[1] == 0

    # A frame missing from the bucket fails the task naming the object (the task never falls back to local disk).
    with pytest.raises(storage.StorageError, match=f"s3://{bucket}/synth/tir_sequences/.*/img/0099.jpg"):
        run_sequence(
            tracker_name="static",
            kind="static",
            sequence="x",
            frames=[seq.frames[0], seq.frames[0].replace("0001.jpg", "0099.jpg")],
            init_box=list(seq.ground_truth[0]),
            out_dir=dirs["static"],
        )
