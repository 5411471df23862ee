"""Evaluation across processes: each rank scores a share of the users' batches, every rank gets them all.

Under Lightning's DDP (after `trainer.fit`) or a `torchrun` launch the ranks split the batches
round-robin and exchange their results, so N processes evaluate about N times faster and return
exactly what one process would: every batch is the same batch, scored by the same code.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> None:
    """Join the process group a launcher describes (torchrun's WORLD_SIZE > 1), on gloo, if none is set up."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")


def is_main_process() -> bool:
    return world()[0] == 0


def map_batches(starts: list[int], score: Callable[[int], np.ndarray]) -> dict[int, np.ndarray]:
    """{start: score(start)} for every batch start, each computed on one rank and shared with all."""
    rank, size = world()
    if size > 1:
        log.info("rank %d of %d: scoring %d of %d batches", rank, size, len(starts[rank::size]), len(starts))
    mine = {start: score(start) for start in starts[rank::size]}
    if size == 1:
        return mine
    import torch.distributed as dist

    parts: list[Any] = [None] * size
    dist.all_gather_object(parts, mine)
    return {start: rows for part in parts for start, rows in part.items()}
