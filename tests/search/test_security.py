"""Security of what we run and store: secrets stay out of MLflow, servers bind loopback, no loader runs code,
nothing a run recorded can make an export read outside the artifact store or write outside `--out`.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import subprocess
import sys
import urllib.parse
from pathlib import Path

import psycopg2
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from psycopg2 import sql
from safetensors.torch import save_file

from search.results.export import export_ticket
from search.results.transfer import resolve_init_mask
from search.sweep.file import sweep_from_dict
from search.tracking import schema as S
from search.tracking.store import log_params
from tests.helpers.servers import MlflowServer, postgres_database
from tests.search.test_faults import child_env, own_ray_tmpdir
from tests.search.test_sweep import sweep_doc
from tests.search.test_sweep_services import write_sweep
from trainables.config import ConfigError, Ticket
from trainables.io import maskio
from trainables.models.registry import build
from trainables.paths import TICKET_FILES as FILES
from trainables.pruning import masks as mk

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "search", ROOT / "trainables"]


def text_of(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def database_text(url: str) -> str:
    """Every row of every table of a PostgreSQL database, as text."""
    u = urllib.parse.urlparse(url.replace("postgresql+psycopg2", "postgresql"))
    rows = []
    with psycopg2.connect(host=u.hostname, port=u.port, user=u.username, dbname=u.path.lstrip("/")) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        for (table,) in cur.fetchall():
            cur.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
            rows.append(repr(cur.fetchall()))
    return "\n".join(rows)


@pytest.mark.slow
def test_secrets_in_the_environment_never_reach_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("flask_wtf", reason="basic-auth needs mlflow[auth] (the dev extra installs it)")
    password, aws = f"s3cr3t-{secrets.token_hex(8)}", f"aws-{secrets.token_hex(12)}"
    server_env = {"MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with postgres_database("ts_secret") as db, MlflowServer(db, tmp_path / "artifacts", env=server_env,
                                                            extra_args=["--app-name", "basic-auth"]) as server:
        doc = sweep_doc(tmp_path, "secret", budget={"num_samples": 2, "max_concurrent": 2},
                        scheduler={"name": "none"}, storage={"tracking_uri": server.uri})
        path = write_sweep(tmp_path / "secret.toml", doc)
        with own_ray_tmpdir() as ray_tmp:
            env = {**child_env(ray_tmp), "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password,
                   "AWS_SECRET_ACCESS_KEY": aws, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}
            done = subprocess.run([sys.executable, "-m", "search", "sweep", str(path)], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=420)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        with pytest.raises(MlflowException, match="401"):  # the server did demand the credentials
            MlflowClient(server.uri).search_experiments()

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("secret")
        assert exp is not None
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        assert sum(r.data.tags.get(S.KIND) == S.TICKET for r in runs) >= 2
        seen = json.dumps([[r.data.params, r.data.tags, list(r.data.metrics), r.info.artifact_uri] for r in runs])
        for secret in (password, aws):
            assert secret not in seen  # params, tags, metric names
            assert secret.encode() not in text_of(tmp_path / "artifacts")  # every artifact file
            assert secret.encode() not in text_of(tmp_path / "runs")  # Ray results, Optuna journal, sweep record
            assert secret not in database_text(db)  # every row MLflow stored


def test_passwords_in_storage_uris_are_refused(tmp_path: Path) -> None:
    for entry, uri in [("tracking_uri", "http://admin:hunter2@head:5000"),
                       ("optuna_storage", "postgresql+psycopg2://optuna:hunter2@head/optuna")]:
        with pytest.raises(ConfigError, match=rf"\[storage\] {entry}: holds a password"):
            sweep_from_dict(sweep_doc(tmp_path, "pw", storage={entry: uri}))


def test_servers_our_tooling_starts_bind_loopback_unless_told() -> None:
    from mlflow.cli import server

    [host] = [p for p in server.params if p.name == "host"]
    assert host.default == "127.0.0.1"  # what scripts/head_services.sh gets when cluster.yaml names no --host
    script = (ROOT / "scripts" / "head_services.sh").read_text()
    assert "--host" not in script  # the script passes cluster.yaml's arguments through, picking no host itself
    command = MlflowServer("sqlite://", Path("artifacts")).command()
    assert command[command.index("--host") + 1] == "127.0.0.1"  # the test servers


def test_the_package_never_turns_ray_token_auth_off() -> None:
    for folder in PACKAGES:
        for path in folder.rglob("*.py"):
            assert "RAY_AUTH_MODE" not in path.read_text(), path  # only tests/conftest.py turns it off


UNSAFE = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
          ("marshal", "loads"), ("yaml", "load"), ("dill", "load"), ("", "eval"), ("", "exec")}


def unsafe_call(node: ast.Call) -> bool:
    """pickle-like loads, eval/exec, torch.load without weights_only=True, numpy loads that allow pickles."""
    func = node.func
    owner = "" if not isinstance(func, ast.Attribute) else func.value.id if isinstance(func.value, ast.Name) else "?"
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    kw = {k.arg: k.value for k in node.keywords}
    if (owner, name) in UNSAFE:
        return True
    if (owner, name) == ("torch", "load"):
        safe = kw.get("weights_only")
        return not (isinstance(safe, ast.Constant) and safe.value is True)
    return owner in ("np", "numpy") and "allow_pickle" in kw


def test_no_loader_can_run_code_from_a_file() -> None:
    found = [f"{path.relative_to(ROOT)}:{node.lineno}"
             for folder in PACKAGES for path in folder.rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call) and unsafe_call(node)]
    assert found == []
    assert unsafe_call(ast.parse("torch.load(f)").body[0].value)  # type: ignore[attr-defined]
    assert not unsafe_call(ast.parse("torch.load(f, weights_only=True)").body[0].value)  # type: ignore[attr-defined]
    assert not unsafe_call(ast.parse("model.eval()").body[0].value)  # type: ignore[attr-defined]


# -- exports cannot be led outside the artifact store or --out --------------------------------------------

def ticket_store(tmp: Path) -> tuple[str, str, str]:
    """A sqlite store holding one ticket run (and its trial run) with valid artifacts: (uri, ticket, trial)."""
    uri = f"sqlite:///{tmp}/store/mlflow.db"
    (tmp / "store").mkdir()
    client = MlflowClient(uri)
    exp = client.create_experiment("sec", artifact_location=(tmp / "store" / "artifacts").as_uri())
    ticket = Ticket.from_flat({"data.name": "digits", "model.name": "mlp", "model.widths": "8", "train.device": "cpu"})
    model = build(ticket.model, (1, 8, 8), 10)
    trial = client.create_run(exp, tags={S.KIND: S.TRIAL}).info.run_id
    run = client.create_run(exp, tags={S.KIND: S.TICKET, S.TAG_MEMBER: "ticket", "mlflow.parentRunId": trial,
                                       S.TAG_SWEEP: "sec"}).info.run_id
    log_params(client, run, ticket.flat())
    files = tmp / "files"
    files.mkdir()
    maskio.save(mk.ones(model), files / S.MASK_ARTIFACT)
    (files / S.DENSITY_ARTIFACT).write_text('{"density": 1.0}')
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(files / "rewind.safetensors"))
    client.log_artifact(run, str(files / S.MASK_ARTIFACT))
    client.log_artifact(run, str(files / S.DENSITY_ARTIFACT))
    client.log_artifact(trial, str(files / "rewind.safetensors"))
    return uri, run, trial


def tree(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_export_writes_only_inside_out(tmp_path: Path) -> None:
    uri, run, _ = ticket_store(tmp_path)
    before = tree(tmp_path)
    out = export_ticket(run, tmp_path / "a" / ".." / "out", uri)
    new = tree(tmp_path) - before
    assert {p.name for p in new if p.is_file()} == set(FILES)
    assert all(p.resolve().is_relative_to((tmp_path / "out").resolve()) for p in new), new
    assert out.resolve() == (tmp_path / "out").resolve()


def test_a_symlink_planted_in_the_artifact_store_is_not_followed(tmp_path: Path) -> None:
    uri, run, _ = ticket_store(tmp_path)
    elsewhere = tmp_path / "private.safetensors"  # a valid mask, so only the link check can stop it
    maskio.save({"secret": torch.ones(3, 3, dtype=torch.bool)}, elsewhere)
    folder = Path(urllib.parse.unquote(urllib.parse.urlparse(MlflowClient(uri).get_run(run).info.artifact_uri).path))
    (folder / S.MASK_ARTIFACT).unlink()
    os.symlink(elsewhere, folder / S.MASK_ARTIFACT)
    with pytest.raises(ConfigError, match="links outside the run's artifact folder"):
        export_ticket(run, tmp_path / "out", uri)
    with pytest.raises(ConfigError, match="links outside the run's artifact folder"):
        resolve_init_mask({"prune.init_mask": f"runs:/{run}"}, uri, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").rglob("*.safetensors"))


@pytest.mark.parametrize("parent", ["../../../etc", "/etc/passwd", "0123456789abcdef0123456789abcdef/../x"])
def test_run_ids_from_run_data_are_checked_before_use(tmp_path: Path, parent: str) -> None:
    uri, run, _ = ticket_store(tmp_path)
    MlflowClient(uri).set_tag(run, "mlflow.parentRunId", parent)
    with pytest.raises(ConfigError, match="parent trial run id: .* is not an MLflow run id"):
        export_ticket(run, tmp_path / "out", uri)
    assert not (tmp_path / "out").exists()
