"""Retriever(dtype=torch.bfloat16): bf16 weights end to end (no autocast) agree with fp32 serving
within bf16 tolerance, on both kernel paths, and leave the caller's model untouched."""

import pytest
import torch

from genret.decoding.beam_search import Histories
from genret.decoding.retriever import Retriever
from genret.models.dualgr import DualGR, DualGRConfig
from genret.tokenizers import SIDIndex

K, L, N_ITEMS = 8, 3, 40


def make_model():
    torch.manual_seed(0)
    model = DualGR(DualGRConfig(codebook_size=K, n_levels=L, n_items=N_ITEMS, d_model=32, n_heads=4, n_blocks=2,
                                d_ffn=64, dropout=0.0, max_history=30, long_window=30, short_window=4,
                                in_bucket_cap=3, cross_rope=True)).eval()
    codes = torch.randint(0, K, (N_ITEMS, L), generator=torch.Generator().manual_seed(1))
    codes[:, 0] = torch.arange(N_ITEMS) % 4
    model.set_item_codes(codes)
    # Sharper logits than the init's, so the scores spread over several nats (what bf16 must keep).
    with torch.no_grad():
        for head in model.heads:
            head.weight.mul_(40.0)
    return model, SIDIndex.build(codes.numpy(), K)


def scores_by_item(items, scores):
    return {int(i): float(s) for i, s in zip(items.tolist(), scores.tolist()) if i >= 0}


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_bf16_weights_agree_with_fp32_within_bf16_tolerance(kernel):
    if kernel == "triton":
        pytest.importorskip("triton")
    model, index = make_model()
    hist = Histories(torch.tensor([0, 5, 6, 9]), torch.tensor([1, 2, 3, 9, 10, 4, 7, 20, 33]),
                     torch.zeros(3, 0, dtype=torch.long))
    fp32 = Retriever(model, index, list(range(N_ITEMS)), kernel=kernel)
    bf16 = Retriever(model, index, list(range(N_ITEMS)), kernel=kernel, dtype=torch.bfloat16)
    assert model.bos.dtype == torch.float32  # the caller's model is copied, not cast
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())
    # A beam wide enough to enumerate every SID: both list every reachable item, so the comparison
    # is item by item, not a ranking that bf16 rounding may reorder among near-ties.
    items32, scores32 = fp32.retrieve_indices(hist, N_ITEMS)
    items16, scores16 = bf16.retrieve_indices(hist, N_ITEMS)
    assert scores16.dtype == torch.float32
    for u in range(3):
        a, b = scores_by_item(items32[u], scores32[u]), scores_by_item(items16[u], scores16[u])
        assert a.keys() == b.keys() and len(a) == N_ITEMS
        spread = max(a.values()) - min(a.values())
        assert spread > 1.0  # the test has scores to get wrong
        for item, score in a.items():
            assert abs(b[item] - score) <= 0.05 + 0.02 * abs(score), (u, item, score, b[item])
    # The best few agree as a set (their fp32 scores are well apart from the rest in this model).
    assert set(items16[:, :3].flatten().tolist()) == set(items32[:, :3].flatten().tolist())


def test_dtype_must_be_floating_point():
    model, index = make_model()
    with pytest.raises(ValueError, match="floating-point dtype"):
        Retriever(model, index, list(range(N_ITEMS)), kernel="torch", dtype=torch.int64)
