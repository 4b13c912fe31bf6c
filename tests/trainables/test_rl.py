"""RL policy tickets: environment checks, the seed sequence as data order, greedy fixed-seed evaluation,
pruning the policy (never the critic), and the claim that a CartPole ticket at about 20% density
matches the dense policy's return."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.config import ConfigError, Ticket
from trainables.io import checkpoint
from trainables.lottery import Lottery
from trainables.pruning import masks as mk
from trainables.pruning import scorers
from trainables.tasks.registry import build_model, make_task
from trainables.tasks.rl import envs
from trainables.tasks.rl.task import PolicyTask
from trainables.training.loop import train_members
from trainables.training.members import Diverged, Member

# Tiny and fast: one PPO step per 64-step rollout, two rollouts per epoch, three evaluation episodes.
TINY = {"data.name": "gym:CartPole-v1", "model.name": "mlp", "model.widths": "16,16", "train.optimizer": "adam",
        "train.lr": 0.003, "train.batch_size": 64, "train.epochs": 2, "rl.envs": 4, "rl.rollout_steps": 64,
        "rl.rollouts_per_epoch": 2, "rl.ppo_epochs": 1, "rl.eval_episodes": 3, "train.device": "cpu"}

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small models, one thread


def ticket(**kw: object) -> Ticket:
    return Ticket.from_flat({**TINY, **kw})


def model_and_task(seed: int = 0, **kw: object) -> tuple[nn.Module, PolicyTask]:
    t = ticket(**kw)
    task = make_task(t)
    assert isinstance(task, PolicyTask)
    torch.manual_seed(seed)
    return build_model(t, task.input_shape, task.num_outputs), task


@pytest.mark.parametrize(("name", "match"), [
    ("gym:Nope-v0", r"data.name: unknown environment 'gym:Nope-v0'; valid choices include gym:CartPole-v1"),
    ("gym:Pendulum-v1", r"data.name=gym:Pendulum-v1: actions are Box.*needs Discrete actions"),
])
def test_environment_ids_are_checked_when_the_task_is_built(name: str, match: str) -> None:
    t = ticket(**{"data.name": name})  # the config accepts any gym:<EnvId>; building the task checks it
    with pytest.raises(ConfigError, match=match):
        make_task(t)


def test_rl_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"rl.algorithm: unknown value 'dqn'; valid choices: ppo, reinforce"):
        ticket(**{"rl.algorithm": "dqn"})
    with pytest.raises(ConfigError, match=r"rl.rollout_steps: 65 is not a multiple of rl.envs 4"):
        ticket(**{"rl.rollout_steps": 65})


def test_the_policy_is_the_ticket_and_the_critic_stays_dense() -> None:
    model, task = model_and_task()
    assert task.input_shape == (4,) and task.num_outputs == 2
    assert model(torch.zeros(5, 4)).shape == (5, 3)  # two action logits and the state value
    names = list(mk.prunable(model))
    assert names == ["policy.fc1.weight", "policy.fc2.weight", "policy.fc3.weight"]
    assert mk.output_param(model) == "policy.fc3.weight"


def test_data_order_is_the_environment_seed_sequence() -> None:
    (a, task), (b, _) = model_and_task(), model_and_task()
    assert task.env_seeds(3) == task.env_seeds(3) != task.env_seeds(4)
    assert all(0 <= s < envs.VAL_SEED for s in task.env_seeds(3))  # never an evaluation seed
    # Two members with the same weights at the same iteration play the same episodes: the same loss.
    assert torch.equal(task.step_loss(a, 7), task.step_loss(b, 7))
    c, _ = model_and_task(seed=1)
    assert not torch.equal(task.step_loss(c, 8), task.step_loss(a, 8))


def test_evaluation_is_greedy_on_fixed_disjoint_seeds() -> None:
    model, task = model_and_task()
    val, again, test = task.evaluate(model, "val"), task.evaluate(model, "val"), task.evaluate(model, "test")
    assert val == again
    assert val["score"] == -val["loss"] and val["score"] >= 1
    assert val["acc"] == 0.0  # an untrained policy is far from CartPole's threshold of 475
    assert envs.VAL_SEED + task.cfg.eval_episodes <= envs.TEST_SEED
    assert test["score"] != val["score"] or test["return_std"] != val["return_std"]


def test_a_diverged_policy_stops_training() -> None:
    model, task = model_and_task()
    with torch.no_grad():
        model.policy.fc1.weight.fill_(math.nan)
    assert math.isnan(task.evaluate(model, "val")["loss"])
    with pytest.raises(Diverged, match="validation loss is nan"):
        train_members([Member("ticket", 0, model)], task, ticket().train, start=0, stop=2)


@pytest.mark.parametrize("scorer", ["magnitude", "random", "snip", "grasp", "synflow"])
def test_every_scorer_prunes_a_policy(scorer: str) -> None:
    model, task = model_and_task()
    ctx = scorers.ScoreContext(batches=task.score_batches(), loss=task.loss, input_shape=task.input_shape,
                               generator=torch.Generator().manual_seed(0))
    dense, out = mk.ones(model), mk.output_param(model)
    share = dense[out].numel() / mk.counts(dense)[1]  # init's density counts all weights, the output layer too
    mask = scorers.prune_at_init(model, dense, ctx, scorer=scorer, density=0.2 * (1 - share) + 0.5 * share,
                                 output=out, output_density=0.5, scope="layer", iterations=1)
    assert set(mask) == set(mk.prunable(model))
    assert all(d == pytest.approx(0.2 if n != "policy.fc3.weight" else 0.5, abs=0.02)
               for n, d in mk.layer_density(mask).items())


@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_imp_with_controls_rewinding_and_resume_on_a_policy(algorithm: str, tmp_path) -> None:
    t = ticket(**{"rl.algorithm": algorithm, "prune.levels": 1, "prune.rate": 0.5, "prune.rewind_iter": 1,
                  "prune.controls": "reinit,shuffle,random"})
    lot = Lottery(t)
    dense, sparse = list(lot.run())
    assert lot.state.start_iter == 1 and set(sparse.controls) == {"reinit", "shuffle", "random"}
    assert all(math.isfinite(r.val_score) and r.val_score == -r.val_loss for r in (dense, sparse))
    assert not sparse.collapsed

    # Stopped after level 0 and resumed from its checkpoint: the same rollouts, the same ticket.
    first = Lottery(t)
    runs = first.run()
    next(runs)
    checkpoint.save(first.state, tmp_path)
    resumed = list(Lottery(t, state=checkpoint.load(tmp_path)).run())
    assert resumed[0].val_score == sparse.val_score and resumed[0].controls == sparse.controls
    assert all(torch.equal(resumed[0].mask[n], sparse.mask[n]) for n in sparse.mask)


def test_early_bird_draws_a_policy_ticket() -> None:
    # epsilon 1 accepts any two masks: the ticket is drawn at the start of epoch 1, then pruned at init.
    lot = Lottery(ticket(**{"prune.method": "init", "prune.target_density": 0.5, "prune.early_bird": True,
                            "prune.eb_window": 2, "prune.eb_epsilon": 1.0, "train.epochs": 3}))
    (result,) = list(lot.run())
    assert lot.state.early_bird_epoch == 1 and lot.state.start_iter == lot.ipe
    assert result.density == pytest.approx(0.5, abs=0.05) and result.val_score >= 1


def test_collapse_is_detected_on_a_policy() -> None:
    # 0.01^2 of the 320 hidden weights rounds to none, whatever training did: no trajectory in this claim.
    lot = Lottery(ticket(**{"prune.levels": 2, "prune.rate": 0.99, "train.epochs": 1}))
    last = list(lot.run())[-1]
    assert last.collapsed and set(last.collapsed_layers) <= {"policy.fc1.weight", "policy.fc2.weight"}


def test_acrobot_trains_and_scores_negative_returns() -> None:
    result = list(Lottery(ticket(**{"data.name": "gym:Acrobot-v1", "train.epochs": 1, "prune.levels": 0})).run())
    assert -500 <= result[0].val_score < 0 and result[0].val_acc in (0.0, 1 / 3, 2 / 3, 1.0)


@pytest.mark.slow
@pytest.mark.science
def test_cartpole_ticket_at_a_fifth_of_its_weights_matches_dense_return() -> None:
    """PPO on CartPole-v1 (128-128 ReLU policy, 51 k environment steps per level, cosine learning rate),
    IMP at rate 0.55 for two levels with late rewinding to iteration 160 (one epoch of ten): 20.25% of
    the hidden weights left, the output layer at half the rate, 20.7% overall. Replicates 0-2 of
    train.seed 0 (init seeds 0-2).

    Measured (torch 2.14.1, gymnasium 1.4.0, CPU), mean greedy return over 10 validation episodes per
    replicate, dense / ticket:
      seed 0, replicates 0-4: avx2 500/500 500/500 500/500 500/500 500/500;
        ATEN_CPU_CAPABILITY=default 500/500 500/500 500/498.2 500/491.5 500/500; MKL_CBWR=COMPATIBLE all 500/500
      seed 1, replicates 0-4: avx2 500/500 500/500 500/489.6 334/500 500/500; default all 500/500.
    1 and 2 threads gave the same figures. The ticket's mean over replicates 0-2 was 99.3-100% of the dense
    mean. The claim is about seeds: with the former 64-64 policy and one seed, a ticket returned 438 under
    AVX-512 kernels and 500 under AVX2, and its replicates sometimes failed (seed 0 replicates 0-4, default
    kernels: 500 302 487 500 500). A dense policy fails once in 25 runs here (334), so the margins leave
    room for one failed replicate of three:
    the dense mean at least 400 (a policy that learned: a random one returns about 20) and the ticket's
    mean at least 80% of it (a ticket replicate may fall to about 200). 85-120 s on one core."""
    flat = {"data.name": "gym:CartPole-v1", "model.name": "mlp", "model.widths": "128,128",
            "train.optimizer": "adam", "train.lr": 0.0025, "train.lr_schedule": "cosine", "train.batch_size": 128,
            "train.epochs": 10, "rl.rollouts_per_epoch": 10, "prune.rate": 0.55, "prune.levels": 2,
            "prune.rewind_iter": 160, "prune.replicates": 3, "train.device": "cpu"}
    results = list(Lottery(Ticket.from_flat(flat)).run())
    dense, ticket_ = results[0], results[-1]
    returns = {name: [m.val_score for m in sorted(r.members, key=lambda m: m.replicate)]
               for name, r in (("dense", dense), ("ticket", ticket_))}
    print(f"CartPole validation return per replicate: dense {returns['dense']}, ticket {returns['ticket']}")
    assert len(returns["dense"]) == len(returns["ticket"]) == 3
    assert ticket_.density == pytest.approx(0.207, abs=0.005)
    assert dense.val_score >= 400, returns  # the mean over replicates: the dense policies learned
    assert ticket_.val_score >= 0.8 * dense.val_score, returns
