"""prefix_self_attention: the Triton kernel equals the reference (outputs and the cache it writes),
and the reference equals softmax attention over each beam's prefix written out by hand.

On CPU the Triton kernel runs in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1)."""

import pytest
import torch

from genret.kernels import prefix_self_attention, prefix_self_attention_reference, prefix_self_attention_triton
from genret.kernels.dispatch import HAVE_TRITON, interpreting

pytestmark = pytest.mark.kernels

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"


def make_inputs(U, W, max_width, n_levels, H, Dh, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(U, W, 3 * H * Dh, generator=g).to(dtype)
    cache = torch.randn(U, max_width, n_levels, 2, H, Dh, generator=g).to(dtype)  # slots past `level`: junk
    return qkv.to(DEVICE), cache.to(DEVICE)


def by_hand(qkv, cache, level):
    """The new token's query against the cached slots 0..level-1 and its own key, one beam at a time."""
    U, W, _ = qkv.shape
    H, Dh = cache.shape[-2:]
    q, k_new, v_new = qkv.float().unflatten(-1, (3, H, Dh)).unbind(2)
    out = torch.empty(U, W, H, Dh)
    for u in range(U):
        for w in range(W):
            keys = torch.cat([cache[u, w, :level, 0].float(), k_new[u, w, None]])  # (n, H, Dh)
            values = torch.cat([cache[u, w, :level, 1].float(), v_new[u, w, None]])
            weights = torch.einsum("hd,nhd->hn", q[u, w], keys).softmax(-1)
            out[u, w] = torch.einsum("hn,nhd->hd", weights, values)
    return out


@pytest.mark.parametrize("U,W,max_width,n_levels,H,Dh,level", [
    (2, 3, 3, 3, 2, 8, 0),  # the first level: only the token itself
    (2, 3, 5, 3, 2, 8, 1),  # a width below the cache's
    (1, 4, 4, 4, 3, 5, 3),  # heads and head dims that are not powers of two, the last slot
])
def test_reference_equals_attention_by_hand_and_writes_the_cache(U, W, max_width, n_levels, H, Dh, level):
    qkv, cache = make_inputs(U, W, max_width, n_levels, H, Dh, seed=level)
    before = cache.clone()
    expected = by_hand(qkv.cpu(), before.cpu(), level)
    out = prefix_self_attention_reference(qkv, cache, level)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)
    d = H * Dh
    written = before.clone()
    written[:, :W, level] = qkv[..., d:].unflatten(-1, (2, H, Dh))
    assert torch.equal(cache, written)  # the new slot, nothing else


@pytest.mark.triton
@pytest.mark.parametrize("U,W,max_width,n_levels,H,Dh,level", [
    (2, 3, 3, 3, 2, 8, 0), (2, 3, 5, 3, 2, 8, 1), (1, 4, 4, 4, 3, 5, 3), (3, 1, 2, 3, 4, 16, 2)])
def test_triton_equals_reference(U, W, max_width, n_levels, H, Dh, level):
    qkv, cache = make_inputs(U, W, max_width, n_levels, H, Dh, seed=10 + level)
    ref_cache, tri_cache = cache.clone(), cache.clone()
    expected = prefix_self_attention_reference(qkv, ref_cache, level)
    got = prefix_self_attention_triton(qkv, tri_cache, level)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(tri_cache, ref_cache)


@pytest.mark.triton
def test_bf16_within_bf16_tolerance():
    qkv, cache = make_inputs(2, 3, 3, 3, 2, 8, seed=20, dtype=torch.bfloat16)
    ref_cache, tri_cache = cache.clone(), cache.clone()
    expected = prefix_self_attention_reference(qkv, ref_cache, 2)
    got = prefix_self_attention_triton(qkv, tri_cache, 2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
    assert torch.equal(tri_cache, ref_cache)


@pytest.mark.triton
def test_dispatch_and_bad_inputs():
    qkv, cache = make_inputs(2, 3, 3, 3, 2, 8, seed=21)
    auto = prefix_self_attention(qkv, cache.clone(), 1, kernel="auto")
    assert torch.equal(auto, prefix_self_attention_triton(qkv, cache.clone(), 1))
    with pytest.raises(ValueError, match="contiguous"):
        prefix_self_attention_triton(qkv, cache.transpose(4, 5), 1)
    with pytest.raises(ValueError, match="level must be in"):
        prefix_self_attention(qkv, cache, 3, kernel="torch")
    with pytest.raises(ValueError, match="does not fit the cache"):
        prefix_self_attention(qkv[..., :-1], cache, 1, kernel="torch")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRITON and torch.cuda.is_available() and not interpreting()),
                    reason="needs a CUDA GPU and TRITON_INTERPRET unset")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_serving_size(dtype):
    # Paper serving size: 64 query users (two branches x 32), 256 beams, 8 heads of 64, the last level.
    qkv, cache = make_inputs(64, 256, 256, 3, 8, 64, seed=30, dtype=dtype)
    ref_cache, tri_cache = cache.clone(), cache.clone()
    expected = prefix_self_attention_reference(qkv, ref_cache, 2)
    got = prefix_self_attention_triton(qkv, tri_cache, 2)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=tol)
    assert torch.equal(tri_cache, ref_cache)
