"""Tickets out of MLflow: export and `load_ticket`, `runs:/` ticket transfer, mask comparison and plots.

Uses the real sweep record of test_query.py (built once per session, on a real sqlite store).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from search.results.compare import compare_masks, compare_tickets
from search.results.export import export_ticket
from search.results.plot import plot_sweep
from search.results.query import TicketRecord, best_tickets, check_run_id
from search.results.transfer import resolve_init_mask
from search.tracking import schema as S
from search.tracking.schema import PLOT_ARTIFACT as ARTIFACT_NAME
from search.tracking.store import prepare
from tests.search.test_query import Record, build_record, parse
from trainables.config import ConfigError, Ticket
from trainables.io import maskio
from trainables.io.ticketio import load_ticket
from trainables.lottery import Lottery
from trainables.paths import TICKET_FILES as FILES
from trainables.paths import TICKET_JSON
from trainables.pruning import masks as mk
from trainables.tasks.classification.data import load as load_data

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Record:
    return build_record(tmp_path_factory)


def pick(rec: Record, scorer: str = "magnitude", level: int = 2) -> TicketRecord:
    rows = [r for r in best_tickets(rec.uri, sweep="demo", scorer=scorer, top=100) if r.level == level]
    return rows[0]


def trial_of(rec: Record, r: TicketRecord) -> str:
    return MlflowClient(rec.uri).get_run(r.run_id).data.tags[S.TAG_TRIAL]


def artifact_mask(rec: Record, run_id: str, tmp: Path) -> mk.Mask:
    return maskio.load(MlflowClient(rec.uri).download_artifacts(run_id, S.MASK_ARTIFACT, str(tmp)))


def control_run(rec: Record, r: TicketRecord) -> str:
    client = MlflowClient(rec.uri)
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id],
                              f"tags.member = 'shuffle' and tags.`mlflow.parentRunId` = '{r.trial_run_id}'")
    return runs[0].info.run_id


# -- export and load_ticket ----------------------------------------------------------------------------

def test_export_and_load_ticket_rebuild_the_pruned_network(record, tmp_path):
    r = pick(record)
    out = export_ticket(r.run_id, tmp_path / "ticket", record.uri)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    doc = json.loads((out / TICKET_JSON).read_text())
    assert (doc["run_id"], doc["trial_run_id"], doc["level"]) == (r.run_id, r.trial_run_id, 2)
    assert (doc["input_shape"], doc["num_classes"], doc["metrics"]["val_score"]) == ([1, 8, 8], 10, r.val_score)
    ticket, model, mask = load_ticket(out)
    assert ticket == record.tickets[trial_of(record, r)] == r.ticket()
    expected = artifact_mask(record, r.run_id, tmp_path / "dl")
    assert list(mask) == list(expected) and all(torch.equal(mask[n], expected[n]) for n in mask)
    assert mk.density(mask) == pytest.approx(r.density)
    rewind = record.rewinds[trial_of(record, r)]
    for name, p in model.state_dict().items():
        if name in mask:
            assert bool((p[~mask[name]] == 0).all()) and torch.equal(p[mask[name]], rewind[name][mask[name]])
        else:
            assert torch.equal(p, rewind[name])  # biases are never pruned
    logits = model(load_data(ticket.data).val.x[:5])
    assert logits.shape == (5, 10)


def test_load_ticket_reads_the_shape_from_data_and_checks_the_model(record, tmp_path):
    out = export_ticket(pick(record).run_id, tmp_path / "ticket", record.uri)
    doc = json.loads((out / TICKET_JSON).read_text())
    (out / TICKET_JSON).write_text(json.dumps({**doc, "input_shape": None, "num_classes": None}))
    _, model, mask = load_ticket(out)
    assert all(bool((p[~mask[n]] == 0).all()) for n, p in model.named_parameters() if n in mask)
    (out / TICKET_JSON).write_text(json.dumps({**doc, "config": {**doc["config"], "model.widths": "32"}}))
    with pytest.raises(ConfigError, match="rewind.safetensors: does not fit model mlp"):
        load_ticket(out)
    with pytest.raises(ConfigError, match="ticket.json: no such file"):
        load_ticket(tmp_path / "nowhere")


def test_export_rejects_bad_ids_and_runs_that_are_not_tickets(record, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"'\.\./\.\./etc' is not an MLflow run id"):
        export_ticket("../../etc", out, record.uri)
    with pytest.raises(ConfigError, match=f"run {'0' * 32} does not exist"):
        export_ticket("0" * 32, out, record.uri)
    r = pick(record)
    with pytest.raises(ConfigError, match=r"is not a ticket run: it is a ticket run \(member shuffle\)"):
        export_ticket(control_run(record, r), out, record.uri)
    with pytest.raises(ConfigError, match="is not a ticket run: it is a trial run"):
        export_ticket(r.trial_run_id, out, record.uri)
    assert not out.exists()
    out.write_text("a file")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        export_ticket(r.run_id, out, record.uri)
    with pytest.raises(ConfigError, match="no MLflow store at"):
        export_ticket(r.run_id, out, f"sqlite:///{tmp_path}/none.db")


def test_missing_artifacts_are_named(record, tmp_path):
    client = MlflowClient(record.uri)
    exp = client.create_experiment("broken", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp, tags={S.KIND: S.SWEEP}).info.run_id
    tags = {S.KIND: S.TICKET, S.TAG_MEMBER: "ticket", "mlflow.parentRunId": parent}
    bare = client.create_run(exp, tags=tags).info.run_id
    masked = client.create_run(exp, tags=tags).info.run_id  # a mask, but its parent has no rewind
    maskio.save({"w": torch.ones(2, 2, dtype=torch.bool)}, tmp_path / S.MASK_ARTIFACT)
    (tmp_path / S.DENSITY_ARTIFACT).write_text("{}")
    client.log_artifact(masked, str(tmp_path / S.MASK_ARTIFACT))
    client.log_artifact(masked, str(tmp_path / S.DENSITY_ARTIFACT))
    try:
        with pytest.raises(ConfigError, match=f"run {bare} has no artifact 'mask.safetensors'"):
            export_ticket(bare, tmp_path / "out", record.uri)
        with pytest.raises(ConfigError, match=f"run {parent} has no artifact 'rewind.safetensors'"):
            export_ticket(masked, tmp_path / "out", record.uri)
        assert not (tmp_path / "out").exists()  # nothing lands before everything is checked
    finally:  # keep the shared store as the other tests expect it
        for run in (parent, bare, masked):
            client.delete_run(run)
        client.delete_experiment(exp)


# -- ticket transfer -----------------------------------------------------------------------------------

def test_resolve_init_mask_downloads_a_loadable_mask(record, tmp_path):
    r = pick(record)
    expected = artifact_mask(record, r.run_id, tmp_path / "dl")
    for uri in (f"runs:/{r.run_id}", f"runs:/{r.run_id}/mask.safetensors"):
        flat = resolve_init_mask({"prune.init_mask": uri, "prune.rate": "0.3"}, record.uri, cache_dir=tmp_path)
        path = Path(flat["prune.init_mask"])
        assert path.is_absolute() and path == (tmp_path / r.run_id / S.MASK_ARTIFACT).resolve()
        assert flat["prune.rate"] == "0.3"
        assert all(torch.equal(a, b) for a, b in zip(maskio.load(path).values(), expected.values(), strict=True))
    default = resolve_init_mask({"prune.init_mask": f"runs:/{r.run_id}"}, record.uri)
    assert Path(default["prune.init_mask"]).is_relative_to(record.root / "init_masks")
    # End to end: the transferred ticket trains at the exported ticket's density.
    ticket = r.ticket().replace(**{"prune.init_mask": f"runs:/{r.run_id}", "prune.levels": 0,
                                   "prune.controls": ""})
    resolved = resolve_init_mask(ticket, record.uri, cache_dir=tmp_path)
    assert isinstance(resolved, Ticket) and resolved.prune.init_mask == str(path)
    assert next(Lottery(resolved).run()).density == pytest.approx(r.density)


def test_resolve_init_mask_passes_files_and_rejects_bad_uris(record, tmp_path):
    plain = {"prune.init_mask": "/data/mask.safetensors"}
    assert resolve_init_mask(plain, record.uri) is plain
    ticket = Ticket()
    assert resolve_init_mask(ticket, record.uri) is ticket
    for bad in ("runs:/x;rm", f"runs:/{'a' * 32}/../../etc/passwd", "runs:/../../etc"):
        with pytest.raises(ConfigError, match="is not runs:/<32-hex run id>"):
            resolve_init_mask({"prune.init_mask": bad}, record.uri, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="is not a ticket run"):
        resolve_init_mask({"prune.init_mask": f"runs:/{pick(record).trial_run_id}"}, record.uri)
    with pytest.raises(ConfigError, match="not an MLflow run id"):
        check_run_id("A" * 32)


# -- compare -------------------------------------------------------------------------------------------

def test_compare_a_run_with_itself_and_with_another(record, tmp_path):
    a, b = pick(record, "magnitude"), pick(record, "random")
    same = compare_tickets(a.run_id, a.run_id, record.uri)
    assert same.hamming == 0 and all(layer.hamming == 0 for layer in same.layers)
    assert same.density_a == same.density_b == pytest.approx(a.density)
    other = compare_tickets(a.run_id, b.run_id, record.uri)
    ma, mb = artifact_mask(record, a.run_id, tmp_path / "a"), artifact_mask(record, b.run_id, tmp_path / "b")
    assert other.hamming == pytest.approx(mk.hamming(ma, mb)) and other.hamming > 0
    for layer in other.layers:
        assert layer.hamming == pytest.approx(mk.hamming({layer.name: ma[layer.name]}, {layer.name: mb[layer.name]}))
        assert layer.density_a == pytest.approx(mk.layer_density(ma)[layer.name])


def test_compare_masks_reports_layer_mismatches():
    a = {"x": torch.ones(2, 3, dtype=torch.bool), "y": torch.ones(4, dtype=torch.bool),
         "z": torch.ones(2, dtype=torch.bool)}
    b = {"x": torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool), "y": torch.ones(5, dtype=torch.bool),
         "w": torch.zeros(3, dtype=torch.bool)}
    c = compare_masks(a, b, "A", "B")
    rows = {layer.name: layer for layer in c.layers}
    assert [layer.name for layer in c.layers] == ["x", "y", "z", "w"]
    assert rows["x"].hamming == pytest.approx(2 / 6) and c.hamming == pytest.approx(2 / 6)
    assert rows["y"].hamming is None and rows["y"].note == "shapes differ: 4 vs 5"
    assert (rows["z"].note, rows["z"].density_b) == ("only in A", None)
    assert (rows["w"].note, rows["w"].density_a, rows["w"].density_b) == ("only in B", None, 0.0)
    assert compare_masks({"x": a["x"]}, {"w": b["w"]}).hamming is None


# -- plot ----------------------------------------------------------------------------------------------

def test_plot_writes_a_png_and_logs_it_to_the_parent_run(record, tmp_path):
    path = plot_sweep("demo", record.uri, tmp_path / "demo.png")
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000
    client = MlflowClient(record.uri)
    parent = client.search_runs([client.get_experiment_by_name("demo").experiment_id], "tags.kind = 'sweep'")
    listed = [f.path for f in client.list_artifacts(parent[0].info.run_id, "plots")]
    assert listed == [f"plots/{ARTIFACT_NAME}"]
    default = plot_sweep("front", record.uri)
    assert default == record.root / "plots" / "front.png" and default.read_bytes().startswith(PNG)
    prepare(record.uri, "empty", str(tmp_path), {"objective": "pareto"})
    assert plot_sweep("empty", record.uri) is None
    with pytest.raises(ConfigError, match="unknown sweep 'nope'"):
        plot_sweep("nope", record.uri, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="should end in .png"):
        plot_sweep("demo", record.uri, tmp_path / "x.jpg")


# -- CLI -----------------------------------------------------------------------------------------------

def test_export_compare_and_plot_commands(record, tmp_path, capsys):
    a, b = pick(record, "magnitude"), pick(record, "random")
    args = parse("export", a.run_id, "--out", str(tmp_path / "t"), "--tracking-uri", record.uri)
    assert args.handler(args) == 0 and (tmp_path / "t" / "mask.safetensors").is_file()
    assert "exported ticket" in capsys.readouterr().out
    args = parse("compare", a.run_id, b.run_id, "--json", "--tracking-uri", record.uri)
    assert args.handler(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hamming"] == pytest.approx(compare_tickets(a.run_id, b.run_id, record.uri).hamming)
    args = parse("compare", a.run_id, a.run_id, "--tracking-uri", record.uri)
    assert args.handler(args) == 0 and "Hamming" in capsys.readouterr().out
    args = parse("plot", "--sweep", "demo", "--out", str(tmp_path / "p.png"), "--tracking-uri", record.uri)
    assert args.handler(args) == 0 and (tmp_path / "p.png").read_bytes().startswith(PNG)
    args = parse("export", "runs:/x;rm", "--out", str(tmp_path / "u"), "--tracking-uri", record.uri)
    with pytest.raises(ConfigError, match="not an MLflow run id"):
        args.handler(args)
