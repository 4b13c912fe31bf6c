"""Every file and folder name the engine writes or reads on disk, spelled once.

`ticket-search run --out DIR` writes `DIR/results.json`, `DIR/masks/level_NN.safetensors` and the resumable
`DIR/checkpoint/`. A level checkpoint folder holds `state.json` and the tensor file it names,
`state-<level>-<results>.safetensors`. An exported ticket folder holds `ticket.json`, `mask.safetensors`,
`rewind.safetensors` and `density.json`; MLflow's ticket and trial runs carry the same files as artifacts
(search/tracking/schema.py names them after these).

Example:
    >>> level_mask(3), level_mask(3, replicate=1), replicate_mask(2)
    ('level_03.safetensors', 'level_03_rep1.safetensors', 'mask_rep2.safetensors')
"""

from __future__ import annotations

import re

# `ticket-search run --out DIR`
RESULTS_JSON = "results.json"
MASKS_DIR = "masks"
CHECKPOINT_DIR = "checkpoint"

# a level checkpoint folder (trainables/io/checkpoint.py)
STATE_JSON = "state.json"
STATE_TENSORS = re.compile(r"state-\d{3,}-\d{3,}\.safetensors")  # what state.json may name: a name, never a path
STATE_TENSORS_GLOB = "state-*.safetensors"

# the stage store of trained states (trainables/io/stagestore.py): <root>/<key[:2]>/<key>/stage.json ...
STAGES_DIR = "stages"  # under a sweep's storage root
STAGE_JSON = "stage.json"
STAGE_TENSORS = "stage.safetensors"
STAGE_LEASE_SUFFIX = ".lease"  # <root>/<key[:2]>/<key>.lease: who is producing that entry
STAGE_TMP_PREFIX = ".tmp-"  # an entry being written, renamed into place when complete

# an exported ticket (trainables/io/ticketio.py), and the artifacts of ticket and trial runs
TICKET_JSON = "ticket.json"
MASK_FILE = "mask.safetensors"
REWIND_FILE = "rewind.safetensors"
DENSITY_FILE = "density.json"
TRAINED_FILE = "trained.safetensors"  # a ticket run's trained weights, kept positions only (io/packing.py)
MODEL_FILE = "model.pt"  # an exported network in TorchScript (ticket-search export --format)
TICKET_FILES = (TICKET_JSON, MASK_FILE, REWIND_FILE, DENSITY_FILE)


def level_mask(level: int, replicate: int = 0) -> str:
    """The mask file of a level (replicate 0) or of one of its further replicates, under `masks/`."""
    return f"level_{level:02d}.safetensors" if replicate == 0 else f"level_{level:02d}_rep{replicate}.safetensors"


def replicate_mask(replicate: int) -> str:
    """A ticket run's mask artifact: `mask.safetensors` for replicate 0, `mask_rep<R>.safetensors` beyond."""
    return MASK_FILE if replicate == 0 else f"mask_rep{replicate}.safetensors"


def state_tensors(level: int, results: int) -> str:
    """The tensor file of a checkpoint taken before `level` with `results` finished levels."""
    return f"state-{level:03d}-{results:03d}.safetensors"
