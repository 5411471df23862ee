"""benchmarks/bench_paper_train.py: its FLOP count (the MFU numerator) agrees with torch's own count."""


import pytest
import torch

from genret.models.dualgr import DualGR, DualGRConfig, TrainBatch


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_paper_train")


@pytest.mark.parametrize("n_neg", [0, 6])
def test_step_flops_is_close_to_torch_flop_counter(bench, n_neg):
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    K, L, B, T, n_items = 64, 3, 4, 30, 200
    cfg = DualGRConfig(codebook_size=K, n_levels=L, d_model=32, n_heads=4, n_blocks=2, d_ffn=64, dropout=0.0,
                       max_history=T, long_window=T, short_window=8, in_bucket_cap=8)
    model = DualGR(cfg)
    codes = torch.randint(0, K, (n_items, L))
    model.set_item_codes(codes)
    items = torch.randint(0, n_items, (B, T))
    neg = torch.randint(0, n_items, (B, n_neg))
    batch = TrainBatch(items=items, codes=codes[items], user_feats=torch.zeros(B, 0, dtype=torch.long),
                       side=torch.zeros(B, T, 0, dtype=torch.long), neg_items=neg, neg_codes=codes[neg],
                       neg_pos=torch.randint(1, T, (B, n_neg)), loss_mask=items >= 0)
    counter = FlopCounterMode(display=False)
    with counter:
        model.loss(batch)["loss"].backward()
    counted = counter.get_total_flops()
    # torch's counter sees every projection, FFN and head product but not the CPU attention kernel:
    # without the attention terms the shape count must be exact; with them, larger.
    assert bench.step_flops(cfg, batch, attention=False) == pytest.approx(counted, rel=1e-9)
    assert bench.step_flops(cfg, batch) > counted
