"""The `ticket-search` command line: parse, dispatch to one verb module, turn user mistakes into exit 2.

Each verb family is one module here (run.py: `run`; sweep.py: `sweep`, `resume`, `dashboard`; results.py:
`best`, `export`, `compare`, `plot`; confirm.py: `confirm`; stages.py: `stages`) whose `add_parsers` adds its
subcommands and sets each one's `handler`; `main` calls it. A new verb is one function and one subparser in
its family's module.

Start-up imports no torch, Ray, MLflow or Optuna (`--help` of any verb answers in about 0.1 s): each verb
imports what it needs inside its handler, and `trainables` loads its registries on first need.

A user mistake (unknown key, bad value, missing file or dataset) prints one line `error: ...` and
exits with code 2: no traceback, and nothing started (sweeps check everything before Ray starts).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trainables.typed import ConfigError

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ticket-search",
                                description="Find lottery tickets: one search locally, or sweeps on Ray.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    from search.cli import confirm, results, run, stages, sweep

    for family in (run, sweep, results, confirm, stages):
        family.add_parsers(sub)
    return p


def version() -> str:
    """The installed distribution's version (a source tree that was never installed says so)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("ticket-search")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def one_line(text: str) -> str:
    """`text` on one printable line: a value quoted from hostile input cannot break it, or the terminal
    (newlines, \\u2028, escape sequences and other control characters are written as escapes)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


if __name__ == "__main__":
    raise SystemExit(main())
