"""Loading a tracker's network from checkpoints and the registry, and tracking one sequence into files (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import Config, SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.evaluation.benchmarks import read_synthetic
from cmd_ray.evaluation.loading import ModelLoadError, load_network, registry_version, run_sequence
from cmd_ray.evaluation.results import read_result
from cmd_ray.models.dimpnet import build_model
from cmd_ray.models.training_state import save_training_state


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    cfg = SynthConfig(num_pairs=1, num_rgb_sequences=0, num_tir_sequences=1, sequence_length=6)
    summary = write_synthetic_dataset(str(root), cfg, progress=False)
    return read_synthetic(summary.tir_sequences_uri)


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(None, ["model.preset=tiny", "tracker.preset=tiny"])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_folder_and_its_file_rebuild_the_stored_network(tiny, tmp_path):
    cfg, net = tiny
    save_training_state(tmp_path, {"model": net.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 3})
    default_cfg = Config()  # the evaluation's own config does not matter: the checkpoint carries its network
    for uri in (str(tmp_path), str(tmp_path / "training_state.pt")):
        loaded = load_network(uri, default_cfg)
        assert loaded.model_config.model.preset == "tiny" and loaded.version is None and loaded.source == uri
        assert _same_weights(loaded.state_dict, net.state_dict())


def test_state_dict_file_uses_the_evaluation_config(tiny, tmp_path):
    cfg, net = tiny
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    loaded = load_network(str(tmp_path / "weights.pt"), cfg)
    assert loaded.model_config is cfg and _same_weights(loaded.state_dict, net.state_dict())


def test_checkpoint_on_s3(tiny, tmp_path, s3_server):
    cfg, net = tiny
    bucket = s3_server.make_bucket("eval-models")
    save_training_state(tmp_path, {"model": net.state_dict(), "config": cfg.model_dump(mode="json")})
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    client = s3_server.client()
    client.upload_file(str(tmp_path / "training_state.pt"), bucket, "run1/checkpoint_000001/training_state.pt")
    client.upload_file(str(tmp_path / "weights.pt"), bucket, "plain/weights.pt")
    folder = load_network(f"s3://{bucket}/run1/checkpoint_000001/", Config())
    assert folder.model_config.model.preset == "tiny" and _same_weights(folder.state_dict, net.state_dict())
    plain = load_network(f"s3://{bucket}/plain/weights.pt", cfg)
    assert _same_weights(plain.state_dict, net.state_dict())
    with pytest.raises(ModelLoadError, match=r"cannot load model s3://eval-models/missing\.pt"):
        load_network(f"s3://{bucket}/missing.pt", cfg)


def test_weights_that_do_not_fit_fail_naming_the_file(tiny, tmp_path):
    cfg, net = tiny
    weights = dict(net.state_dict())
    weights.pop(next(iter(weights)))
    torch.save(weights, tmp_path / "partial.pt")
    with pytest.raises(ModelLoadError, match=r"(?s)partial\.pt do not fit the dimp/tiny network:\n.*missing \(1\)"):
        load_network(str(tmp_path / "partial.pt"), cfg)


def test_missing_or_unreadable_models_fail_naming_them(tiny, tmp_path):
    cfg, _ = tiny
    with pytest.raises(ModelLoadError, match="no such file"):
        load_network(str(tmp_path / "nothing.pt"), cfg)
    with pytest.raises(ModelLoadError, match=r"training_state\.pt"):
        load_network(str(tmp_path), cfg)  # a folder without a checkpoint
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"junk\.pt"):
        load_network(str(tmp_path / "junk.pt"), cfg)


def test_registered_model_by_alias(tiny, tmp_path):
    cfg, net = tiny
    cfg = load_config(
        None,
        [
            "model.preset=tiny",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "mlflow.registered_model_name=eval-test",
            "mlflow.alias=champion",
        ],
    )
    run_id = mlflow_runs.start_run(cfg, "register")
    registered = registry.log_and_register(cfg, run_id, net)
    mlflow_runs.end_run(cfg, run_id)
    assert registry_version("models:/eval-test@champion", cfg) == registered.version
    assert registry_version("models:/eval-test/7", cfg) == "7"
    loaded = load_network("models:/eval-test@champion", cfg)
    assert loaded.version == registered.version and loaded.model_config.model.preset == "tiny"
    assert _same_weights(loaded.state_dict, net.state_dict())
    with pytest.raises(ModelLoadError, match="cannot resolve models:/eval-test@nobody"):
        load_network("models:/eval-test@nobody", cfg)
    with pytest.raises(ModelLoadError, match="must look like"):
        registry_version("models:/a/b/c", cfg)


def test_run_sequence_static_writes_the_first_box_on_every_frame(sequences, tmp_path):
    seq = sequences[0]
    run = run_sequence(
        tracker_name="static",
        kind="static",
        sequence=seq.name,
        frames=[str(p) for p in seq.frames],
        init_box=list(seq.ground_truth[0]),
        out_dir=str(tmp_path),
    )
    assert run.num_frames == len(seq) == 6 and run.seconds >= 0
    boxes, times = read_result(tmp_path, seq.name)
    np.testing.assert_allclose(boxes, np.repeat(seq.ground_truth[:1], 6, axis=0), atol=5e-5)
    assert times.shape == (6,)


def test_run_sequence_dimp_tracks_with_the_tiny_network(tiny, sequences, tmp_path):
    cfg, net = tiny
    seq = sequences[0]
    run = run_sequence(
        tracker_name="dimp",
        kind="dimp",
        sequence=seq.name,
        frames=[str(p) for p in seq.frames],
        init_box=list(seq.ground_truth[0]),
        out_dir=str(tmp_path),
        state_dict=net.state_dict(),
        model_config=cfg.model_dump(mode="json"),
        tracker_params=cfg.tracker.model_dump(mode="json"),
        num_threads=1,
    )
    boxes, times = read_result(tmp_path, seq.name)
    assert boxes.shape == (6, 4) and run.num_frames == 6
    np.testing.assert_allclose(boxes[0], seq.ground_truth[0], atol=5e-5)  # frame 1: the initial box
    assert np.all(np.isfinite(boxes)) and np.all(boxes[:, 2:] > 0)
    assert np.all(times > 0)


def test_run_sequence_without_weights_fails():
    with pytest.raises(ValueError, match="needs weights"):
        run_sequence(tracker_name="d", kind="dimp", sequence="s", frames=["x"], init_box=[0, 0, 1, 1], out_dir="/tmp")
