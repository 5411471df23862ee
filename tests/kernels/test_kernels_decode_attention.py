"""decode_cross_attention: reference vs a naive per-beam loop, Triton kernel vs reference, edges.

On CPU the Triton kernel runs in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1); on a
GPU machine run with TRITON_INTERPRET=0 and the same comparisons run on CUDA.
"""

import math

import pytest
import torch

from genret.kernels import decode_cross_attention, decode_cross_attention_reference, decode_cross_attention_triton
from genret.kernels.dispatch import HAVE_TRITON, interpreting

pytestmark = pytest.mark.kernels

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
needs_gpu = pytest.mark.skipif(
    not (HAVE_TRITON and torch.cuda.is_available() and not interpreting()),
    reason="needs a CUDA GPU and TRITON_INTERPRET unset",
)


def make_inputs(lengths, W, H, Dh, seed, device=DEVICE, dtype=torch.float32):
    """Random q/k/v for segments of the given lengths, and ranges that cover the edge cases."""
    g = torch.Generator().manual_seed(seed)
    U = len(lengths)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    seg_offsets = torch.zeros(U + 1, dtype=torch.int64)
    seg_offsets[1:] = lengths_t.cumsum(0)
    N = int(seg_offsets[-1])
    q = torch.randn(U, W, H, Dh, generator=g)
    k = torch.randn(N, H, Dh, generator=g)
    v = torch.randn(N, H, Dh, generator=g)
    span = lengths_t.clamp(min=1)[:, None]
    # lo in [-2, L+2), hi - lo in [-3, L): empty ranges, ranges over the always-keys, hi past the end.
    key_lo = (torch.rand(U, W, generator=g) * (span + 4)).long() - 2
    key_hi = key_lo + (torch.rand(U, W, generator=g) * (span + 3)).long() - 3
    to = dict(device=device)
    return (
        q.to(dtype=dtype, **to), k.to(dtype=dtype, **to), v.to(dtype=dtype, **to),
        seg_offsets.to(**to), key_lo.to(**to), key_hi.to(**to),
    )


def naive_attention(q, k, v, seg_offsets, key_lo, key_hi, n_always, scale=None):
    """Per-beam, per-head loop over an explicit list of attended rows (tiny inputs only)."""
    U, W, H, Dh = q.shape
    scale = 1.0 / math.sqrt(Dh) if scale is None else scale
    out = torch.zeros(U, W, H, Dh, dtype=torch.float64)
    for u in range(U):
        start, end = int(seg_offsets[u]), int(seg_offsets[u + 1])
        length = end - start
        for w in range(W):
            always = set(range(min(n_always, length)))
            in_range = set(range(max(int(key_lo[u, w]), n_always), min(int(key_hi[u, w]), length)))
            rows = [start + j for j in sorted(always | in_range)]
            if not rows:
                continue
            for h in range(H):
                scores = k[rows, h].double() @ q[u, w, h].double() * scale
                out[u, w, h] = torch.softmax(scores, dim=0) @ v[rows, h].double()
    return out


@pytest.mark.parametrize("n_always", [0, 1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_naive_loop(n_always, seed):
    inputs = make_inputs([0, 1, 9, 23], W=4, H=2, Dh=8, seed=seed, device="cpu")
    expected = naive_attention(*inputs, n_always)
    got = decode_cross_attention_reference(*inputs, n_always=n_always)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


CASES = [
    # lengths (incl. empty, length 1, not multiples of the 16-key block), W, H, Dh, n_always, seed
    ([0, 1, 37, 200], 5, 2, 16, 1, 0),
    ([3, 150], 20, 1, 24, 0, 1),  # 20 beams = two beam tiles; Dh not a power of two
    ([64, 17, 1], 1, 3, 32, 2, 2),  # one beam
    ([0, 0], 3, 2, 16, 1, 3),  # every history empty
    ([90, 31, 5], 7, 2, 8, 1, 4),  # Dh below the 16-wide block
]


@pytest.mark.triton
@pytest.mark.parametrize("lengths,W,H,Dh,n_always,seed", CASES)
def test_triton_matches_reference(lengths, W, H, Dh, n_always, seed):
    inputs = make_inputs(lengths, W, H, Dh, seed)
    expected = decode_cross_attention_reference(*inputs, n_always=n_always)
    got = decode_cross_attention_triton(*inputs, n_always=n_always, input_precision="ieee")
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.triton
def test_far_apart_buckets_skip_blocks_correctly():
    # One tile, beams whose ranges sit at both ends of a 200-key history: the blocks between are skipped.
    q, k, v, seg_offsets, _, _ = make_inputs([200, 40], W=5, H=2, Dh=16, seed=5)
    key_lo = torch.tensor([[1, 190, 100, 50, 0], [0, 39, 20, 20, 2]], device=DEVICE)
    key_hi = torch.tensor([[5, 200, 100, 51, 300], [1, 40, 60, 10, 3]], device=DEVICE)
    for n_always in (0, 1):
        expected = decode_cross_attention_reference(q, k, v, seg_offsets, key_lo, key_hi, n_always)
        got = decode_cross_attention_triton(q, k, v, seg_offsets, key_lo, key_hi, n_always, input_precision="ieee")
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
        naive = naive_attention(q.cpu(), k.cpu(), v.cpu(), seg_offsets.cpu(), key_lo.cpu(), key_hi.cpu(), n_always)
        torch.testing.assert_close(got.cpu().double(), naive, atol=2e-5, rtol=2e-5)


@pytest.mark.triton
def test_empty_union_gives_zeros():
    q, k, v, seg_offsets, _, _ = make_inputs([12, 0], W=3, H=2, Dh=16, seed=6)
    key_lo = torch.tensor([[4, 12, 0], [0, 0, 1]], device=DEVICE)
    key_hi = torch.tensor([[4, 20, 0], [5, 0, 0]], device=DEVICE)  # empty, past the end, empty; empty history
    for kernel in ("torch", "triton"):
        out = decode_cross_attention(q, k, v, seg_offsets, key_lo, key_hi, n_always=0, kernel=kernel)
        assert torch.equal(out, torch.zeros_like(out))
        # With the static token the same beams of user 0 attend exactly one key: its value row.
        out = decode_cross_attention(q, k, v, seg_offsets, key_lo, key_hi, n_always=1, kernel=kernel)
        torch.testing.assert_close(out[0], v[0].expand(3, -1, -1), atol=1e-6, rtol=1e-6)
        assert torch.equal(out[1], torch.zeros_like(out[1]))  # empty history: nothing, not even the static token


@pytest.mark.triton
def test_strided_inputs_custom_scale_and_dispatch():
    q, k, v, seg_offsets, key_lo, key_hi = make_inputs([30, 7], W=6, H=2, Dh=16, seed=7)
    q_strided = q.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)  # same values, other strides
    k_wide = torch.cat([k, torch.randn_like(k)], dim=-1)[..., :16]  # non-contiguous view
    assert not q_strided.is_contiguous() and not k_wide.is_contiguous()
    expected = decode_cross_attention_reference(q, k, v, seg_offsets, key_lo, key_hi, 1, scale=0.3)
    got = decode_cross_attention_triton(q_strided, k_wide, v, seg_offsets, key_lo, key_hi, 1, 0.3, "ieee")
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    # auto picks the kernel here (CUDA or the interpreter): same bits as an explicit "triton" call.
    auto = decode_cross_attention(q, k, v, seg_offsets, key_lo, key_hi, 1, 0.3, kernel="auto")
    assert torch.equal(auto, decode_cross_attention(q, k, v, seg_offsets, key_lo, key_hi, 1, 0.3, kernel="triton"))
    torch_out = decode_cross_attention(q, k, v, seg_offsets, key_lo, key_hi, 1, 0.3, kernel="torch")
    assert torch.equal(torch_out, expected)


@pytest.mark.triton
def test_half_precision_inputs_keep_their_dtype():
    q, k, v, seg_offsets, key_lo, key_hi = make_inputs([40, 9], W=4, H=2, Dh=16, seed=8, dtype=torch.bfloat16)
    got = decode_cross_attention_triton(q, k, v, seg_offsets, key_lo, key_hi, 1)
    assert got.dtype == torch.bfloat16
    expected = decode_cross_attention_reference(q.float(), k.float(), v.float(), seg_offsets, key_lo, key_hi, 1)
    torch.testing.assert_close(got.float(), expected, atol=3e-2, rtol=3e-2)


def test_bad_inputs_raise_clear_errors():
    q, k, v, seg_offsets, key_lo, key_hi = make_inputs([5, 3], W=2, H=2, Dh=8, seed=9, device="cpu")
    with pytest.raises(ValueError, match="k must be"):
        decode_cross_attention(q, k[:, :1], v, seg_offsets, key_lo, key_hi, kernel="torch")
    with pytest.raises(ValueError, match="seg_offsets must be"):
        decode_cross_attention(q, k, v, seg_offsets[:2], key_lo, key_hi, kernel="torch")
    with pytest.raises(ValueError, match="non-decreasing"):
        decode_cross_attention(q, k, v, torch.tensor([0, 5, 2]), key_lo, key_hi, kernel="torch")
    with pytest.raises(ValueError, match="exceeds"):
        decode_cross_attention(q, k, v, torch.tensor([0, 5, 9]), key_lo, key_hi, kernel="torch")
    with pytest.raises(ValueError, match="integer"):
        decode_cross_attention(q, k, v, seg_offsets, key_lo.float(), key_hi, kernel="torch")
    with pytest.raises(ValueError, match="kernel="):
        decode_cross_attention(q, k, v, seg_offsets, key_lo, key_hi, kernel="cuda")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype,precision,tol", [(torch.float32, "ieee", 1e-5), (torch.float32, "tf32", 5e-3),
                                                 (torch.bfloat16, None, 3e-2)])
def test_gpu_serving_size(dtype, precision, tol):
    # Paper serving size: 256 beams, histories of 1000, d = 512 as 8 heads of 64, bucket ranges.
    lengths = [1000, 1, 513, 0, 777, 1000, 64, 999]
    q, k, v, seg_offsets, key_lo, key_hi = make_inputs(lengths, W=256, H=8, Dh=64, seed=10, device="cuda", dtype=dtype)
    expected = decode_cross_attention_reference(q.float(), k.float(), v.float(), seg_offsets, key_lo, key_hi, 1)
    got = decode_cross_attention_triton(q, k, v, seg_offsets, key_lo, key_hi, 1, input_precision=precision)
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)


def test_reference_with_a_given_padded_length_equals_the_measured_one():
    # The decode loop passes max_len (and check_offsets=False) so the reference never reads the offsets.
    g = torch.Generator().manual_seed(3)
    U, W, H, Dh = 3, 4, 2, 8
    lengths = torch.tensor([5, 1, 9])
    seg = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    q = torch.randn(U, W, H, Dh, generator=g)
    k, v = torch.randn(int(seg[-1]), H, Dh, generator=g), torch.randn(int(seg[-1]), H, Dh, generator=g)
    lo = torch.randint(0, 4, (U, W), generator=g)
    hi = lo + torch.randint(0, 6, (U, W), generator=g)
    from genret.kernels import decode_cross_attention_reference as reference

    measured = reference(q, k, v, seg, lo, hi)
    for max_len in (9, 12):
        torch.testing.assert_close(reference(q, k, v, seg, lo, hi, max_len=max_len, check_offsets=False), measured)
