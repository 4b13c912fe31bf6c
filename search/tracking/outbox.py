"""Riding out a tracking server that is briefly away: which errors to retry, and an outbox of tracking calls.

A head-node restart takes an `mlflow server` away for 7-12 s; a database failover, minutes. Trials and the
driver must neither crash nor lose records meanwhile, so every tracking call is an idempotent job put in an
`Outbox`. `drain(0)` tries the queued jobs once, in order, and keeps whatever the server could not take for
the next drain (training goes on); `drain(budget_s)` retries with exponential backoff for up to `budget_s`
seconds (a trial's end, the sweep's end). Only errors that say "the server is not there right now"
(connection refused or reset, timeouts, HTTP 5xx, 429, a locked sqlite file) are retried; anything else, a
403 or a bad parameter, is raised at once: it would fail the same way again.

`drain_soon()` runs `drain(0)` in the outbox's own background thread instead, so a trial's training never
waits for the server; a lock keeps the background and a caller's `drain` from running a job twice, and an
error the background met is raised at the next `drain_soon` or `drain`.

`TICKET_SEARCH_TRACKING_RETRY_S` (default 600 s) bounds the waiting at a trial's end and at the sweep's
end. MLflow's own HTTP retries (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, default 7 with backoff) come first and
ride out most short outages alone; the tests turn them off so that outages reach this code.

Example:
    >>> box = Outbox()
    >>> box.put(lambda: client.log_batch(run_id, metrics=batch), "metrics")
    >>> box.drain(0)                   # one try now; False if the server is away (the job stays queued)
    >>> box.drain(retry_budget_s())    # at the end: keep trying, then give up loudly
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

RETRY_ENV = "TICKET_SEARCH_TRACKING_RETRY_S"
# Test-only: seconds to sleep before each queued tracking call, so the race between a trial's background
# writes and Ray stopping the trial happens on every machine, not only on a slow one (tests/search/test_complete.py).
DELAY_ENV = "TICKET_SEARCH_TEST_TRACKING_DELAY_S"
HTTP_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
HTTP_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
DEFAULT_RETRY_S = 600.0  # 10 min: a server restart or a failover, not a lost head node
FIRST_DELAY_S = 0.5  # backoff: 0.5, 1, 2, 4, 8, 15, 15, ... seconds between tries
MAX_DELAY_S = 15.0
# MLflow's messages when the server is away or overloaded: a network-level failure ("failed with exception
# HTTPConnectionPool ... Connection refused"), an HTTP 5xx or 429, a sqlite file another process holds.
# "failed with error code 401/403" is NOT here: wrong credentials fail the same way every time.
TRANSIENT_TEXT = re.compile(r"failed with exception|error code (5\d\d|429)\b|max retries exceeded|connection "
                            r"(refused|reset|aborted)|timed out|remote end closed|database is locked", re.I)
# Network exceptions of the libraries under MLflow's client (requests, urllib3, http.client), by class name.
TRANSIENT_TYPES = {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "ChunkedEncodingError",
                   "ProtocolError", "NewConnectionError", "MaxRetryError", "RemoteDisconnected", "IncompleteRead"}
TEXT_MODULES = ("mlflow", "sqlalchemy", "requests", "urllib3")  # whose messages TRANSIENT_TEXT reads
TRANSIENT_CODES = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextlib.contextmanager
def quick_http(max_retries: int = 2, timeout_s: int = 10) -> Iterator[None]:
    """MLflow's HTTP client retrying at most `max_retries` times with `timeout_s` per request, inside the
    block: for a check before a sweep starts, which must answer in seconds, not after minutes of retries."""
    saved = {k: os.environ.get(k) for k in (HTTP_RETRIES_ENV, HTTP_TIMEOUT_ENV)}
    os.environ[HTTP_RETRIES_ENV] = str(min(max_retries, _int_env(HTTP_RETRIES_ENV, max_retries)))
    os.environ[HTTP_TIMEOUT_ENV] = str(min(timeout_s, _int_env(HTTP_TIMEOUT_ENV, timeout_s)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _int_env(key: str, default: int) -> int:
    try:
        return int(os.environ.get(key, default))
    except ValueError:
        return default


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed away for the whole retry budget; what could not be logged is named."""


def injected_delay_s() -> float:
    """The test-only delay before each outbox job (`TICKET_SEARCH_TEST_TRACKING_DELAY_S`; 0 = none)."""
    try:
        return max(0.0, float(os.environ.get(DELAY_ENV, "") or 0))
    except ValueError:
        return 0.0


def retry_budget_s() -> float:
    """Seconds to keep retrying at a trial's or the sweep's end (`TICKET_SEARCH_TRACKING_RETRY_S`)."""
    text = os.environ.get(RETRY_ENV, "").strip()
    try:
        return max(0.0, float(text)) if text else DEFAULT_RETRY_S
    except ValueError:
        return DEFAULT_RETRY_S


def transient(exc: BaseException) -> bool:
    """True when `exc` (or its cause) says the server is away or overloaded, so the same call may succeed."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:  # the cause chain: MlflowException <- requests <- urllib3
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if getattr(current, "error_code", None) in TRANSIENT_CODES:
            return True
        if type(current).__name__ in TRANSIENT_TYPES:
            return True
        if type(current).__module__.startswith(TEXT_MODULES) and TRANSIENT_TEXT.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def call_with_retry(fn: Callable[[], T], what: str, budget_s: float) -> T:
    """`fn()`, retried on transient errors with backoff for up to `budget_s` seconds."""
    deadline = time.monotonic() + budget_s
    delay = FIRST_DELAY_S
    while True:
        try:
            return fn()
        except Exception as e:
            if not transient(e) or time.monotonic() + delay > deadline:
                raise
            log.warning("tracking: %s failed (%s); retrying in %.1f s", what, _short(e), delay)
            time.sleep(delay)
            delay = min(2 * delay, MAX_DELAY_S)


@dataclass
class Outbox:
    """Idempotent tracking calls, run in order; the ones the server could not take wait for the next drain."""

    jobs: deque[tuple[str, Callable[[], None]]] = field(default_factory=deque)
    seconds: float = 0.0  # wall time spent inside the calls, successful or not (the load test reads it)
    last_error: str = ""
    delay_s: float = 0.0  # test-only: slept before each job (see DELAY_ENV)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one drain at a time
    _wake: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _closed: bool = False
    _error: Exception | None = None  # what the background drain met, raised to the owner at its next call

    @property
    def pending(self) -> int:
        return len(self.jobs)

    def put(self, job: Callable[[], None], what: str) -> None:
        self.jobs.append((what, job))

    def drain_soon(self) -> None:
        """`drain(0)` in the background: the caller goes on at once. Raises what the last one met."""
        self._raise_background_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._background, name="tracking-outbox", daemon=True)
            self._thread.start()
        self._wake.set()

    def _background(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            try:
                self.drain(0)
            except Exception as e:  # noqa: BLE001 - handed to the owner's thread, which decides
                self._error = e

    def _raise_background_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Stop the background thread (after the drain it is in, if any); queued jobs stay queued."""
        self._closed = True
        self._wake.set()

    def drain(self, budget_s: float = 0.0, *, strict: bool = False) -> bool:
        """Run the queued jobs in order; True once all ran. Transient failures are retried with backoff
        while `budget_s` lasts (0: one try, then return False); any other error is raised. Waits for a
        background drain in progress first (up to `budget_s`; False if that drain is still stuck then).
        `strict`: start no job once `budget_s` has passed either (a trial Tune stopped has seconds to go)."""
        began = time.monotonic()
        if not self._lock.acquire(timeout=budget_s if budget_s > 0 else -1):
            return False
        try:
            if threading.current_thread() is not self._thread:
                self._error = None  # the job that failed is still queued: it fails again here, or succeeds
            return self._drain(budget_s - (time.monotonic() - began), strict)
        finally:
            self._lock.release()

    def _drain(self, budget_s: float, strict: bool = False) -> bool:
        deadline = time.monotonic() + budget_s
        delay = FIRST_DELAY_S
        while self.jobs:
            if strict and time.monotonic() >= deadline:
                return False
            what, job = self.jobs[0]
            if self.delay_s:
                time.sleep(self.delay_s)
            began = time.perf_counter()
            try:
                job()
            except Exception as e:
                self.seconds += time.perf_counter() - began
                if not transient(e):
                    raise
                self.last_error = f"{what}: {_short(e)}"
                if time.monotonic() + delay > deadline:
                    return False
                log.warning("tracking: %s; %d call(s) queued, retrying in %.1f s", self.last_error,
                            len(self.jobs), delay)
                time.sleep(delay)
                delay = min(2 * delay, MAX_DELAY_S)
                continue
            self.seconds += time.perf_counter() - began
            self.jobs.popleft()
            delay = FIRST_DELAY_S
        return True

    def describe(self) -> str:
        """What is still queued, for an error message: '3 calls (ticket run L02-ticket, ...)'."""
        names = [what for what, _ in self.jobs]
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return f"{len(names)} call(s) ({shown}); last error: {self.last_error or 'none'}"


def _short(exc: BaseException) -> str:
    """The first line of an error, cut to 200 characters (MLflow repeats whole URLs and tracebacks)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first[:200]}"
