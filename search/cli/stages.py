"""`ticket-search stages`: what a sweep's stage store holds, and pruning the entries no trial has used lately.

Namespace attributes read (from `add_parsers`): root, store, prune_unused, dry_run. The work is
trainables/io/stagegc.py's (no torch: the verb answers in a directory walk).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
from typing import Any

from search.cli.console import console as make_console
from search.sweep.storage import DEFAULT_ROOT
from trainables import paths
from trainables.typed import ConfigError


def add_parsers(sub: Any) -> None:
    """Add `stages` to an argparse subparsers object (`handler` = function)."""
    st = sub.add_parser("stages", help="what the stage store of trained levels holds; --prune-unused DAYS "
                                       "removes the entries no trial loaded for that long")
    st.set_defaults(handler=stages_command)
    st.add_argument("--root", default=DEFAULT_ROOT,
                    help=f"the sweeps' storage root; the store is <root>/{paths.STAGES_DIR} (default: {DEFAULT_ROOT})")
    st.add_argument("--store", default=None, help="the store's folder, where a sweep set `[storage] stages`")
    st.add_argument("--prune-unused", type=float, default=None, metavar="DAYS",
                    help="remove the entries not filed or loaded for DAYS days (0: all), and temporary "
                         "folders a crashed writer left; a trial needing one trains it again")
    st.add_argument("--dry-run", action="store_true", help="with --prune-unused: list, remove nothing")


def stages_command(args: argparse.Namespace) -> int:
    from trainables.io import stagegc

    store = args.store or os.path.join(args.root, paths.STAGES_DIR)
    if not os.path.isdir(store):
        raise ConfigError(f"stages: no stage store at {store} (a sweep's is <storage.root>/{paths.STAGES_DIR}; "
                          "--root or --store names another)")
    days = args.prune_unused
    if days is not None and not (math.isfinite(days) and days >= 0):
        raise ConfigError(f"stages: --prune-unused {days:g} is not a number of days >= 0")
    if args.dry_run and days is None:
        raise ConfigError("stages: --dry-run goes with --prune-unused DAYS (what would be removed)")
    console = make_console()
    found = stagegc.survey(store)
    used = [e.last_used for e in found.entries]
    span = f"; last used {_when(min(used))} .. {_when(max(used))}" if used else ""
    console.print(f"stage store {store}: {len(found.entries)} entries, {_size(found.size)}{span}")
    if found.temporary or found.leases:
        console.print(f"  {len(found.temporary)} temporary folder(s) (being written, or left by a crash), "
                      f"{found.leases} lease(s) held (levels being trained now)")
    if days is None:
        return 0
    pruned = stagegc.prune(store, days * stagegc.DAY_S, dry_run=args.dry_run, found=found)
    verb = "would remove" if args.dry_run else "removed"
    if args.dry_run:
        for e in pruned.entries:
            console.print(f"  {e.folder.name}  {_size(e.size)}  last used {_when(e.last_used)}")
    console.print(f"{verb} {len(pruned.entries)} entries unused for {days:g} day(s) and "
                  f"{len(pruned.temporary)} stale temporary folder(s): {_size(pruned.freed)}")
    return 0


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(n: int) -> str:
    x = float(n)
    for unit in ("B", "KB", "MB"):
        if x < 1000:
            return f"{x:.0f} B" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1000
    return f"{x:.1f} GB"
