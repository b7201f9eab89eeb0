"""Which weights a distill run registers with ``distill.select_by``: the rule, and the registered version's record
(real MLflow sqlite store, real ``ray.train.Result`` and ``Checkpoint`` objects; no Ray cluster). The config and resume
rules of ``distill.select_by`` are tested in tests/test_config.py and tests/test_config_resume.py."""

import math

import pytest
import ray.train
import torch

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import ConfigError, load_config
from cmd_ray.mlflow_runs import store_client
from cmd_ray.models.dimpnet import build_model
from cmd_ray.models.training_state import save_training_state
from cmd_ray.train.selection import (
    BEST_EPOCH,
    CHECKPOINT_SCORE,
    TEACHER_EPOCH,
    BestEpoch,
    Selection,
    checkpoint_score,
    register_selection,
    scored_epochs,
    select_epoch,
    selected_model,
    teacher_network,
)
from cmd_ray.train.teacher import resolve_teacher
from cmd_ray.train.trainer import run_config, run_distillation

SELECTING = ["distill.select_by=val_success", "tune.eval_root=/data/val/tir_sequences"]


# --- the rule ---------------------------------------------------------------------------------------------------


def test_the_teacher_is_kept_when_no_epoch_beats_it():
    best = select_epoch("val_success", 0.40, {0: 0.31, 1: 0.39, 2: 0.40})
    assert (best.epoch, best.value, best.teacher_value) == (TEACHER_EPOCH, 0.40, 0.40)
    assert not best.beat_teacher


def test_an_epoch_is_selected_only_when_it_beats_every_earlier_one_and_ties_keep_the_earliest():
    best = select_epoch("val_success", 0.30, {0: 0.35, 1: 0.42, 2: 0.42, 3: 0.41})
    assert (best.epoch, best.value, best.teacher_value) == (1, 0.42, 0.30)
    assert best.beat_teacher
    # scored out of order, the same answer: epochs are compared in training order
    assert select_epoch("val_success", 0.30, {3: 0.41, 2: 0.42, 1: 0.42, 0: 0.35}) == best
    # a NaN score never beats anything, and nothing after it is compared with NaN
    assert select_epoch("val_success", 0.30, {0: math.nan, 1: 0.31}).epoch == 1
    with pytest.raises(ValueError, match="in order"):
        BestEpoch.of_teacher("val_success", 0.3).after(1, 0.5).after(1, 0.6)


def test_the_checkpoint_score_is_highest_for_the_selected_epoch_alone():
    """Ray Train keeps the checkpoints with the highest score: the selected epoch's must be the one maximum."""
    scores = {0: 0.35, 1: 0.42, 2: 0.42, 3: 0.20, 4: 0.41}
    best = BestEpoch.of_teacher("val_success", 0.30)
    ranked = {}
    for epoch, value in scores.items():
        before, best = best, best.after(epoch, value)
        ranked[epoch] = checkpoint_score(before, best, epoch)
    assert ranked == {0: 0.0, 1: 1.0, 2: -1.0, 3: -1.0, 4: -1.0}
    assert max(ranked, key=ranked.get) == best.epoch == 1

    teacher_kept = BestEpoch.of_teacher("val_success", 0.5)
    assert checkpoint_score(teacher_kept, teacher_kept.after(0, 0.5), 0) == -1.0


def test_the_selection_goes_through_a_checkpoint_and_the_reports():
    best = select_epoch("val_precision", 0.5, {0: 0.6})
    assert BestEpoch.from_state(best.state()) == best
    assert best.metrics() == {BEST_EPOCH: 0.0, "best_val_precision": 0.6, "teacher_val_precision": 0.5}


@pytest.mark.parametrize(
    ("epochs", "every", "expected"),
    [(5, 1, [0, 1, 2, 3, 4]), (5, 2, [1, 3, 4]), (6, 3, [2, 5]), (2, 5, [1]), (1, 1, [0])],
)
def test_scored_epochs_are_every_nth_and_the_last(epochs, every, expected):
    assert scored_epochs(epochs, every) == expected


def test_ray_train_ranks_checkpoints_by_the_selection_only_when_selecting():
    cfg = load_config(None, ["storage.checkpoints_to_keep=1"])
    kept = run_config(cfg, keep_selected=True).checkpoint_config
    assert (kept.num_to_keep, kept.checkpoint_score_attribute, kept.checkpoint_score_order) == (
        1,
        CHECKPOINT_SCORE,
        "max",
    )
    assert run_config(cfg).checkpoint_config.checkpoint_score_attribute is None


# --- the job ---------------------------------------------------------------------------------------------------


def test_a_selecting_distill_job_without_a_validator_fails_before_any_cluster_work():
    cfg = load_config(None, SELECTING)
    with pytest.raises(ConfigError, match=r"tracking_validator=cmd_ray\.evaluation\.validation\.tracking_validator"):
        run_distillation(cfg, pairs=[])


# --- the registered version -------------------------------------------------------------------------------------


def _checkpoint(directory, model, epoch):
    """A training checkpoint as the loop writes it (only what loading a model reads) and Ray Train's handle to it."""
    directory.mkdir(parents=True)
    save_training_state(directory, {"model": model.state_dict(), "epoch": epoch})
    return ray.train.Checkpoint.from_directory(str(directory))


@pytest.fixture
def run(tmp_path):
    """A teacher file and two epochs' checkpoints with other weights (an MLflow store is made by the first use)."""
    torch.manual_seed(7)
    torch.save(build_model(load_config(None)).state_dict(), tmp_path / "teacher.pt")
    cfg = load_config(
        None,
        [
            *SELECTING,
            "distill.epochs=2",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "mlflow.registered_model_name=picked",
            f"model.init_checkpoint={tmp_path}/teacher.pt",
        ],
    )
    epochs = {}
    for epoch in (0, 1):
        torch.manual_seed(100 + epoch)
        epochs[epoch] = build_model(cfg)
    checkpoints = {e: _checkpoint(tmp_path / f"epoch_{e:04d}", m, e) for e, m in epochs.items()}
    return cfg, resolve_teacher(cfg), epochs, checkpoints


def _mlflow_run(cfg):
    return mlflow_runs.start_run(cfg, "select", tags={"cmd_ray.job": "distill", "cmd_ray.data_uri": cfg.data.uri})


def _result(checkpoints, best: BestEpoch) -> ray.train.Result:
    """The run's result as Ray Train hands it back: the last report's metrics and every checkpoint it kept."""
    last = max(checkpoints)
    kept = [(c, {"epoch": e, **best.metrics()}) for e, c in sorted(checkpoints.items())]
    return ray.train.Result(
        metrics={"epoch": last, **best.metrics()},
        checkpoint=checkpoints[last],
        error=None,
        path="",
        best_checkpoints=kept,
    )


def _same_weights(model, state):
    assert set(model.state_dict()) == set(state)
    return all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())


def _register(cfg, model, selection, caplog, level: str):
    """Register ``selection`` from a fresh MLflow run, capturing the selection log at ``level``; returns the run id,
    the registration and the version the alias points at."""
    run_id = _mlflow_run(cfg)
    with caplog.at_level(level, logger="cmd_ray.train.selection"):
        registered = register_selection(cfg, run_id, model, selection)
    mlflow_runs.end_run(cfg, run_id)
    version = store_client(cfg.mlflow.tracking_uri).get_model_version_by_alias("picked", "candidate")
    return run_id, registered, version


def test_a_run_that_beats_its_teacher_registers_the_selected_epoch_and_says_so(run, caplog):
    cfg, teacher, epochs, checkpoints = run
    best = select_epoch("val_success", 0.30, {0: 0.41, 1: 0.35})
    model, selection = selected_model(_result(checkpoints, best), cfg, teacher, "val_success")
    assert selection == Selection(best, checkpoints[0].path)
    assert _same_weights(model, epochs[0].state_dict())
    run_id, registered, version = _register(cfg, model, selection, caplog, "INFO")
    assert "epoch 0 selected by val_success: 0.4100 beat the teacher's 0.3000" in caplog.text

    assert str(version.version) == registered.version and version.run_id == run_id
    assert (
        "weights: epoch 0 (0-based) of 2, selected by val_success on the validation sequences " in version.description
    )
    assert "/data/val/tir_sequences: 0.41, beat the teacher's 0.3" in version.description
    assert {k: version.tags[k] for k in registry.SELECTION_TAGS} == {
        "cmd_ray.select_by": "val_success",
        "cmd_ray.selected_epoch": "0",
        "cmd_ray.beat_teacher": "true",
        "cmd_ray.selected_score": "0.41",
        "cmd_ray.teacher_score": "0.3",
    }
    assert store_client(cfg.mlflow.tracking_uri).get_run(run_id).data.tags["cmd_ray.beat_teacher"] == "true"
    pulled, _ = registry.pull(registered.uri, tracking_uri=cfg.mlflow.tracking_uri)
    assert _same_weights(pulled, epochs[0].state_dict())


def test_a_run_that_never_beats_its_teacher_registers_the_teachers_weights_and_says_so(run, caplog):
    cfg, teacher, _, checkpoints = run
    best = select_epoch("val_success", 0.40, {0: 0.40, 1: 0.35})
    model, selection = selected_model(_result(checkpoints, best), cfg, teacher, "val_success")
    assert selection == Selection(best, "")
    teacher_state = torch.load(teacher.source, weights_only=True)
    assert _same_weights(model, teacher_state)
    run_id, registered, version = _register(cfg, model, selection, caplog, "WARNING")
    assert "no epoch beat the teacher's val_success of 0.4000: the teacher's weights (epoch -1) are kept" in caplog.text

    assert str(version.version) == registered.version
    assert "weights: the teacher's (epoch -1): no epoch of 2 beat its val_success of 0.4" in version.description
    assert version.tags["cmd_ray.selected_epoch"] == "-1" and version.tags["cmd_ray.beat_teacher"] == "false"
    assert store_client(cfg.mlflow.tracking_uri).get_run(run_id).data.tags["cmd_ray.selected_epoch"] == "-1"
    pulled, _ = registry.pull(registered.uri, tracking_uri=cfg.mlflow.tracking_uri)
    assert _same_weights(pulled, teacher_state)


def test_a_selected_epoch_whose_checkpoint_ray_train_did_not_keep_is_an_error(run):
    cfg, teacher, _, checkpoints = run
    best = select_epoch("val_success", 0.30, {0: 0.41, 1: 0.35})
    result = _result({1: checkpoints[1]}, best)
    with pytest.raises(RuntimeError, match="kept no checkpoint of the selected epoch 0"):
        selected_model(result, cfg, teacher, "val_success")
    with pytest.raises(RuntimeError, match="holds no selection by val_precision"):
        selected_model(result, cfg, teacher, "val_precision")


def test_the_teachers_network_is_the_one_rank_0_starts_from(tmp_path):
    """A teacher file that fills only part of the network: the rest keeps rank 0's initialisation (distill.seed)."""
    cfg = load_config(None, ["distill.seed=3"])
    torch.manual_seed(11)
    full = build_model(cfg).state_dict()
    torch.save({k: v for k, v in full.items() if k.startswith("bb_regressor.")}, tmp_path / "part.pt")
    cfg = load_config(None, ["distill.seed=3", f"model.init_checkpoint={tmp_path}/part.pt"])
    torch.manual_seed(3)  # what train_loop_per_worker does on rank 0 before building the network
    start = build_model(cfg).state_dict()
    state_before = torch.get_rng_state()
    model = teacher_network(cfg, resolve_teacher(cfg))
    assert torch.equal(torch.get_rng_state(), state_before)
    assert not model.training
    for name, tensor in model.state_dict().items():
        expected = full[name] if name.startswith("bb_regressor.") else start[name]
        assert torch.equal(tensor, expected), name
