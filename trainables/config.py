"""The one typed description of a ticket search: `Ticket` and its flat dotted keys.

`Ticket` (frozen dataclasses `data`, `model`, `train`, `prune`, `rl`) describes one ticket search completely.
`Ticket.flat()` gives dotted keys (`"prune.rate": 0.2`); `Ticket.from_flat(d)` rebuilds and re-types it
(MLflow params come back as strings; trainables/typed.py reads them), rejects unknown keys naming the valid
ones and validates ranges. The same keys are Ray's param_space constants, Optuna's parameter names, MLflow
params and `--set`.

Valid names (datasets, models, scorers, controls, optimizers, ...) are not listed here: each registry
registers its own with `register_names`, and each task family its own checks with `register_check`
(importing `trainables` loads every registry first). `data.name` also picks the task family
(trainables/tasks/registry.py). `ConfigError` is trainables.typed's, the error of every user mistake.

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

from trainables.typed import ConfigError, choice, coerce, did_you_mean, from_nested, in_range, optional_of

__all__ = ["DEFAULTS", "KEYS", "LEVELS_WITHOUT_TARGET", "MAX_LEVELS", "METHODS", "PRUNE_CHOICES", "SCOPES", "SECTIONS",
           "TYPES", "ConfigError", "DataConfig", "ModelConfig", "PruneConfig", "RLConfig", "Ticket", "TrainConfig",
           "choices", "from_nested", "help_text", "key_type", "register_check", "register_names", "validate"]

METHODS = ("imp", "init")  # the lottery's two searches (trainables/lottery.py)
SCOPES = ("global", "layer")  # where pruning ranks weights (trainables/pruning/masks.py)
PRUNE_CHOICES = {"output_pool": ("own", "pooled"), "score_mode": ("eval", "train"), "score_per": ("class", "total"),
                 "rewind_order": ("through", "restart"), "eb_structure": ("unstructured", "channel")}
MAX_LEVELS = 1000  # the most IMP levels a search may ask for
LEVELS_WITHOUT_TARGET = 5  # prune.levels unset and no prune.target_density: the classic five levels
CHOICES = "{choices}"  # in a help text: the key's valid names, as the registries list them


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class DataConfig:
    name: str = _help(f"dataset: {CHOICES} (an RL environment)", default="digits")
    root: str = _help("folder holding torchvision datasets", default="data")
    download: bool = _help("download a torchvision dataset if missing (never in tests)", default=False)
    val_fraction: float = _help("fraction of the training set held out for validation", default=0.1)
    seed: int = _help("seed of the train/validation split", default=0)
    augment: bool = _help("flip+crop augmentation for CIFAR-like data (done on tensors)", default=True)
    input_shape: str = _help("synthetic only: input shape such as 3x32x32 or 40", default="1x8x8")
    num_classes: int = _help("synthetic only: number of classes", default=10)
    size: int = _help("synthetic only: number of examples (train+val+test)", default=2000)
    tokens: str = _help(f"pydoc only: tokens of the language model: {CHOICES}", default="char")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _help(f"model: {CHOICES}", default="lenet300")
    widths: tuple[int, ...] = _help("hidden widths of `mlp`", default=(300, 100))
    width: int = _help("lstm/transformer: hidden width (embedding and state size)", default=128)
    depth: int = _help("lstm/transformer: number of layers", default=2)
    heads: int = _help("transformer: attention heads (must divide model.width)", default=4)
    context: int = _help("lstm/transformer: tokens per training window (and attention span)", default=64)
    dense_embeddings: bool = _help("lstm/transformer: never prune the embeddings", default=False)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = _help(f"optimizer: {CHOICES}", default="sgd")
    lr: float = _help("peak learning rate", default=0.05)
    momentum: float = _help("SGD momentum", default=0.9)
    weight_decay: float = _help("L2 (sgd, adam) or decoupled (adamw) weight decay", default=0.0)
    batch_size: int = _help("examples per iteration", default=64)
    epochs: int = _help("epochs of training per level", default=10)
    lr_schedule: str = _help(f"learning-rate schedule: {CHOICES}", default="constant")
    warmup_iters: int = _help("linear warm-up iterations (lr * it/w, as open_lth)", default=0)
    seed: int = _help("seed of initialisation and data order", default=0)
    device: str = _help(f"device: {CHOICES}", default="auto")


@dataclass(frozen=True)
class PruneConfig:
    method: str = _help("imp: train, prune, rewind, repeat; init: prune at the rewind point, train once",
                        default="imp")
    scorer: str = _help(f"weight scorer: {CHOICES}", default="magnitude")
    scope: str = _help(f"rank weights across all layers or per layer: {', '.join(SCOPES)}",
                       default="global")
    rate: float = _help("fraction of the remaining weights removed per IMP level", default=0.2)
    # None = not given: as many levels as prune.target_density needs at prune.rate (trainables/pruning/schedule.py),
    # so they follow a sampled rate; without a target, LEVELS_WITHOUT_TARGET.
    levels: int | None = _help("number of IMP pruning levels after the dense level 0; unset: as many as "
                               f"prune.target_density needs ({LEVELS_WITHOUT_TARGET} without a target)",
                               default=None)
    target_density: float | None = _help(
        "density of all prunable weights to reach: IMP stops at the first level at or below it; init prunes to it",
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
    output_pool: str = _help("output layer: own = at prune.output_rate; pooled = in the pool (SynFlow)", default="own")
    score_mode: str = _help("snip/grasp/synflow score in eval (BN running stats) or train mode", default="eval")
    score_examples: int = _help("snip/grasp: examples drawn from the replicate's seed, per prune.score_per", default=10)
    score_per: str = _help("prune.score_examples counts: class = per class, total = in all", default="class")
    rewind_order: str = _help("through = level 0 trains past k; restart = open_lth's order", default="through")
    eb_structure: str = _help("Early-Bird masks: unstructured or channel (BN scales)", default="unstructured")
    eb_l1: float = _help("Early-Bird channel: L1 penalty on BN scaling factors during the search", default=1e-4)


@dataclass(frozen=True)
class RLConfig:
    algorithm: str = _help(f"on-policy algorithm: {CHOICES} (reinforce: with a value baseline)", default="ppo")
    envs: int = _help("environments stepped side by side per member", default=8)
    rollout_steps: int = _help("environment steps per rollout, over all envs (a multiple of rl.envs)",
                               default=512)
    rollouts_per_epoch: int = _help("rollouts per epoch (an epoch ends with an evaluation)", default=10)
    ppo_epochs: int = _help("ppo: passes over each rollout, in minibatches of train.batch_size steps",
                            default=4)
    gamma: float = _help("discount factor", default=0.99)
    gae_lambda: float = _help("ppo: GAE lambda of the advantages (reinforce uses 1: Monte Carlo returns)",
                              default=0.95)
    clip: float = _help("ppo: clip range of the probability ratio", default=0.2)
    entropy_coef: float = _help("weight of the entropy bonus in the loss (keeps exploring)", default=0.01)
    eval_episodes: int = _help("evaluation episodes per split, fixed seeds (val and test disjoint)",
                               default=10)


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
    groups = _NAMES.get(key, [])
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
        if key in _NAMES:
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
    for name, valid in PRUNE_CHOICES.items():
        choice(f"prune.{name}", getattr(p, name), valid)
    in_range("prune.score_examples", p.score_examples, 1, 10**6)
    in_range("prune.eb_l1", p.eb_l1, 0.0, 1.0)
