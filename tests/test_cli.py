"""The command line as a user meets it: bad input fails fast, naming the key or the prefix, before Ray starts."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_job(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "distill.py"), "--config", str(ROOT / "configs" / "demo.yaml"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_config_value_fails_before_ray_starts(tmp_path):
    done = run_job("distill.lr_tcl=-1", cwd=tmp_path)
    assert done.returncode == 2
    assert "distill.lr_tcl" in done.stderr
    assert "greater than or equal to 0 (got -1)" in done.stderr
    assert "Ray" not in done.stderr  # no cluster was started
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_key_fails_naming_it(tmp_path):
    done = run_job("distill.lambda=2", cwd=tmp_path)
    assert done.returncode == 2
    assert "distill.lambda" in done.stderr
    assert "loss_weight_bbe" in done.stderr  # the allowed keys are listed


def test_empty_data_prefix_fails_naming_it(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    done = run_job(f"data.uri={empty}", cwd=tmp_path)
    assert done.returncode == 2
    assert str(empty) in done.stderr
    assert "Started a local Ray instance" not in done.stderr + done.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_config_command_prints_the_resolved_config(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmd_ray.cli",
            "config",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "distill.epochs=7",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "epochs: 7" in done.stdout


def test_a_teacher_that_was_never_registered_fails_before_ray_naming_it(tmp_path, local_pairs):
    store = f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"
    done = run_job(f"data.uri={local_pairs}", store, "distill.select_by=last", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "model.init_checkpoint" in done.stderr
    assert "models:/cmd-ray-demo-teacher@candidate" in done.stderr
    assert "Started a local Ray instance" not in done.stderr + done.stdout


def test_selecting_weights_on_the_test_sequences_or_on_a_missing_split_fails_before_ray(tmp_path, local_pairs):
    # pointing tune.eval_root at the evaluation's own sequences: no weights are chosen on them
    done = run_job("tune.eval_root=data/demo/tir_sequences", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "is evaluation.root, the test sequences the evaluation reports" in done.stderr

    missing = tmp_path / "no-validation-split"
    done = run_job(
        f"data.uri={local_pairs}", "distill.select_by=val_success", f"tune.eval_root={missing}", cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"tune.eval_root='{missing}'" in done.stderr
    assert "Started a local Ray instance" not in done.stderr + done.stdout
    assert not (tmp_path / "mlflow.db").exists()
