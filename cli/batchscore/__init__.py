"""batchscore: score lists of IDs with a LightGBM model, fetching features concurrently."""

__version__ = "0.1.0"
