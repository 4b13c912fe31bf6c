"""cluster.yaml: Ray's own validator accepts it, and it keeps the promises of docs/CLUSTER.md.

Offline and fast (Ray's `prepare_config` + `validate_config` check the file against the schema shipped in the
wheel), except the slow test at the end, which runs the head's `mlflow server` command from cluster.yaml, through
scripts/head_services.sh, against a real PostgreSQL on loopback.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.autoscaler._private.util import prepare_config, validate_config

from search.sweep.file import load_sweep
from tests.helpers.servers import free_port, postgres_database

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"
SCRIPT = ROOT / "scripts" / "head_services.sh"
TEXT = CLUSTER.read_text()
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")

# A secret written as a literal: NAME=value anywhere, or a YAML key NAME: value, where NAME mentions a password,
# secret or token and the value is not a $-expansion (or, for YAML, a path); or user:password@ in a URL.
SECRET = re.compile(r"""(?imx)
    \b\w*(password|passwd|secret|token)\w* \s*=\s* (?!['"]?\$) ['"]? [^\s'"$]
  | ^\s*(-\s+)?\w*(password|passwd|secret|token)\w*: \s+ (?!['"]?[$~/]) \S
  | ://[^/\s:@]+:[^/\s@$]+@
""")


def load() -> dict[str, Any]:
    return yaml.safe_load(TEXT)


def prepared() -> dict[str, Any]:
    config = prepare_config(load())
    validate_config(config)
    return config


def commands(config: dict[str, Any], *lists: str) -> list[str]:
    return [cmd for name in lists or COMMAND_LISTS for cmd in config.get(name) or []]


def workers(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def test_ray_validates_the_config() -> None:
    config = prepared()
    assert config["head_node_type"] in config["available_node_types"]
    assert config["provider"]["type"] == "aws"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.update(max_worker=4), r"Additional properties are not allowed \('max_worker' was unexpected\)"),
    (lambda c: c["available_node_types"]["head"].update(resource={"CPU": 0}),
     r"Additional properties are not allowed \('resource' was unexpected\)"),
    (lambda c: next(iter(workers(c).values()))["resources"].update(GPU=0.5), r"0\.5 is not of type 'integer'"),
], ids=["unknown-top-level-key", "unknown-node-key", "fractional-resource"])
def test_ray_rejects_unknown_keys_and_fractional_resources(edit, message: str) -> None:
    config = load()
    edit(config)
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate_config(prepare_config(copy.deepcopy(config)))


def test_head_runs_no_trials_and_workers_bring_gpus() -> None:
    config = prepared()
    assert config["available_node_types"][config["head_node_type"]]["resources"]["CPU"] == 0
    assert workers(config)
    for name, node in workers(config).items():
        resources = node["resources"]
        assert all(type(v) is int for v in resources.values()), name
        assert resources["GPU"] >= 1 and resources["CPU"] >= 1, name
        assert node["min_workers"] == 0 and 1 <= node["max_workers"] <= config["max_workers"], name
    assert config["idle_timeout_minutes"] > 0 and config["upscaling_speed"] > 0


def documented_sweep_args() -> list[str]:
    """The `ticket-search sweep ... --set ...` line of the header comment, as the head's shell would pass it."""
    header = "\n".join(line.lstrip("# ") for line in TEXT.splitlines() if line.startswith("#"))
    match = re.search(r"'cd ~/ticket-search && ticket-search sweep (.*?)'", header, re.DOTALL)
    assert match, "cluster.yaml's header lost its `ray exec ... ticket-search sweep` example"
    return shlex.split(match.group(1).replace("$TS_HEAD_IP", "10.0.0.5"))


def test_the_documented_sweep_command_loads_and_fits_the_worker_types() -> None:
    args = documented_sweep_args()
    sets = args[args.index("--set") + 1:]
    sweep = load_sweep(ROOT / args[0], sets)
    assert sweep.ray_address == "auto"
    assert sweep.tracking_uri == "http://10.0.0.5:5000"  # the head's private IP: trials on workers log there
    assert sweep.optuna_storage.startswith("postgresql+psycopg2://")
    assert sweep.ray_storage.startswith("/mnt/shared/")  # the EFS mount every node has
    # Fractional GPUs: every worker type holds whole GPUs' worth of trials, with the CPUs they ask for.
    per_gpu = round(1 / sweep.gpu)
    for name, node in workers(prepared()).items():
        gpus, cpus = node["resources"]["GPU"], node["resources"]["CPU"]
        assert cpus >= gpus * per_gpu * sweep.cpu, f"{name}: {cpus} CPUs cannot feed {gpus * per_gpu} trials"


def _mlflow_command(config: dict[str, Any]) -> str:
    [cmd] = [c for c in config["head_start_ray_commands"] if "start-mlflow" in c]
    return cmd


def _options(argv: list[str]) -> dict[str, str | None]:
    opts: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            opts[arg] = nxt if nxt is not None and not nxt.startswith("--") else None
    return opts


def test_head_starts_mlflow_on_postgresql_before_ray() -> None:
    config = prepared()
    start = config["head_start_ray_commands"]
    assert start[0] == "ray stop"
    mlflow_at = start.index(_mlflow_command(config))
    [ray_head] = [c for c in start if "ray start --head" in c]
    assert mlflow_at < start.index(ray_head)
    for flag in ("--port=6379", "--autoscaling-config=~/ray_bootstrap_config.yaml", "--disable-usage-stats"):
        assert flag in ray_head
    opts = _options(shlex.split(_mlflow_command(config)))
    assert opts["--backend-store-uri"].startswith("postgresql")
    assert "--serve-artifacts" in opts and opts["--artifacts-destination"]
    assert opts["--port"] == "5000"
    assert "bash ~/ticket-search/scripts/head_services.sh setup" in commands(config, "head_setup_commands")
    assert re.search(r"for db in mlflow optuna; do", SCRIPT.read_text())


def test_mlflow_never_listens_on_every_interface_without_allowed_hosts() -> None:
    everywhere = [c for c in commands(prepared()) if re.search(r"--host[= ]+['\"]?0\.0\.0\.0", c)]
    assert everywhere, "the head's MLflow must be reachable from the workers"
    for cmd in everywhere:
        hosts = _options(shlex.split(cmd)).get("--allowed-hosts")
        assert hosts, cmd
        assert "*" not in hosts.split(","), "a bare * would let any Host header through"


def test_ray_token_auth_stays_on_and_every_node_gets_the_token() -> None:
    config = prepared()
    assert "RAY_AUTH_MODE=disabled" not in TEXT
    ray_starts = [c for c in commands(config) if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in ray_starts)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    [worker_start] = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert "--address=$RAY_HEAD_IP:6379" in worker_start


def test_every_node_installs_the_synced_project() -> None:
    config = prepared()
    assert config["file_mounts"]["~/ticket-search"] == "."
    for merged in ("head_setup_commands", "worker_setup_commands"):  # prepare_config prepends setup_commands
        assert any(re.search(r"pip install .*-e ~/ticket-search", c) for c in config[merged]), merged


@pytest.mark.parametrize("text", [
    "MLFLOW_TRACKING_PASSWORD=hunter2", "export MLFLOW_AUTH_ADMIN_PASSWORD='hunter2'", "password: hunter2",
    "MLFLOW_FLASK_SERVER_SECRET_KEY=abc123", "postgresql+psycopg2://mlflow:hunter2@10.0.0.5/mlflow",
    "  MLFLOW_TRACKING_PASSWORD = hunter2", "  - secret_key: abc",
])
def test_the_secret_pattern_catches_literals(text: str) -> None:
    assert SECRET.search(text)


@pytest.mark.parametrize("text", [
    "${MLFLOW_AUTH_ADMIN_PASSWORD:+--app-name basic-auth}", "MLFLOW_TRACKING_PASSWORD=$PW",
    'MLFLOW_TRACKING_PASSWORD="$PW"', "postgresql+psycopg2:///mlflow", "  ~/.ray/auth_token: ~/.ray/auth_token",
    "# ~/.ray/auth_token: file_mounts copies it", "ray get-auth-token --generate",
])
def test_the_secret_pattern_passes_references(text: str) -> None:
    assert not SECRET.search(text)


@pytest.mark.parametrize("path", [CLUSTER, SCRIPT], ids=lambda p: p.name)
def test_no_plaintext_secret(path: Path) -> None:
    found = [line for line in path.read_text().splitlines() if SECRET.search(line)]
    assert found == []


def test_every_shell_command_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True).stderr == ""
    for cmd in commands(load()):
        result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert result.returncode == 0, f"{cmd}\n{result.stderr}"


def _get(url: str, host: str, auth: tuple[str, str] | None = None) -> int:
    headers = {"Host": host}
    if auth:
        headers["Authorization"] = "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
@pytest.mark.parametrize("basic_auth", [False, True], ids=["open", "basic-auth"])
def test_the_head_mlflow_command_serves_only_allowed_hosts(
        basic_auth: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cluster.yaml's own command, moved to loopback: 127.0.0.1, a free port, a test database, one worker."""
    if basic_auth:
        pytest.importorskip("flask_wtf", reason="basic-auth needs mlflow[auth] (Flask-WTF), installed on the head")
    port, head_ip = free_port(), "10.1.2.3"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TS_MLFLOW_HOME": str(tmp_path / "home"), "TS_HEAD_IP": head_ip}
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    auth = None
    if basic_auth:
        auth = ("admin", secrets.token_urlsafe(16))
        env.update(MLFLOW_AUTH_ADMIN_PASSWORD=auth[1], MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_urlsafe(32))
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth[0])  # how the client (a trial) presents them
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth[1])
    with postgres_database("ts_head") as db:
        cmd = _mlflow_command(prepared())
        for old, new in [("--host 0.0.0.0", "--host 127.0.0.1"), ("--workers 4", "--workers 1"),
                         ("--port 5000", f"--port {port}"), ("}:5000,", f"}}:{port},"),
                         ("postgresql+psycopg2:///mlflow", db),
                         ("/mnt/shared/mlflow-artifacts", str(tmp_path / "artifacts")),
                         ("~/ticket-search/scripts/head_services.sh", shlex.quote(str(SCRIPT)))]:
            assert cmd.count(old) == 1, old
            cmd = cmd.replace(old, new)
        try:
            started = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=240)
            assert started.returncode == 0, started.stdout + started.stderr
            api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
            assert _get(api, f"localhost:{port}", auth) == 200  # an SSH tunnel to the UI
            assert _get(api, f"{head_ip}:{port}", auth) == 200  # how workers address the head
            assert _get(api, f"10.9.9.9:{port}", auth) == 403  # a private IP that MLflow's default would let in
            if basic_auth:
                assert _get(api, f"localhost:{port}") == 401

            client = MlflowClient(f"http://127.0.0.1:{port}")
            run_id = client.create_run(client.create_experiment("cluster")).info.run_id
            (tmp_path / "mask.txt").write_text("1 0 1")
            client.log_artifact(run_id, str(tmp_path / "mask.txt"))
            assert [p.read_text() for p in (tmp_path / "artifacts").rglob("mask.txt")] == ["1 0 1"]  # proxied
        finally:
            stopped = subprocess.run(["bash", str(SCRIPT), "stop-mlflow"], env=env, capture_output=True, text=True,
                                     timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert not (tmp_path / "home" / "server.pid").exists()
        with socket.create_server(("127.0.0.1", port)):  # nothing listens there any more
            pass
