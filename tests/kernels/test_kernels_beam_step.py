"""beam_step: reference vs a naive loop, Triton kernels vs reference (exact indices), ties, edges.

On CPU the Triton kernels run in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1); on a
GPU machine run with TRITON_INTERPRET=0 and the same comparisons run on CUDA.
"""

import importlib

import pytest
import torch

from genret.kernels import beam_step, beam_step_reference, beam_step_triton
from genret.kernels.dispatch import HAVE_TRITON, interpreting

pytestmark = pytest.mark.kernels

# The module, not the function of the same name that genret.kernels re-exports.
beam_step_module = importlib.import_module("genret.kernels.beam_step")

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
needs_gpu = pytest.mark.skipif(
    not (HAVE_TRITON and torch.cuda.is_available() and not interpreting()),
    reason="needs a CUDA GPU and TRITON_INTERPRET unset",
)
NEG_INF = float("-inf")


def make_inputs(U, W, V, density, seed, dead=(), quantised=False, device=DEVICE):
    """Random logits, descending beam scores, an allowed mask of the given density (None = no mask).

    dead: (u, w) pairs whose beam score is -inf. quantised: logits from {0, 1, 2}, so many exact ties.
    """
    g = torch.Generator().manual_seed(seed)
    if quantised:
        logits = torch.randint(0, 3, (U, W, V), generator=g).float()
        beam_scores = -torch.randint(0, 2, (U, W), generator=g).float()
    else:
        logits = torch.randn(U, W, V, generator=g) * 2
        beam_scores = -torch.rand(U, W, generator=g).cumsum(1)
    for u, w in dead:
        beam_scores[u, w] = NEG_INF
    allowed = None if density is None else torch.rand(U, W, V, generator=g) < density
    return logits.to(device), beam_scores.to(device), None if allowed is None else allowed.to(device)


def naive_beam_step(logits, beam_scores, allowed, k):
    """Per-user Python loop: list every finite candidate, sort by (-score, flat index), pad with -inf/-1."""
    U, W, V = logits.shape
    cand = torch.log_softmax(logits.float(), dim=-1) + beam_scores[..., None]
    scores = torch.full((U, k), NEG_INF)
    parent = torch.full((U, k), -1, dtype=torch.int64)
    token = torch.full((U, k), -1, dtype=torch.int64)
    for u in range(U):
        found = []
        for w in range(W):
            for c in range(V):
                value = float(cand[u, w, c])
                if value > NEG_INF and (allowed is None or bool(allowed[u, w, c])):
                    found.append((-value, w * V + c, w, c))
        for slot, (neg, _, w, c) in enumerate(sorted(found)[:k]):
            scores[u, slot], parent[u, slot], token[u, slot] = -neg, w, c
    return scores, parent, token


def assert_same_result(got, expected, atol=1e-5):
    scores, parent, token = got
    ref_scores, ref_parent, ref_token = expected
    assert scores.dtype == torch.float32 and parent.dtype == torch.int64 and token.dtype == torch.int64
    assert torch.equal(parent.cpu(), ref_parent.cpu()), (parent, ref_parent)
    assert torch.equal(token.cpu(), ref_token.cpu()), (token, ref_token)
    assert torch.equal(torch.isinf(scores).cpu(), torch.isinf(ref_scores).cpu())
    torch.testing.assert_close(scores.cpu(), ref_scores.cpu(), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_reference_matches_naive_loop(quantised, k):
    logits, beam_scores, allowed = make_inputs(2, 3, 11, 0.4, seed=k, dead=[(1, 2)], quantised=quantised, device="cpu")
    expected = naive_beam_step(logits, beam_scores, allowed, k)
    got = beam_step_reference(logits, beam_scores, allowed, k)
    assert_same_result(got, expected, atol=0)


CASES = [
    # U, W, V, k, density (None = no mask), dead beams, seed
    (2, 4, 100, 6, 0.3, [], 0),
    (1, 1, 7, 3, 1.0, [], 1),  # one beam, V not a power of two
    (3, 3, 1000, 5, None, [], 2),  # V = 1000, no mask
    (2, 5, 33, 200, 0.2, [], 3),  # k > number of allowed candidates: -inf / -1 tail
    (2, 3, 16, 3, 0.0, [], 4),  # every row masked out
    (1, 6, 1, 4, None, [], 5),  # V = 1
    (2, 4, 50, 4, 0.5, [(0, 1), (1, 0), (1, 1), (1, 2), (1, 3)], 6),  # dead beams; user 1 entirely dead
    (2, 3, 64, 64, 0.9, [], 7),  # k = V (power of two)
]


@pytest.mark.triton
@pytest.mark.parametrize("U,W,V,k,density,dead,seed", CASES)
def test_triton_matches_reference(U, W, V, k, density, dead, seed):
    logits, beam_scores, allowed = make_inputs(U, W, V, density, seed, dead=dead)
    expected = beam_step_reference(logits, beam_scores, allowed, k)
    got = beam_step_triton(logits, beam_scores, allowed, k)
    assert_same_result(got, expected)
    scores, parent, token = got
    n_finite = torch.isfinite(scores).sum(1)
    if allowed is not None:  # the padding rule: finite slots first, then -inf with -1
        alive = (beam_scores > NEG_INF)[..., None]
        assert torch.equal(n_finite.cpu(), (allowed & alive).sum((1, 2)).clamp(max=k).cpu())
    assert bool(((parent == -1) == torch.isinf(scores)).all()) and bool(((token == -1) == (parent == -1)).all())


@pytest.mark.triton
@pytest.mark.parametrize("seed", [0, 1])
def test_constructed_ties_are_exact_and_deterministic(seed):
    # Logits in {0, 1, 2} and beam scores in {0, -1}: many exactly equal candidates, also across the
    # per-row threshold and across beams. Order must be score desc, then smaller flat index, like the reference.
    logits, beam_scores, allowed = make_inputs(2, 5, 37, 0.6, seed, quantised=True)
    for k in (3, 8, 20):
        expected = beam_step_reference(logits, beam_scores, allowed, k)
        first = beam_step_triton(logits, beam_scores, allowed, k)
        assert_same_result(first, expected, atol=0)
        again = beam_step_triton(logits, beam_scores, allowed, k)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.triton
def test_all_equal_candidates_come_in_flat_index_order():
    U, W, V, k = 2, 3, 10, 7
    logits = torch.zeros(U, W, V, device=DEVICE)
    beam_scores = torch.zeros(U, W, device=DEVICE)
    scores, parent, token = beam_step_triton(logits, beam_scores, None, k)
    flat = torch.arange(k, device=DEVICE)
    assert torch.equal(parent, (flat // V).expand(U, k)) and torch.equal(token, (flat % V).expand(U, k))
    torch.testing.assert_close(scores, torch.full((U, k), -torch.log(torch.tensor(10.0)).item(), device=DEVICE))


@pytest.mark.triton
def test_several_merge_levels(monkeypatch):
    # A small merge block forces the per-user merge to run over several groups and levels.
    monkeypatch.setattr(beam_step_module, "MERGE_BLOCK", 16)
    logits, beam_scores, allowed = make_inputs(2, 12, 50, 0.7, seed=11)
    for k in (4, 9):
        assert_same_result(beam_step_triton(logits, beam_scores, allowed, k),
                           beam_step_reference(logits, beam_scores, allowed, k))


@pytest.mark.triton
def test_dispatch_auto_and_codebook_limit(monkeypatch):
    logits, beam_scores, allowed = make_inputs(1, 2, 10, 0.5, seed=12)
    auto = beam_step(logits, beam_scores, allowed, 3, kernel="auto")
    assert all(torch.equal(a, b) for a, b in zip(auto, beam_step_triton(logits, beam_scores, allowed, 3)))
    torch_out = beam_step(logits, beam_scores, allowed, 3, kernel="torch")
    assert all(torch.equal(a, b) for a, b in zip(torch_out, beam_step_reference(logits, beam_scores, allowed, 3)))
    # Past the register-resident limit, "triton" refuses clearly and "auto" falls back to the reference.
    monkeypatch.setattr(beam_step_module, "MAX_TRITON_CODEBOOK", 8)
    with pytest.raises(ValueError, match="V <= 8"):
        beam_step(logits, beam_scores, allowed, 3, kernel="triton")
    fallback = beam_step(logits, beam_scores, allowed, 3, kernel="auto")
    assert all(torch.equal(a, b) for a, b in zip(fallback, torch_out))


def test_bad_inputs_raise_clear_errors():
    logits, beam_scores, allowed = make_inputs(2, 3, 10, 0.5, seed=13, device="cpu")
    with pytest.raises(ValueError, match="k .* must be an int >= 1"):
        beam_step(logits, beam_scores, allowed, 0, kernel="torch")
    with pytest.raises(ValueError, match="bool mask"):
        beam_step(logits, beam_scores, allowed.float(), 2, kernel="torch")
    with pytest.raises(ValueError, match="beam_scores must be"):
        beam_step(logits, beam_scores[:, :2], allowed, 2, kernel="torch")
    with pytest.raises(ValueError, match="logits must be"):
        beam_step(logits[0], beam_scores, allowed, 2, kernel="torch")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_serving_size(dtype):
    # Paper serving size: 256 beams over 8192 codes, keep 256, a sparse constraint mask.
    logits, beam_scores, allowed = make_inputs(8, 256, 8192, 0.05, seed=14, device="cuda")
    logits = logits.to(dtype)
    expected = beam_step_reference(logits, beam_scores, allowed, 256)
    got = beam_step_triton(logits, beam_scores, allowed, 256)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    # Indices may differ only where two candidates are within rounding of each other.
    same = (got[1] == expected[1]) & (got[2] == expected[2])
    assert float(same.float().mean()) > 0.99
    ref_cand = torch.log_softmax(logits.float(), -1) + beam_scores[..., None]
    picked = ref_cand[torch.arange(8, device="cuda")[:, None], got[1], got[2]]
    torch.testing.assert_close(picked, got[0], atol=1e-5, rtol=1e-5)
