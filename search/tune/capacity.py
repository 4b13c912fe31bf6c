"""Whether a sweep's trials fit the Ray cluster: checked once the cluster is known, before any trial starts.

Ray queues a trial that asks for more CPUs or GPUs than any node offers and warns about it every minute,
forever: a 4-CPU trial on a 2-core laptop started nothing in 15 minutes. A trial runs on one node, so
`fit` compares `resources.cpu`/`resources.gpu` with each alive node (`ray.nodes()`), not with the
cluster's total, then:

- on a cluster that cannot grow, fails with one line naming what a trial asks and what the largest node
  has. That is the local Ray a sweep starts (`storage.ray_address` empty), or an existing cluster whose
  autoscaler runs Ray's read-only provider, which only mirrors the nodes started by hand;
- on a cluster whose autoscaler may add nodes (started by `ray up` or KubeRay), or one that does not say,
  warns in one line: the node may come.

A `--smoke` sweep on a cluster that cannot grow is first fitted to it: CPUs capped at the largest node's,
GPUs dropped when no node has one (each change said in one line), so any sweep's laptop check starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import ray

from search.sweep.file import Sweep
from trainables.config import ConfigError

log = logging.getLogger(__name__)

Node = tuple[float, float]  # (CPU, GPU) of one alive node


def fit(sweep: Sweep) -> Sweep:
    """The sweep, fitted to the connected cluster when `--smoke` asks; ConfigError when no trial could
    ever start on it (see the module docstring)."""
    nodes = alive_nodes()
    grows = may_grow(sweep.ray_address)
    if sweep.smoke and not grows:
        sweep = fit_smoke(sweep, nodes)
    problem = shortfall(sweep, nodes)
    if problem is None:
        return sweep
    if not grows:
        raise ConfigError(f"resources: {problem}; lower resources.cpu/resources.gpu (or add nodes)")
    log.warning("resources: %s; trials wait until the autoscaler adds a node that has them", problem)
    return sweep


def alive_nodes() -> list[Node]:
    return [(float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
            for n in ray.nodes() if n.get("Alive")]


def shortfall(sweep: Sweep, nodes: list[Node]) -> str | None:
    """None when some node can run one trial; else what a trial asks and what the largest node has."""
    if any(cpu >= sweep.cpu and gpu >= sweep.gpu for cpu, gpu in nodes):
        return None
    cpu, gpu = max(nodes, default=(0.0, 0.0))
    return (f"each trial asks for {sweep.cpu:g} CPU and {sweep.gpu:g} GPU, but the largest node of this Ray "
            f"cluster has {cpu:g} CPU and {gpu:g} GPU")


def fit_smoke(sweep: Sweep, nodes: list[Node]) -> Sweep:
    """A smoke sweep's trials sized to the cluster: at most the largest node's CPUs (when it has any), no
    GPU when no node has one, and no more GPUs than a node has."""
    most_cpu, most_gpu = max((c for c, _ in nodes), default=0.0), max((g for _, g in nodes), default=0.0)
    changes: dict[str, float] = {}
    if 0 < most_cpu < sweep.cpu:
        changes["cpu"] = most_cpu
    if sweep.gpu > most_gpu:
        changes["gpu"] = most_gpu if most_gpu >= 1 else 0.0  # a fraction only of one whole GPU
    for attr, value in changes.items():
        log.warning("--smoke: resources.%s %g -> %g to fit this Ray cluster (its largest node has %g %s)",
                    attr, getattr(sweep, attr), value, most_cpu if attr == "cpu" else most_gpu, attr.upper())
    return dataclasses.replace(sweep, cpu=changes.get("cpu", sweep.cpu), gpu=changes.get("gpu", sweep.gpu))


def may_grow(ray_address: str) -> bool:
    """Whether nodes may join the cluster while trials wait. A local Ray (`ray_address` empty) has no
    autoscaler, unless this process had joined a cluster that says it has one; an existing cluster may
    grow unless Ray says it cannot (`autoscaler_grows`)."""
    says = autoscaler_grows()
    return says is True if not ray_address else says is not False


def autoscaler_grows() -> bool | None:
    """What Ray says about adding nodes: True for the v2 autoscaler; for the v1 monitor, False when it runs
    the read-only provider (each node mirrored as its own type `node_<id>`: nodes started by hand, a
    local Ray) and True when its node types come from a cluster config; None when Ray does not say (the
    monitor has not reported yet, or the API changed)."""
    try:
        from ray._private import ray_constants
        from ray.autoscaler.v2.utils import is_autoscaler_v2
        from ray.experimental.internal_kv import _internal_kv_get

        if is_autoscaler_v2(fetch_from_server=True):
            return True
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return grows_from_status(json.loads(raw)) if raw else None
    except Exception:  # noqa: BLE001 - private Ray state: when it cannot be read, Ray "does not say"
        log.debug("autoscaler state unreadable", exc_info=True)
        return None


def grows_from_status(status: dict[str, Any]) -> bool | None:
    """From the v1 monitor's status (what `ray status` reads): do its node types mirror the nodes?"""
    mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    if not mapping:
        return None
    return any(kind != f"node_{node}" for node, kind in mapping.items())
