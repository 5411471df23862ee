import importlib.util

import numpy as np
import pytest
import torch

from genret.decoding.exact_topk import exact_topk

HAS_FAISS = importlib.util.find_spec("faiss") is not None


def brute_force(users, items, k, histories=None):
    scores = users @ items.T
    if histories is not None:
        for row, history in enumerate(histories):
            scores[row, history] = float("-inf")
    top_scores, top_items = scores.topk(min(k, items.shape[0]), dim=1)
    top_items[torch.isneginf(top_scores)] = -1
    return top_scores, top_items


def random_problem(seed, m=37, n=101, d=8, max_history=12):
    generator = torch.Generator().manual_seed(seed)
    users = torch.randn(m, d, generator=generator)
    items = torch.randn(n, d, generator=generator)
    rng = np.random.default_rng(seed)
    histories = [rng.choice(n, size=rng.integers(0, max_history), replace=False) for _ in range(m)]
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in histories])]).astype(np.int64)
    flat = np.concatenate(histories).astype(np.int64)
    return users, items, histories, (offsets, flat)


@pytest.mark.parametrize("chunk_size, item_chunk_size", [(1, None), (5, 7), (16, 10), (37, 101), (100, 1000)])
def test_matches_brute_force_across_chunk_boundaries(chunk_size, item_chunk_size):
    users, items, histories, exclude = random_problem(seed=chunk_size)
    k = 9
    scores, top = exact_topk(users, items, k, chunk_size=chunk_size, item_chunk_size=item_chunk_size, device="cpu")
    ref_scores, ref_top = brute_force(users, items, k)
    assert scores.dtype == torch.float32 and top.dtype == torch.int64 and top.shape == (37, k)
    assert torch.equal(top, ref_top)
    torch.testing.assert_close(scores, ref_scores)

    scores, top = exact_topk(
        users, items, k, exclude=exclude, chunk_size=chunk_size, item_chunk_size=item_chunk_size, device="cpu"
    )
    ref_scores, ref_top = brute_force(users, items, k, histories)
    assert torch.equal(top, ref_top)
    torch.testing.assert_close(scores, ref_scores)
    for row, history in enumerate(histories):
        assert not set(top[row].tolist()) & set(history.tolist())


def test_numpy_input_and_padding_when_k_exceeds_remaining_items():
    users = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float64)
    items = np.random.default_rng(1).normal(size=(5, 4))
    exclude = (np.array([0, 2, 2, 7]), np.array([0, 1, 0, 1, 2, 3, 4]))
    scores, top = exact_topk(users, items, k=7, exclude=exclude, item_chunk_size=2, device="cpu")
    assert (top[0, :3] >= 2).all() and (top[0, 3:] == -1).all()
    assert (top[1, :5] >= 0).all() and (top[1, 5:] == -1).all()
    assert (top[2] == -1).all() and torch.isneginf(scores[2]).all()
    assert torch.isneginf(scores[0, 3:]).all()


def test_bad_input():
    users, items = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="dim"):
        exact_topk(users, torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match="offsets"):
        exact_topk(users, items, 2, exclude=(np.array([0, 1]), np.array([1])))
    with pytest.raises(ValueError, match="outside"):
        exact_topk(users, items, 2, exclude=(np.array([0, 1, 1]), np.array([5])))
    with pytest.raises(ValueError, match="finite"):
        exact_topk(torch.tensor([[float("nan")] * 4]), items, 2)
    with pytest.raises(ValueError, match="backend"):
        exact_topk(users, items, 2, backend="annoy")


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed (pip install faiss-cpu)")
@pytest.mark.parametrize("chunk_size", [4, 64])
def test_faiss_backend_matches_torch(chunk_size):
    users, items, histories, exclude = random_problem(seed=3, m=50, n=200, d=16, max_history=30)
    for excl in (None, exclude):
        ref_scores, ref_top = exact_topk(users, items, 20, exclude=excl, device="cpu")
        scores, top = exact_topk(users, items, 20, exclude=excl, chunk_size=chunk_size, backend="faiss")
        assert top.dtype == torch.int64 and scores.dtype == torch.float32
        assert torch.equal(top, ref_top)
        torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-4)
    # k beyond the catalogue: padded exactly like the torch path.
    small_exclude = (np.array([0, 2, 2, 12]), np.array([3, 7, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
    scores, top = exact_topk(users[:3], items[:10], 12, exclude=small_exclude, backend="faiss")
    ref_scores, ref_top = exact_topk(users[:3], items[:10], 12, exclude=small_exclude, device="cpu")
    assert torch.equal(top, ref_top)
    assert (top[0, 8:] == -1).all() and (top[1, 10:] == -1).all() and (top[2] == -1).all()
    assert torch.isneginf(scores[2]).all() and torch.isfinite(scores[1, :10]).all()

def test_faiss_missing_gives_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="faiss-cpu"):
        exact_topk(torch.randn(2, 4), torch.randn(5, 4), 2, backend="faiss")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    users, items, histories, exclude = random_problem(seed=5, m=300, n=2000, d=32, max_history=40)
    ref_scores, ref_top = exact_topk(users, items, 50, exclude=exclude, device="cpu")
    scores, top = exact_topk(users, items, 50, exclude=exclude, chunk_size=64, item_chunk_size=700, device="cuda")
    assert scores.device.type == "cpu" and top.device.type == "cpu"
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-4)
    # Near-equal scores may swap order across devices; the sets must agree.
    assert (top == ref_top).float().mean() > 0.99
