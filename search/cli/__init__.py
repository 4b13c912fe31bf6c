"""The `ticket-search` command line: parse, dispatch to one verb module, turn user mistakes into exit 2.

A user mistake (unknown key, bad value, missing file or dataset) prints one line `error: ...` and
exits with code 2: no traceback, and nothing started (sweeps check everything before Ray starts).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trainables.config import ConfigError

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ticket-search",
                                description="Find lottery tickets: one search locally, or sweeps on Ray.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    from search.cli import results as querycmd
    from search.cli import run as runcmd
    from search.cli import sweep as sweepcmd

    runcmd.add_parser(sub)
    sweepcmd.add_parsers(sub)
    querycmd.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
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


def _dispatch(args: argparse.Namespace) -> int:
    from search.cli import results as querycmd
    from search.cli import sweep as sweepcmd
    from search.cli.run import run_command

    verbs = {"run": run_command, "sweep": sweepcmd.sweep_command, "resume": sweepcmd.resume_command,
             "best": querycmd.best_command, "export": querycmd.export_command,
             "compare": querycmd.compare_command, "plot": querycmd.plot_command}
    return verbs[args.verb](args)


if __name__ == "__main__":
    raise SystemExit(main())
