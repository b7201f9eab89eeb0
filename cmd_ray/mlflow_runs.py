"""MLflow runs: where they are stored, their params, tags and per-epoch metrics.

The embedded default is a local ``sqlite:///…/mlflow.db`` backend store (the
model registry needs a database) with artifacts in ``mlartifacts/`` beside it;
``mlflow.tracking_uri`` in the config or ``MLFLOW_TRACKING_URI`` points it at a
server instead. Values of secret environment variables and credentials inside URIs (``https://user:pw@host``)
never reach a param, a tag or a printed line (:func:`redact`). Reading never creates a store: a ``sqlite:///`` store
whose file does not exist is reported (:func:`check_store_exists`), not made.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from cmd_ray.config import Config
from cmd_ray.storage import has_credentials, mask_credentials

SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
DEFAULT_DB = "mlflow.db"


def tracking_uri(cfg: Config) -> str:
    """The tracking URI in force: config, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///$PWD/mlflow.db``.

    A relative sqlite path is made absolute so that Ray workers, whose working
    directory differs from the driver's, write to the same database.
    """
    return resolve_store(cfg.mlflow.tracking_uri)


def resolve_store(uri: str | None = None) -> str:
    """The store ``uri`` names, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///$PWD/mlflow.db``; a relative sqlite
    path made absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


class MissingStoreError(ValueError):
    """A store to read from does not exist or cannot be reached; the message names it."""


DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
"""Database stores (``SCHEME[+DRIVER]://…``): MLflow opens them directly, retrying a failed connection for about
100 s, so :func:`check_store_exists` connects once first."""


def check_store_exists(uri: str) -> None:
    """Before a read-only look into store ``uri``: a ``sqlite:///`` store must be an existing file, since opening
    one creates it (an empty database, ``mlflow.db`` in the working folder by default); a database store must accept
    one connection (10 s at most), since MLflow itself would retry for about 100 s before its error. Servers are not
    checked.

    Raises:
        MissingStoreError: naming the store (credentials masked), and how to point at another.
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme in DATABASE_SCHEMES:
        _check_database_answers(uri, scheme)
        return
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    if not path.is_file():
        raise MissingStoreError(
            f"MLflow store {uri} does not exist (no file {path}); point mlflow.tracking_uri, --tracking-uri or "
            "MLFLOW_TRACKING_URI at the store that holds the model"
        )


def _check_database_answers(uri: str, scheme: str) -> None:
    import sqlalchemy

    connect_args = {"connect_timeout": 10} if scheme == "postgresql" else {}
    engine = None
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
        with engine.connect():
            pass
    except Exception as exc:  # no driver for the scheme, unknown host, refused, bad credentials, …
        lines = str(exc).strip().splitlines()
        raise MissingStoreError(
            f"MLflow store {redact(uri)} cannot be reached ({type(exc).__name__}: {redact(lines[0] if lines else '')})"
            "; point mlflow.tracking_uri, --tracking-uri or MLFLOW_TRACKING_URI at a store that answers"
        ) from None
    finally:
        if engine is not None:
            engine.dispose()


def pin_tracking_uri(cfg: Config) -> Config:
    """``cfg`` with the tracking URI resolved here, on the driver, so every Ray worker uses the same store."""
    return cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"tracking_uri": tracking_uri(cfg)})})


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a local sqlite store; a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).parent / "mlartifacts")
    return None


def store_client(uri: str) -> MlflowClient:
    """A client whose runs and registry both live at ``uri``.

    ``MlflowClient(uri)`` alone reads the registry from the process-wide registry URI, which an earlier
    ``mlflow.set_registry_uri`` may have pointed at another store.
    """
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def client(cfg: Config) -> MlflowClient:
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return store_client(uri)


def experiment_id(cfg: Config) -> str:
    mlflow_client = client(cfg)
    experiment = mlflow_client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    root = _artifact_root(tracking_uri(cfg))
    location = Path(root).as_uri() if root else None
    return mlflow_client.create_experiment(cfg.mlflow.experiment, artifact_location=location)


def redact(value: Any) -> Any:
    """``value`` with the contents of secret environment variables replaced by ``***`` and the credentials inside
    any URI masked (:func:`cmd_ray.storage.mask_credentials`); other types pass through."""
    if not isinstance(value, str):
        return value
    for name in SECRET_ENV_VARS:
        secret = os.environ.get(name)
        if secret and secret in value:
            value = value.replace(secret, "***")
    return mask_credentials(value)


def start_run(cfg: Config, run_name: str, tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> str:
    """Create a run holding the resolved config as params; returns its id (the run is left open)."""
    mlflow_client = client(cfg)
    all_tags = {key: str(redact(value)) for key, value in (tags or {}).items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow_client.create_run(experiment_id(cfg), run_name=run_name, tags=all_tags)
    params = [Param(key, str(redact(value))[:6000]) for key, value in cfg.to_flat_dict().items()]
    for i in range(0, len(params), 100):
        mlflow_client.log_batch(run.info.run_id, params=params[i : i + 100])
    return run.info.run_id


def find_runs(cfg: Config, filter_string: str, max_results: int = 1000) -> list[Any]:
    """Runs of the configured experiment matching an MLflow ``filter_string``, newest first."""
    newest_first = ["attributes.start_time DESC"]
    return client(cfg).search_runs([experiment_id(cfg)], filter_string, order_by=newest_first, max_results=max_results)


def reopen_run(cfg: Config, run_id: str) -> str:
    """Mark run ``run_id`` RUNNING again (a resumed job logs on into it); returns ``run_id``."""
    client(cfg).update_run(run_id, status="RUNNING")
    return run_id


def log_metrics(cfg: Config, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log numeric metrics at ``step`` (the epoch)."""
    timestamp = mlflow.utils.time.get_current_time_millis()
    batch = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
    client(cfg).log_batch(run_id, metrics=batch)


def log_text(cfg: Config, run_id: str, text: str, artifact_file: str) -> None:
    """Write ``text`` (secrets redacted) as the run's artifact ``artifact_file``."""
    client(cfg).log_text(run_id, redact(text), artifact_file)


def set_tags(cfg: Config, run_id: str, tags: dict[str, Any]) -> None:
    client(cfg).log_batch(run_id, tags=[RunTag(key, str(redact(value))) for key, value in tags.items()])


def end_run(cfg: Config, run_id: str, status: str = "FINISHED") -> None:
    with url_print_masked(cfg):
        client(cfg).set_terminated(run_id, status=status)


@contextmanager
def url_print_masked(cfg: Config) -> Iterator[None]:
    """Within the block, MLflow does not print "View run … at: <tracking URI>/…" (it does when a run of a server
    store ends) if the tracking URI holds credentials: cmd-ray prints the masked :func:`run_url` instead."""
    if not has_credentials(tracking_uri(cfg)):
        yield
        return
    before = os.environ.get(SUPPRESS_URL_PRINT)
    os.environ[SUPPRESS_URL_PRINT] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SUPPRESS_URL_PRINT, None)
        else:
            os.environ[SUPPRESS_URL_PRINT] = before


SUPPRESS_URL_PRINT = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
"""MLflow's own switch for the run URL it prints when a run ends (read by MLflow at that moment)."""


@contextmanager
def terminated(cfg: Config, run_id: str) -> Iterator[None]:
    """Ends run ``run_id`` when the block is left: ``FINISHED``, or ``FAILED`` if it raised (the error goes on)."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    finally:
        end_run(cfg, run_id, status)


def run_url(cfg: Config, run_id: str) -> str:
    """Where a person finds the run: the server page, or the local store and id (credentials in the URI masked)."""
    uri = mask_credentials(tracking_uri(cfg))
    exp = experiment_id(cfg)
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
    return (
        f"{uri} (experiment {cfg.mlflow.experiment!r}, run {run_id}); browse with: mlflow ui --backend-store-uri {uri}"
    )
