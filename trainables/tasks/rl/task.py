"""Reinforcement learning as a task: an actor-critic policy on a gymnasium environment, PPO or REINFORCE.

One loop iteration is one gradient step. Each member collects its own rollouts with its own policy
(`shared_batches = False`): `rl.envs` copies of the environment stepped `rl.rollout_steps / rl.envs`
times. `ppo` then takes `rl.ppo_epochs` passes over the rollout in minibatches of `train.batch_size`
steps (clipped probability ratio, GAE(`rl.gamma`, `rl.gae_lambda`) advantages); `reinforce` takes one
step on the whole rollout with Monte Carlo returns (lambda = 1) minus the critic's value as baseline.
Episodes cut by the rollout's end or the time limit are bootstrapped with the critic's value.

Data order is the environment seed sequence: a member's environments are reset at the first iteration
of a level from seeds drawn from (train.seed, iteration), and run on from there; action sampling and
minibatch order are drawn from (train.seed, rollout). So rewinding to k, or resuming a level, replays
the same seeds, and every member of a level starts from the same episodes.

Evaluation plays `rl.eval_episodes` greedy episodes with fixed seeds (envs.py): `score` is the mean
return, `loss` its negative (the best iteration is the minimum-loss one, as for the other tasks) and
`acc` the fraction of episodes at gymnasium's reward threshold ("solved").
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables import seeds
from trainables.config import RLConfig
from trainables.tasks.base import Batch
from trainables.tasks.rl import envs

ALGORITHMS = ("ppo", "reinforce")  # rl.algorithm: PPO's clipped surrogate, or REINFORCE with a baseline
VALUE_COEF = 0.5  # weight of the critic's squared error in the loss (the usual choice for PPO and A2C)
SCORE_ITER = -1  # the rollout seeds SNIP and GraSP score on: apart from every training iteration's
ACTIONS, MINIBATCHES = 1, 2  # salts of a rollout's streams: (rollout, ACTIONS), (rollout, MINIBATCHES, epoch)


@dataclass
class Rollout:
    """Flattened (steps * envs) transitions with their advantages and returns."""

    obs: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor  # log-probability of the action under the collecting policy
    advantages: torch.Tensor
    returns: torch.Tensor  # advantage + value: the critic's target


@dataclass
class _Member:
    """One member's running environments, its current rollout, and the iteration it expects next."""

    pool: envs.EnvPool
    obs: np.ndarray | None = None
    rollout: Rollout | None = None
    next_it: int = -1


class PolicyTask:
    """An RL policy trained on-policy; batches are per member, so members train one by one."""

    shared_batches = False

    def __init__(self, spec: envs.EnvSpec, cfg: RLConfig, *, batch_size: int, seed: int) -> None:
        self.spec, self.cfg, self.seed = spec, cfg, seed
        self.input_shape, self.num_outputs = spec.obs_shape, spec.actions
        self.steps_per_env = cfg.rollout_steps // cfg.envs
        if cfg.algorithm == "ppo":
            self.minibatch = min(batch_size, cfg.rollout_steps)
            self.minibatches = -(-cfg.rollout_steps // self.minibatch)
            self.updates = cfg.ppo_epochs * self.minibatches  # gradient steps per rollout
        else:
            self.minibatch, self.minibatches, self.updates = cfg.rollout_steps, 1, 1
        self._members: weakref.WeakKeyDictionary[nn.Module, _Member] = weakref.WeakKeyDictionary()
        self._eval_pool = envs.EnvPool(spec.env_id, cfg.eval_episodes)

    def iters_per_epoch(self) -> int:
        return self.cfg.rollouts_per_epoch * self.updates

    def _seed(self, *parts: int) -> int:
        return seeds.derive(self.seed, *parts, below=envs.TRAIN_SEEDS)

    def env_seeds(self, it: int) -> list[int]:
        return [self._seed(it, j) for j in range(self.cfg.envs)]

    def batch(self, it: int) -> Batch:
        """The environment seeds a level starting at iteration `it` resets to (and a dummy target)."""
        return torch.tensor(self.env_seeds(it)), torch.empty(0)

    # -- rollouts ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _collect(self, model: nn.Module, pool: envs.EnvPool, obs: np.ndarray, rollout: int,
                 lam: float) -> tuple[Rollout, np.ndarray]:
        g = torch.Generator().manual_seed(self._seed(rollout, ACTIONS))
        steps, n, gamma = self.steps_per_env, len(pool.envs), self.cfg.gamma
        cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "act", "logp", "value", "reward", "ended")}
        for _ in range(steps):
            logits, value = envs.policy_logits(model, obs)
            logits = logits.float().cpu()
            # Gumbel-max sampling: a draw from softmax(logits) that never raises on a diverged policy.
            u = torch.rand(logits.shape, generator=g).clamp_min(1e-12)
            action = (logits - torch.log(-torch.log(u))).argmax(-1)
            nxt, reward, ended, truncated, final = pool.step(action.numpy())
            if truncated.any():  # the time limit cut the episode: bootstrap with the value of where it stood
                _, v_final = envs.policy_logits(model, final[truncated])
                reward[truncated] += gamma * v_final.float().cpu().numpy()
            cols["obs"].append(torch.as_tensor(obs))
            cols["act"].append(action)
            cols["logp"].append(F.log_softmax(logits, -1).gather(1, action[:, None]).squeeze(1))
            cols["value"].append(value.float().cpu())
            cols["reward"].append(torch.as_tensor(reward))
            cols["ended"].append(torch.as_tensor(ended, dtype=torch.float32))
            obs = nxt
        _, last = envs.policy_logits(model, obs)
        values, rewards, ends = (torch.stack(cols[k]) for k in ("value", "reward", "ended"))  # (steps, n)
        adv = torch.zeros(steps, n)
        running, next_value = torch.zeros(n), last.float().cpu()
        for t in reversed(range(steps)):  # GAE: delta_t + gamma lambda delta_t+1 + ..., cut where episodes end
            live = 1.0 - ends[t]
            delta = rewards[t] + gamma * next_value * live - values[t]
            running = delta + gamma * lam * live * running
            adv[t], next_value = running, values[t]
        device = next(model.parameters()).device
        out = Rollout(obs=torch.stack(cols["obs"]).flatten(0, 1), actions=torch.stack(cols["act"]).flatten(),
                      logp=torch.stack(cols["logp"]).flatten(), advantages=adv.flatten(),
                      returns=(adv + values).flatten())
        out = Rollout(*(t.to(device) for t in (out.obs, out.actions, out.logp, out.advantages, out.returns)))
        return out, obs

    def _objective(self, model: nn.Module, r: Rollout, clip: float | None) -> torch.Tensor:
        """Policy-gradient loss (PPO's clipped surrogate when `clip`) + critic error - entropy bonus."""
        logits, value = envs.policy_logits(model, r.obs)
        logp_all = F.log_softmax(logits, -1)
        logp = logp_all.gather(1, r.actions[:, None]).squeeze(1)
        adv = (r.advantages - r.advantages.mean()) / (r.advantages.std(unbiased=False) + 1e-8)
        ratio = torch.exp(logp - r.logp)
        if clip is None:  # REINFORCE: the plain likelihood-ratio gradient (ratio is 1, its gradient grad logp)
            policy = -(ratio * adv).mean()
        else:
            policy = -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        return policy + VALUE_COEF * F.mse_loss(value, r.returns) - self.cfg.entropy_coef * entropy

    def _lambda(self) -> float:
        return self.cfg.gae_lambda if self.cfg.algorithm == "ppo" else 1.0

    # -- the Task interface ------------------------------------------------------------------------
    def step_loss(self, model: nn.Module, it: int) -> torch.Tensor:
        m = self._members.get(model)
        if m is None or m.next_it != it:  # a new level (or a rewind point): fresh episodes from `it`'s seeds
            m = self._members[model] = _Member(envs.EnvPool(self.spec.env_id, self.cfg.envs))
            m.obs = m.pool.reset(self.env_seeds(it))
        j = it % self.updates  # this step's place in the current rollout's schedule of minibatches
        if m.rollout is None or j == 0:
            assert m.obs is not None
            m.rollout, m.obs = self._collect(model, m.pool, m.obs, it // self.updates, self._lambda())
        m.next_it = it + 1
        r = m.rollout
        if self.cfg.algorithm == "reinforce":
            return self._objective(model, r, None)
        epoch, part = divmod(j, self.minibatches)
        g = torch.Generator().manual_seed(self._seed(it // self.updates, MINIBATCHES, epoch))
        idx = torch.randperm(len(r.actions), generator=g)[part * self.minibatch:(part + 1) * self.minibatch]
        idx = idx.to(r.actions.device)
        mini = Rollout(r.obs[idx], r.actions[idx], r.logp[idx], r.advantages[idx], r.returns[idx])
        return self._objective(model, mini, self.cfg.clip)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The policy-gradient loss of a fresh on-policy rollout from the seeds in `batch` (for SNIP and
        GraSP): collected without gradients, then scored with them, so its gradient is REINFORCE's."""
        pool = envs.EnvPool(self.spec.env_id, len(batch[0]))
        obs = pool.reset([int(s) for s in batch[0]])
        rollout, _ = self._collect(model, pool, obs, SCORE_ITER, self._lambda())
        return self._objective(model, rollout, None)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        base = {"val": envs.VAL_SEED, "test": envs.TEST_SEED}[split]
        was_training = model.training
        model.eval()
        out = envs.evaluate(model, self._eval_pool, [base + i for i in range(self.cfg.eval_episodes)],
                            self.spec.reward_threshold)
        model.train(was_training)
        return out

    def score_batches(self, *, examples: int = 10, per_class: bool = True,
                      generator: torch.Generator | None = None) -> list[Batch]:
        """One fixed scoring rollout (its own seeds); the amount and draw settings are classification's."""
        return [self.batch(SCORE_ITER)]

