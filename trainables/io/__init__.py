"""Files on disk: masks (the one atomic writer), level checkpoints, exported tickets, `run --out` results."""
