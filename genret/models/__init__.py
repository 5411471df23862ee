"""Models: DualGR (generative, semantic IDs)."""

from genret.models.dualgr import DualGR, DualGRConfig, TrainBatch, paper_config

__all__ = ["DualGR", "DualGRConfig", "TrainBatch", "paper_config"]
