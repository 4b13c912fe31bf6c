"""The sections of a ticket besides pruning: `data`, `model`, `train` and `rl`, with each key's help.

trainables/config.py assembles them with `PruneConfig` into `Ticket` and re-exports them; this module only
declares (defaults and help texts). A help text may hold `CHOICES`, filled in with the key's valid names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHOICES = "{choices}"  # in a help text: the key's valid names, as the registries list them


def help_field(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class DataConfig:
    name: str = help_field(f"dataset: {CHOICES} (an RL environment)", default="digits")
    root: str = help_field("folder holding torchvision datasets", default="data")
    download: bool = help_field("download a torchvision dataset if missing (never in tests)", default=False)
    val_fraction: float = help_field("fraction of the training set held out for validation", default=0.1)
    seed: int = help_field("seed of the train/validation split", default=0)
    augment: bool = help_field("flip+crop augmentation for CIFAR-like data (done on tensors)", default=True)
    input_shape: str = help_field("synthetic only: input shape such as 3x32x32 or 40", default="1x8x8")
    num_classes: int = help_field("synthetic only: number of classes", default=10)
    size: int = help_field("synthetic only: number of examples (train+val+test)", default=2000)
    tokens: str = help_field(f"pydoc only: tokens of the language model: {CHOICES}", default="char")


@dataclass(frozen=True)
class ModelConfig:
    name: str = help_field(f"model: {CHOICES}", default="lenet300")
    widths: tuple[int, ...] = help_field("hidden widths of `mlp`", default=(300, 100))
    width: int = help_field("lstm/transformer: hidden width (embedding and state size)", default=128)
    depth: int = help_field("lstm/transformer: number of layers", default=2)
    heads: int = help_field("transformer: attention heads (must divide model.width)", default=4)
    context: int = help_field("lstm/transformer: tokens per training window (and attention span)", default=64)
    dense_embeddings: bool = help_field("lstm/transformer: never prune the embeddings", default=False)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = help_field(f"optimizer: {CHOICES}", default="sgd")
    lr: float = help_field("peak learning rate", default=0.05)
    momentum: float = help_field("SGD momentum", default=0.9)
    weight_decay: float = help_field("L2 (sgd, adam) or decoupled (adamw) weight decay", default=0.0)
    batch_size: int = help_field("examples per iteration", default=64)
    epochs: int = help_field("epochs of training per level", default=10)
    lr_schedule: str = help_field(f"learning-rate schedule: {CHOICES}", default="constant")
    warmup_iters: int = help_field("linear warm-up iterations: lr * it/w at iteration it < w (open_lth)",
                               default=0)
    seed: int = help_field("seed of initialisation and data order", default=0)
    device: str = help_field(f"device: {CHOICES}", default="auto")


@dataclass(frozen=True)
class RLConfig:
    algorithm: str = help_field(f"on-policy algorithm: {CHOICES} (reinforce: with a value baseline)", default="ppo")
    envs: int = help_field("environments stepped side by side per member", default=8)
    rollout_steps: int = help_field("environment steps per rollout, over all envs (a multiple of rl.envs)",
                               default=512)
    rollouts_per_epoch: int = help_field("rollouts per epoch (an epoch ends with an evaluation)", default=10)
    ppo_epochs: int = help_field("ppo: passes over each rollout, in minibatches of train.batch_size steps",
                            default=4)
    gamma: float = help_field("discount factor", default=0.99)
    gae_lambda: float = help_field("ppo: GAE lambda of the advantages (reinforce uses 1: Monte Carlo returns)",
                              default=0.95)
    clip: float = help_field("ppo: clip range of the probability ratio", default=0.2)
    entropy_coef: float = help_field("weight of the entropy bonus in the loss (keeps exploring)", default=0.01)
    eval_episodes: int = help_field("evaluation episodes per split, fixed seeds (val and test disjoint)",
                               default=10)
