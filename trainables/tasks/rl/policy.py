"""The RL family's wrapper: any vector model of the registry as the policy, beside a dense critic.

`ActorCritic(policy, critic)` maps observations (batch, *obs_shape) to (batch, actions + 1): the policy's
action logits with the critic's state value appended as the last column. One output tensor keeps the
scorers' wrappers (GraSP's temperature, SynFlow's sum of outputs) working unchanged.

The ticket is the policy: the critic is a baseline that only helps training, so it is listed in
`dense_modules` and never pruned, and `output_name` points at the policy's output layer (pruned at
`prune.output_rate` like a classifier's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trainables.models.mlp import MLP

POLICY_HEAD_SCALE = 0.01  # initial policy output weights x this: near-uniform first actions


class ActorCritic(nn.Module):
    """Policy logits and state value in one forward pass; only the policy is prunable."""

    def __init__(self, policy: nn.Module, critic: nn.Module) -> None:
        super().__init__()
        self.policy, self.critic = policy, critic
        self.output_name = f"policy.{policy.output_name}"
        self.dense_modules = ("critic",)

    def forward(self, obs: Tensor) -> Tensor:
        return torch.cat([self.policy(obs), self.critic(obs)], dim=-1)


def actor_critic(policy: nn.Module, obs_features: int, widths: Sequence[int]) -> ActorCritic:
    """Wrap `policy` (already built for the observation shape and action count) with an MLP critic.

    The policy's output weights are scaled down so that the first policy is close to uniform: every
    action gets explored and PPO's first ratios stay near 1 (Andrychowicz et al. 2021 found this one of
    the choices that matter most for on-policy RL)."""
    head = policy.get_submodule(str(policy.output_name))
    assert isinstance(head, nn.Linear | nn.Conv2d)
    with torch.no_grad():
        head.weight.mul_(POLICY_HEAD_SCALE)
    return ActorCritic(policy, MLP(obs_features, widths, 1))
