"""The language-modelling family: next-token prediction on a corpus, scored by minus the perplexity.

Its own keys: `data.tokens`, and the language models' shape keys (`model.width`, `model.depth`,
`model.heads`, `model.context`). A corpus needs a language model and a language model needs a corpus.
"""

from __future__ import annotations

import torch

from trainables.config import Ticket
from trainables.models import lm as lm_models
from trainables.tasks.base import Family, Task
from trainables.tasks.lm.corpus import CORPORA, TOKENS, load_corpus
from trainables.tasks.lm.task import LanguageModelling
from trainables.typed import ConfigError, in_range


def make(ticket: Ticket, device: torch.device | str) -> Task:
    tr = ticket.train
    return LanguageModelling(load_corpus(ticket.data), context=ticket.model.context, batch_size=tr.batch_size,
                             seed=tr.seed, device=device)


def check(ticket: Ticket) -> None:
    """Language models go with the corpus and only with it; their shape keys must fit together."""
    data, m = ticket.data.name, ticket.model
    models = tuple(lm_models.BUILDERS)
    if data in CORPORA and m.name not in models:
        raise ConfigError(f"model.name: data.name={data} needs a language model; valid choices: {', '.join(models)}")
    if m.name in models and data not in CORPORA:
        raise ConfigError(f"model.name: {m.name} is a language model and needs data.name in "
                          f"{', '.join(CORPORA)}; got {data}")
    in_range("model.width", m.width, 1, 100_000)
    in_range("model.depth", m.depth, 1, 1000)
    in_range("model.heads", m.heads, 1, 1000)
    in_range("model.context", m.context, 2, 10**6)
    if m.name == "transformer" and m.width % m.heads:
        raise ConfigError(f"model.heads: {m.heads} does not divide model.width {m.width}")


FAMILY = Family(names=tuple(CORPORA), make=make, score="-perplexity", check=check,
                choices={"data.tokens": tuple(TOKENS)})
