"""Where a distill run starts, on the path of ``jobs/distill.py`` (``run_distillation``) without a Ray cluster: a D
row given B3 (or B1 and B2) and C1 trains from their merge, any other run from the teacher, and the log, the MLflow
run and the registered version name what ran (``D3``, or ``D3 loss from the teacher``).

Training itself is replaced by a recorder of what the job hands it (the starting weights, the MLflow run); MLflow is
a real sqlite store. The network the workers would train is rebuilt here as ``train_loop_per_worker`` builds it:
``build_model`` then ``load_teacher_weights``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import ConfigError, load_config
from cmd_ray.distill.merge import branch_prefixes
from cmd_ray.mlflow_runs import store_client
from cmd_ray.models.dimpnet import build_model
from cmd_ray.train import trainer
from cmd_ray.train.teacher import Teacher, load_teacher_weights, resolve_start
from cmd_ray.train.trainer import TrainingResult, run_distillation

REFERENCE, TEST = branch_prefixes("reference"), branch_prefixes("test")
CLASSIFIER = "classifier."


@pytest.fixture
def weights(tmp_path) -> dict[str, Path]:
    """State-dict files of the tiny network, each from its own seed: the teacher and rows B1, B2, B3, C1."""
    cfg = load_config(None, [])
    files = {}
    for seed, name in enumerate(("teacher", "b1", "b2", "b3", "c1"), start=1):
        torch.manual_seed(seed)
        files[name] = tmp_path / f"{name}.pt"
        torch.save(build_model(cfg).state_dict(), files[name])
    return files


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _trained_network(cfg, teacher: Teacher) -> dict[str, torch.Tensor]:
    """The network a training worker builds and trains from ``teacher`` (``train_loop_per_worker``)."""
    torch.manual_seed(99)  # another init than every file's: each weight below comes from a file
    model = build_model(cfg)
    report = load_teacher_weights(model, teacher)
    assert report is not None and report.ok
    return model.state_dict()


def _source(key: str, by_part: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if key.startswith(CLASSIFIER):
        return by_part["tcl"]
    if key.startswith(TEST):
        return by_part["bbe_test"]
    return by_part["base"]  # the backbone and the IoU-Net reference branch


def _assert_made_of(state: dict[str, torch.Tensor], **by_part: dict[str, torch.Tensor]) -> None:
    for key, value in state.items():
        assert torch.equal(value, _source(key, by_part)[key]), key


@pytest.fixture
def distill_job(tmp_path, monkeypatch):
    """``run_distillation`` up to the cluster: Ray is not started and training is a recorder of its inputs."""
    recorded: dict = {}

    def no_cluster() -> None:
        raise AssertionError("the start is resolved without a cluster here")

    def record(cfg, schedule, run_id, resumed, teacher, train, register=True, select_by=None):
        recorded.update(cfg=cfg, run_id=run_id, teacher=teacher)
        return TrainingResult(run_id, "", None, {}, [], "", 0, teacher=teacher)

    monkeypatch.setattr(trainer.ray, "init", no_cluster)
    monkeypatch.setattr(trainer.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(trainer, "_finish", record)
    common = [
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"storage.storage_path={tmp_path / 'ray_results'}",
        "mlflow.registered_model_name=start-unit",
    ]

    def run(*overrides: str) -> tuple[TrainingResult, dict]:
        cfg = load_config(None, [*common, *overrides])
        result = run_distillation(cfg, pairs=[("rgb/0.png", "tir/0.png")])
        return result, recorded

    return run


def test_a_d_row_given_b3_and_c1_trains_from_their_merge_and_is_called_d3(distill_job, weights, caplog):
    with caplog.at_level("INFO", logger="cmd_ray.train.teacher"):
        result, seen = distill_job(
            "distill.variant=D3",
            f"model.init_checkpoint={weights['teacher']}",
            f"distill.start.b3={weights['b3']}",
            f"distill.start.c1={weights['c1']}",
        )
    cfg, teacher = seen["cfg"], seen["teacher"]
    assert teacher.start == "merge(B3,C1)" and result.label == "D3"
    b3, c1 = _state(weights["b3"]), _state(weights["c1"])
    _assert_made_of(_trained_network(cfg, teacher), base=b3, bbe_test=b3, tcl=c1)
    assert not torch.equal(
        b3["classifier.filter_initializer.filter_conv.weight"], c1["classifier.filter_initializer.filter_conv.weight"]
    )  # the two sources differ where the merge takes C1's classifier
    assert f"starts from merge(B3,C1) of B3 {weights['b3']}, C1 {weights['c1']}" in caplog.text

    run = store_client(cfg.mlflow.tracking_uri).get_run(seen["run_id"])
    assert run.data.tags["cmd_ray.start"] == "merge(B3,C1)" and run.data.tags["cmd_ray.variant"] == "D3"
    assert run.data.tags["cmd_ray.start_b3"] == str(weights["b3"])
    assert run.data.tags["cmd_ray.start_c1"] == str(weights["c1"])
    assert run.data.params["distill.start.c1"] == str(weights["c1"])

    # the version the job registers at the end says the same
    registered = registry.log_and_register(cfg, seen["run_id"], build_model(cfg))
    mlflow_runs.end_run(cfg, seen["run_id"])
    version = store_client(cfg.mlflow.tracking_uri).get_model_version(registered.name, registered.version)
    assert "variant: D3 (distill.variant)" in version.description
    assert f"start: merge(B3,C1) of B3 {weights['b3']}, C1 {weights['c1']}" in version.description
    assert f"teacher: {weights['teacher']}" in version.description
    assert version.tags["cmd_ray.variant"] == "D3" and version.tags["cmd_ray.start"] == "merge(B3,C1)"
    assert version.tags["cmd_ray.start_b3"] == str(weights["b3"])


def test_a_d_row_without_b3_and_c1_trains_from_the_teacher_and_says_so(distill_job, weights, caplog):
    with caplog.at_level("WARNING", logger="cmd_ray.train.teacher"):
        result, seen = distill_job("distill.variant=D3", f"model.init_checkpoint={weights['teacher']}")
    cfg, teacher = seen["cfg"], seen["teacher"]
    assert teacher.start == "teacher" and result.label == "D3 loss from the teacher"
    teacher_state = _state(weights["teacher"])
    _assert_made_of(_trained_network(cfg, teacher), base=teacher_state, bbe_test=teacher_state, tcl=teacher_state)
    assert "distill.variant=D3 starts from the teacher" in caplog.text
    assert "recorded as 'D3 loss from the teacher'" in caplog.text and "distill.start.c1" in caplog.text

    tags = store_client(cfg.mlflow.tracking_uri).get_run(seen["run_id"]).data.tags
    assert tags["cmd_ray.start"] == "teacher" and tags["cmd_ray.variant"] == "D3 loss from the teacher"
    assert tags["cmd_ray.teacher_source"] == str(weights["teacher"])
    assert not any(key.startswith("cmd_ray.start_") for key in tags)


def test_a_b_or_c_row_from_the_teacher_keeps_its_name(distill_job, weights, caplog):
    with caplog.at_level("WARNING", logger="cmd_ray.train.teacher"):
        result, seen = distill_job("distill.variant=C1", f"model.init_checkpoint={weights['teacher']}")
    assert result.label == "C1" and seen["teacher"].start == "teacher"
    assert "starts from the teacher" not in caplog.text  # where the paper starts it: nothing to warn about


def test_b3_given_as_b1_and_b2_is_merged_first(weights):
    cfg = load_config(
        None,
        [
            "distill.variant=D1",
            f"distill.start.b1={weights['b1']}",
            f"distill.start.b2={weights['b2']}",
            f"distill.start.c1={weights['c1']}",
        ],
    )
    teacher = resolve_start(cfg)
    b1, b2, c1 = _state(weights["b1"]), _state(weights["b2"]), _state(weights["c1"])
    _assert_made_of(_trained_network(cfg, teacher), base=b1, bbe_test=b2, tcl=c1)
    assert set(teacher.tags()) == {"cmd_ray.start_b1", "cmd_ray.start_b2", "cmd_ray.start_c1"}


def test_a_registered_model_is_a_start_source_too(tmp_path, weights):
    store = f"sqlite:///{tmp_path}/registry.db"
    c1_cfg = load_config(None, [f"mlflow.tracking_uri={store}", "mlflow.registered_model_name=c1-unit"])
    torch.manual_seed(5)
    c1 = build_model(c1_cfg)
    run_id = mlflow_runs.start_run(c1_cfg, "c1")
    registry.log_and_register(c1_cfg, run_id, c1)
    mlflow_runs.end_run(c1_cfg, run_id)

    cfg = load_config(
        None,
        [
            f"mlflow.tracking_uri={store}",
            f"distill.start.b3={weights['b3']}",
            "distill.start.c1=models:/c1-unit@candidate",
        ],
    )
    b3 = _state(weights["b3"])
    _assert_made_of(_trained_network(cfg, resolve_start(cfg)), base=b3, bbe_test=b3, tcl=c1.state_dict())


def test_an_unreadable_or_unmergeable_start_fails_naming_its_key(tmp_path, weights):
    start = [f"distill.start.b3={weights['b3']}"]
    with pytest.raises(ConfigError, match=r"distill\.start\.c1 .*nowhere\.pt cannot be read"):
        resolve_start(load_config(None, [*start, f"distill.start.c1={tmp_path / 'nowhere.pt'}"]))
    torch.save({"something.else.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"distill\.start\.c1=.*other\.pt does not fit the dimp/tiny network"):
        resolve_start(load_config(None, [*start, f"distill.start.c1={tmp_path / 'other.pt'}"]))
    # each fits the network, but the C1 file lacks the classifier the merge takes from it: named by key and URI
    partial = {k: v for k, v in _state(weights["c1"]).items() if not k.startswith(CLASSIFIER)}
    torch.save(partial, tmp_path / "no_classifier.pt")
    with pytest.raises(ConfigError, match=r"distill\.start\.b3, distill\.start\.c1: cannot merge") as caught:
        resolve_start(load_config(None, [*start, f"distill.start.c1={tmp_path / 'no_classifier.pt'}"]))
    assert "no_classifier.pt" in str(caught.value) and "cmd-ray-merge-" not in str(caught.value)
