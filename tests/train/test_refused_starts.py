"""Starting weights are refused at the door: every URI a run starts from (``model.init_checkpoint``,
``pretrain.init_checkpoint``, ``distill.start.*``) is parsed and loaded into the run's network on the driver, by the
workers' rule, before Ray starts. A corrupt file, a pickle that names code to run, or weights of another network give
a ``ConfigError`` naming the setting and the URI (never a temporary file), the CLI exits 2 with one line, and nothing
is written: no MLflow store, no run folder.

Ray is not started here: ``ray.init`` is replaced by a tripwire, so a check that came too late fails the test at once
instead of starting a cluster.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from cmd_ray.cli import main
from cmd_ray.config import ConfigError, SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.models.dimpnet import build_model
from cmd_ray.train import trainer
from cmd_ray.train.teacher import resolve_start, resolve_teacher


class _OpensAFile:
    """Pickles as a call of ``open(marker, "w")``: were it unpickled by plain pickle, the marker file would exist."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    """Weights files a run must refuse, and one it accepts (``good``: the tiny network's own)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    files = {name: folder / f"{name}.pt" for name in ("corrupt", "malicious", "malicious_net", "other", "good")}
    files["corrupt"].write_bytes(b"PK\x03\x04 not a zip archive " * 8)
    files["malicious"].write_bytes(pickle.dumps(_OpensAFile(tmp_path / "PWNED")))
    torch.save({"net": _OpensAFile(tmp_path / "PWNED"), "epoch": 3}, files["malicious_net"])  # a pytracking shape
    state = build_model(load_config(None)).state_dict()
    torch.save(state, files["good"])
    state["bb_regressor.conv3_1r.0.bias"] = torch.zeros(33)  # a layer of another size: another network's weights
    torch.save(state, files["other"])
    return files


@pytest.fixture
def no_cluster(monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started before the starting weights were checked")

    monkeypatch.setattr(trainer.ray, "init", tripwire)
    monkeypatch.setattr(trainer.ray, "is_initialized", lambda: False)


def _refused(cfg, key: str, uri: Path, job: str = "distill") -> str:
    with pytest.raises(ConfigError) as caught:
        if job == "pretrain":
            resolve_teacher(cfg, "pretrain")
        else:
            resolve_start(cfg)
    message = str(caught.value)
    assert message.startswith(f"{key}={uri} "), message
    assert "\n" not in message and "cmd-ray-weights" not in message and "/tmp/tmp" not in message
    return message


@pytest.mark.parametrize("name", ["corrupt", "malicious", "malicious_net", "other"])
def test_a_bad_teacher_is_refused_naming_the_setting_and_the_uri(bad_files, tmp_path, name):
    uri = bad_files[name]
    message = _refused(load_config(None, [f"model.init_checkpoint={uri}"]), "model.init_checkpoint", uri)
    expected = "does not fit the dimp/tiny network" if name == "other" else "is not a usable checkpoint"
    assert expected in message
    if name == "malicious_net":
        assert "pickled io.open where its state dict belongs" in message
    assert not (tmp_path / "PWNED").exists()  # the pickled call never ran


@pytest.mark.parametrize("name", ["malicious", "other"])
def test_pretraining_and_d_starts_are_checked_the_same_way(bad_files, name):
    uri = bad_files[name]
    _refused(load_config(None, [f"pretrain.init_checkpoint={uri}"]), "pretrain.init_checkpoint", uri, "pretrain")
    start = load_config(None, [f"distill.start.b3={bad_files['good']}", f"distill.start.c1={uri}"])
    _refused(start, "distill.start.c1", uri)


def test_backbone_only_weights_still_load_partially(tmp_path, caplog):
    """Missing keys are not another network: ImageNet-style backbone weights start a pretraining as before."""
    state = {k: v for k, v in build_model(load_config(None)).state_dict().items() if k.startswith("feature_extractor.")}
    torch.save(state, tmp_path / "backbone.pt")
    cfg = load_config(None, [f"pretrain.init_checkpoint={tmp_path / 'backbone.pt'}"])
    with caplog.at_level("WARNING"):
        assert resolve_teacher(cfg, "pretrain").weights is not None
    assert "partial load" in caplog.text


@pytest.mark.parametrize("job", ["distill", "pretrain"])
def test_the_job_fails_before_ray_and_writes_nothing(bad_files, tmp_path, no_cluster, job):
    key = "pretrain.init_checkpoint" if job == "pretrain" else "model.init_checkpoint"
    cfg = load_config(
        None,
        [
            f"{key}={bad_files['malicious']}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/store/mlflow.db",
            f"storage.storage_path={tmp_path / 'ray_results'}",
        ],
    )
    with pytest.raises(ConfigError, match=key):
        if job == "pretrain":
            trainer.run_pretraining(cfg, sequences=[])
        else:
            trainer.run_distillation(cfg, pairs=[("rgb/0.png", "tir/0.png")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]


def test_cmd_ray_distill_exits_2_with_one_line(bad_files, tmp_path, no_cluster, capsys, monkeypatch):
    data = write_synthetic_dataset(
        str(tmp_path / "data"), SynthConfig(num_pairs=2, num_rgb_sequences=0, num_tir_sequences=0), progress=False
    )
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    rc = main(["distill", f"data.uri={data.pairs_uri}", f"model.init_checkpoint={bad_files['corrupt']}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith(f"cmd-ray: model.init_checkpoint={bad_files['corrupt']} is not a usable checkpoint")
    assert sorted(os.listdir(tmp_path)) == before  # no mlflow.db, no ray_results
