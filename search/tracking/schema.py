"""The MLflow data model, in one place: every tag, param, metric and artifact name writers and queries use.

experiment = sweep name
  parent run  (tags kind=sweep, sweep=<name>)
    trial run (tags kind=trial, trial=<Ray trial id>; params = flat ticket keys; metrics per evaluation,
               step = cumulative training iteration)
      ticket run per level and member (tags kind=ticket, member=ticket|<control>, level, trial, and
               dataset/model/scorer/method/sweep; params = flat keys; metrics TICKET_METRICS;
               artifacts mask.safetensors + density.json; a ticket run also carries CONTROL_SCORE per control)

"Best tickets" is then one plain query any MLflow user can write:
    mlflow.search_runs(experiment_names=["digits"],
                       filter_string="tags.kind = 'ticket' and tags.member = 'ticket' and metrics.density <= 0.2",
                       order_by=["metrics.val_score DESC"])
"""

from __future__ import annotations

from trainables import config, paths

KIND = "kind"  # sweep | trial | ticket
SWEEP, TRIAL, TICKET = "sweep", "trial", "ticket"
TAG_SWEEP = "sweep"
TAG_TRIAL = "trial"
TAG_MEMBER = "member"  # MEMBER_TICKET or the control's name
MEMBER_TICKET = config.TICKET  # the tag value of the ticket itself (trainables' member name)
TAG_LEVEL = "level"
TAG_KEY = "ticket_key"  # <trial>/<level>/<member>: the identity that makes a ticket run exactly-once
TAG_TICKET_ID = "ticket_id"  # Ticket.id of the trial's config
TAG_SCORE = "score"  # what val_score measures: accuracy, -perplexity, mean return (a query shows it without torch)
TAG_STATUS_REASON = "status_reason"  # why a trial failed or was stopped
PARENT_TAG = "mlflow.parentRunId"  # MLflow nests a run under another by it (trial in sweep, ticket in trial)
DESCRIBING = {"dataset": "data.name", "model": "model.name", "scorer": "prune.scorer",
              "method": "prune.method", "structure": "prune.structure"}  # tag -> flat key it copies
TICKET_METRICS = ("density", "sparsity", "val_acc", "test_acc", "val_score", "test_score", "val_loss",
                  "test_loss", "best_val_acc", "val_acc_std", "test_acc_std", "level", "early_stop_iter",
                  "collapsed", "epochs", "iterations", "wall_s", "reused_stage")
# Over replicates (trainables/stats.py), on ticket runs and in Ray results: <score>_mean, _std, _n, _ci95 for
# every score of trainables.stats.SCORES; paired margins: margin_<control>_<score>_<suffix> on the ticket run,
# margin_<score>_<suffix> on the control's own run. `confirm` writes the same names prefixed CONFIRMED.
MARGIN = "margin"
CONFIRMED = "confirmed"  # tag "true" on a confirmed ticket run; prefix of its confirmed metrics
CONFIRM_KIND = "confirm"  # kind of the runs `confirm` logs (children of the ticket run)
TAG_SEEDS = "confirmed_seeds"  # the train.seed values a ticket was confirmed on, comma-separated


def margin_metric(control: str, name: str) -> str:
    """`margin_<control>_<name>` (a ticket run), or `margin_<name>` with control "" (a control's own run)."""
    return f"{MARGIN}_{control}_{name}" if control else f"{MARGIN}_{name}"
CONTROL_SCORE = "val_score_{control}"  # ticket-run metric: each control's val_score, so margins need no query
LATENCY = "latency_ms"  # ticket run: batch-1 CPU latency of the exported ticket (objective latency_pareto)
MASK_INFORMATION = "mask_information"  # ticket run: 1 = the mask beats `shuffle` (95% interval above 0), else 0
# trial run, per evaluation; epochs_trained < epochs_total where levels came from the stage store
EPOCH_METRICS = ("val_acc", "val_loss", "val_score", "density", "epochs_total", "epochs_trained", "level")
TRACKING_SECONDS = "tracking_s"  # trial-run metric: wall seconds the trial spent in tracking calls
PARAM_OBJECTIVE = "objective"  # parent-run params the queries read back (search/results/query.py)
PARAM_TARGET = "target_density"
PARAM_MAX_INSTABILITY = "max_instability"  # [objective] max_instability: best lists only tickets this stable
INSTABILITY_METRICS = ("instability_val", "instability_test")  # ticket runs of prune.instability trials
# Artifacts carry the engine's file names (trainables/paths.py): an exported ticket is these files.
MASK_ARTIFACT = paths.MASK_FILE  # ticket run; further replicates as paths.replicate_mask(r)
DENSITY_ARTIFACT = paths.DENSITY_FILE  # ticket run
REWIND_ARTIFACT = paths.REWIND_FILE  # trial run: the weights the ticket restarts from
PICTURE_ARTIFACT = "layer_density.svg"  # ticket run and its logged model: per-layer density, a bar chart
TAG_REWIND = "rewind_weights"  # logged-model tag: runs:/<trial run>/<REWIND_ARTIFACT>, the weights it restarts from
TRAINED_ARTIFACT = paths.TRAINED_FILE  # ticket run: its trained weights (replicate 0), kept positions only
PLOT_DIR, PLOT_ARTIFACT = "plots", "score_vs_density.png"  # parent run (search/results/plot.py)
PAGE = 1000  # MLflow's largest search page
