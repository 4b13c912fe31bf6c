"""The CLI's console: tables keep their columns when piped (rich would squeeze them to 80)."""

from __future__ import annotations

import argparse
import math
import sys

from rich.console import Console

PIPED_WIDTH = 160  # characters; wide enough for a full run id plus the metric columns


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPED_WIDTH)


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage with `digits` decimals; "-" for a missing value."""
    return "-" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}%"


def tracking_option(p: argparse.ArgumentParser) -> None:
    """The `--tracking-uri` option every reading verb takes."""
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db)")
