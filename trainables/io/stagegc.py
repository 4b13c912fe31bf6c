"""What a stage store holds, and removing the entries no trial has used for a while (`ticket-search stages`).

An entry's last use is the modification time of its `stage.json`: written when the entry is filed, bumped
each time a trial loads it (StageStore.load). Pruning removes an entry by renaming its folder aside (one
atomic step: a trial reading it at that moment finds it whole or not at all, and a missing entry is only
trained again) and then deleting the renamed folder. Temporary folders (`.tmp-*`: an entry being written, or
left by a crashed writer, or a removal cut short) are removed once they are older than `TEMP_AGE_S`; a live
writer renames its own within seconds. Leases are left alone: they are the producers' business and heal
themselves (stagestore.py).

Reads no tensors and imports no torch: the survey of a store of thousands of entries takes a directory walk.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from trainables import paths

TEMP_AGE_S = 3600.0  # a temporary folder older than this is a crashed writer's, never a live one's
DAY_S = 86400.0


@dataclass(frozen=True)
class Stored:
    """One entry: its folder, its size on disk in bytes, when it was last filed or loaded (epoch seconds)."""

    folder: Path
    size: int
    last_used: float


@dataclass
class Survey:
    """A store's entries, its temporary folders (path, size, age in s) and the number of leases held now."""

    entries: list[Stored] = field(default_factory=list)
    temporary: list[tuple[Path, int, float]] = field(default_factory=list)
    leases: int = 0

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries) + sum(size for _, size, _ in self.temporary)


@dataclass
class Pruned:
    """What a prune removed (or, dry, would remove)."""

    entries: list[Stored] = field(default_factory=list)
    temporary: list[Path] = field(default_factory=list)
    freed: int = 0


def survey(root: str | Path, now: float | None = None) -> Survey:
    """Every entry, temporary folder and lease under `root` (a folder that is not a store holds none)."""
    now = time.time() if now is None else now
    out = Survey()
    for shard in _dirs(Path(root)):
        for item in _dirs(shard, files=True):
            name = item.name
            if name.endswith(paths.STAGE_LEASE_SUFFIX):
                out.leases += 1
            elif name.startswith(paths.STAGE_TMP_PREFIX) and item.is_dir():
                stat = _stat(item)
                out.temporary.append((item, _size(item), now - (stat.st_mtime if stat else now)))
            elif item.is_dir():
                used = _stat(item / paths.STAGE_JSON)
                if used is not None:  # an entry folder without its document is not one (removed meanwhile)
                    out.entries.append(Stored(item, _size(item), used.st_mtime))
    return out


def prune(root: str | Path, unused_s: float, *, dry_run: bool = False, now: float | None = None,
          found: Survey | None = None) -> Pruned:
    """Remove the entries not used for `unused_s` seconds and the temporary folders older than TEMP_AGE_S
    (`found`: a survey of `root` just taken, so the store is not walked twice)."""
    now = time.time() if now is None else now
    found = survey(root, now) if found is None else found
    out = Pruned()
    for entry in found.entries:
        if now - entry.last_used >= unused_s:
            out.entries.append(entry)
            out.freed += entry.size
            if not dry_run:
                _remove(entry.folder)
    for folder, size, age in found.temporary:
        if age >= TEMP_AGE_S:
            out.temporary.append(folder)
            out.freed += size
            if not dry_run:
                shutil.rmtree(folder, ignore_errors=True)
    return out


def _remove(folder: Path) -> None:
    """Rename aside (atomic: readers see the entry whole or gone), then delete."""
    aside = folder.parent / f"{paths.STAGE_TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        os.rename(folder, aside)
    except OSError:
        return  # removed by another prune meanwhile
    shutil.rmtree(aside, ignore_errors=True)


def _dirs(folder: Path, files: bool = False) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if files or p.is_dir())
    except OSError:
        return []


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _size(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            stat = _stat(Path(dirpath) / name)
            total += stat.st_size if stat else 0
    return total
