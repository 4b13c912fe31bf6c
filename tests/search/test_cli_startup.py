"""The command line starts without the heavy libraries: `--help` of every verb and `--version` never import
torch, Ray, MLflow or Optuna (each verb imports them inside its handler). Checked in a fresh interpreter,
by what `sys.modules` holds, not by a clock."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

HEAVY = ("torch", "ray", "mlflow", "optuna", "matplotlib", "pandas")

PROBE = """
import contextlib, io, sys
import search.cli
from search.cli import _parser
p = _parser()
verbs = p._subparsers._group_actions[0].choices
for name, sub in verbs.items():
    assert "usage" in sub.format_help(), name
for argv in (["--help"], ["--version"], *([v, "--help"] for v in verbs)):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            search.cli.main(argv)
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
print(",".join(sorted(verbs)))
print(",".join(m for m in %r if m in sys.modules))
"""


def test_cli_start_up_imports_no_heavy_library() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,)], capture_output=True, text=True, timeout=60,
                         check=True).stdout.splitlines()
    assert {"run", "sweep", "best", "dashboard"} <= set(out[0].split(","))
    assert out[1] == "", f"imported at CLI start-up: {out[1]}"


def test_version_is_the_installed_distribution() -> None:
    out = subprocess.run([sys.executable, "-m", "search", "--version"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == f"ticket-search {version('ticket-search')}"
