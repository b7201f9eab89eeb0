"""``data.max_skipped_fraction``: a run that skipped more of its data as unreadable than the limit fails, registers
nothing, and says how much and where the skipped items are listed; a rerun of it registers nothing either unless the
limit is raised. The job's driver side runs here without Ray (training is the closure ``_finish`` is handed); MLflow is
a real sqlite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmd_ray import mlflow_runs
from cmd_ray.config import ConfigError, load_config
from cmd_ray.data.skip_limit import SkippedDataError, skipped_share_error
from cmd_ray.data.skips import SkipReport
from cmd_ray.models.dimpnet import build_model
from cmd_ray.models.training_state import save_training_state
from cmd_ray.schedule import schedule_for
from cmd_ray.train import trainer
from cmd_ray.train.teacher import Teacher

CORRUPT = ["s3://b/pairs/rgb/0003.jpg: not a decodable image", "s3://b/pairs/rgb/0007.jpg: not a decodable image"]


def test_the_share_is_compared_with_the_limit():
    error = skipped_share_error(2, 12, 0.01, "pairs", CORRUPT, "artifact skipped.txt")
    assert error is not None
    text = str(error)
    assert text.startswith(
        "2 of 12 pairs (16.7%) were unreadable and skipped, more than data.max_skipped_fraction=0.01"
    )
    assert "0003.jpg: not a decodable image" in text and "artifact skipped.txt" in text and "\n" not in text
    assert skipped_share_error(0, 12, 0.01) is None
    assert skipped_share_error(1, 200, 0.01) is None  # 0.5%
    assert skipped_share_error(3, 200, 0.01) is not None  # 1.5%
    assert skipped_share_error(12, 12, 1.0) is None  # 1.0: never fail
    assert skipped_share_error(0, 0, 0.0) is None  # nothing listed: nothing to compare


def test_the_limit_is_a_validated_setting_with_a_default_of_one_percent():
    assert load_config(None).data.max_skipped_fraction == 0.01
    with pytest.raises(ConfigError, match=r"data\.max_skipped_fraction"):
        load_config(None, ["data.max_skipped_fraction=1.5"])


def _overrides(tmp_path: Path, *more: str) -> list[str]:
    return [
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"storage.storage_path={tmp_path / 'ray_results'}",
        "mlflow.registered_model_name=skip-unit",
        *more,
    ]


def _report(skipped: int) -> SkipReport:
    return SkipReport(skipped=skipped, by_reason={"not a decodable image": skipped}, examples=CORRUPT[:skipped])


def test_a_run_over_the_limit_fails_and_registers_nothing(tmp_path):
    cfg = load_config(None, _overrides(tmp_path))
    schedule = schedule_for(cfg, "distill")
    run_id = mlflow_runs.start_run(cfg, schedule.run_name)

    def train():  # what fit() ends with, after Ray Train returned: 2 of 12 pairs skipped
        trainer.check_skipped(cfg, run_id, _report(2), 12, "pairs")
        raise AssertionError("a run over the limit went on to registration")

    with pytest.raises(SkippedDataError, match=r"2 of 12 pairs \(16\.7%\)") as caught:
        trainer._finish(cfg, schedule, run_id, None, Teacher("random-init"), train)
    assert f"artifact skipped.txt of MLflow run {run_id}" in str(caught.value)
    client = mlflow_runs.client(cfg)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[trainer.SKIPPED_TAG] == "2/12 pairs"
    assert client.search_model_versions("name = 'skip-unit'") == []
    (tmp_path / "artifacts").mkdir()
    listing = Path(client.download_artifacts(run_id, trainer.SKIPPED_ARTIFACT, str(tmp_path / "artifacts")))
    text = listing.read_text()
    assert text.startswith("2 of 12 pairs skipped as unreadable") and CORRUPT[1] in text


def test_a_run_under_the_limit_lists_its_skips_and_goes_on(tmp_path):
    cfg = load_config(None, _overrides(tmp_path, "data.max_skipped_fraction=0.2"))
    run_id = mlflow_runs.start_run(cfg, "under")
    trainer.check_skipped(cfg, run_id, _report(2), 12, "pairs")
    client = mlflow_runs.client(cfg)
    assert trainer.SKIPPED_TAG not in client.get_run(run_id).data.tags
    assert [a.path for a in client.list_artifacts(run_id)] == [trainer.SKIPPED_ARTIFACT]


def test_a_rerun_of_a_refused_run_registers_only_once_the_limit_allows_it(tmp_path):
    cfg = load_config(None, _overrides(tmp_path))
    schedule = schedule_for(cfg, "distill")
    run_id = mlflow_runs.start_run(cfg, schedule.run_name)
    mlflow_runs.set_tags(cfg, run_id, {trainer.SKIPPED_TAG: "2/12 pairs"})
    mlflow_runs.end_run(cfg, run_id, "FAILED")
    checkpoint = tmp_path / "ray_results" / schedule.run_name / f"epoch_{schedule.epochs - 1:04d}"
    checkpoint.mkdir(parents=True)
    save_training_state(checkpoint, {"model": build_model(cfg).state_dict(), "config": cfg.model_dump(mode="json")})
    stored = cfg.model_dump(mode="json")
    previous = trainer.PreviousRun(schedule.epochs - 1, str(checkpoint), {}, stored, "distill", run_id)
    with pytest.raises(SkippedDataError, match=r"2 of 12 pairs"):
        trainer._nothing_to_train(cfg, schedule, previous)
    assert mlflow_runs.client(cfg).search_model_versions("name = 'skip-unit'") == []

    raised = load_config(None, _overrides(tmp_path, "data.max_skipped_fraction=0.2"))
    result = trainer._nothing_to_train(raised, schedule, previous)
    assert result.registered is not None and result.registered.run_id == run_id


def test_raising_the_limit_does_not_block_the_resume():
    from cmd_ray.resume import resume_blockers

    old = load_config(None).model_dump(mode="json")
    new = load_config(None, ["data.max_skipped_fraction=0.2"]).model_dump(mode="json")
    assert resume_blockers(old, new, "distill") == []
