"""Shared test setup: quiet, fast, offline Ray; small tickets that train in seconds on 2 CPU cores."""

from __future__ import annotations

import os

# Before anything imports ray: no auth token, no usage stats, no uv runtime env (STACK.md).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One real local Ray for the whole session: 2 CPUs and one logical GPU (for fractional packing)."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


# The torch thread count of the small-model tests (the `one_thread` fixture): 1 unless
# TICKET_SEARCH_TEST_THREADS says otherwise. `make test-kernels` runs the science tests with 1 and 2, since
# a second thread may split a reduction differently (DESIGN.md section 9).
TEST_THREADS = int(os.environ.get("TICKET_SEARCH_TEST_THREADS", "1"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """TEST_THREADS torch intra-op threads (one by default) for the test, restored after. Small models
    (language models, policies, the science test's MLP) gain nothing from a second thread on 2 cores, and on
    a busy machine each operation waits for the slower thread: the CartPole science test took 36 s on one
    thread and 13 min on two there, with the same figures."""
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(before)
