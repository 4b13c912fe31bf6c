"""Gymnasium environments for RL tickets: checking `gym:<EnvId>`, stepping copies side by side, evaluating.

This module owns everything that touches gymnasium (imported only by RL workers). `EnvPool` is a
plain list of environments stepped in one loop rather than gymnasium's vector envs, so the reset
rules are ours and version-proof: an episode that ends is reset in place from that environment's own
random stream (seeded once, at `reset(seeds)`), and the observation it ended on is handed back for
bootstrapping when the episode was cut by the time limit rather than finished.

Seeds: evaluation episodes use fixed seeds, `VAL_SEED + i` and `TEST_SEED + i`, and training seeds are
drawn below `VAL_SEED`, so the three never meet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.typed import ConfigError

GYM_PREFIX = "gym:"  # data.name=gym:<EnvId>: an RL policy on a gymnasium environment
SUGGESTED = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")  # classic control with discrete actions
TRAIN_SEEDS = 10**9  # training episode seeds lie in [0, TRAIN_SEEDS)
VAL_SEED, TEST_SEED = 10**9, 2 * 10**9  # evaluation episode i of a split uses seed base + i


@dataclass(frozen=True)
class EnvSpec:
    """What a policy network needs to know about an environment."""

    env_id: str
    obs_shape: tuple[int, ...]
    actions: int
    reward_threshold: float | None  # return at which gymnasium calls the task solved (CartPole-v1: 475)


def _make(env_id: str) -> Any:
    import gymnasium as gym  # imported late: only RL workers need it

    if env_id not in gym.registry:
        raise ConfigError(f"data.name: unknown environment '{GYM_PREFIX}{env_id}'; valid choices include "
                          f"{', '.join(GYM_PREFIX + e for e in SUGGESTED)}")
    try:  # the checker wrapper re-validates every step: a third of CartPole's step time
        return gym.make(env_id, disable_env_checker=True)
    except gym.error.Error as e:  # e.g. Box2D or MuJoCo not installed
        raise ConfigError(f"data.name={GYM_PREFIX}{env_id}: cannot make it ({e})") from None


def spec(env_id: str) -> EnvSpec:
    """Check that `env_id` is a registered environment a categorical policy on vectors can play."""
    import gymnasium as gym

    env = _make(env_id)
    obs, act = env.observation_space, env.action_space
    env.close()
    if not (isinstance(obs, gym.spaces.Box) and len(obs.shape) == 1):
        raise ConfigError(f"data.name={GYM_PREFIX}{env_id}: observations are {obs}; a policy here needs a "
                          f"flat Box, as in {', '.join(SUGGESTED)}")
    if not isinstance(act, gym.spaces.Discrete):
        raise ConfigError(f"data.name={GYM_PREFIX}{env_id}: actions are {act}; a policy here needs Discrete "
                          f"actions, as in {', '.join(SUGGESTED)}")
    threshold = env.spec.reward_threshold if env.spec is not None else None
    return EnvSpec(env_id, tuple(obs.shape), int(act.n), threshold)


class EnvPool:
    """`n` copies of one environment, stepped together; episodes reset in place when they end."""

    def __init__(self, env_id: str, n: int) -> None:
        self.envs = [_make(env_id) for _ in range(n)]
        self.returns = np.zeros(n)  # return of each running episode so far
        self.finished: list[float] = []  # returns of episodes that ended, in order

    def reset(self, seeds: list[int]) -> np.ndarray:
        """Start a fresh episode in every copy from `seeds`; (n, *obs_shape) float32 observations."""
        self.returns[:] = 0
        self.finished = []
        return np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seeds, strict=True)]).astype(np.float32)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(next obs, rewards, ended, truncated, obs at truncation). An ended episode's next obs is the
        first of a new episode; `obs at truncation` is meaningful only where `truncated`."""
        n = len(self.envs)
        obs, final = [], np.zeros((n, *self.envs[0].observation_space.shape), dtype=np.float32)
        rewards, ended, truncated = np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, bool)
        for i, (env, a) in enumerate(zip(self.envs, actions.tolist(), strict=True)):
            o, r, term, trunc, _ = env.step(a)
            rewards[i], self.returns[i] = r, self.returns[i] + r
            if term or trunc:
                ended[i], truncated[i], final[i] = True, trunc and not term, o
                self.finished.append(float(self.returns[i]))
                self.returns[i] = 0
                o, _ = env.reset()
            obs.append(o)
        return np.stack(obs).astype(np.float32), rewards, ended, truncated, final


def policy_logits(model: nn.Module, obs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(action logits, state value) of an actor-critic model for a batch of observations."""
    param = next(model.parameters())
    out = model(torch.as_tensor(obs, device=param.device, dtype=param.dtype))
    return out[:, :-1], out[:, -1]


@torch.no_grad()
def evaluate(model: nn.Module, pool: EnvPool, seeds: list[int], threshold: float | None) -> dict[str, float]:
    """One greedy episode per seed, all side by side: mean return, the fraction solved, the spread.

    Greedy (arg-max) actions make the figure a property of the policy alone, not of sampling luck. A
    policy whose logits are not finite has diverged: its loss is NaN and nothing is solved.
    """
    obs = pool.reset(seeds)
    n, done = len(seeds), np.zeros(len(seeds), bool)
    returns = np.zeros(n)
    while not done.all():
        logits, _ = policy_logits(model, obs)
        if not bool(torch.isfinite(logits).all()):
            return {"loss": math.nan, "acc": 0.0, "score": math.nan, "return_std": math.nan}
        actions = logits.argmax(-1).cpu().numpy()
        live = np.flatnonzero(~done)  # a finished copy is not stepped again: one episode per seed
        for i in live:
            o, r, term, trunc, _ = pool.envs[i].step(int(actions[i]))
            returns[i] += r
            done[i] = term or trunc
            obs[i] = o
    mean = float(returns.mean())
    solved = math.nan if threshold is None else float((returns >= threshold).mean())
    return {"loss": -mean, "acc": solved, "score": mean, "return_std": float(returns.std())}
