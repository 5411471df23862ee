"""csr_beam_step: the CSR-driven LM head epilogue equals beam_step with the dense mask the same
children lists would build; the Triton kernel equals its reference; edges (no children, one child,
k past the candidates, dead beams, ties).

On CPU the Triton kernel runs in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so
shapes stay small.
"""

import importlib

import pytest
import torch

from genret.kernels import beam_step_reference, csr_beam_step, csr_beam_step_reference, csr_beam_step_triton
from genret.kernels.dispatch import HAVE_TRITON, interpreting
from genret.tokenizers import SIDIndex

pytestmark = pytest.mark.kernels

csr_module = importlib.import_module("genret.kernels.csr_beam_step")
beam_step_module = importlib.import_module("genret.kernels.beam_step")

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
NEG_INF = float("-inf")


def random_children(n_parents, V, seed, fan_outs=None):
    """CSR children lists: parent p gets fan_outs[p] distinct ascending codes (random sizes in [0, V]
    when not given, so some parents have none and some one)."""
    g = torch.Generator().manual_seed(seed)
    if fan_outs is None:
        fan_outs = torch.randint(0, V + 1, (n_parents,), generator=g).tolist()
        fan_outs[:2] = [0, 1][:n_parents]  # always a childless parent and a single-child one
    lists = [torch.randperm(V, generator=g)[:n].sort().values for n in fan_outs]
    ptr = torch.tensor([0] + torch.tensor(fan_outs, dtype=torch.long).cumsum(0).tolist(), dtype=torch.long)
    codes = torch.cat(lists) if lists else torch.zeros(0, dtype=torch.long)
    return ptr, codes.long(), max(fan_outs, default=0)


def dense_mask(parents, ptr, codes, V):
    """The (U, W, V) mask SIDIndex.valid_mask would give: True at every child of each beam's parent."""
    U, W = parents.shape
    mask = torch.zeros(U, W, V, dtype=torch.bool)
    for u in range(U):
        for w in range(W):
            p = int(parents[u, w])
            if p >= 0:
                mask[u, w, codes[ptr[p]:ptr[p + 1]]] = True
    return mask


def make_inputs(U, W, V, n_parents, seed, dead=(), quantised=False, fan_outs=None):
    g = torch.Generator().manual_seed(seed + 100)
    if quantised:
        logits = torch.randint(0, 3, (U, W, V), generator=g).float()
        beam_scores = -torch.randint(0, 2, (U, W), generator=g).float()
    else:
        logits = torch.randn(U, W, V, generator=g) * 2
        beam_scores = -torch.rand(U, W, generator=g).cumsum(1)
    for u, w in dead:
        beam_scores[u, w] = NEG_INF
    ptr, codes, max_children = random_children(n_parents, V, seed, fan_outs)
    parents = torch.randint(-1, n_parents, (U, W), generator=g)  # -1: a beam whose prefix has no node
    return logits, beam_scores, parents, ptr, codes, max_children


def on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


def assert_same_result(got, expected, atol=1e-5):
    """got (scores, parent, token, node) equals expected, which may lack the node (beam_step's result)."""
    scores, parent, token = got[:3]
    ref_scores, ref_parent, ref_token = expected[:3]
    if len(expected) == 4:
        assert torch.equal(got[3].cpu(), expected[3].cpu()), (got[3], expected[3])
    assert scores.dtype == torch.float32 and parent.dtype == torch.int64 and token.dtype == torch.int64
    assert torch.equal(parent.cpu(), ref_parent.cpu()), (parent, ref_parent)
    assert torch.equal(token.cpu(), ref_token.cpu()), (token, ref_token)
    assert torch.equal(torch.isinf(scores).cpu(), torch.isinf(ref_scores).cpu())
    torch.testing.assert_close(scores.cpu(), ref_scores.cpu(), atol=atol, rtol=1e-5)


def assert_only_children_selected(result, parents, ptr, codes, beam_scores):
    """Every kept candidate is a child of its beam's parent node, and its node id is that child's."""
    scores, parent, token, node = result
    for u in range(scores.shape[0]):
        for slot in range(scores.shape[1]):
            w, c, n = int(parent[u, slot]), int(token[u, slot]), int(node[u, slot])
            if w < 0:
                assert c == -1 and n == -1 and scores[u, slot] == NEG_INF
                continue
            p = int(parents[u, w])
            assert p >= 0 and beam_scores[u, w] > NEG_INF
            assert c in codes[ptr[p]:ptr[p + 1]].tolist(), (u, w, c)
            assert ptr[p] <= n < ptr[p + 1] and codes[n] == c


CASES = [
    # U, W, V, n_parents, k, dead beams, seed
    (2, 4, 37, 6, 5, [], 0),
    (1, 1, 7, 1, 3, [], 1),  # one beam, V not a power of two
    (2, 5, 33, 8, 200, [], 2),  # k past the number of children: -inf / -1 tail
    (2, 4, 50, 5, 4, [(0, 1), (1, 0), (1, 1), (1, 2), (1, 3)], 3),  # dead beams; user 1 entirely dead
    (3, 3, 64, 4, 64, [], 4),  # k = V
    (2, 6, 20, 3, 7, [], 5),
]


@pytest.mark.parametrize("U,W,V,n_parents,k,dead,seed", CASES)
def test_reference_equals_beam_step_with_the_dense_mask(U, W, V, n_parents, k, dead, seed):
    logits, beam_scores, parents, ptr, codes, max_children = make_inputs(U, W, V, n_parents, seed, dead)
    expected = beam_step_reference(logits, beam_scores, dense_mask(parents, ptr, codes, V), k)
    got = csr_beam_step_reference(logits, beam_scores, parents, ptr, codes, max_children, k)
    assert_same_result(got, expected)
    assert_only_children_selected(got, parents, ptr, codes, beam_scores)


@pytest.mark.triton
@pytest.mark.parametrize("U,W,V,n_parents,k,dead,seed", CASES)
def test_triton_equals_reference(U, W, V, n_parents, k, dead, seed):
    logits, beam_scores, parents, ptr, codes, max_children = make_inputs(U, W, V, n_parents, seed, dead)
    args = on_device(logits, beam_scores, parents, ptr, codes)
    expected = csr_beam_step_reference(*args, max_children, k)
    got = csr_beam_step_triton(*args, max_children, k)
    assert_same_result(got, expected)
    assert_only_children_selected([t.cpu() for t in got], parents, ptr, codes, beam_scores)
    # Finite slots first, as many as there are children of live beams (capped at k).
    alive = (beam_scores > NEG_INF) & (parents >= 0)
    n_children = torch.where(alive, ptr[parents.clamp(min=0) + 1] - ptr[parents.clamp(min=0)], 0).sum(1)
    assert torch.equal(torch.isfinite(got[0]).sum(1).cpu(), n_children.clamp(max=k))


@pytest.mark.triton
def test_invalid_children_are_never_selected_even_when_their_logits_dominate():
    U, W, V, k = 2, 3, 24, 6
    logits, beam_scores, parents, ptr, codes, max_children = make_inputs(U, W, V, 5, seed=6)
    parents = torch.tensor([[2, 3, 4], [4, 2, -1]])
    children = dense_mask(parents, ptr, codes, V)
    logits = torch.where(children, logits, logits + 50.0)  # every non-child far above every child
    for step in (csr_beam_step_reference, csr_beam_step_triton):
        result = [t.cpu() for t in step(*on_device(logits, beam_scores, parents, ptr, codes), max_children, k)]
        assert_only_children_selected(result, parents, ptr, codes, beam_scores)
        assert torch.isfinite(result[0]).any()


@pytest.mark.triton
@pytest.mark.parametrize("seed", [0, 1])
def test_ties_are_exact_and_ordered_by_flat_index(seed):
    # Logits in {0, 1, 2}, beam scores in {0, -1}, and every parent the same children: many exactly
    # equal candidates inside and across beams; order must be score desc, then smaller w*V + c.
    U, W, V = 2, 5, 19
    logits, beam_scores, parents, ptr, codes, max_children = make_inputs(
        U, W, V, 3, seed, quantised=True, fan_outs=[V, 12, 12])
    for k in (3, 8, 20):
        expected = csr_beam_step_reference(logits, beam_scores, parents, ptr, codes, max_children, k)
        got = csr_beam_step_triton(*on_device(logits, beam_scores, parents, ptr, codes), max_children, k)
        assert_same_result(got, expected, atol=0)
        flat = (expected[1] * V + expected[2]).where(expected[1] >= 0, torch.iinfo(torch.int64).max)
        same_score = expected[0][:, 1:] == expected[0][:, :-1]
        assert bool((flat[:, 1:] > flat[:, :-1])[same_score].all())


@pytest.mark.triton
def test_single_child_beams_and_a_width_larger_than_the_children():
    # Every beam has exactly one child: the new width holds W candidates, then -inf / -1 padding.
    U, W, V, k = 2, 3, 10, 8
    logits, beam_scores, parents, ptr, codes, max_children = make_inputs(U, W, V, 3, seed=7, fan_outs=[1, 1, 1])
    parents = parents.clamp(min=0)
    for step in (csr_beam_step_reference, csr_beam_step_triton):
        scores, parent, token, node = [t.cpu() for t in step(*on_device(logits, beam_scores, parents, ptr, codes),
                                                                max_children, k)]
        assert torch.isfinite(scores[:, :W]).all() and (scores[:, W:] == NEG_INF).all()
        assert (parent[:, W:] == -1).all() and (token[:, W:] == -1).all()
        assert torch.equal(parent[:, :W].sort(1).values, torch.arange(W).expand(U, W))
        assert torch.equal(token[:, :W], codes[parents.gather(1, parent[:, :W])])


@pytest.mark.triton
def test_no_children_anywhere_gives_an_empty_result():
    logits, beam_scores, parents, ptr, codes, _ = make_inputs(2, 3, 9, 2, seed=8, fan_outs=[0, 0])
    for step in (csr_beam_step_reference, csr_beam_step_triton):
        scores, parent, token, node = step(*on_device(logits, beam_scores, parents, ptr, codes), 0, 4)
        assert (scores == NEG_INF).all() and (parent == -1).all() and (token == -1).all() and (node == -1).all()


@pytest.mark.triton
def test_long_rows_stream_the_log_sum_exp_and_merge_in_several_levels(monkeypatch):
    # A small log-sum-exp block and a small merge block force the loops over several iterations.
    monkeypatch.setattr(csr_module, "LSE_BLOCK", 16)
    monkeypatch.setattr(beam_step_module, "MERGE_BLOCK", 16)
    logits, beam_scores, parents, ptr, codes, max_children = make_inputs(2, 8, 70, 6, seed=9)
    for k in (4, 9):
        args = on_device(logits, beam_scores, parents, ptr, codes)
        assert_same_result(csr_beam_step_triton(*args, max_children, k),
                           csr_beam_step_reference(*args, max_children, k))


@pytest.mark.triton
def test_bf16_logits_are_read_in_fp32():
    logits, beam_scores, parents, ptr, codes, max_children = make_inputs(2, 4, 40, 5, seed=10)
    logits = logits.bfloat16()
    args = on_device(logits, beam_scores, parents, ptr, codes)
    assert_same_result(csr_beam_step_triton(*args, max_children, 6), csr_beam_step_reference(*args, max_children, 6))


@pytest.mark.triton
def test_sid_index_children_drive_the_step_like_its_valid_mask():
    g = torch.Generator().manual_seed(11)
    V = 12
    item_codes = torch.randint(0, V, (60, 3), generator=g)
    item_codes[:, 0] %= 5
    index = SIDIndex.build(item_codes.numpy(), V)
    U, W, k = 2, 4, 6
    logits = torch.randn(U, W, V, generator=g)
    beam_scores = -torch.rand(U, W, generator=g).cumsum(1)
    for level in range(3):
        ptr, codes, max_children = index.children(level)
        parents = torch.randint(0, index.n_nodes(level), (U, W), generator=g)
        mask = index.valid_mask(level, parents.reshape(-1)).reshape(U, W, V)
        expected = beam_step_reference(logits, beam_scores, mask, k)
        # Each beam's prefix (any prefix of that node: the node ids are what the step reads).
        prefixes = torch.stack([index.codes[(index.node_of(index.codes[:, :level]) == p).nonzero()[0, 0], :level]
                                for p in parents.reshape(-1).tolist()]).reshape(U, W, level)
        for kernel in ("torch", "triton"):
            got = csr_beam_step(logits, beam_scores, parents, ptr, codes, max_children, k, kernel=kernel)
            assert_same_result(got, expected)
            # The returned node is the one SIDIndex.node_of finds for prefix + token.
            found = got[1] >= 0
            grown = torch.cat([prefixes.gather(1, got[1].clamp(min=0)[..., None].expand(-1, -1, level)),
                               got[2].unsqueeze(-1)], -1)
            assert torch.equal(got[3][found], index.node_of(grown[found]))


@pytest.mark.triton
def test_dispatch_auto_and_the_children_limit(monkeypatch):
    logits, beam_scores, parents, ptr, codes, max_children = make_inputs(1, 2, 10, 3, seed=12)
    args = (logits, beam_scores, parents, ptr, codes, max_children, 3)
    auto = csr_beam_step(*args, kernel="auto")
    assert all(torch.equal(a, b) for a, b in zip(auto, csr_beam_step_triton(*args)))
    torch_out = csr_beam_step(*args, kernel="torch")
    assert all(torch.equal(a, b) for a, b in zip(torch_out, csr_beam_step_reference(*args)))
    monkeypatch.setattr(csr_module, "MAX_TRITON_CHILDREN", 1)
    with pytest.raises(ValueError, match="max_children <= 1"):
        csr_beam_step(*args, kernel="triton")
    fallback = csr_beam_step(*args, kernel="auto")
    assert all(torch.equal(a, b) for a, b in zip(fallback, torch_out))


def test_bad_inputs_raise_clear_errors():
    logits, beam_scores, parents, ptr, codes, max_children = make_inputs(2, 3, 10, 3, seed=13)
    with pytest.raises(ValueError, match="k .* must be an int >= 1"):
        csr_beam_step(logits, beam_scores, parents, ptr, codes, max_children, 0, kernel="torch")
    with pytest.raises(ValueError, match="parents must be int64"):
        csr_beam_step(logits, beam_scores, parents.int(), ptr, codes, max_children, 2, kernel="torch")
    with pytest.raises(ValueError, match="beam_scores must be"):
        csr_beam_step(logits, beam_scores[:, :2], parents, ptr, codes, max_children, 2, kernel="torch")
    with pytest.raises(ValueError, match="max_children"):
        csr_beam_step(logits, beam_scores, parents, ptr, codes, -1, 2, kernel="torch")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRITON and torch.cuda.is_available() and not interpreting()),
                    reason="needs a CUDA GPU and TRITON_INTERPRET unset")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_serving_size(dtype):
    # Paper serving size: 256 beams over 8192 codes, keep 256; parents with up to 600 children.
    U, W, V, k = 8, 256, 8192, 256
    g = torch.Generator().manual_seed(14)
    fan_outs = torch.randint(0, 600, (300,), generator=g).tolist()
    logits, beam_scores, parents, ptr, codes, max_children = make_inputs(U, W, V, 300, seed=14, fan_outs=fan_outs)
    args = [t.cuda() for t in (logits.to(dtype), beam_scores, parents, ptr, codes)]
    expected = csr_beam_step_reference(*args, max_children, k)
    got = csr_beam_step_triton(*args, max_children, k)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    # Indices may differ only where two candidates are within rounding of each other.
    same = (got[1] == expected[1]) & (got[2] == expected[2])
    assert float(same.float().mean()) > 0.99
