"""Hostile and malformed input: sweep files and `--set` values (property-based), mask and checkpoint files,
`runs:/` URIs and paths.

- Every invalid sweep input exits with code 2 and one line `error: ...` naming the field, never a traceback,
  and never starts Ray (`search.runner.init_ray` and `preflight` fail the test if reached).
- Mask and checkpoint files that are truncated, of the wrong shapes or names, or pickles in disguise give
  one clear error and run no code (a pickle whose `__reduce__` would create a marker file never does).
- `runs:/` URIs, run ids and artifact names from run data cannot reach outside the artifact store, and an
  export writes nothing outside its `--out` folder.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search import cli
from search.results.transfer import parse_runs_uri
from search.sweep.file import ENTRIES, SWEEP_NAME, TOP_LEVEL
from search.sweep.storage import dump_toml
from search.tune.algorithms import SAMPLERS, SCHEDULERS
from tests.search.test_sweep import sweep_doc
from trainables.config import KEYS, ConfigError
from trainables.io import checkpoint, maskio
from trainables.io.checkpoint import CheckpointError, State
from trainables.io.ticketio import load_rewind

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(max_size=24)


def not_a_number(t: str) -> bool:
    with contextlib.suppress(ValueError, OverflowError):
        float(t)
        return False
    return t.strip().lower() not in ("true", "false", "none", "")


# Sweep entries and ticket keys -> values that are wrong for them, with a name the error must quote.
BAD_ENTRY = {
    "budget.num_samples": st.integers(max_value=0), "budget.max_concurrent": st.integers(max_value=0),
    "budget.time_limit_s": st.floats(max_value=-1e-6), "scheduler.grace_period": st.integers(max_value=0),
    "scheduler.reduction_factor": st.floats(max_value=1.0), "resources.cpu": st.floats(max_value=0.0),
    "resources.gpu": st.floats(min_value=1.01, max_value=1e6).filter(lambda g: not g.is_integer()),
    "objective.target_density": st.floats(min_value=1.0001) | st.floats(max_value=0.0),
    "search.seed": st.integers(max_value=-1) | st.integers(min_value=2**32, max_value=2**62),
    "search.sampler": text.filter(lambda t: t.strip() not in SAMPLERS),
    "scheduler.name": text.filter(lambda t: t.strip() not in SCHEDULERS),
    "name": text.filter(lambda t: not SWEEP_NAME.fullmatch(t.strip())),
}
BAD_TICKET = {"train.lr": st.floats(max_value=0.0) | st.floats(min_value=100.001),
              "prune.rate": st.floats(min_value=1.0) | st.floats(max_value=0.0),
              "train.epochs": st.integers(max_value=0), "train.batch_size": st.integers(max_value=0)}
# (An empty table is no value at all in TOML: `[base] prune.rate = {}` sets nothing, so it is left out.)
WRONG_TYPE = st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), min_size=1,
                                                                   max_size=2)


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str]]:
    """`ticket-search ARGV` in-process: exit code and stderr lines; Ray and preflight must not be reached."""
    def reached(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"an invalid input got past validation: {argv}")

    monkeypatch.setattr("search.tune.runner.init_ray", reached)
    monkeypatch.setattr("search.tune.runner.preflight", reached)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue().splitlines()


def assert_one_line(code: int, lines: list[str], field: str | None) -> None:
    assert code == cli.USAGE_ERROR and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
    if field:
        assert field in lines[0], (field, lines[0])


def sweep_with(doc_edit: Any, monkeypatch: pytest.MonkeyPatch, sets: list[str] | None = None) -> tuple[int, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        doc = sweep_doc(Path(tmp), "hostile")
        doc_edit(doc)
        path = Path(tmp) / "sweep.toml"
        path.write_text(dump_toml(doc))
        return run_cli(["sweep", str(path), *(["--set", *sets] if sets else [])], monkeypatch)


def put(doc: dict[str, Any], entry: str, value: Any) -> None:
    section, _, field = entry.rpartition(".")
    (doc.setdefault(section, {}) if section else doc)[field] = value


@SETTINGS
@given(st.data())
def test_invalid_sweep_file_entries_exit_2_naming_the_field(monkeypatch: pytest.MonkeyPatch, data: Any) -> None:
    entry = data.draw(st.sampled_from(sorted(ENTRIES)))
    value = data.draw(BAD_ENTRY.get(entry, WRONG_TYPE))
    code, lines = sweep_with(lambda doc: put(doc, entry, value), monkeypatch)
    assert_one_line(code, lines, entry.rpartition(".")[2])


@SETTINGS
@given(key=st.sampled_from(sorted(BAD_TICKET)), data=st.data())
def test_invalid_base_keys_exit_2_naming_the_key(monkeypatch: pytest.MonkeyPatch, key: str, data: Any) -> None:
    value = data.draw(BAD_TICKET[key] | WRONG_TYPE)
    code, lines = sweep_with(lambda doc: doc["base"].update({key: value}), monkeypatch)
    assert_one_line(code, lines, key)


@SETTINGS
@given(name=text.filter(lambda t: t not in TOP_LEVEL and t not in KEYS and f"train.{t}" not in KEYS),
       where=st.sampled_from(["section", "base", "space"]))
def test_unknown_names_exit_2(monkeypatch: pytest.MonkeyPatch, name: str, where: str) -> None:
    if where == "section":
        code, lines = sweep_with(lambda doc: doc.update({name: {"x": 1}}), monkeypatch)
    elif where == "base":
        code, lines = sweep_with(lambda doc: doc["base"].update({f"train.{name}": 1}), monkeypatch)
    else:
        code, lines = sweep_with(lambda doc: doc["space"].update({f"{name}": [1, 2]}), monkeypatch)
    assert_one_line(code, lines, None)


@SETTINGS
@given(entry=st.sampled_from(sorted(BAD_ENTRY) + sorted(BAD_TICKET)), data=st.data())
def test_invalid_set_values_exit_2_naming_the_key(monkeypatch: pytest.MonkeyPatch, entry: str, data: Any) -> None:
    bad = {**BAD_TICKET, **BAD_ENTRY}[entry]
    value = data.draw(bad.map(str) | text.filter(not_a_number))
    if entry == "name" or entry.endswith((".sampler", ".name")):
        value = data.draw(bad)
    value = value.replace("\0", "")  # argv cannot carry NUL
    code, lines = sweep_with(lambda doc: None, monkeypatch, [f"{entry}={value}"])
    assert_one_line(code, lines, entry.rpartition(".")[2])


@SETTINGS
@given(pair=text.filter(lambda t: "=" not in t) | text.map(lambda t: f"no.such.key{t}=1"))
def test_malformed_set_pairs_exit_2(monkeypatch: pytest.MonkeyPatch, pair: str) -> None:
    assert_one_line(*sweep_with(lambda doc: None, monkeypatch, [f"x{pair}"]), None)


@SETTINGS
@given(blob=st.binary(max_size=300) | text.map(str.encode))
def test_garbage_sweep_files_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "garbage.toml"
    path.write_bytes(blob)
    assert_one_line(*run_cli(["sweep", str(path)], monkeypatch), None)


@SETTINGS
@given(name=text.filter(lambda t: not SWEEP_NAME.fullmatch(t)) | st.sampled_from(["..", "../x", "/etc/passwd"]))
def test_resume_names_cannot_point_outside_the_sweep_records(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              name: str) -> None:
    code, lines = run_cli(["resume", "--root", str(tmp_path), "--", name.replace("\0", "")], monkeypatch)
    assert_one_line(code, lines, "resume")


# -- mask and checkpoint files -----------------------------------------------------------------------------

class Boom:
    """Unpickling this creates a marker file: proof that a loader executed code."""

    marker = Path(tempfile.gettempdir()) / "ticket-search-pickle-marker"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def pickles(tmp: Path) -> list[Path]:
    """A raw pickle and a torch.save file (a zip of pickles) carrying Boom, named like safetensors files."""
    raw, zipped = tmp / "raw.safetensors", tmp / "torch.safetensors"
    raw.write_bytes(pickle.dumps({"fc.weight": Boom()}))
    torch.save({"fc.weight": Boom()}, zipped)
    return [raw, zipped]


@pytest.fixture
def no_marker() -> Any:
    Boom.marker.unlink(missing_ok=True)
    yield
    assert not Boom.marker.exists(), "a loader unpickled a file and ran its code"


@pytest.mark.usefixtures("no_marker")
def test_pickles_disguised_as_masks_checkpoints_or_weights_run_no_code(tmp_path: Path) -> None:
    for path in pickles(tmp_path):
        with pytest.raises(maskio.MaskFileError, match="not a valid mask file"):
            maskio.load(path)
        with pytest.raises(ConfigError, match="not a valid safetensors file"):
            load_rewind(path)
        folder = tmp_path / f"ckpt-{path.stem}"
        checkpoint.save(State(level=1, masks=[{"w": torch.ones(2, 2, dtype=torch.bool)}],
                              rewind=[{"w": torch.zeros(2, 2)}]), folder)
        (tensor_file,) = folder.glob("state-*.safetensors")
        tensor_file.write_bytes(path.read_bytes())
        with pytest.raises(CheckpointError, match="cannot read it back"):
            checkpoint.load(folder)


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_truncated_mask_files_are_a_clear_error(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "mask.safetensors"
    maskio.save({"fc.weight": torch.rand(30, 40) > 0.5, "out.weight": torch.rand(10, 30) > 0.5}, path)
    blob = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[:cut % len(blob)])
    with pytest.raises(maskio.MaskFileError, match="cut.safetensors"):
        maskio.load(tmp_path / "cut.safetensors")


def ckpt(tmp: Path, **edit: Any) -> Path:
    state = State(level=1, masks=[{"w": torch.ones(3, 4, dtype=torch.bool)}], rewind=[{"w": torch.zeros(3, 4)}])
    for key, value in edit.items():
        setattr(state, key, value)
    checkpoint.save(state, tmp)
    return tmp


@pytest.mark.parametrize(("edit", "message"), [
    ({"masks": [{"w": torch.ones(4, 3, dtype=torch.bool)}]}, r"mask of 'w' has shape \[4, 3\], the weights \[3, 4\]"),
    ({"masks": [{"v": torch.ones(3, 4, dtype=torch.bool)}]}, r"mask of 'v' has shape \[3, 4\], the weights None"),
    ({"masks": [{"w": torch.ones(3, 4)}]}, r"mask of 'w' is not a boolean tensor"),
    ({"masks": []}, r"0 masks for 1 replicates"),
], ids=["wrong-shape", "wrong-name", "not-boolean", "missing"])
def test_inconsistent_checkpoints_are_a_clear_error(tmp_path: Path, edit: dict[str, Any], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(ckpt(tmp_path, **edit))


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "state.json", "state-1-1.safetensors/.."])
def test_checkpoint_tensor_file_must_be_a_plain_name(tmp_path: Path, name: str) -> None:
    folder = ckpt(tmp_path)
    doc = (folder / "state.json").read_text()
    (folder / "state.json").write_text(doc.replace('"tensor_file": "state-001-000.safetensors"',
                                                   f'"tensor_file": "{name}"'))
    with pytest.raises(CheckpointError, match="is not state-NNN-NNN.safetensors"):
        checkpoint.load(folder)


# -- runs:/ URIs -------------------------------------------------------------------------------------------

RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("uri", [
    "runs:/../mlflow.db", f"runs:/{RUN}/../../etc/passwd", f"runs:/{RUN}/mask.safetensors/../x",
    f"runs:/%2e%2e/{RUN}", f"runs:/{RUN}%2f..%2f..", f"runs://{RUN}", f"runs:/{RUN.upper()}", f"runs:/{RUN}/rewind",
    f"runs:/{RUN}/mask.safetensors?x=1", f"runs:/{RUN}#/../x", f"runs:/{RUN}\n/../x", f"runs:/./{RUN}"])
def test_runs_uris_outside_the_one_form_are_refused(uri: str) -> None:
    with pytest.raises(ConfigError, match="is not runs:/<32-hex run id>"):
        parse_runs_uri(uri)


@settings(max_examples=300, deadline=None)
@given(rest=st.text(alphabet=st.sampled_from("0123456789abcdefABCDEF./%\\-_:~mask.safetensors"), max_size=60))
def test_a_runs_uri_names_one_run_or_nothing(rest: str) -> None:
    try:
        run_id = parse_runs_uri(f"runs:/{rest}")
    except ConfigError:
        return
    assert rest.strip() in (run_id, f"{run_id}/", f"{run_id}/mask.safetensors", f"{run_id}/mask.safetensors/")
    assert len(run_id) == 32 and set(run_id) <= set("0123456789abcdef")
