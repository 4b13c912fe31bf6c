"""Is a ticket real? Retrain the ticket search that found it on new seeds and record what it scores.

`confirm_ticket(run_id, seeds=N)` reads the ticket run's config (its MLflow params), and runs that ticket
search again on this machine (the `ticket-search run` engine, no Ray) once per new seed: `train.seed` =
the original seed + 1 ... + N (initialisation, data order, scoring and control draws all change), one
replicate each, with the same controls, up to the ticket's level. Each seed's run is logged as a child of
the ticket run (`tags.kind = 'confirm'`, its own mask and metrics), and the ticket run gets the confirmed
figures over the N seeds, named as everywhere else with the prefix `confirmed_` (search/tracking/schema.py):
`confirmed_val_score_mean/_std/_n/_ci95`, ..., and the paired margins `confirmed_margin_<control>_val_score_*`
(seed s's ticket minus seed s's control); plus the tags `confirmed = true` and `confirmed_seeds`.

Example:
    >>> c = confirm_ticket("3f0c...", seeds=3)
    >>> c.summary("val_score").mean, c.summary("val_score").ci95
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from search.results.query import client_for, default_tracking_uri, get_ticket_run
from search.tracking import schema as S
from search.tracking import store
from trainables import stats
from trainables.config import ConfigError, Ticket
from trainables.io.results import LevelResult, write_results
from trainables.lottery import Lottery

MAX_SEEDS = 100
SeedCallback = Callable[[int, LevelResult], None]


@dataclass
class Confirmation:
    """What `confirm_ticket` found: per seed the level result, and the figures logged on the ticket run."""

    run_id: str
    seeds: list[int]
    child_run_ids: list[str] = field(default_factory=list)
    results: list[LevelResult] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # without the `confirmed_` prefix

    def summary(self, score: str = "val_score") -> stats.Summary:
        s = stats.Summary.from_flat(self.metrics, score)
        assert s is not None, score
        return s

    def margin(self, control: str, score: str = "val_score") -> stats.Summary | None:
        return stats.Summary.from_flat(self.metrics, S.margin_metric(control, score))


def confirming_ticket(ticket: Ticket, level: int, seed: int) -> Ticket:
    """The search that found a ticket at `level`, on `seed`, one replicate, stopping at that level."""
    prune = replace(ticket.prune, replicates=1)
    if prune.method == "imp":
        prune = replace(prune, levels=level, target_density=None)
    return replace(ticket, prune=prune, train=replace(ticket.train, seed=seed))


def aggregate(results: list[LevelResult]) -> dict[str, float]:
    """The confirmed figures over seeds: each score's statistics and each control's paired margin."""
    out: dict[str, float] = {}
    for key in (*stats.SCORES, "density"):
        out.update(stats.summary(getattr(r, key) for r in results).flat(key))
    for control in results[0].controls:
        for key in ("val_score", "test_score"):
            margin = stats.paired([getattr(r, key) for r in results], [r.controls[control][key] for r in results])
            out.update(margin.flat(S.margin_metric(control, key)))
    return out


def confirm_ticket(run_id: str, seeds: int, tracking_uri: str | None = None, *, out: str | Path | None = None,
                   on_seed: SeedCallback | None = None) -> Confirmation:
    """Retrain the ticket run `run_id`'s search on `seeds` new seeds, log and return the confirmation.
    `out`: also write each seed's results.json and masks under `out/seed_<S>/`."""
    if not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"--seeds: need a count from 1 to {MAX_SEEDS}, got {seeds!r}")
    uri = tracking_uri or default_tracking_uri()
    client = client_for(uri)
    run = get_ticket_run(client, run_id)  # ConfigError for a bad id, an unknown run, a non-ticket run
    level = int(run.data.tags.get(S.TAG_LEVEL, run.data.metrics.get("level", 0)))
    ticket = Ticket.from_flat(dict(run.data.params))
    if ticket.prune.init_mask.startswith("runs:"):
        from search.results.transfer import resolve_init_mask

        ticket = resolve_init_mask(ticket, uri)
    first = ticket.train.seed + 1
    found = Confirmation(run_id, list(range(first, first + seeds)))
    for seed in found.seeds:
        t = confirming_ticket(ticket, level, seed)
        lottery = Lottery(t)
        results = list(lottery.run())
        result = results[-1]
        if out is not None:
            write_results(Path(out) / f"seed_{seed}", t.flat(), results, lottery.state.early_bird_epoch)
        found.results.append(result)
        found.child_run_ids.append(_log_seed(client, run_id, run.info.experiment_id, run.data.tags, t, result))
        if on_seed is not None:
            on_seed(seed, result)
    found.metrics = aggregate(found.results)
    now = int(time.time() * 1000)
    store.log_metrics(client, run_id, [Metric(f"{S.CONFIRMED}_{k}", float(v), now, 0)
                                       for k, v in found.metrics.items()])
    client.set_tag(run_id, S.TAG_SEEDS, ",".join(map(str, found.seeds)))
    client.set_tag(run_id, S.CONFIRMED, "true")  # last: a confirmed ticket has all its figures
    return found


def _log_seed(client: MlflowClient, ticket_run: str, exp_id: str, tags: dict[str, str], t: Ticket,
              result: LevelResult) -> str:
    """One seed's run, a child of the ticket run: params, the ticket's metrics, each control's score, mask."""
    keep = {k: tags[k] for k in (S.TAG_SWEEP, *S.DESCRIBING) if k in tags}
    run_id: str = client.create_run(exp_id, run_name=f"confirm-seed{t.train.seed}", tags={
        **keep, S.PARENT_TAG: ticket_run, S.KIND: S.CONFIRM_KIND, S.TAG_LEVEL: str(result.level),
        "seed": str(t.train.seed)}).info.run_id
    now = int(time.time() * 1000)
    metrics = store.ticket_metrics(result, S.MEMBER_TICKET)
    for control, c in result.controls.items():
        metrics.update({f"{control}_{k}": v for k, v in c.items() if k in ("val_score", "test_score")})
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, result.level) for k, v in metrics.items()])
    store.log_params(client, run_id, t.flat())
    with tempfile.TemporaryDirectory(prefix="ticket-confirm-") as tmp:
        store.stage_mask_artifacts(Path(tmp), result)
        client.log_artifacts(run_id, tmp)
    client.set_terminated(run_id, "FINISHED")
    return run_id
