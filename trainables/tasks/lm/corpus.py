"""The `pydoc` corpus: CPython's own help text, split by document and tokenised, as id tensors.

`pydoc_data.topics.topics` ships with every CPython (about 80 documents, 0.46 M characters of English
help text for 3.11), so language-model tickets need no download. This module owns the corpus behind
`data.name=pydoc`: which documents go to train/val/test (whole documents, never a document cut in two,
so no validation text leaks into training), the vocabulary (`data.tokens`: characters, or words and
punctuation) and the id tensors. The task (task.py) cuts windows out of them.

Splits mirror the classification datasets (data.py), counted in characters since the documents range
from 0.2 to 62 thousand characters: documents in a fixed random order fill the test split up to 20% of
the text, then, in an order drawn from `data.seed`, the validation split up to `data.val_fraction` of
the rest. The vocabulary comes
from the training split alone; anything else is `<unk>` (id 0). The text differs slightly between
Python versions, so perplexities are comparable only on one Python version.

Example:
    >>> from trainables.config import DataConfig
    >>> c = load_corpus(DataConfig(name="pydoc"))
    >>> c.vocab[0], len(c.train) > len(c.val) > 0
    ('<unk>', True)
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainables.config import DataConfig
from trainables.tasks.base import TEST_FRACTION, TEST_SEED
from trainables.typed import lookup

UNK = "<unk>"
WORD = re.compile(r"\w+|[^\w\s]|\n")  # words, single punctuation marks, and line breaks (layout matters)
WORD_MIN_COUNT = 2  # a word seen once in training is <unk>: about 2,900 words stay (Python 3.11)


@dataclass(frozen=True)
class Corpus:
    """Token ids (int64, 1-D, documents concatenated) per split, and the vocabulary (id -> token)."""

    tokens: str  # "char" or "word"
    vocab: tuple[str, ...]
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    documents: dict[str, tuple[str, ...]]  # split -> names of its documents (pydoc topic keys)


def _pydoc() -> dict[str, str]:
    from pydoc_data.topics import topics  # imported late: only language-model workers need it

    return {name: topics[name] for name in sorted(topics)}


# data.name -> its documents (name -> text): a corpus is a function plus one line here
CORPORA: dict[str, Callable[[], dict[str, str]]] = {"pydoc": _pydoc}


@dataclass(frozen=True)
class Tokens:
    """How `data.tokens` cuts text, and how often a token must appear in training to get its own id."""

    split: Callable[[str], list[str]]
    min_count: int


TOKENS: dict[str, Tokens] = {"char": Tokens(list, 1), "word": Tokens(WORD.findall, WORD_MIN_COUNT)}


def tokenize(text: str, tokens: str) -> list[str]:
    return lookup(TOKENS, "data.tokens", tokens).split(text)


def carve_documents(docs: dict[str, str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(kept, held out) document names, in sorted order: walking the documents in a seeded random order,
    each one that still fits is held out, up to `fraction` of the characters. At least one is held out."""
    names = sorted(docs)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    goal, held_chars, held = fraction * sum(len(t) for t in docs.values()), 0, {names[order[0]]}
    for i in order:
        if not held or held_chars + len(docs[names[i]]) <= goal:
            held.add(names[i])
            held_chars += len(docs[names[i]])
    return [n for n in names if n not in held], [n for n in names if n in held]


@functools.lru_cache(maxsize=4)
def _build(name: str, tokens: str, val_fraction: float, seed: int) -> Corpus:
    docs = CORPORA[name]()
    rest, test = carve_documents(docs, TEST_FRACTION, TEST_SEED)
    split: dict[str, list[str]] = {"test": test, "train": rest, "val": test}
    if val_fraction > 0:  # else, as for classification, the validation split is the test split
        split["train"], split["val"] = carve_documents({n: docs[n] for n in rest}, val_fraction, seed)
    # Each document ends with a newline; joined as they are, a window may run from one into the next.
    text = {part: tokenize("".join(docs[n] for n in chosen), tokens) for part, chosen in split.items()}
    counts = collections.Counter(text["train"])
    least = TOKENS[tokens].min_count
    vocab = (UNK, *sorted(t for t, c in counts.items() if c >= least))
    index = {t: i for i, t in enumerate(vocab)}

    def ids(part: str) -> torch.Tensor:
        return torch.tensor([index.get(t, 0) for t in text[part]], dtype=torch.int64)

    return Corpus(tokens=tokens, vocab=vocab, train=ids("train"), val=ids("val"), test=ids("test"),
                  documents={part: tuple(chosen) for part, chosen in split.items()})


def load_corpus(cfg: DataConfig) -> Corpus:
    """The corpus for `cfg` (cached per tokens, validation fraction and seed; tensors on the CPU)."""
    lookup(CORPORA, "data.name", cfg.name)
    return _build(cfg.name, cfg.tokens, cfg.val_fraction, cfg.seed)
