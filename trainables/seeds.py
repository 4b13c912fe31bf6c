"""Named seed streams: every random draw of a ticket search is a pure function of `train.seed` and a place.

Rewinding, resuming, and training members side by side all rest on this: initialisation, data order,
augmentation, scoring examples and control masks are drawn from seeds derived here, never from a shared
generator's position. The salts are the historical values (changing one changes every seeded result), so
they are named here rather than chosen anew.

- `init(seed, r)`: initialisation of replicate r (seed * 1000 + r, so replicates of seed s never meet s+1's).
- `derive(seed, *parts)`: any other stream, a hash of (seed, *parts); int tuples hash alike in every process.
- the instability twin's data seed: `twin_order(seed, r)`, used in place of `seed` below.
- data order: `data_order(seed, step)` = seed * 1_000_003 + step (a classification epoch's permutation, a
  language model's windows of one iteration); `augmentation(seed, it)` = seed * 7_919 + it.

Example:
    >>> init(3, 1), data_order(2, 5), derive(0, 1, 2) == derive(0, 1, 2)
    (3001, 2000011, True)
"""

from __future__ import annotations

import torch

REPLICATES = 1000  # init seeds per train.seed: replicate r of seed s is s * 1000 + r
DATA_ORDER = 1_000_003  # a prime: the data-order streams of neighbouring train.seed values never meet
AUGMENT = 7_919  # a prime, apart from DATA_ORDER: flip+crop draws of iteration `it`
DERIVED = 2**62  # derived seeds lie in [0, 2**62)

# salts of the derived streams (the last element of the hashed tuple, or the first for controls)
TRANSFER = 17  # a transferred mask's layers whose shape changed get random masks from here
SCORING = 29  # the `random` scorer, per replicate and level
SCORING_EXAMPLES = 37  # SNIP/GraSP's scoring examples, per replicate and level (apart from `random`'s draws)
LEVEL = 31  # any in-model randomness of a level (dropout in tv: models)
CONTROL = 104_729  # control masks and the reinit control's initialisation, apart from the tickets'
TWIN = 37  # the instability twin's data order, per replicate: (seed, r, TWIN) never meets SCORING_EXAMPLES' 4-tuples


def init(seed: int, replicate: int) -> int:
    """The initialisation seed of replicate `replicate`."""
    return seed * REPLICATES + replicate


def derive(seed: int, *parts: int, below: int = DERIVED) -> int:
    """A seed in [0, below) derived from `seed` and `parts` (Python hashes int tuples alike in every process)."""
    return hash((seed, *parts)) % below


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`."""
    return torch.Generator().manual_seed(seed)


def data_order(seed: int, step: int) -> int:
    """The data-order seed of `step` (an epoch for classification, an iteration for a language model)."""
    return seed * DATA_ORDER + step


def augmentation(seed: int, iteration: int) -> int:
    """The seed of iteration `iteration`'s augmentation draws."""
    return seed * AUGMENT + iteration


def transfer(seed: int, replicate: int) -> torch.Generator:
    """Random masks of a transferred ticket's reshaped layers, for one replicate."""
    return generator(derive(seed, replicate, TRANSFER))


def scoring(seed: int, replicate: int, level: int) -> torch.Generator:
    """The scorers' generator of one replicate at one level."""
    return generator(derive(seed, replicate, level, SCORING))


def scoring_examples(seed: int, replicate: int, level: int) -> torch.Generator:
    """The draw of SNIP/GraSP's scoring examples of one replicate at one level (`prune.score_examples`)."""
    return generator(derive(seed, replicate, level, SCORING_EXAMPLES))


def level(seed: int, level: int) -> int:
    """The global torch seed set before a level trains (in-model randomness such as dropout)."""
    return derive(seed, level, LEVEL)


def control_mask(seed: int, replicate: int, level: int, control: str) -> torch.Generator:
    """A control's mask draws. The name's length is the historical salt (reinit and random share 6 letters:
    reinit draws no mask)."""
    return generator(derive(seed, CONTROL, replicate, level, len(control)))


def twin_order(seed: int, replicate: int) -> int:
    """The data seed of replicate `replicate`'s instability twin: its own order, never the ticket's."""
    return derive(seed, replicate, TWIN, below=2**31)


def control_init(seed: int, replicate: int, level: int) -> int:
    """The reinit control's initialisation seed."""
    return derive(seed, CONTROL, replicate, level)
