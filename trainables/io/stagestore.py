"""A content-addressed store of trained states, shared by the trials of a sweep and by later sweeps.

An entry is a JSON document plus named tensors, filed under a key (a sha256 of everything that determined
it, trainables/reuse.py) as the folder `<root>/<key[:2]>/<key>/` holding `stage.json` and
`stage.safetensors` (trainables/paths.py). Entries are written once: both files go into a fresh temporary
folder beside it, which is then renamed into place, so an entry that exists is complete, and a crash leaves
at most a stray `.tmp-*` folder, never a half entry. Nothing is pickled. Loading an entry bumps the
modification time of its `stage.json`: its last use, by which `ticket-search stages --prune-unused DAYS`
removes what no trial has needed for a while (stagegc.py).

`obtain(key, produce)` loads the entry, or produces and files it. Trials that need the same entry at once
train it once: the producer holds a lease, the file `<key>.lease` made with O_CREAT|O_EXCL (atomic on a
local disk and on NFS v3+), whose modification time a heartbeat thread bumps every `lease_s / 4` seconds;
the others poll until the entry appears. A waiter that sees the lease file unchanged for `lease_s` of its
own clock (no comparison with another node's clock) takes the lease over: the holder crashed. It does so at
once where the holder is provably dead: an earlier attempt of the same trial (the lease names its owner) or a
process of this host that is gone. Correctness
never rests on the lease: two producers of one key write the same content and the second rename is a no-op.

Test-only: the environment variable TICKET_SEARCH_TEST_STAGE_DELAY (seconds) holds a producer inside its
lease before it trains, so tests can force two trials to meet.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainables import paths

DELAY_ENV = "TICKET_SEARCH_TEST_STAGE_DELAY"
LEASE_S = 120.0  # s without a heartbeat after which a lease counts as abandoned
POLL_S = 0.2  # s between a waiter's looks at the entry and the lease
Tensors = dict[str, torch.Tensor]
Entry = tuple[dict[str, Any], Tensors]


class StageStore:
    """Entries under `root`; see the module docstring. `lease_s`: how long a silent lease lives. `owner`: who
    takes leases (a trial id): a lease held by the same owner is an earlier attempt's, dead once the owner runs
    again (Ray restarts a trial only after it failed), so it is taken over at once, as is one whose holder
    process on this host is gone; only a holder on another host is waited out for `lease_s`."""

    def __init__(self, root: str | Path, *, lease_s: float = LEASE_S, poll_s: float = POLL_S,
                 owner: str = "") -> None:
        self.root = Path(root)
        self.lease_s, self.poll_s = lease_s, poll_s
        self.owner = "".join(c for c in owner if c.isalnum() or c in "-_") or "-"

    def folder(self, key: str) -> Path:
        if not key.isalnum():  # a hex digest: never a path elsewhere
            raise ValueError(f"stage key {key[:80]!r} is not a digest")
        return self.root / key[:2] / key

    def load(self, key: str) -> Entry | None:
        """The entry under `key`, or None when there is none (an unreadable one counts as none)."""
        folder = self.folder(key)
        try:
            doc = json.loads((folder / paths.STAGE_JSON).read_text())
            tensors = load_file(str(folder / paths.STAGE_TENSORS))
        except (OSError, ValueError, SafetensorError):  # missing; or damaged by hand: produced again, renamed over it
            return None
        with contextlib.suppress(OSError):  # its last use, for pruning (stagegc.py); a read-only store keeps none
            os.utime(folder / paths.STAGE_JSON)
        return doc, tensors

    def save(self, key: str, doc: dict[str, Any], tensors: Tensors) -> None:
        """File an entry (no-op when one exists): write a temporary folder, rename it into place."""
        folder = self.folder(key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f"{paths.STAGE_TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / paths.STAGE_TENSORS))
            (tmp / paths.STAGE_JSON).write_text(json.dumps(doc))
            if self.load(key) is not None:
                return
            damaged = folder.parent / f"{paths.STAGE_TMP_PREFIX}{uuid.uuid4().hex}"
            with contextlib.suppress(FileNotFoundError):  # a damaged entry: moved aside, then replaced
                os.rename(folder, damaged)
            shutil.rmtree(damaged, ignore_errors=True)
            with contextlib.suppress(OSError):  # another producer renamed first: same content, keep theirs
                os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def obtain(self, key: str, produce: Callable[[], Entry]) -> tuple[Entry, bool]:
        """(the entry, True) when it was stored already or another process produced it meanwhile;
        (the entry, False) when this call produced it (under the lease)."""
        while True:
            found = self.load(key)
            if found is not None:
                return found, True
            with self.lease(key) as held:
                if not held:
                    continue  # the holder finished or was declared dead: look again
                found = self.load(key)  # produced between our look and our lease
                if found is not None:
                    return found, True
                delay = float(os.environ.get(DELAY_ENV, "0") or 0)
                if delay:
                    time.sleep(delay)
                entry = produce()
                self.save(key, *entry)
                return entry, False

    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[bool]:
        """Yield True holding the lease of `key`, or False after waiting out another holder. While it is held,
        a trial needing `key` waits (tests hold one to stop a trial at a level until they are ready)."""
        lease = self.folder(key).parent / f"{key}{paths.STAGE_LEASE_SUFFIX}"
        lease.parent.mkdir(parents=True, exist_ok=True)
        token = f"{socket.gethostname()} {os.getpid()} {self.owner} {uuid.uuid4().hex}"
        try:
            fd = os.open(lease, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._wait(lease, key)
            yield False
            return
        with os.fdopen(fd, "w") as f:
            f.write(token)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(lease, stop), daemon=True)
        beat.start()
        try:
            yield True
        finally:
            stop.set()
            beat.join()
            with contextlib.suppress(OSError):
                if lease.read_text() == token:  # ours still (not taken over as stale)
                    lease.unlink()

    def _heartbeat(self, lease: Path, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 4):
            with contextlib.suppress(OSError):
                os.utime(lease)

    def _wait(self, lease: Path, key: str) -> None:
        """Until the entry appears or the lease goes; a lease silent for `lease_s` is removed (stale)."""
        seen, since = _look(lease), time.monotonic()
        while seen is not None:
            time.sleep(self.poll_s)  # first, always: a damaged entry under a live lease must not spin
            if (self.folder(key) / paths.STAGE_JSON).exists():  # complete: entries are renamed into place
                return
            now = _look(lease)
            if now is not None and self._dead(now[1]):
                _break(lease, now)
                return
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= self.lease_s:
                _break(lease, seen)
                return

    def _dead(self, token: str) -> bool:
        """Whether the lease `token` names is provably abandoned: an earlier attempt of this owner, or a
        process of this host that no longer exists (not a pid reused by this very process)."""
        host, pid, owner, *_ = [*token.split(), "", "", ""]
        if self.owner != "-" and owner == self.owner:
            return True
        if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # exists, another user's
        return False


def _look(lease: Path) -> tuple[int, str] | None:
    """What a lease file shows (mtime in ns, holder token), or None when it is gone."""
    try:
        return lease.stat().st_mtime_ns, lease.read_text()
    except OSError:
        return None


def _break(lease: Path, seen: tuple[int, str]) -> None:
    """Remove a stale lease. Renamed aside first (atomic), then checked: a lease a faster waiter made anew in
    the meantime is linked back (os.link never replaces a file) rather than removed."""
    aside = lease.with_name(f"{lease.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(lease, aside)
    except OSError:
        return  # someone else broke it first
    try:
        if _look(aside) is not None and aside.read_text() != seen[1]:
            with contextlib.suppress(OSError):
                os.link(aside, lease)
    finally:
        aside.unlink(missing_ok=True)
