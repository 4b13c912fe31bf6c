"""The one typed description of a ticket search: `Ticket` and its flat dotted keys.

`Ticket` (frozen dataclasses `data`, `model`, `train`, `prune`, `rl`) describes one ticket search completely.
`Ticket.flat()` gives dotted keys (`"prune.rate": 0.2`); `Ticket.from_flat(d)` rebuilds and re-types it
(MLflow params come back as strings), rejects unknown keys naming the valid ones and validates ranges.
The same keys are Ray's param_space constants, Optuna's parameter names, MLflow params and `--set`.
`data.name` also picks the task (trainables/tasks.py): `pydoc` is language modelling, `gym:<EnvId>` an
RL policy (the `rl.*` keys), anything else classification.

Example:
    >>> t = Ticket.from_flat({"prune.rate": "0.5", "model.name": "mlp"})
    >>> t.prune.rate, Ticket.from_flat(t.flat()) == t
    (0.5, True)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("digits", "mnist1d", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")
CORPORA = ("pydoc",)  # language modelling: CPython's help text (pydoc_data.topics), no download
GYM_PREFIX = "gym:"  # data.name=gym:<EnvId>: an RL policy on a gymnasium environment
LM_MODELS = ("lstm", "transformer")
MODELS = ("lenet300", "mlp", "conv2", "conv4", "conv6", "vgg11", "vgg16", "vgg19",
          "resnet20", "resnet32", "resnet56", *LM_MODELS)
TOKENS = ("char", "word")
RL_ALGORITHMS = ("ppo", "reinforce")
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")
METHODS = ("imp", "init")
SCORERS = ("magnitude", "random", "snip", "grasp", "synflow")
SCOPES = ("global", "layer")
CONTROLS = ("reinit", "shuffle", "random")
MAX_LEVELS = 1000  # the most IMP levels a search may ask for
LEVELS_WITHOUT_TARGET = 5  # prune.levels unset and no prune.target_density: the classic five levels


class ConfigError(ValueError):
    """A user mistake in a ticket or sweep description; the message is one line naming the field."""


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class DataConfig:
    name: str = _help(f"dataset: {', '.join(DATASETS + CORPORA)} or {GYM_PREFIX}<EnvId> (an RL environment)",
                      default="digits")
    root: str = _help("folder holding torchvision datasets", default="data")
    download: bool = _help("download a torchvision dataset if missing (never in tests)", default=False)
    val_fraction: float = _help("fraction of the training set held out for validation", default=0.1)
    seed: int = _help("seed of the train/validation split", default=0)
    augment: bool = _help("flip+crop augmentation for CIFAR-like data (done on tensors)", default=True)
    input_shape: str = _help("synthetic only: input shape such as 3x32x32 or 40", default="1x8x8")
    num_classes: int = _help("synthetic only: number of classes", default=10)
    size: int = _help("synthetic only: number of examples (train+val+test)", default=2000)
    tokens: str = _help(f"pydoc only: tokens of the language model: {', '.join(TOKENS)}", default="char")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _help(f"model: {', '.join(MODELS)} or tv:<torchvision name>", default="lenet300")
    widths: tuple[int, ...] = _help("hidden widths of `mlp`", default=(300, 100))
    width: int = _help("lstm/transformer: hidden width (embedding and state size)", default=128)
    depth: int = _help("lstm/transformer: number of layers", default=2)
    heads: int = _help("transformer: attention heads (must divide model.width)", default=4)
    context: int = _help("lstm/transformer: tokens per training window (and attention span)", default=64)
    dense_embeddings: bool = _help("lstm/transformer: never prune the embeddings", default=False)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = _help(f"optimizer: {', '.join(OPTIMIZERS)}", default="sgd")
    lr: float = _help("peak learning rate", default=0.05)
    momentum: float = _help("SGD momentum", default=0.9)
    weight_decay: float = _help("L2 (sgd, adam) or decoupled (adamw) weight decay", default=0.0)
    batch_size: int = _help("examples per iteration", default=64)
    epochs: int = _help("epochs of training per level", default=10)
    lr_schedule: str = _help(f"learning-rate schedule: {', '.join(LR_SCHEDULES)}", default="constant")
    warmup_iters: int = _help("linear warm-up iterations", default=0)
    seed: int = _help("seed of initialisation and data order", default=0)
    device: str = _help(f"device: {', '.join(DEVICES)}", default="auto")


@dataclass(frozen=True)
class PruneConfig:
    method: str = _help("imp: train, prune, rewind, repeat; init: prune at the rewind point, train once",
                        default="imp")
    scorer: str = _help(f"weight scorer: {', '.join(SCORERS)}", default="magnitude")
    scope: str = _help(f"rank weights across all layers or per layer: {', '.join(SCOPES)}",
                       default="global")
    rate: float = _help("fraction of the remaining weights removed per IMP level", default=0.2)
    # None = not given: as many levels as prune.target_density needs at prune.rate (trainables/schedule.py),
    # so they follow a sampled rate; without a target, LEVELS_WITHOUT_TARGET.
    levels: int | None = _help("number of IMP pruning levels after the dense level 0; unset: as many as "
                               f"prune.target_density needs ({LEVELS_WITHOUT_TARGET} without a target)",
                               default=None)
    target_density: float | None = _help(
        "density to reach: IMP stops at the first level at or below it; init prunes straight to it",
        default=None)
    iterations: int = _help("scoring iterations for init (exponential schedule; SynFlow needs ~100)",
                            default=1)
    rewind_iter: int = _help("0 = reset to initialisation; k > 0 = rewind to iteration k", default=0)
    output_rate: float = _help("multiplier of the rate for the output layer; 0 = never prune it",
                               default=0.5)
    controls: tuple[str, ...] = _help(f"sanity controls trained beside the ticket: {', '.join(CONTROLS)}",
                                      default=())
    replicates: int = _help("seeds per trial (metrics become mean and std)", default=1)
    bias: bool = _help("also prune biases", default=False)
    early_bird: bool = _help("draw the ticket when the Early-Bird mask distance settles", default=False)
    eb_epsilon: float = _help("Early-Bird: normalised Hamming distance threshold", default=0.1)
    eb_window: int = _help("Early-Bird: number of recent masks compared", default=5)
    init_mask: str = _help("mask file (or runs:/ URI via search) to start from: ticket transfer",
                           default="")


@dataclass(frozen=True)
class RLConfig:
    algorithm: str = _help(f"on-policy algorithm: {', '.join(RL_ALGORITHMS)} (reinforce: with a value baseline)",
                           default="ppo")
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
        valid = KEYS
        parts: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for key, raw in flat.items():
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"unknown key '{key}'{hint}; valid keys: {', '.join(valid)}")
            section, name = key.split(".", 1)
            parts[section][name] = _coerce(key, raw, _TYPES[key])
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
        changed = {k: _jsonable(v) for k, v in flat.items() if v != _ID_DEFAULTS[k] and k not in NOT_IN_ID}
        blob = json.dumps(changed, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _field_types() -> dict[str, Any]:
    out = {}
    for s, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{s}.{f.name}"] = hints[f.name]
    return out


_TYPES = _field_types()
KEYS: list[str] = list(_TYPES)
DEFAULTS: dict[str, Any] = Ticket().flat()
_ID_DEFAULTS = {**DEFAULTS, "prune.levels": LEVELS_WITHOUT_TARGET}
HELP: dict[str, str] = {f"{s}.{f.name}": f.metadata["help"]
                        for s, c in SECTIONS.items() for f in dataclasses.fields(c)}

NOT_IN_ID = frozenset({"data.root", "data.download", "train.device"})

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(key: str, raw: Any, tp: Any) -> Any:
    """Re-type one value (strings from MLflow, TOML or --set) to the field's declared type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # `X | None`
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        return _coerce(key, raw, inner)
    try:
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError
        if tp is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, float):
                if not raw.is_integer():
                    raise ValueError
                return int(raw)
            return int(str(raw).strip())
        if tp is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if tp is str:
            if not isinstance(raw, str | int | float):
                raise ValueError
            return str(raw).strip()
        if origin is tuple:
            (elem,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            items = [i.strip() if isinstance(i, str) else i for i in items]
            items = [i for i in items if i not in ("", "()", "[]")]
            return tuple(_coerce(key, i, elem) for i in items)
    except (ValueError, TypeError, OverflowError):
        pass
    else:
        raise TypeError(f"unsupported field type {tp!r} for {key}")
    raise ConfigError(f"{key}: cannot read {raw!r} as {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"a comma-separated list of {_type_name(typing.get_args(tp)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "text"}.get(tp, str(tp))


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value '{value}'; valid choices: {', '.join(choices)}")


def _range(key: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
           hi_open: bool = False) -> None:
    if value != value:  # NaN compares false with everything: name it
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    bad = value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi)
    if bad:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{key}: {value!r} is outside {interval}")


def parse_shape(text: str) -> tuple[int, ...]:
    """`3x32x32` -> (3, 32, 32); `40` -> (40,)."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(p <= 0 for p in shape) or len(shape) > 3:
        raise ConfigError(f"data.input_shape: cannot read '{text}'; write it like 3x32x32 or 40")
    return shape


def validate(t: Ticket) -> None:
    """Check names and ranges; raise ConfigError with one line naming the field."""
    d, m, tr, p = t.data, t.model, t.train, t.prune
    if not is_gym(d.name):
        _choice("data.name", d.name, (*DATASETS, *CORPORA, f"{GYM_PREFIX}<EnvId>"))
    _range("data.val_fraction", d.val_fraction, 0.0, 1.0, hi_open=True)
    parse_shape(d.input_shape)
    _range("data.num_classes", d.num_classes, 2, 100_000)
    _range("data.size", d.size, 10, 10**8)
    if not (m.name in MODELS or (m.name.startswith("tv:") and len(m.name) > 3)):
        _choice("model.name", m.name, (*MODELS, "tv:<torchvision name>"))
    if not m.widths or any(w <= 0 for w in m.widths):
        raise ConfigError(f"model.widths: need one or more positive widths, got {m.widths!r}")
    _validate_sequence_model(d.name, d.tokens, m)
    _choice("train.optimizer", tr.optimizer, OPTIMIZERS)
    _range("train.lr", tr.lr, 0.0, 100.0, lo_open=True)
    _range("train.momentum", tr.momentum, 0.0, 1.0, hi_open=True)
    _range("train.weight_decay", tr.weight_decay, 0.0, 1.0)
    _range("train.batch_size", tr.batch_size, 1, 10**6)
    _range("train.epochs", tr.epochs, 1, 10**5)
    _choice("train.lr_schedule", tr.lr_schedule, LR_SCHEDULES)
    _range("train.warmup_iters", tr.warmup_iters, 0, 10**9)
    _choice("train.device", tr.device, DEVICES)
    _choice("prune.method", p.method, METHODS)
    _choice("prune.scorer", p.scorer, SCORERS)
    _choice("prune.scope", p.scope, SCOPES)
    _range("prune.rate", p.rate, 0.0, 1.0, lo_open=True, hi_open=True)
    if p.levels is not None:
        _range("prune.levels", p.levels, 0, MAX_LEVELS)
    if p.target_density is not None:
        _range("prune.target_density", p.target_density, 0.0, 1.0, lo_open=True)
    elif p.method == "init":
        raise ConfigError("prune.target_density: prune.method=init needs a target density in (0, 1]")
    _range("prune.iterations", p.iterations, 1, 10_000)
    _range("prune.rewind_iter", p.rewind_iter, 0, 10**9)
    _range("prune.output_rate", p.output_rate, 0.0, 1.0 / p.rate, hi_open=True)
    for c in p.controls:
        _choice("prune.controls", c, CONTROLS)
    if len(set(p.controls)) != len(p.controls):
        raise ConfigError(f"prune.controls: each control at most once, got {','.join(p.controls)}")
    _range("prune.replicates", p.replicates, 1, 1000)
    _range("prune.eb_epsilon", p.eb_epsilon, 0.0, 1.0)
    _range("prune.eb_window", p.eb_window, 2, 1000)
    _validate_rl(t.rl)


def is_gym(name: str) -> bool:
    """Whether `data.name` names a gymnasium environment (`gym:<EnvId>`); the id is checked at build time."""
    return name.startswith(GYM_PREFIX) and len(name) > len(GYM_PREFIX)


def score_meaning(data_name: str) -> str:
    """What `val_score`/`test_score` measure for `data.name` (higher is better, always): `accuracy` (a
    fraction) for classification, `-perplexity` for language models, `mean return` for policies."""
    if data_name in CORPORA:
        return "-perplexity"
    return "mean return" if is_gym(data_name) else "accuracy"


def _validate_sequence_model(data: str, tokens: str, m: ModelConfig) -> None:
    """Language models go with the corpus and only with it; their shape keys must fit together."""
    _choice("data.tokens", tokens, TOKENS)
    if data in CORPORA and m.name not in LM_MODELS:
        raise ConfigError(f"model.name: data.name={data} needs a language model; valid choices: "
                          f"{', '.join(LM_MODELS)}")
    if m.name in LM_MODELS and data not in CORPORA:
        raise ConfigError(f"model.name: {m.name} is a language model and needs data.name in "
                          f"{', '.join(CORPORA)}; got {data}")
    _range("model.width", m.width, 1, 100_000)
    _range("model.depth", m.depth, 1, 1000)
    _range("model.heads", m.heads, 1, 1000)
    _range("model.context", m.context, 2, 10**6)
    if m.name == "transformer" and m.width % m.heads:
        raise ConfigError(f"model.heads: {m.heads} does not divide model.width {m.width}")


def _validate_rl(r: RLConfig) -> None:
    _choice("rl.algorithm", r.algorithm, RL_ALGORITHMS)
    _range("rl.envs", r.envs, 1, 4096)
    _range("rl.rollout_steps", r.rollout_steps, 1, 10**8)
    if r.rollout_steps % r.envs:
        raise ConfigError(f"rl.rollout_steps: {r.rollout_steps} is not a multiple of rl.envs {r.envs}")
    _range("rl.rollouts_per_epoch", r.rollouts_per_epoch, 1, 10**6)
    _range("rl.ppo_epochs", r.ppo_epochs, 1, 1000)
    _range("rl.gamma", r.gamma, 0.0, 1.0)
    _range("rl.gae_lambda", r.gae_lambda, 0.0, 1.0)
    _range("rl.clip", r.clip, 0.0, 10.0, lo_open=True)
    _range("rl.entropy_coef", r.entropy_coef, 0.0, 100.0)
    _range("rl.eval_episodes", r.eval_episodes, 1, 10**5)


def from_nested(doc: typing.Mapping[str, Any]) -> dict[str, Any]:
    """TOML-style nesting (`[prune] rate = 0.2`) or dotted keys -> flat dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            for sub, v in from_nested(value).items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat
