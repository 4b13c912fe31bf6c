"""The command line as a user meets it: `run` writes the documented results; mistakes exit 2 in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from search import cli
from trainables.io import maskio
from trainables.pruning import masks as mk

TINY = ["model.name=mlp", "model.widths=16", "train.epochs=1", "prune.levels=2", "train.device=cpu"]


def test_run_writes_results_json_and_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert cli.main(["run", "--set", *TINY, "prune.controls=shuffle", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["prune.controls"] == ["shuffle"] and "early_bird_epoch" in doc
    assert [lv["level"] for lv in doc["levels"]] == [0, 1, 2]
    for lv in doc["levels"]:
        for key in ("level", "density", "layer_density", "val_acc", "test_acc", "early_stop_iter", "collapsed",
                    "controls"):
            assert key in lv
        assert 0 <= lv["val_acc"] <= 1 and 0 <= lv["test_acc"] <= 1
        mask = maskio.load(out / "masks" / f"level_{lv['level']:02d}.safetensors")
        assert mk.density(mask) == pytest.approx(lv["density"])
    assert set(doc["levels"][2]["controls"]["shuffle"]) >= {"val_acc", "test_acc"}
    printed = capsys.readouterr().out
    assert "Ticket search" in printed and "shuffle" in printed


def test_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli.main(["run", "--set", *TINY, "prune.levels=1", "--out", str(out), "--quiet"]) == 0
    first = json.loads((out / "results.json").read_text())["levels"]
    # the same search asked to go two levels further continues from level 1's checkpoint
    assert cli.main(["run", "--set", *TINY, "prune.levels=1", "--out", str(out), "--quiet", "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())["levels"]
    assert again == first  # finished searches resume to the same record, nothing retrained


def test_run_with_a_stage_store_loads_the_levels_an_earlier_run_trained(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    def levels(out: Path) -> list[tuple[float, float, float]]:
        doc = json.loads((out / "results.json").read_text())
        return [(lv["density"], lv["val_acc"], lv["test_acc"]) for lv in doc["levels"]]

    stages = ["--stages", str(tmp_path / "stages"), "--quiet"]
    assert cli.main(["run", "--set", *TINY, "--out", str(tmp_path / "a"), *stages]) == 0
    assert "loaded from the stage store" not in capsys.readouterr().out  # an empty store: all trained
    # one level deeper: levels 0-2 loaded, level 3 trained
    assert cli.main(["run", "--set", *TINY, "prune.levels=3", "--out", str(tmp_path / "b"), *stages]) == 0
    printed = capsys.readouterr().out
    loaded = [line.split(":")[0] for line in printed.splitlines()
              if line.startswith("level ") and line.endswith("(loaded from the stage store)")]
    assert loaded == ["level 0", "level 1", "level 2"] and "trained 1 of the 4 epochs" in printed
    assert levels(tmp_path / "b")[:3] == levels(tmp_path / "a")
    # and the same as training every level without the store
    assert cli.main(["run", "--set", *TINY, "prune.levels=3", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert levels(tmp_path / "c") == levels(tmp_path / "b")
    for n in range(4):
        name = f"masks/level_{n:02d}.safetensors"
        b, c = maskio.load(tmp_path / "b" / name), maskio.load(tmp_path / "c" / name)
        assert b.keys() == c.keys() and all(b[k].equal(c[k]) for k in b)


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--set", "prune.rat=0.2"], "error: unknown key 'prune.rat' (did you mean 'prune.rate'?)"),
    (["run", "--set", "prune.rate=2"], "error: prune.rate: 2.0 is outside (0, 1)"),
    (["run", "--set", "data.name=cifar10", "data.root=/nonexistent"], "error: data.name=cifar10: no dataset"),
    (["run", "missing.toml"], "error: missing.toml: no such file"),
    (["run", "--set", "prune.rate"], "error: --set: expected key=value, got 'prune.rate'"),
    (["run", "--resume"], "error: --resume: needs --out"),
    (["run", "--stages", "/dev/null"], "error: --stages: /dev/null is not a folder"),
])
def test_user_mistakes_exit_2_with_one_line(args: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err and "Traceback" not in err


def test_bad_sweep_file_exits_2_without_starting_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from search.tune import runner

    def no_ray(*a: object, **k: object) -> None:
        raise AssertionError("Ray was started for an invalid sweep")

    monkeypatch.setattr(runner, "init_ray", no_ray)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[scheduler]\nname = "hyperband"\n[objective]\ntarget_density = 0.2\n')
    assert cli.main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "[scheduler] name: unknown value 'hyperband'; valid choices: asha, none" in err and "\n" not in err
    bad.write_text('name = "x"\n[space]\n"prune.rate" = {type = "float", low = 0.7, high = 0.6}\n'
                   '[objective]\ntarget_density = 0.2\n')
    assert cli.main(["sweep", str(bad)]) == 2
    assert "prune.rate" in capsys.readouterr().err
    assert cli.main(["sweep", str(tmp_path / "none.toml")]) == 2
    assert cli.main(["best", "--sweep", "nope", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2


def test_python_dash_m_search_is_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "search", "run", "--set", "prune.scorer=l2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: prune.scorer: unknown value 'l2'; valid choices: magnitude")


def test_run_derives_the_levels_that_reach_the_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert cli.main(["run", "--set", "prune.target_density=0.1", "train.epochs=1", "train.device=cpu",
                     "--out", str(out), "--quiet"]) == 0
    levels = json.loads((out / "results.json").read_text())["levels"]
    # LeNet-300-100 on digits: 0.8^11 = 0.086 of the hidden weights, 0.9^11 of the output layer's 2%
    assert [lv["level"] for lv in levels] == list(range(12))
    assert levels[-1]["density"] <= 0.1 < levels[-2]["density"]
    assert "prune.levels: 11 levels at prune.rate 0.2 reach prune.target_density 0.1" in capsys.readouterr().out


def test_levels_short_of_the_target_exit_2_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from trainables import lottery

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("trained although prune.levels cannot reach prune.target_density")

    monkeypatch.setattr(lottery, "train_members", no_training)
    out = tmp_path / "out"
    assert cli.main(["run", "--set", "prune.target_density=0.1", "prune.levels=5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: prune.levels: 5 levels at prune.rate 0.2 end at density 0.333, above "
                          "prune.target_density 0.1; 11 levels would reach it") and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize(("on", "line"), [
    (True, r"Early-Bird ticket drawn at epoch (\d+) \(dense training stopped there\)"),
    (False, r"mask distance settled at epoch (\d+) \(Early-Bird would have drawn the ticket there; "
            r"prune\.early_bird is off\)"),
])
def test_run_says_whether_early_bird_drew_the_ticket(on: bool, line: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # epsilon 1: any two masks are close, so the distance settles at the second epoch's start
    sets = [*TINY, "train.epochs=3", "prune.levels=0", "prune.eb_window=2", "prune.eb_epsilon=1",
            f"prune.early_bird={str(on).lower()}"]
    out = tmp_path / "out"
    assert cli.main(["run", "--set", *sets, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    found = re.search(line, printed)
    assert found is not None, printed
    doc = json.loads((out / "results.json").read_text())
    assert int(found.group(1)) == doc["early_bird_epoch"]
    assert ("Early-Bird ticket" in printed) is on
    assert (doc["levels"][0]["epochs"] < 3) is on  # only a drawn ticket stops dense training
