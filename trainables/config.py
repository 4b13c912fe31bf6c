"""The one typed description of a ticket search: `Ticket` and its flat dotted keys.

`Ticket` (frozen dataclasses `data`, `model`, `train`, `prune`, `rl`) describes one ticket search completely.
`Ticket.flat()` gives dotted keys (`"prune.rate": 0.2`); `Ticket.from_flat(d)` rebuilds and re-types it
(MLflow params come back as strings; trainables/typed.py reads them), rejects unknown keys naming the valid
ones and validates ranges. The same keys are Ray's param_space constants, Optuna's parameter names, MLflow
params and `--set`.

Valid names (datasets, models, ...) are not listed here: each registry registers its own with `register_names`,
each task family its checks with `register_check`; every registry loads on the first need for them (LOADERS).
`ConfigError` is trainables.typed's, the error of every user mistake.

Example:
    >>> t = Ticket.from_flat({"prune.rate": "0.5", "model.name": "mlp"})
    >>> t.prune.rate, Ticket.from_flat(t.flat()) == t
    (0.5, True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from trainables.sections import CHOICES, DataConfig, ModelConfig, RLConfig, TrainConfig
from trainables.sections import help_field as _help
from trainables.typed import ConfigError, choice, coerce, did_you_mean, from_nested, in_range, optional_of

__all__ = ["DEFAULTS", "EB_STRUCTURES", "KEYS", "LEVELS_WITHOUT_TARGET", "LOADERS", "MAX_LEVELS", "METHODS",
           "OUTPUT_POOLS", "REWIND_ORDERS", "SCOPES", "SCORE_MODES", "SCORE_PER", "SECTIONS", "TICKET", "TYPES",
           "ConfigError", "DataConfig", "ModelConfig", "PruneConfig", "RLConfig", "Ticket", "TrainConfig", "choices",
           "from_nested", "help_text", "key_type", "register_check", "register_names", "validate"]

METHODS = ("imp", "init")  # the lottery's two searches (trainables/lottery.py)
SCOPES = ("global", "layer")  # where pruning ranks weights (trainables/pruning/masks.py)
OUTPUT_POOLS = ("own", "pooled")  # the output layer at its own rate, or ranked in the pool (SynFlow paper)
SCORE_MODES = ("eval", "train")  # BatchNorm statistics while scoring: running (references) or the batch's
SCORE_PER = ("class", "total")  # prune.score_examples counts per class or in all
REWIND_ORDERS = ("through", "restart")  # level 0 straight through k, or open_lth's: stop at k, fresh optimizer
EB_STRUCTURES = ("unstructured", "channel")  # Early-Bird masks of weights, or of BatchNorm channels
MAX_LEVELS = 1000  # the most IMP levels a search may ask for
LEVELS_WITHOUT_TARGET = 5  # prune.levels unset and no prune.target_density: the classic five levels
TICKET = "ticket"  # the member that is the ticket itself (replicate seeds too); a control is named after itself


@dataclass(frozen=True)
class PruneConfig:
    method: str = _help("imp: train, prune, rewind, repeat; init: prune at the rewind point, train once",
                        default="imp")
    scorer: str = _help(f"weight scorer: {CHOICES}", default="magnitude")
    scope: str = _help(f"rank weights across all layers or per layer: {', '.join(SCOPES)}",
                       default="global")
    structure: str = _help("unstructured, channel (output channels/neurons) or N:M (e.g. 2:4)", default="unstructured")
    rate: float = _help("fraction of the remaining weights removed per IMP level", default=0.2)
    # None = not given: as many levels as prune.target_density needs at prune.rate (trainables/pruning/schedule.py),
    # so they follow a sampled rate; without a target, LEVELS_WITHOUT_TARGET.
    levels: int | None = _help("number of IMP pruning levels after the dense level 0; unset: as many as "
                               f"prune.target_density needs ({LEVELS_WITHOUT_TARGET} without a target)",
                               default=None)
    target_density: float | None = _help(
        "density to reach, of all prunable weights (output layer included): IMP stops at the first level at "
        "or below it; init prunes straight to it",
        default=None)
    iterations: int = _help("scoring iterations for init (exponential schedule; SynFlow needs ~100)",
                            default=1)
    rewind_iter: int = _help("0 = reset to initialisation; k > 0 = rewind to iteration k", default=0)
    output_rate: float = _help("multiplier of the rate for the output layer; 0 = never prune it",
                               default=0.5)
    controls: tuple[str, ...] = _help(f"sanity controls trained beside the ticket: {CHOICES}", default=())
    replicates: int = _help("seeds per trial (metrics become mean and std)", default=1)
    bias: bool = _help("also prune biases", default=False)
    early_bird: bool = _help("draw the ticket when the Early-Bird mask distance settles", default=False)
    eb_epsilon: float = _help("Early-Bird: normalised Hamming distance threshold", default=0.1)
    eb_window: int = _help("Early-Bird: number of recent masks compared", default=5)
    init_mask: str = _help("mask file (or runs:/ URI via search) to start from: ticket transfer",
                           default="")
    instability: bool = _help("instability analysis: a second copy of each ticket trains from the rewind point "
                              "with another data order; the error barrier on the straight path between the two "
                              "is recorded as instability_val/instability_test", default=False)
    instability_alphas: int = _help("instability: points along the path W(a) = a*W1 + (1-a)*W2, ends included",
                                    default=11)
    output_pool: str = _help("output layer: own = at prune.output_rate; pooled = ranked with the other layers "
                             "like any layer (the SynFlow paper; it can collapse)", default="own")
    score_mode: str = _help("snip/grasp/synflow score the model in eval mode (BatchNorm running statistics, "
                            "the references) or train mode (batch statistics)", default="eval")
    score_examples: int = _help("snip/grasp: scoring examples drawn from the replicate's seed, per "
                                "prune.score_per", default=10)
    score_per: str = _help("prune.score_examples counts: class = per class (GraSP), total = in all (SNIP, "
                           "SynFlow repo: 100)", default="class")
    rewind_order: str = _help("imp, rewind_iter > 0: through = level 0 trains straight past k; restart = "
                              "open_lth's order: train to k, then level 0 from k with a fresh optimizer",
                              default="through")
    eb_structure: str = _help("Early-Bird masks: unstructured (weights, magnitude) or channel (BatchNorm "
                              "scaling factors, You et al.; BN models)", default="unstructured")
    eb_l1: float = _help("Early-Bird channel: L1 penalty on BatchNorm scaling factors during the search",
                         default=1e-4)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                             "prune": PruneConfig, "rl": RLConfig}


@dataclass(frozen=True)
class Ticket:
    """One ticket search, completely described."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values, in declaration order."""
        return {f"{s}.{f.name}": getattr(getattr(self, s), f.name)
                for s in SECTIONS for f in dataclasses.fields(SECTIONS[s])}

    @classmethod
    def from_flat(cls, flat: typing.Mapping[str, Any]) -> Ticket:
        """Rebuild from dotted keys (missing keys take defaults; strings are re-typed)."""
        parts: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for key, raw in flat.items():
            if key not in TYPES:
                raise ConfigError(f"unknown key '{key}'{did_you_mean(key, KEYS)}; valid keys: {', '.join(KEYS)}")
            section, name = key.split(".", 1)
            parts[section][name] = coerce(key, raw, TYPES[key])
        ticket = cls(**{s: SECTIONS[s](**parts[s]) for s in SECTIONS})
        validate(ticket)
        return ticket

    def replace(self, **overrides: Any) -> Ticket:
        """A copy with dotted-key overrides, e.g. `t.replace(**{"prune.rate": 0.5})`."""
        return Ticket.from_flat({**self.flat(), **overrides})

    @property
    def id(self) -> str:
        """Short hash of the non-default values: adding a keyed option with a default keeps old ids.

        Where data lives and which device trains it do not change the ticket, so they are left out.
        `prune.levels` unset means its old default, five, unless IMP derives it from a target (a search of its
        own), so tickets from before it could be unset keep their ids."""
        flat = self.flat()
        if self.prune.levels is None and (self.prune.target_density is None or self.prune.method != "imp"):
            flat["prune.levels"] = LEVELS_WITHOUT_TARGET
        changed = {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()
                   if v != _ID_DEFAULTS[k] and k not in NOT_IN_ID}
        return hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:10]


TYPES: dict[str, Any] = {f"{s}.{f.name}": typing.get_type_hints(c)[f.name]
                         for s, c in SECTIONS.items() for f in dataclasses.fields(c)}  # key -> declared type
KEYS: list[str] = list(TYPES)
DEFAULTS: dict[str, Any] = Ticket().flat()
_ID_DEFAULTS = {**DEFAULTS, "prune.levels": LEVELS_WITHOUT_TARGET}
NOT_IN_ID = frozenset({"data.root", "data.download", "train.device"})


def key_type(key: str) -> Any:
    """The type a key's values have when set: `float` for `prune.target_density` (declared `float | None`)."""
    return optional_of(TYPES[key])


# ---- valid names and family checks, fed by the registries -------------------------------------------------

@dataclass(frozen=True)
class _Names:
    names: tuple[str, ...]
    prefix: str  # any value `<prefix><something>` is valid too (checked where it is built)
    shown: str  # how the prefix is shown among the choices, e.g. "tv:<torchvision name>"


_NAMES: dict[str, list[_Names]] = {}
_CHECKS: list[Callable[[Ticket], None]] = []
LOADERS: list[Callable[[], object]] = []  # trainables/__init__.py's: import every registry, once, on first need


def _registries() -> dict[str, list[_Names]]:
    while LOADERS:  # popped first: a registry asking for choices while it loads does not recurse
        LOADERS.pop()()  # torch loads here, not when the config is imported
    return _NAMES


def register_names(key: str, names: Iterable[str], *, prefix: str = "", shown: str = "") -> None:
    """A registry declares valid values of `key` (several may add to one key, in import order)."""
    if key not in TYPES:
        raise KeyError(key)
    entry = _Names(tuple(names), prefix, shown or (f"{prefix}<name>" if prefix else ""))
    if entry not in _NAMES.setdefault(key, []):  # a registry imported twice (a reload) registers once
        _NAMES[key].append(entry)


def register_check(check: Callable[[Ticket], None]) -> None:
    """A task family's own checks of its keys, run on every ticket after the common ones."""
    if check not in _CHECKS:
        _CHECKS.append(check)


def choices(key: str) -> tuple[str, ...]:
    """The valid values of `key` as error messages list them (names, then patterns such as gym:<EnvId>)."""
    groups = _registries().get(key, [])
    return (*(n for g in groups for n in g.names), *(g.shown for g in groups if g.shown))


def _accepts(key: str, value: str) -> bool:
    return any(value in g.names or (g.prefix and value.startswith(g.prefix) and len(value) > len(g.prefix))
               for g in _NAMES.get(key, []))


def help_text(key: str) -> str:
    """The help of one key, its valid names filled in."""
    section, name = key.split(".", 1)
    text = next(f.metadata["help"] for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    return text.replace(CHOICES, ", ".join(choices(key)))


# ---- validation --------------------------------------------------------------------------------------------

def validate(t: Ticket) -> None:
    """Check names and ranges; raise ConfigError with one line naming the field."""
    flat = t.flat()
    for key in KEYS:  # every registered name, in key order
        if key in _registries():
            for value in flat[key] if isinstance(flat[key], tuple) else (flat[key],):
                if not _accepts(key, value):
                    choice(key, value, choices(key))
    d, m, tr, p = t.data, t.model, t.train, t.prune
    in_range("data.val_fraction", d.val_fraction, 0.0, 1.0, hi_open=True)
    if not m.widths or any(w <= 0 for w in m.widths):
        raise ConfigError(f"model.widths: need one or more positive widths, got {m.widths!r}")
    in_range("train.lr", tr.lr, 0.0, 100.0, lo_open=True)
    in_range("train.momentum", tr.momentum, 0.0, 1.0, hi_open=True)
    in_range("train.weight_decay", tr.weight_decay, 0.0, 1.0)
    in_range("train.batch_size", tr.batch_size, 1, 10**6)
    in_range("train.epochs", tr.epochs, 1, 10**5)
    in_range("train.warmup_iters", tr.warmup_iters, 0, 10**9)
    _validate_prune(p)
    for check in _CHECKS:
        check(t)


def _validate_prune(p: PruneConfig) -> None:
    choice("prune.method", p.method, METHODS)
    choice("prune.scope", p.scope, SCOPES)
    in_range("prune.rate", p.rate, 0.0, 1.0, lo_open=True, hi_open=True)
    if p.levels is not None:
        in_range("prune.levels", p.levels, 0, MAX_LEVELS)
    if p.target_density is not None:
        in_range("prune.target_density", p.target_density, 0.0, 1.0, lo_open=True)
    elif p.method == "init":
        raise ConfigError("prune.target_density: prune.method=init needs a target density in (0, 1]")
    in_range("prune.iterations", p.iterations, 1, 10_000)
    in_range("prune.rewind_iter", p.rewind_iter, 0, 10**9)
    in_range("prune.output_rate", p.output_rate, 0.0, 1.0 / p.rate, hi_open=True)
    if len(set(p.controls)) != len(p.controls):
        raise ConfigError(f"prune.controls: each control at most once, got {','.join(p.controls)}")
    in_range("prune.replicates", p.replicates, 1, 1000)
    in_range("prune.eb_epsilon", p.eb_epsilon, 0.0, 1.0)
    in_range("prune.eb_window", p.eb_window, 2, 1000)
    in_range("prune.instability_alphas", p.instability_alphas, 3, 1001)
    choice("prune.output_pool", p.output_pool, OUTPUT_POOLS)
    choice("prune.score_mode", p.score_mode, SCORE_MODES)
    in_range("prune.score_examples", p.score_examples, 1, 10**6)
    choice("prune.score_per", p.score_per, SCORE_PER)
    choice("prune.rewind_order", p.rewind_order, REWIND_ORDERS)
    choice("prune.eb_structure", p.eb_structure, EB_STRUCTURES)
    in_range("prune.eb_l1", p.eb_l1, 0.0, 1.0)

