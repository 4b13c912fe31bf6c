"""The test servers in servers.py: a real `mlflow server` on a fresh PostgreSQL database, restarted.

Slow: one `mlflow server` start takes 6.5-12 s on 2 cores (it imports MLflow, then spawns uvicorn, which
imports it again; the first start on a fresh database also migrates it), and the restart test starts it twice.
"""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg2
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.helpers import servers
from tests.helpers.servers import MlflowServer, free_port, postgres_database

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with postgres_database() as db, MlflowServer(db, tmp_path_factory.mktemp("mlflow") / "artifacts") as s:
        yield s


def _non_loopback_ip() -> str | None:
    """This machine's outward address (a UDP connect only picks a route; it sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: any routable address works
        except OSError:
            return None
        ip = s.getsockname()[0]
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def _refused(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_server_binds_loopback_only_by_default(server: MlflowServer) -> None:
    assert server.host == "127.0.0.1"
    assert server.command()[server.command().index("--host") + 1] == "127.0.0.1"
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address to probe from")
    # Control: the address itself is reachable here, so a refusal below is the server's binding.
    with socket.create_server(("0.0.0.0", 0)) as probe:
        assert not _refused(ip, probe.getsockname()[1])
    assert _refused(ip, server.port)
    assert not _refused("127.0.0.1", server.port)


def test_runs_and_artifacts_persist_across_a_restart(server: MlflowServer, tmp_path: Path) -> None:
    client = MlflowClient(server.uri)
    exp_id = client.create_experiment("persist")
    run_id = client.create_run(exp_id).info.run_id
    client.log_param(run_id, "prune.rate", "0.2")
    for step, acc in enumerate([0.5, 0.7, 0.9]):
        client.log_metric(run_id, "val_acc", acc, step=step)
    (tmp_path / "density.json").write_text('{"density": 0.8}')
    client.log_artifact(run_id, str(tmp_path / "density.json"))

    # Proxied artifacts: the client only holds an mlflow-artifacts: URI; the server wrote the file.
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
    assert [p.name for p in server.artifacts.rglob("density.json")] == ["density.json"]

    port = server.port
    server.stop()
    with pytest.raises(MlflowException, match="(?i)connection|max retries"):
        client.get_run(run_id)  # MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 (conftest): fails at once, no minutes of retries
    server.restart()
    assert server.port == port and server.running

    run = client.get_run(run_id)
    assert run.data.params == {"prune.rate": "0.2"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_acc")] == [(0, 0.5), (1, 0.7), (2, 0.9)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["density.json"]
    local = client.download_artifacts(run_id, "density.json", str(tmp_path / "down"))
    assert Path(local).read_text() == '{"density": 0.8}'
    client.log_metric(run_id, "val_acc", 0.95, step=3)  # and it takes writes again
    client.set_terminated(run_id)
    assert client.get_run(run_id).data.metrics == {"val_acc": 0.95}


def test_a_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    s = MlflowServer("postgresql+nosuchdriver://postgres@127.0.0.1:5432/postgres", tmp_path / "artifacts")
    with pytest.raises(RuntimeError, match=r"(?s)exited with code \d+ before answering /health.*nosuchdriver"):
        s.start(timeout=60)
    assert not s.running
    assert s.log_path.parent == tmp_path


def test_a_server_that_does_not_answer_in_time_is_stopped(tmp_path: Path) -> None:
    # Its imports alone take seconds, so 0.5 s is never enough: the timeout path, without waiting long.
    s = MlflowServer("sqlite:///" + str(tmp_path / "mlflow.db"), tmp_path / "artifacts")
    with pytest.raises(RuntimeError, match=r"(?s)did not answer http://127\.0\.0\.1:\d+/health within 0\.5 s.*"
                                           r"mlflow server"):
        s.start(timeout=0.5)
    assert not s.running
    with socket.create_server(("127.0.0.1", s.port)):  # the port is free again
        pass


def test_postgres_database_is_fresh_and_dropped_even_with_open_connections() -> None:
    with postgres_database("ts_probe") as url:
        name = url.rsplit("/", 1)[1]
        assert url.startswith("postgresql+psycopg2://postgres@127.0.0.1:5432/ts_probe_")
        left_open = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=name)
        with left_open.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            assert cur.fetchone() == (0,)
    with psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres") as admin, \
            admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        assert cur.fetchone() == (0,)
    with pytest.raises(psycopg2.OperationalError, match="(?i)terminat|closed"), left_open.cursor() as cur:
        cur.execute("SELECT 1")  # it was terminated, not waited for


def test_postgres_database_skips_when_postgres_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "PG_PORT", free_port())  # nothing listens there
    with pytest.raises(pytest.skip.Exception, match=r"PostgreSQL not reachable at 127\.0\.0\.1:\d+"), \
            postgres_database():
        pass


def test_postgres_database_rejects_a_prefix_that_is_not_an_identifier() -> None:
    with pytest.raises(ValueError, match="prefix 'x; DROP' must be"), postgres_database("x; DROP"):
        pass
