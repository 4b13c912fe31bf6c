"""The `ticket-search` command line: parse, dispatch to one verb module, turn user mistakes into exit 2.

A user mistake (unknown key, bad value, missing file or dataset) prints one line `error: ...` and
exits with code 2: no traceback. Anything else is a bug and keeps its traceback.
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
    run = sub.add_parser("run", help="one ticket search on this machine, no Ray")
    run.add_argument("ticket", nargs="?", help="TOML file with [data]/[model]/[train]/[prune] keys")
    run.add_argument("--set", dest="sets", nargs="+", action="extend", metavar="KEY=VALUE",
                     help="override keys, e.g. --set prune.rate=0.5 prune.controls=shuffle,reinit")
    run.add_argument("--out", help="write results.json, masks/ and a resumable checkpoint here")
    run.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    from search import querycmd, sweepcmd

    sweepcmd.add_parsers(sub)
    querycmd.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from search import querycmd, sweepcmd
    from search.runcmd import run_command

    verbs = {"run": run_command, "sweep": sweepcmd.sweep_command, "resume": sweepcmd.resume_command,
             "best": querycmd.best_command, "export": querycmd.export_command,
             "compare": querycmd.compare_command, "plot": querycmd.plot_command}
    return verbs[args.verb](args)


if __name__ == "__main__":
    raise SystemExit(main())
