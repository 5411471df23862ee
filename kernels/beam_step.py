"""One step of constrained beam search: next-code logits -> the top-k (beam, code) pairs per user.

cand[u, w, c] = log_softmax(logits[u, w, :])[c] + beam_scores[u, w], set to -inf where the code is
not allowed after the beam's prefix or the beam is dead (beam score -inf). Per user, the k best
candidates over (w, c), descending; equal scores put the smaller flat index w*V + c first. Slots
beyond the number of finite candidates get score -inf and parent = token = -1.

Three pieces: `beam_step_reference` (readable PyTorch, the specification), `beam_step_triton`
and `beam_step` (the dispatcher). The Triton path:
  1. one program per beam row reads the row once (it sits in registers), computes the
     log-sum-exp and the candidates, and keeps the row's best min(k, V) by a threshold search
     on order-preserving integer keys (no sort of the V codes);
  2. a merge kernel keeps the best k of each group of up to 4096 of those slots, per user, and
     runs again until one group is left (at W = k = 256: 16 groups per user, then 1);
  3. the k survivors per user (a (U, k) tensor) are ordered by (score desc, flat index asc) and
     split into parent and token.
The order-preserving keys make ties exact: selection and order depend only on the fp32 bits
and the flat index, never on thread timing. Stage 3 is one kernel per user: each survivor's rank
is the number of survivors before it (k x k comparisons in chunks), and it is written there.
"""

from __future__ import annotations

import torch

from genret.kernels.dispatch import HAVE_TRITON, choose_kernel, next_power_of_2, tl, triton

__all__ = ["beam_step", "beam_step_reference", "beam_step_triton", "MAX_TRITON_CODEBOOK"]

# A row lives in registers; past this the kernel would spill badly (and Triton caps a block at 2^20).
MAX_TRITON_CODEBOOK = 65536
# Slots one merge program handles (a power of two). Larger = fewer levels, more registers.
MERGE_BLOCK = 4096


def _check_inputs(logits, beam_scores, allowed, k) -> None:
    name = "beam_step"
    if logits.dim() != 3:
        raise ValueError(f"{name}: logits must be (U, W, V), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name}: logits must be floating point, got {logits.dtype}")
    U, W, V = logits.shape
    if beam_scores.shape != (U, W):
        raise ValueError(f"{name}: beam_scores must be (U, W) = ({U}, {W}), got {tuple(beam_scores.shape)}")
    if not beam_scores.is_floating_point():
        raise ValueError(f"{name}: beam_scores must be float32, got {beam_scores.dtype}")
    if allowed is not None:
        if allowed.shape != (U, W, V):
            raise ValueError(f"{name}: allowed must be (U, W, V) = ({U}, {W}, {V}) or None, got {tuple(allowed.shape)}")
        if allowed.dtype != torch.bool:
            raise ValueError(f"{name}: allowed must be a bool mask, got {allowed.dtype}")
        if allowed.device != logits.device:
            raise ValueError(f"{name}: allowed is on {allowed.device} but logits on {logits.device}")
    if beam_scores.device != logits.device:
        raise ValueError(f"{name}: beam_scores is on {beam_scores.device} but logits on {logits.device}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}: k (beams to keep) must be an int >= 1, got {k!r}")
    if V < 1:
        raise ValueError(f"{name}: the codebook is empty (V = 0)")


def _empty_result(U: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scores = torch.full((U, k), float("-inf"), dtype=torch.float32, device=device)
    parent = torch.full((U, k), -1, dtype=torch.int64, device=device)
    return scores, parent, parent.clone()


def _finish(scores: torch.Tensor, flat: torch.Tensor, V: int):
    """Turn (U, k) scores and flat indices w*V + c into (scores, parent, token), -inf/-1 where empty."""
    valid = scores > float("-inf")  # False for NaN too
    scores = torch.where(valid, scores, float("-inf"))
    parent = torch.where(valid, flat // V, -1)
    token = torch.where(valid, flat % V, -1)
    return scores, parent, token


def beam_step_reference(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    allowed: torch.Tensor | None,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch reference (the specification); args and returns as `beam_step`.

    A stable descending sort over the flattened (W*V) candidates gives the deterministic
    tie-break (equal scores keep flat-index order).
    """
    _check_inputs(logits, beam_scores, allowed, k)
    U, W, V = logits.shape
    if U * W == 0:
        return _empty_result(U, k, logits.device)
    cand = torch.log_softmax(logits.float(), dim=-1) + beam_scores.float()[..., None]  # (U, W, V)
    if allowed is not None:
        cand = cand.masked_fill(~allowed, float("-inf"))
    cand = cand.masked_fill(cand.isnan(), float("-inf"))
    flat_scores, flat_index = torch.sort(cand.reshape(U, W * V), dim=1, descending=True, stable=True)
    keep = min(k, W * V)
    scores = torch.full((U, k), float("-inf"), dtype=torch.float32, device=logits.device)
    flat = torch.full((U, k), -1, dtype=torch.int64, device=logits.device)
    scores[:, :keep] = flat_scores[:, :keep]
    flat[:, :keep] = flat_index[:, :keep]
    return _finish(scores, flat, V)


if HAVE_TRITON:

    @triton.jit
    def _ordered_key(x):
        """fp32 -> int32 with the same order (for non-NaN x): flip the magnitude bits of negatives."""
        bits = x.to(tl.int32, bitcast=True)
        return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)

    @triton.jit
    def _top_k_mask(key, index, valid, K):
        """Mask of the K best valid entries: larger key first, then smaller index (indices unique).

        Finds the K-th largest key by bisection on the integer key (about 32 reductions over the
        block, none when at most K are valid), then breaks ties at that key by a bisection on the index.
        """
        n_valid = tl.sum(valid.to(tl.int32), axis=0)
        lo = tl.min(tl.where(valid, key, 2147483647), axis=0).to(tl.int64)
        hi = tl.max(tl.where(valid, key, -2147483648), axis=0).to(tl.int64)
        hi = tl.where(n_valid > K, hi, lo)
        # Invariant: at least K valid keys are >= lo; the answer is the largest such lo.
        while lo < hi:
            mid = lo + (hi - lo + 1) // 2
            count = tl.sum((valid & (key >= mid.to(tl.int32))).to(tl.int32), axis=0)
            enough = count >= K
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
        threshold = lo.to(tl.int32)
        above = valid & (key > threshold)
        need = K - tl.sum(above.to(tl.int32), axis=0)
        tie = valid & (key == threshold)
        n_tie = tl.sum(tie.to(tl.int32), axis=0)
        index_hi = tl.max(tl.where(tie, index, -1), axis=0)
        index_lo = tl.where(n_tie > need, tl.min(tl.where(tie, index, 2147483647), axis=0), index_hi)
        # Smallest index bound that keeps exactly `need` of the tied entries.
        while index_lo < index_hi:
            mid = index_lo + (index_hi - index_lo) // 2
            count = tl.sum((tie & (index <= mid)).to(tl.int32), axis=0)
            enough = count >= need
            index_hi = tl.where(enough, mid, index_hi)
            index_lo = tl.where(enough, index_lo, mid + 1)
        return above | (tie & (index <= index_hi))

    @triton.jit
    def _store_compacted(score_ptr, index_ptr, base, select, score, index, n_slots, BLOCK_K: tl.constexpr):
        """Write the selected entries to slots [0, n) in block order and -inf / -1 to slots [n, n_slots)."""
        position = tl.cumsum(select.to(tl.int32), axis=0) - 1
        tl.store(score_ptr + base + position, score, mask=select)
        tl.store(index_ptr + base + position, index, mask=select)
        n_selected = tl.sum(select.to(tl.int32), axis=0)
        slots = tl.arange(0, BLOCK_K)
        empty = (slots >= n_selected) & (slots < n_slots)
        tl.store(score_ptr + base + slots, tl.full((BLOCK_K,), float("-inf"), tl.float32), mask=empty)
        tl.store(index_ptr + base + slots, tl.full((BLOCK_K,), -1, tl.int32), mask=empty)

    @triton.jit
    def _beam_row_kernel(
        logits_ptr, beam_scores_ptr, allowed_ptr, out_score_ptr, out_index_ptr,
        W, V, K_ROW,
        HAS_ALLOWED: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # Program = one beam row (u, w); logits/allowed are contiguous (U*W, V).
        row = tl.program_id(0).to(tl.int64)
        beam = row % W
        beam_score = tl.load(beam_scores_ptr + row)
        # A dead beam (score -inf) reads nothing: its row counts as empty.
        n_codes = tl.where(beam_score > float("-inf"), V, 0)
        codes = tl.arange(0, BLOCK_V)
        in_row = codes < n_codes
        x = tl.load(logits_ptr + row * V + codes, mask=in_row, other=float("-inf")).to(tl.float32)
        row_max = tl.max(x, axis=0)
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        shifted = x - row_max
        row_sum = tl.sum(tl.exp(shifted), axis=0)
        log_sum = tl.log(tl.where(row_sum > 0, row_sum, 1.0))  # an empty row stays -inf instead of NaN
        cand = (shifted - log_sum) + beam_score  # the reference's log_softmax(x) + beam score
        cand = tl.where(cand == 0.0, 0.0, cand)  # -0.0 and +0.0 must be one key, as they compare equal
        valid = in_row & (cand > float("-inf"))  # False for NaN as well
        if HAS_ALLOWED:
            allowed = tl.load(allowed_ptr + row * V + codes, mask=in_row, other=0)
            valid = valid & (allowed != 0)
        index = (beam * V + codes).to(tl.int32)
        select = _top_k_mask(_ordered_key(cand), index, valid, K_ROW)
        _store_compacted(out_score_ptr, out_index_ptr, row * K_ROW, select, cand, index, K_ROW, BLOCK_K)

    @triton.jit
    def _beam_merge_kernel(
        in_score_ptr, in_index_ptr, out_score_ptr, out_index_ptr,
        n_slots, n_groups, K,
        BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # Program = (group of BLOCK slots, user): keeps the group's best K.
        group = tl.program_id(0).to(tl.int64)
        user = tl.program_id(1).to(tl.int64)
        slots = group * BLOCK + tl.arange(0, BLOCK)
        in_range = slots < n_slots
        score = tl.load(in_score_ptr + user * n_slots + slots, mask=in_range, other=float("-inf"))
        index = tl.load(in_index_ptr + user * n_slots + slots, mask=in_range, other=-1)
        valid = in_range & (score > float("-inf"))
        select = _top_k_mask(_ordered_key(score), index, valid, K)
        _store_compacted(out_score_ptr, out_index_ptr, (user * n_groups + group) * K, select, score, index, K, BLOCK_K)


    @triton.jit
    def _beam_emit_kernel(
        in_score_ptr, in_index_ptr, parents_ptr, child_ptr_ptr, child_codes_ptr,
        out_score_ptr, out_parent_ptr, out_token_ptr, out_node_ptr,
        K, W, STRIDE,
        CSR: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
    ):
        # Program = one user: its k survivors (unordered, -inf / -1 where empty) are written to
        # their rank (score desc, flat index asc), then the empty slots; index = parent * STRIDE + rest.
        user = tl.program_id(0).to(tl.int64)
        i = tl.arange(0, BLOCK_K)
        in_i = i < K
        score_i = tl.load(in_score_ptr + user * K + i, mask=in_i, other=float("-inf"))
        index_i = tl.load(in_index_ptr + user * K + i, mask=in_i, other=-1)
        valid_i = in_i & (score_i > float("-inf"))
        key_i = _ordered_key(score_i)
        # rank_i = valid entries before i; indices are unique, so ranks are too.
        rank = tl.zeros((BLOCK_K,), dtype=tl.int32)
        for start in range(0, K, CHUNK):
            j = start + tl.arange(0, CHUNK)
            in_j = j < K
            score_j = tl.load(in_score_ptr + user * K + j, mask=in_j, other=float("-inf"))
            index_j = tl.load(in_index_ptr + user * K + j, mask=in_j, other=-1)
            valid_j = in_j & (score_j > float("-inf"))
            key_j = _ordered_key(score_j)
            before = (key_j[None, :] > key_i[:, None]) | ((key_j[None, :] == key_i[:, None])
                                                          & (index_j[None, :] < index_i[:, None]))
            rank += tl.sum((valid_j[None, :] & before).to(tl.int32), axis=1)
        parent = index_i // STRIDE
        rest = index_i % STRIDE
        if CSR:
            # rest is the child's slot in its parent's children list, whose position is the node id.
            parent_node = tl.load(parents_ptr + user * W + parent, mask=valid_i, other=0)
            node = tl.load(child_ptr_ptr + parent_node, mask=valid_i, other=0) + rest
            token = tl.load(child_codes_ptr + node, mask=valid_i, other=0)
            tl.store(out_node_ptr + user * K + rank, node.to(tl.int64), mask=valid_i)
        else:
            token = rest
        out = user * K + rank
        tl.store(out_score_ptr + out, score_i, mask=valid_i)
        tl.store(out_parent_ptr + out, parent.to(tl.int64), mask=valid_i)
        tl.store(out_token_ptr + out, token.to(tl.int64), mask=valid_i)
        n_valid = tl.sum(valid_i.to(tl.int32), axis=0)
        empty = in_i & (i >= n_valid)
        tl.store(out_score_ptr + user * K + i, tl.full((BLOCK_K,), float("-inf"), tl.float32), mask=empty)
        minus_one = tl.full((BLOCK_K,), -1, tl.int64)
        tl.store(out_parent_ptr + user * K + i, minus_one, mask=empty)
        tl.store(out_token_ptr + user * K + i, minus_one, mask=empty)
        if CSR:
            tl.store(out_node_ptr + user * K + i, minus_one, mask=empty)


def _row_warps(block_v: int) -> int:
    return 4 if block_v <= 2048 else 8 if block_v <= 8192 else 16


def beam_step_triton(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    allowed: torch.Tensor | None,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton kernels; args and returns as `beam_step`. Needs V <= MAX_TRITON_CODEBOOK and W*V < 2^31."""
    if not HAVE_TRITON:
        raise RuntimeError("beam_step_triton needs triton; install it or use kernel='torch'")
    _check_inputs(logits, beam_scores, allowed, k)
    U, W, V = logits.shape
    if V > MAX_TRITON_CODEBOOK:
        raise ValueError(
            f"beam_step: the Triton kernel keeps a row of V codes in registers and supports V <= "
            f"{MAX_TRITON_CODEBOOK}, got V = {V}; use kernel='torch'"
        )
    if W * V >= 2**31:
        raise ValueError(f"beam_step: W * V = {W * V} must be < 2^31 (flat candidate indices are int32)")
    if U * W == 0:
        return _empty_result(U, k, logits.device)
    device = logits.device
    logits = logits.contiguous()
    beam_scores = beam_scores.to(torch.float32).contiguous()
    has_allowed = allowed is not None
    allowed_bytes = allowed.contiguous().view(torch.uint8) if has_allowed else logits  # dummy pointer when None

    # Stage 1: each row's best min(k, V) candidates, unordered.
    k_row = min(k, V)
    block_v = max(16, next_power_of_2(V))
    scores = torch.empty((U, W * k_row), dtype=torch.float32, device=device)
    index = torch.empty((U, W * k_row), dtype=torch.int32, device=device)
    _beam_row_kernel[(U * W,)](
        logits, beam_scores, allowed_bytes, scores, index, W, V, k_row,
        HAS_ALLOWED=has_allowed, BLOCK_V=block_v, BLOCK_K=max(16, next_power_of_2(k_row)),
        num_warps=_row_warps(block_v),
    )

    return merge_row_candidates(scores, index, k, V)


def merge_row_candidates(scores: torch.Tensor, index: torch.Tensor, k: int, stride: int, children=None):
    """Stages 2 and 3 of the Triton beam step, shared with the CSR-driven step (csr_beam_step):
    (U, n) unordered per-row survivors (fp32 scores, -inf empty; int32 flat indices
    parent * stride + rest, -1 empty) -> each user's best k, ordered like the reference.

    Without `children`, rest is the token: returns (scores, parent, token). With children =
    (parents (U, W) int64 node ids, child_ptr, child_codes), rest is the slot in the parent node's
    children list: returns (scores, parent, token, node), node being the child's node id."""
    U, n_slots = scores.shape
    device = scores.device
    # Stage 2: per user, best k of groups of slots until one group remains (always >= 1 level,
    # which also pads to k slots when n < k).
    block_k = max(16, next_power_of_2(k))
    while True:
        block = max(16, min(next_power_of_2(n_slots), max(MERGE_BLOCK, 2 * block_k)))
        n_groups = triton.cdiv(n_slots, block)
        next_scores = torch.empty((U, n_groups * k), dtype=torch.float32, device=device)
        next_index = torch.empty((U, n_groups * k), dtype=torch.int32, device=device)
        _beam_merge_kernel[(n_groups, U)](
            scores, index, next_scores, next_index, n_slots, n_groups, k,
            BLOCK=block, BLOCK_K=block_k, num_warps=_row_warps(block),
        )
        scores, index, n_slots = next_scores, next_index, n_groups * k
        if n_groups == 1:
            break

    # Stage 3: each survivor to its rank (score desc, flat index asc) by counting the survivors
    # before it, with parent and token (and node) decoded from its index: one launch.
    out_scores = torch.empty((U, k), dtype=torch.float32, device=device)
    parent = torch.empty((U, k), dtype=torch.int64, device=device)
    token = torch.empty((U, k), dtype=torch.int64, device=device)
    node = torch.empty((U, k), dtype=torch.int64, device=device) if children is not None else token
    parents, child_ptr, child_codes = children if children is not None else (index, index, index)  # unused
    _beam_emit_kernel[(U,)](
        scores, index, parents, child_ptr, child_codes, out_scores, parent, token, node,
        k, parents.shape[1] if children is not None else 1, stride,
        CSR=children is not None, BLOCK_K=block_k, CHUNK=min(block_k, 64), num_warps=_row_warps(block_k),
    )
    if children is None:
        return out_scores, parent, token
    return out_scores, parent, token, node


def beam_step(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    allowed: torch.Tensor | None,
    k: int,
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expand every beam by every allowed code and keep the k best per user.

    cand[u, w, c] = log_softmax(logits[u, w, :])[c] + beam_scores[u, w] (the log-softmax is over all
    V codes, before masking), -inf where allowed[u, w, c] is False or beam_scores[u, w] is -inf.

    Args:
        logits: (U, W, V) float: next-code logits of each beam (assumed finite).
        beam_scores: (U, W) float32: accumulated log-prob of each beam; -inf marks a dead/padding beam.
        allowed: (U, W, V) bool or None: True = code allowed after this beam's prefix.
        k: beams to keep per user (the new width); may exceed the number of finite candidates.
        kernel: "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else PyTorch), "torch" or "triton".
            auto also uses PyTorch when V > MAX_TRITON_CODEBOOK.

    Returns:
        scores: (U, k) float32, descending; equal scores ordered by smaller flat index w*V + c.
        parent: (U, k) int64 beam index in [0, W), -1 in slots without a finite candidate.
        token: (U, k) int64 code in [0, V), -1 in those slots (whose score is -inf).
    """
    choice = choose_kernel(kernel, logits, op="beam_step")
    if choice == "triton" and (kernel == "triton" or logits.shape[-1] <= MAX_TRITON_CODEBOOK):
        return beam_step_triton(logits, beam_scores, allowed, k)
    return beam_step_reference(logits, beam_scores, allowed, k)
