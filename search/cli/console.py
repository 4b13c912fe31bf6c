"""The CLI's console: tables keep their columns when piped (rich would squeeze them to 80)."""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 160  # characters; wide enough for a full run id plus the metric columns


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPED_WIDTH)
