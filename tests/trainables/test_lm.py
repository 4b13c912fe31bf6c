"""Language-model tickets: the pydoc corpus, the LSTM and Transformer, perplexity, pruning, and the claim
that an IMP ticket with late rewinding at about 30% density matches the dense model's perplexity."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.config import ConfigError, DataConfig, Ticket
from trainables.lottery import Lottery
from trainables.pruning import masks as mk
from trainables.pruning import scorers
from trainables.tasks.lm.corpus import UNK, load_corpus
from trainables.tasks.lm.task import LanguageModelling
from trainables.tasks.registry import build_model, make_task

# Tiny and fast: 41 iterations of 256 windows x 32 characters cover the 0.33 M training characters once.
TINY = {"data.name": "pydoc", "model.name": "lstm", "model.width": 16, "model.depth": 1, "model.heads": 2,
        "model.context": 32, "train.batch_size": 256, "train.epochs": 1, "train.optimizer": "adam",
        "train.lr": 0.01, "train.device": "cpu"}

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small models, one thread


def ticket(**kw: object) -> Ticket:
    return Ticket.from_flat({**TINY, **kw})


def model_and_task(**kw: object) -> tuple[nn.Module, LanguageModelling]:
    t = ticket(**kw)
    task = make_task(t)
    assert isinstance(task, LanguageModelling)
    torch.manual_seed(0)
    return build_model(t, task.input_shape, task.num_outputs), task


def test_corpus_splits_whole_documents_and_builds_its_vocabulary_from_training_text() -> None:
    c = load_corpus(DataConfig(name="pydoc"))
    train, val, test = (set(c.documents[s]) for s in ("train", "val", "test"))
    assert train and val and test and not (train & val or train & test or val & test)
    total = len(c.train) + len(c.val) + len(c.test)
    assert 0.15 < len(c.test) / total <= 0.2  # test: documents filling up to 20% of the characters
    assert c.vocab[0] == UNK and len(set(c.vocab)) == len(c.vocab)
    assert int(c.train.min()) >= 1  # every training character is in the vocabulary
    assert c is load_corpus(DataConfig(name="pydoc"))  # cached
    moved = load_corpus(DataConfig(name="pydoc", seed=1))
    assert moved.documents["test"] == c.documents["test"] and moved.documents["val"] != c.documents["val"]


def test_word_tokens_map_rare_words_to_unk() -> None:
    c = load_corpus(DataConfig(name="pydoc", tokens="word"))
    assert {"def", "return", "(", "\n"} <= set(c.vocab)
    assert 0.0 < float((c.val == 0).float().mean()) < 0.15  # words unseen in training (or seen once)


@pytest.mark.parametrize(("flat", "match"), [
    ({"data.name": "pydoc", "model.name": "mlp"}, r"model.name: data.name=pydoc needs a language model; "
                                                  r"valid choices: lstm, transformer"),
    ({"model.name": "lstm"}, r"model.name: lstm is a language model and needs data.name in pydoc"),
    ({"data.name": "pydoc", "model.name": "transformer", "model.heads": 3},
     r"model.heads: 3 does not divide model.width 128"),
    ({"data.name": "pydoc", "model.name": "lstm", "data.tokens": "bytes"},
     r"data.tokens: unknown value 'bytes'; valid choices: char, word"),
])
def test_bad_language_model_settings_name_the_field(flat: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Ticket.from_flat(flat)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_models_predict_every_position_from_the_output_layer(name: str) -> None:
    model, task = model_and_task(**{"model.name": name})
    x, y = task.batch(0)
    logits = model(x)
    assert logits.shape == (*x.shape, task.vocab) and y.shape == x.shape
    assert model.output_name == "head"
    one_hot = nn.functional.one_hot(x, task.vocab).float()  # the float input path is the same lookup
    torch.testing.assert_close(model(one_hot), logits)
    names = set(mk.prunable(model))
    assert "embed.weight" in names and "head.weight" in names
    if name == "lstm":
        assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0"} <= names
        assert not any("bias" in n for n in names)
        assert "lstm.bias_ih_l0" in mk.prunable(model, bias=True)
    else:
        assert {f"blocks.0.{p}.weight" for p in ("q", "k", "v", "out", "fc", "proj")} <= names
        assert not any("norm" in n for n in names)


def test_transformer_is_causal() -> None:
    model, task = model_and_task(**{"model.name": "transformer"})
    x, _ = task.batch(0)
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % task.vocab
    torch.testing.assert_close(model(changed)[:, :-1], model(x)[:, :-1])


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_dense_embeddings_are_never_pruned(name: str) -> None:
    model, _ = model_and_task(**{"model.name": name, "model.dense_embeddings": True})
    names = set(mk.prunable(model))
    assert "embed.weight" not in names and "position.weight" not in names and "head.weight" in names


def test_batches_are_a_function_of_seed_and_iteration() -> None:
    _, task = model_and_task()
    _, again = model_and_task()
    x, y = task.batch(5)
    assert torch.equal(x, again.batch(5)[0]) and not torch.equal(x, task.batch(6)[0])
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the next characters
    assert task.iters_per_epoch() == math.ceil(len(task.corpus.train) / (256 * 32))


class Uniform(nn.Module):
    """Equal logits for every token: perplexity must be exactly the vocabulary size."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.numel()
        return torch.zeros(*x.shape, self.vocab)


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluation_scores_every_token_once_and_reports_perplexity(split: str) -> None:
    _, task = model_and_task()
    uniform = Uniform(task.vocab)
    out = task.evaluate(uniform, split)
    text = task.splits[split]
    assert uniform.seen == len(text) - 1  # every token but the first predicted exactly once
    assert out["loss"] == pytest.approx(math.log(task.vocab))
    assert out["perplexity"] == pytest.approx(task.vocab) and out["score"] == -out["perplexity"]
    assert out["acc"] == pytest.approx(float((text[1:] == 0).float().mean()))  # argmax of ties is id 0


@pytest.mark.parametrize("name", ["lstm", "transformer"])
@pytest.mark.parametrize("scorer", ["magnitude", "random", "snip", "grasp", "synflow"])
def test_every_scorer_prunes_a_language_model(name: str, scorer: str) -> None:
    model, task = model_and_task(**{"model.name": name})
    ctx = scorers.ScoreContext(batches=task.score_batches(), loss=task.loss, input_shape=task.input_shape,
                               generator=torch.Generator().manual_seed(0))
    dense = mk.ones(model)
    share = dense["head.weight"].numel() / mk.counts(dense)[1]
    overall = 0.3 * (1 - share) + 0.6 * share  # the density of all weights that leaves the others at 0.3
    mask = scorers.prune_at_init(model, dense, ctx, scorer=scorer, density=overall,
                                 output=mk.output_param(model), output_density=0.6, scope="global",
                                 iterations=2 if scorer == "synflow" else 1)
    pool = {n: m for n, m in mask.items() if n != "head.weight"}
    assert mk.density(pool) == pytest.approx(0.3, abs=1e-3)
    assert mk.density(mask) == pytest.approx(overall, abs=1e-3)  # of all weights, the output layer included
    assert mk.density({"head.weight": mask["head.weight"]}) == pytest.approx(0.6, abs=1e-3)
    if scorer == "synflow" and name == "lstm":  # the flow reaches every layer: none is cut off entirely
        assert not mk.collapsed(mask)
    # (A softmax over identical inputs hides q and k from SynFlow's flow, so on the Transformer a global
    # SynFlow ranking may empty them; the README says to use prune.scope=layer there.)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_imp_with_controls_on_a_language_model(name: str) -> None:
    lot = Lottery(ticket(**{"model.name": name, "prune.levels": 1, "prune.rate": 0.5, "prune.rewind_iter": 5,
                            "prune.controls": "reinit,shuffle,random"}))
    dense, sparse = list(lot.run())
    assert dense.density == 1.0 and sparse.density < 0.6
    for r in (dense, sparse):
        assert math.isfinite(r.val_score) and r.val_score < -1  # minus a perplexity above 1
        assert 0 < r.val_acc < 1 and r.val_score == pytest.approx(-math.exp(r.val_loss))
    assert set(sparse.controls) == {"reinit", "shuffle", "random"}
    assert all(c["density"] == pytest.approx(sparse.density, abs=1e-3) for c in sparse.controls.values())
    assert lot.state.start_iter == 5  # late rewinding: the ticket restarts at iteration 5
    assert not sparse.collapsed


def test_early_bird_draws_a_language_model_ticket() -> None:
    # epsilon 1 accepts any two masks: the ticket is drawn at the start of epoch 1, then pruned at init.
    lot = Lottery(ticket(**{"prune.method": "init", "prune.target_density": 0.5, "prune.early_bird": True,
                            "prune.eb_window": 2, "prune.eb_epsilon": 1.0, "train.epochs": 3}))
    (result,) = list(lot.run())
    assert lot.state.early_bird_epoch == 1 and lot.state.start_iter == lot.ipe
    pool = {n: m for n, m in result.mask.items() if n != "head.weight"}  # the output layer keeps more
    assert mk.density(pool) < 0.5 < mk.density({"head.weight": result.mask["head.weight"]})
    assert mk.density(result.mask) == pytest.approx(0.5, abs=1e-3) and math.isfinite(result.val_score)


def test_collapse_is_detected_and_reported() -> None:
    # 1% of 1% of the pool left, ranked globally: a whole layer (the embedding) loses every weight. The
    # count rounds to no weight at all, whatever training did: this claim does not depend on a trajectory.
    lot = Lottery(ticket(**{"prune.levels": 2, "prune.rate": 0.99, "prune.output_rate": 0.5}))
    last = list(lot.run())[-1]
    assert last.collapsed and last.collapsed_layers
    assert all(last.layer_density[n] == 0.0 for n in last.collapsed_layers)


@pytest.mark.slow
@pytest.mark.science
def test_lstm_ticket_at_a_third_of_its_weights_matches_dense_perplexity() -> None:
    """IMP with late rewinding (iteration 10 of 164) on a character LSTM (64 units): two levels at rate
    0.48 keep 31.5% of the weights (27% of the pool, the output layer at half the rate). Replicates 0-2 of
    train.seed 0 (init seeds 0-2).

    Measured (torch 2.14.1, Python 3.11.7, CPU), validation perplexity dense / ticket per replicate:
      seed 0, avx2 (1 or 2 threads): 9.64/8.87 8.97/8.52 9.20/8.65, ticket / dense 0.921 0.950 0.941
              (mean 0.937); ATEN_CPU_CAPABILITY=default and MKL_CBWR=COMPATIBLE the same to 0.01
      seed 1, avx2 and default: 8.65/8.38 8.87/8.48 9.12/8.45, ratios 0.968 0.956 0.926 (mean 0.950).
    The kernels move a perplexity by 0.01 at most, the seeds by 0.5 and the ratio by up to 0.05: the ticket
    must match its dense model in every replicate (ratio at most 1.0; the worst seen 0.968) and beat it on
    average (mean ratio at most 0.98; seen 0.937 and 0.950). Rewinding to iteration 0 instead gave 10.13
    for replicate 0 (+5%). About 20 s on one core."""
    flat = {"data.name": "pydoc", "model.name": "lstm", "model.width": 64, "model.depth": 1,
            "model.context": 64, "train.batch_size": 32, "train.epochs": 1, "train.optimizer": "adam",
            "train.lr": 0.01, "prune.rate": 0.48, "prune.levels": 2, "prune.rewind_iter": 10,
            "prune.replicates": 3, "train.device": "cpu"}
    results = list(Lottery(Ticket.from_flat(flat)).run())
    dense, ticket_ = results[0], results[-1]
    dense_ppl, ticket_ppl = ([-m.val_score for m in sorted(r.members, key=lambda m: m.replicate)]
                             for r in (dense, ticket_))
    assert len(dense_ppl) == len(ticket_ppl) == 3
    assert ticket_.density == pytest.approx(0.315, abs=0.01)
    ratios = [t / d for t, d in zip(ticket_ppl, dense_ppl, strict=True)]
    print("LSTM validation perplexity per replicate, dense/ticket:",
          " ".join(f"{d:.2f}/{t:.2f}" for d, t in zip(dense_ppl, ticket_ppl, strict=True)),
          "ratios", " ".join(f"{r:.3f}" for r in ratios))
    assert max(ratios) <= 1.0, (dense_ppl, ticket_ppl)
    assert sum(ratios) / len(ratios) <= 0.98, (dense_ppl, ticket_ppl)
    assert max(dense_ppl) < 12  # models that learned: the unigram perplexity of this text is about 25
