"""A tiny DualGR checkpoint written in-process (no training), in genret's checkpoint format."""

import dataclasses

import pytest
import torch

from genret.models.dualgr import DualGR, DualGRConfig
from genret.tokenizers import SIDIndex
from genret.training.checkpoint import genret_entry


def write_tiny_checkpoint(path, seed: int = 0, n_items: int = 40, first_id: int = 100, side: bool = False,
                          user_field: bool = True):
    """A random DualGR over `n_items` items with raw ids first_id, first_id + 1, ... and (with
    `user_field`) one user field "segment" (3 ids); with `side`, one side feature "rating" (buckets
    at 2 and 4)."""
    torch.manual_seed(seed)
    K, L = 8, 3
    cfg = DualGRConfig(codebook_size=K, n_levels=L, n_items=n_items, d_model=32, n_heads=4, n_blocks=1, d_ffn=64,
                       dropout=0.0, max_history=30, long_window=30, short_window=4, in_bucket_cap=3,
                       user_feature_cardinalities=[3] if user_field else [], n_side_features=int(side), side_buckets=3)
    model = DualGR(cfg)
    model.routing_stats.copy_(torch.tensor([3.0, 10.0]))
    codes = torch.randint(0, K, (n_items, L), generator=torch.Generator().manual_seed(seed + 1))
    codes[:, 0] = torch.arange(n_items) % 4
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "genret": genret_entry("dualgr", dataclasses.asdict(cfg), {
            "item_ids": list(range(first_id, first_id + n_items)), "codes": codes,
            "sid_index": SIDIndex.build(codes.numpy(), K).state_dict(), "dataset": "tiny",
            "side_features": {"names": ["rating"] if side else [], "boundaries": [[2.0, 4.0]] if side else [],
                              "n_buckets": 3},
            "user_feature_names": ["segment"] if user_field else [],
        }),
    }
    torch.save(ckpt, path)
    return path


@pytest.fixture
def tiny_ckpt(tmp_path):
    return write_tiny_checkpoint(tmp_path / "tiny.ckpt")


@pytest.fixture
def make_tiny_ckpt(tmp_path):
    """write_tiny_checkpoint(tmp_path / name, **kwargs), for tests that need several."""
    return lambda name, **kwargs: write_tiny_checkpoint(tmp_path / name, **kwargs)
