"""Finding and ending this machine's processes through /proc (Linux), for tests that kill Ray for real.

Only processes whose command line names a folder the test made are touched: never by a broad name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def ppid(pid: int) -> int:
    """The parent's pid, or -1 once the process is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
    return -1


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def naming(text: str) -> list[int]:
    """Live processes (not this one) whose command line contains `text`."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if pid != os.getpid() and alive(pid) and text in cmdline(pid)]


def kill_all(pids: list[int], timeout: float = 10) -> None:
    """SIGKILL each pid, then wait until they are gone (or `timeout` seconds)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
