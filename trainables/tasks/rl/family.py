"""The RL family: a policy on a gymnasium environment (`data.name=gym:<EnvId>`), scored by its mean return.

The model trained is `model.name` built for the observations and actions as the policy, beside a dense
critic (policy.py); the ticket is the policy. Its own keys are `rl.*`, checked on every ticket.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.config import Ticket
from trainables.tasks.base import Family, Task
from trainables.tasks.rl import envs
from trainables.tasks.rl.policy import actor_critic
from trainables.tasks.rl.task import ALGORITHMS, PolicyTask
from trainables.typed import ConfigError, in_range


def make(ticket: Ticket, device: torch.device | str) -> Task:
    env_id = ticket.data.name.removeprefix(envs.GYM_PREFIX)
    return PolicyTask(envs.spec(env_id), ticket.rl, batch_size=ticket.train.batch_size, seed=ticket.train.seed)


def wrap(ticket: Ticket, policy: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """The policy beside its critic: an MLP of `model.widths`."""
    return actor_critic(policy, math.prod(input_shape), ticket.model.widths)


def check(ticket: Ticket) -> None:
    r = ticket.rl
    in_range("rl.envs", r.envs, 1, 4096)
    in_range("rl.rollout_steps", r.rollout_steps, 1, 10**8)
    if r.rollout_steps % r.envs:
        raise ConfigError(f"rl.rollout_steps: {r.rollout_steps} is not a multiple of rl.envs {r.envs}")
    in_range("rl.rollouts_per_epoch", r.rollouts_per_epoch, 1, 10**6)
    in_range("rl.ppo_epochs", r.ppo_epochs, 1, 1000)
    in_range("rl.gamma", r.gamma, 0.0, 1.0)
    in_range("rl.gae_lambda", r.gae_lambda, 0.0, 1.0)
    in_range("rl.clip", r.clip, 0.0, 10.0, lo_open=True)
    in_range("rl.entropy_coef", r.entropy_coef, 0.0, 100.0)
    in_range("rl.eval_episodes", r.eval_episodes, 1, 10**5)


FAMILY = Family(names=(), make=make, score="mean return", check=check, wrap=wrap, prefix=envs.GYM_PREFIX,
                shown=f"{envs.GYM_PREFIX}<EnvId>", choices={"rl.algorithm": ALGORITHMS})
