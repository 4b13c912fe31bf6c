"""The tracking outbox: jobs run in order, in the background when asked, never twice, and errors reach the
trial's own thread. (Real servers going away are in test_faults.py; this is the mechanism alone.)"""

from __future__ import annotations

import threading
import time

import pytest

from search.tracking.outbox import Outbox


class Away(ConnectionError):
    """What a tracking call raises while the server restarts (a transient error)."""


def test_drain_soon_returns_at_once_and_runs_the_jobs_in_order_in_the_background() -> None:
    box, ran, release = Outbox(), [], threading.Event()
    box.put(lambda: (release.wait(5), ran.append(1)), "slow")
    box.put(lambda: ran.append(2), "next")
    began = time.monotonic()
    box.drain_soon()
    assert time.monotonic() - began < 0.5 and ran == []  # the caller (training) went on
    release.set()
    assert box.drain(5) and ran == [1, 2] and box.pending == 0
    box.close()


def test_a_job_never_runs_twice_when_the_final_drain_meets_a_background_one() -> None:
    box, calls, started, release = Outbox(), [], threading.Event(), threading.Event()

    def job() -> None:
        started.set()
        release.wait(5)
        calls.append("job")

    box.put(job, "job")
    box.drain_soon()
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    assert box.drain(5)  # waits for the background drain that holds the job, then finds nothing left
    assert calls == ["job"]
    box.close()


def test_a_server_away_keeps_the_job_queued_until_a_later_drain() -> None:
    box, state = Outbox(), {"up": False, "sent": 0}

    def send() -> None:
        if not state["up"]:
            raise Away("connection refused")
        state["sent"] += 1

    box.put(send, "metrics")
    box.drain_soon()
    deadline = time.monotonic() + 5
    while not box.last_error and time.monotonic() < deadline:
        time.sleep(0.01)
    assert box.pending == 1 and "connection refused" in box.last_error  # tried once, kept
    state["up"] = True
    assert box.drain(5) and state["sent"] == 1 and box.pending == 0
    box.close()


def test_an_error_met_in_the_background_is_raised_in_the_callers_thread() -> None:
    box = Outbox()

    def forbidden() -> None:
        raise PermissionError("403: wrong password")  # not transient: retrying cannot help

    box.put(forbidden, "ticket run")
    box.drain_soon()
    deadline = time.monotonic() + 5
    while box._error is None and time.monotonic() < deadline:  # noqa: SLF001 - waiting for the background
        time.sleep(0.01)
    with pytest.raises(PermissionError, match="wrong password"):
        box.drain_soon()  # the next level end
    with pytest.raises(PermissionError):
        box.drain(1)  # and the trial's end: the job is still queued, and fails again
    box.close()


def test_the_final_drain_gives_up_on_a_background_call_that_hangs() -> None:
    box, release = Outbox(), threading.Event()
    box.put(lambda: release.wait(10) and None, "hung call")
    box.drain_soon()
    time.sleep(0.1)
    began = time.monotonic()
    assert not box.drain(0.5)  # the trial's end does not wait past its budget
    assert 0.4 < time.monotonic() - began < 3
    release.set()
    box.close()
