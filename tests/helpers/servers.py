"""Real servers for tests, on loopback: a fresh PostgreSQL database and an `mlflow server` process.

The cluster runs MLflow as a server with a PostgreSQL backend and Optuna on PostgreSQL (cluster.yaml); tests
that need that shape use these helpers instead of mocks:

    with postgres_database() as db, MlflowServer(db, tmp_path / "artifacts") as server:
        MlflowClient(server.uri).create_experiment("e")
        server.restart()  # same port, same data: what a head-node restart mid-sweep looks like

This is a helper module, not a test module: import it as `from tests.helpers.servers import ...`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

import psycopg2
import pytest
from psycopg2 import sql

# The PostgreSQL every test machine of this kind runs (trust auth, so no password anywhere in tests).
PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
LOG_TAIL_LINES = 40  # server log lines quoted in a start failure


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process could take it before it is used: rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_database(prefix: str = "ts_test") -> Iterator[str]:
    """A new, uniquely named database, dropped afterwards; yields its SQLAlchemy URL.

    Skips the calling test when PostgreSQL does not answer on 127.0.0.1:5432. CI machines of this kind run it
    (user postgres, trust auth), so there the tests run; a laptop without PostgreSQL skips them with the reason.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,30}", prefix):
        raise ValueError(f"postgres_database: prefix {prefix!r} must be a short lower-case SQL identifier")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3)
    except psycopg2.OperationalError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        pytest.skip(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT} as {PG_USER}: {reason}")
    admin.autocommit = True  # CREATE/DROP DATABASE refuse to run inside a transaction block
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            with admin.cursor() as cur:
                # A server or connection pool the test left open would make DROP DATABASE fail.
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    finally:
        admin.close()


class MlflowServer:
    """`mlflow server` in its own process group, serving artifacts through itself (as on the cluster's head).

    It runs with the test interpreter (`sys.executable -m mlflow`, so the venv's MLflow), one worker and job
    execution off: about 0.5 GB instead of 2.4 GB. Its output goes to `log_path`, next to `artifacts`.
    """

    def __init__(self, backend_uri: str, artifacts: Path, port: int | None = None, host: str = "127.0.0.1",
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.backend_uri = backend_uri
        self.artifacts = Path(artifacts).resolve()
        self.port = port or free_port()
        self.host = host
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})
        self.log_path = self.artifacts.parent / f"mlflow-server-{self.port}.log"
        self.start_seconds: float | None = None  # how long the last start() took, until /health answered
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        # A server bound to every interface is still reached on loopback; a named host is reached there.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "127.0.0.1") else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", self.backend_uri,
                "--artifacts-destination", str(self.artifacts),
                "--serve-artifacts",
                "--host", self.host, "--port", str(self.port),
                "--workers", "1",
                *self.extra_args]

    def start(self, timeout: float = 60) -> None:
        """Start and wait until GET /health answers 200; raise with the server's last log lines otherwise."""
        if self.running:
            raise RuntimeError(f"mlflow server on port {self.port} is already running")
        self.artifacts.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        began = time.monotonic()
        with open(self.log_path, "ab") as log:  # append: a restart keeps the earlier run's lines
            log.write(f"\n--- {' '.join(self.command())}\n".encode())
            log.flush()
            # Its own session, so stop() reaches the uvicorn worker it spawns as well.
            # cwd next to the artifacts: basic-auth keeps its user database in ./basic_auth.db
            self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                          cwd=self.artifacts.parent)
        deadline = began + timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self.stop()  # reap it, and anything it started
                raise RuntimeError(f"mlflow server exited with code {code} before answering /health; "
                                   f"last lines of {self.log_path}:\n{self.log_tail()}")
            if self._healthy():
                self.start_seconds = time.monotonic() - began
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer {self.uri}/health within {timeout:g} s; "
                           f"last lines of {self.log_path}:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the whole process group and wait; kill it if it has not exited after 10 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # The leader has exited; a worker it left behind would keep the port.
        _signal_group(proc.pid, signal.SIGKILL)

    def restart(self, timeout: float = 60) -> float:
        """Stop, then start again on the same port (clients keep their URI); returns the seconds it was down."""
        began = time.monotonic()
        self.stop()
        self.start(timeout)
        return time.monotonic() - began

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # nothing left in the group
        os.killpg(pgid, sig)
