"""A throw-away PostgreSQL server on this machine: the backend store of a local ``mlflow server`` as clusters run it.

:class:`LocalPostgres` runs ``initdb`` on a fresh folder, starts ``postgres`` with ``pg_ctl`` on a free port of
127.0.0.1 (password authentication, SCRAM), creates databases and tears it all down again. The binaries come from
``PATH`` or from Debian's ``/usr/lib/postgresql/<version>/bin`` (``apt-get install postgresql`` puts them there
and not on ``PATH``). PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user
(else ``nobody``), in a folder of its own below ``/tmp`` that user can enter.

Used by the multi-node tests, ``python -m cmd_ray.local_cluster --mlflow-postgres`` and the MLflow load benchmark.
It starts processes only; it needs the ``psycopg`` driver (a dependency: the MLflow server uses it too).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPERUSER = "mlflow"
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
UNPRIVILEGED_USERS = ("postgres", "nobody")


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``) on this machine; the message says where
    they were looked for and how to install them."""


def find_bin_dir(search: list[str] | None = None) -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: the one of ``initdb`` on ``PATH``, else the newest
    ``/usr/lib/postgresql/<version>/bin`` (``search`` replaces both, for tests)."""
    if search is None:
        on_path = shutil.which("initdb")
        versions = sorted(glob.glob(DEBIAN_BIN_GLOB), key=lambda p: [int(x) for x in Path(p).parent.name.split(".")])
        search = ([str(Path(on_path).resolve().parent)] if on_path else []) + versions[::-1]
    for folder in search:
        if all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    raise PostgresNotFoundError(
        f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in {search or ['PATH', DEBIAN_BIN_GLOB]}; "
        "install them (Debian/Ubuntu: apt-get install -y postgresql) or put their folder on PATH"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> str | None:
    """Who runs the server: this process's user, unless that is root (which PostgreSQL refuses)."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError(f"running as root and none of the users {UNPRIVILEGED_USERS} exists to run PostgreSQL")


@dataclass
class LocalPostgres:
    """One PostgreSQL server on 127.0.0.1; :meth:`start`, :meth:`create_database`, :meth:`uri`, :meth:`stop`.

    Args:
        bin_dir: the folder of ``initdb``/``pg_ctl``/``postgres`` (default: :func:`find_bin_dir`).
        settings: extra ``postgres -c name=value`` settings.
    """

    bin_dir: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    password: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    folder: Path | None = None

    @property
    def data_dir(self) -> Path:
        assert self.folder is not None, "LocalPostgres not started"
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        assert self.folder is not None, "LocalPostgres not started"
        return self.folder / "server.log"

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess:
        """A PostgreSQL tool as the server's user; a failure raises, quoting the tool's own words."""
        assert self.bin_dir is not None
        command = [str(self.bin_dir / str(args[0])), *map(str, args[1:])]
        done = subprocess.run(command, user=_server_user(), capture_output=True, text=True, cwd=self.folder)
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}"
                + (f"; server log: {self.log_path}" if self.log_path.exists() else "")
            )
        return done

    def start(self) -> LocalPostgres:
        """``initdb`` a new cluster (superuser ``mlflow``, SCRAM passwords) and start it; waits until it accepts
        connections (``pg_ctl start -w``, bounded by ``START_TIMEOUT_S``). A failed start leaves nothing behind."""
        self.bin_dir = Path(self.bin_dir) if self.bin_dir else find_bin_dir()
        try:
            return self._start()
        except BaseException:
            with suppress(RuntimeError):  # the start's own error is the one to see
                self.stop()
            raise

    def _start(self) -> LocalPostgres:
        # not below pytest's or the caller's folders: those are often private to root, and the server's user
        # must enter this one; its unix socket also wants a short path
        self.folder = Path(tempfile.mkdtemp(prefix="cmdray-pg-", dir="/tmp"))
        user = _server_user()
        password_file = self.folder / "pwfile"
        password_file.write_text(self.password + "\n")
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (self.folder, password_file):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            f"--pgdata={self.data_dir}",
            f"--username={SUPERUSER}",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        )
        password_file.unlink()
        self.port = self.port or _free_port()
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.folder}",
            *(f"-c {name}={value}" for name, value in self.settings.items()),
        ]
        self._run(
            "pg_ctl",
            "start",
            f"--pgdata={self.data_dir}",
            f"--log={self.log_path}",
            "--wait",
            f"--timeout={START_TIMEOUT_S}",
            f"--options={' '.join(options)}",
        )
        return self

    def uri(self, database: str = "postgres", driver: str = "") -> str:
        """The SQLAlchemy URI of ``database`` on this server (``postgresql://mlflow:…@127.0.0.1:PORT/DB``);
        ``driver`` e.g. ``"psycopg"`` gives ``postgresql+psycopg://``."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        """A psycopg connection to ``database`` (autocommit); close it when done."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password, dbname=database, autocommit=True
        )

    def create_database(self, name: str) -> str:
        """Create database ``name`` (letters, digits, '_') and return its URI."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: use letters, digits and '_'")
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.uri(name)

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) and delete its folder; safe to call twice."""
        if self.folder is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run(
                    "pg_ctl",
                    "stop",
                    f"--pgdata={self.data_dir}",
                    "--mode=fast",
                    "--wait",
                    f"--timeout={STOP_TIMEOUT_S}",
                )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
