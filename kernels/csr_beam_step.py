"""The LM head epilogue of a beam-search level, driven by the SID index's CSR children lists.

After the level's LM head GEMM, every beam row (u, w) has next-code logits over the K codes. A
candidate is one of the beam's *children* in the SID index (the codes that follow its prefix in
some item's SID):

    cand[u, w, c] = logits[u, w, c] - logsumexp(logits[u, w, :]) + beam_scores[u, w]

for c in children(parents[u, w]), nothing else. Per user the k best candidates over (w, c) are
kept, descending; equal scores put the smaller flat index w*K + c first; slots past the finite
candidates get -inf and parent = token = node = -1. Each kept candidate also comes with its node
id in the index (the child's position in the CSR table), the next level's parent, so the decode
loop never searches the index for its beams' nodes. This is exactly `beam_step` with the dense (U, W, K)
mask that `SIDIndex.valid_mask` would build, except that no mask is ever built or read.

Why the GEMM stays in torch and only the epilogue is fused: the log-softmax normaliser needs
every one of the K logits of a row, not only the children's, so a fused GEMM + epilogue still
computes the whole (rows x K) product; what fusing it would save is one write and one read of the
logits (at the paper's size, 32 users x 2 branches x 256 beams x 8192 codes in bf16 is 0.27 GB,
so ~0.54 GB a level, ~110 us at an H200's bandwidth, against ~140 us for the GEMM at bf16 peak).
That is a real saving and the next step once a GPU profile confirms it, but a fused GEMM kernel
with an online log-sum-exp across K tiles and a per-row top-k over gathered children is much
harder to get right and to test in the CPU interpreter than a cuBLAS GEMM plus one epilogue
kernel, whose every input the reference can read. The epilogue does remove what
the dense path paid: the fp32 copy of the logits, the mask's construction (scatter of the CSR
lists into a (rows, K) bool tensor) and the mask's read by the beam step.

Three pieces, as for every op of genret.kernels:
  * `csr_beam_step_reference`: PyTorch, static shapes (no host sync): each row reads
    `max_children` slots of its parent's children list (padding past its own count), gathers
    those logits, and one stable sort per user over the (W x max_children) candidates picks the
    k best. Children lists are ascending, so slot order inside a row is code order and the
    stable sort's tie-break is the flat index w*K + c, as in `beam_step_reference`.
  * `csr_beam_step_triton`: one program per beam row computes the row's log-sum-exp over K in
    blocks (online max / sum; a dead beam or a parent without children reads nothing), gathers
    its children's logits, and keeps its best min(k, max_children) by the threshold search of
    genret.kernels.beam_step; the per-user merge and the final ordering are beam_step's stages 2
    and 3 (`merge_row_candidates`), whose last kernel also turns each survivor's (beam, slot)
    into parent, token and node. Three launches a level when a user's W x k candidates fit one
    merge group, and no other op.
  * `csr_beam_step`: the dispatcher (`kernel="auto" | "torch" | "triton"`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genret.kernels.beam_step import _empty_result, merge_row_candidates
from genret.kernels.dispatch import HAVE_TRITON, choose_kernel, next_power_of_2, tl, triton

__all__ = ["csr_beam_step", "csr_beam_step_reference", "csr_beam_step_triton", "MAX_TRITON_CHILDREN"]

# A row's children sit in registers (one block of next_power_of_2(max_children) slots).
MAX_TRITON_CHILDREN = 65536
# Codes per block of the row's log-sum-exp loop: the logits row is streamed, never held whole.
LSE_BLOCK = 2048

if HAVE_TRITON:
    from genret.kernels.beam_step import _ordered_key, _store_compacted, _top_k_mask


def _check_inputs(logits, beam_scores, parents, child_ptr, child_codes, max_children, k) -> None:
    name = "csr_beam_step"
    if logits.dim() != 3:
        raise ValueError(f"{name}: logits must be (U, W, K), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name}: logits must be floating point, got {logits.dtype}")
    U, W, V = logits.shape
    if V < 1:
        raise ValueError(f"{name}: the codebook is empty (K = 0)")
    if beam_scores.shape != (U, W) or not beam_scores.is_floating_point():
        raise ValueError(f"{name}: beam_scores must be float (U, W) = ({U}, {W}), got "
                         f"{beam_scores.dtype} {tuple(beam_scores.shape)}")
    if parents.shape != (U, W) or parents.dtype != torch.int64:
        raise ValueError(f"{name}: parents must be int64 (U, W) = ({U}, {W}) node ids (-1 = none), got "
                         f"{parents.dtype} {tuple(parents.shape)}")
    if child_ptr.dim() != 1 or child_ptr.numel() < 1 or child_ptr.dtype != torch.int64:
        raise ValueError(f"{name}: child_ptr must be int64 CSR offsets (n_parents + 1,), got "
                         f"{child_ptr.dtype} {tuple(child_ptr.shape)}")
    if child_codes.dim() != 1 or child_codes.dtype != torch.int64:
        raise ValueError(f"{name}: child_codes must be a 1-D int64 tensor, got {child_codes.dtype} "
                         f"{tuple(child_codes.shape)}")
    devices = {t.device for t in (logits, beam_scores, parents, child_ptr, child_codes)}
    if len(devices) > 1:
        raise ValueError(f"{name}: all inputs must be on one device, got {sorted(map(str, devices))}")
    if isinstance(max_children, bool) or not isinstance(max_children, int) or max_children < 0:
        raise ValueError(f"{name}: max_children (the largest fan-out) must be an int >= 0, got {max_children!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}: k (beams to keep) must be an int >= 1, got {k!r}")


def csr_beam_step_reference(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    parents: torch.Tensor,
    child_ptr: torch.Tensor,
    child_codes: torch.Tensor,
    max_children: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch reference (the specification); args and returns as `csr_beam_step`."""
    _check_inputs(logits, beam_scores, parents, child_ptr, child_codes, max_children, k)
    U, W, V = logits.shape
    C = min(max_children, V)  # a parent cannot have more distinct children than there are codes
    if U * W == 0 or C == 0:
        return _empty_result(U, k, logits.device) + (torch.full((U, k), -1, dtype=torch.int64, device=logits.device),)
    # Each row's children range [start, end); parents is -1 or a node of the table. A dead beam
    # keeps its range: its -inf score makes every candidate -inf, which is no candidate.
    safe = parents.clamp(min=0)
    start = child_ptr[safe]
    end = torch.where(parents >= 0, child_ptr[safe + 1], start)
    position = start.unsqueeze(-1) + torch.arange(C, device=logits.device)  # (U, W, C)
    has = position < end.unsqueeze(-1)
    codes = child_codes[position.clamp(max=max(child_codes.numel() - 1, 0))] if child_codes.numel() \
        else torch.zeros_like(position)  # past a row's own children: another row's code, masked by `has`
    # The kernel's (and log_softmax's) order of operations: (x - max) - log(sum(exp(x - max))), then
    # + the beam score, so equal candidates stay equal bit for bit on both paths.
    logits = logits.float()
    row_max = logits.amax(-1, keepdim=True)
    log_sum = (logits - row_max).exp().sum(-1, keepdim=True).log()
    cand = ((logits.gather(2, codes) - row_max) - log_sum) + beam_scores.float().unsqueeze(-1)
    cand = torch.where(has & (cand > float("-inf")), cand, float("-inf"))  # NaN compares False too
    keep = min(k, W * C)
    top_scores, top_slot = torch.sort(cand.reshape(U, W * C), dim=1, descending=True, stable=True)
    top_slot = top_slot[:, :keep]
    scores = top_scores[:, :keep]
    # Slot s of the (W x C) grid is beam s // C; its child's node id is the position it was read from.
    node = position.reshape(U, W * C).gather(1, top_slot)
    if keep < k:  # fewer candidate slots than beams to keep: -inf / -1 padding (a static shape)
        scores = F.pad(scores, (0, k - keep), value=float("-inf"))
        top_slot = F.pad(top_slot, (0, k - keep), value=-1)
        node = F.pad(node, (0, k - keep), value=-1)
    found = scores > float("-inf")
    parent = torch.where(found, top_slot // C, -1)
    token = torch.where(found, child_codes[node.clamp(0, max(child_codes.numel() - 1, 0))], -1) \
        if child_codes.numel() else torch.full_like(node, -1)
    return scores, parent, token, torch.where(found, node, -1)


if HAVE_TRITON:

    @triton.jit
    def _csr_row_kernel(
        logits_ptr, beam_scores_ptr, parents_ptr, child_ptr_ptr, child_codes_ptr, out_score_ptr, out_index_ptr,
        W, V, C, K_ROW,
        BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # Program = one beam row (u, w); logits are contiguous (U*W, V).
        row = tl.program_id(0).to(tl.int64)
        beam = row % W
        beam_score = tl.load(beam_scores_ptr + row)
        parent = tl.load(parents_ptr + row)
        # The row's children range; empty for a dead beam or a beam without a node (parent -1).
        has_children = (parent >= 0) & (beam_score > float("-inf"))
        safe_parent = tl.where(has_children, parent, 0)
        start = tl.load(child_ptr_ptr + safe_parent)
        n_children = tl.where(has_children, tl.load(child_ptr_ptr + safe_parent + 1) - start, 0)
        # Log-sum-exp of the whole row (the log-softmax is over all V codes), streamed in blocks.
        # A row without children skips it: its loop bound is 0.
        n_codes = tl.where(n_children > 0, V, 0)
        row_max = tl.full((), float("-inf"), tl.float32)
        row_sum = tl.full((), 0.0, tl.float32)
        for offset in range(0, n_codes, BLOCK_V):
            codes = offset + tl.arange(0, BLOCK_V)
            x = tl.load(logits_ptr + row * V + codes, mask=codes < V, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(row_max, tl.max(x, axis=0))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            row_sum = row_sum * tl.exp(row_max - safe_max) + tl.sum(tl.exp(x - safe_max), axis=0)
            row_max = new_max
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        log_sum = tl.log(tl.where(row_sum > 0, row_sum, 1.0))
        # The row's children: ascending codes, so block order is code order.
        slots = tl.arange(0, BLOCK_C)
        in_row = slots < n_children
        child = tl.load(child_codes_ptr + start + slots, mask=in_row, other=0)
        x = tl.load(logits_ptr + row * V + child, mask=in_row, other=float("-inf")).to(tl.float32)
        cand = ((x - row_max) - log_sum) + beam_score  # the reference's logit - logsumexp + beam score
        cand = tl.where(cand == 0.0, 0.0, cand)  # -0.0 and +0.0 must be one key, as they compare equal
        valid = in_row & (cand > float("-inf"))  # False for NaN as well
        # Flat index beam * C + slot: as ordered as beam * V + code (children ascend), and the slot
        # gives the child's node id (its position in child_codes) without a search.
        index = (beam * C + slots).to(tl.int32)
        select = _top_k_mask(_ordered_key(cand), index, valid, K_ROW)
        _store_compacted(out_score_ptr, out_index_ptr, row * K_ROW, select, cand, index, K_ROW, BLOCK_K)


def _row_warps(block: int) -> int:
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def csr_beam_step_triton(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    parents: torch.Tensor,
    child_ptr: torch.Tensor,
    child_codes: torch.Tensor,
    max_children: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton kernels; args and returns as `csr_beam_step`. Needs max_children <=
    MAX_TRITON_CHILDREN and W*K < 2^31 (flat candidate indices are int32)."""
    if not HAVE_TRITON:
        raise RuntimeError("csr_beam_step_triton needs triton; install it or use kernel='torch'")
    _check_inputs(logits, beam_scores, parents, child_ptr, child_codes, max_children, k)
    U, W, V = logits.shape
    C = min(max_children, V)
    if C > MAX_TRITON_CHILDREN:
        raise ValueError(f"csr_beam_step: the Triton kernel keeps a row's children in registers and supports "
                         f"max_children <= {MAX_TRITON_CHILDREN}, got {C}; use kernel='torch'")
    if W * V >= 2**31:
        raise ValueError(f"csr_beam_step: W * K = {W * V} must be < 2^31 (flat candidate indices are int32)")
    if U * W == 0 or C == 0:
        return _empty_result(U, k, logits.device) + (torch.full((U, k), -1, dtype=torch.int64, device=logits.device),)
    k_row = min(k, C)
    block_c = max(16, next_power_of_2(C))
    block_v = max(16, min(next_power_of_2(V), LSE_BLOCK))
    scores = torch.empty((U, W * k_row), dtype=torch.float32, device=logits.device)
    index = torch.empty((U, W * k_row), dtype=torch.int32, device=logits.device)
    _csr_row_kernel[(U * W,)](
        logits.contiguous(), beam_scores.to(torch.float32).contiguous(), parents.contiguous(), child_ptr,
        child_codes, scores, index, W, V, C, k_row,
        BLOCK_V=block_v, BLOCK_C=block_c, BLOCK_K=max(16, next_power_of_2(k_row)),
        num_warps=_row_warps(max(block_c, block_v)),
    )
    return merge_row_candidates(scores, index, k, C, (parents.contiguous(), child_ptr, child_codes))


def csr_beam_step(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    parents: torch.Tensor,
    child_ptr: torch.Tensor,
    child_codes: torch.Tensor,
    max_children: int,
    k: int,
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expand every beam by each of its children in the SID index and keep the k best per user.

    Args:
        logits: (U, W, K) float: the LM head's next-code logits of each beam (assumed finite).
        beam_scores: (U, W) float32: accumulated log-prob of each beam; -inf marks a dead/padding beam.
        parents: (U, W) int64: each beam's prefix node in the CSR table (`SIDIndex.children(level)`);
            -1 = no node (the beam gets no candidate).
        child_ptr: (n_parents + 1,) int64 CSR offsets into child_codes.
        child_codes: int64 codes of each parent's children, ascending inside its range.
        max_children: the largest fan-out of the table (a static width, read on the host once).
        k: beams to keep per user (the new width); may exceed the number of finite candidates.
        kernel: "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else PyTorch), "torch" or "triton".
            auto also uses PyTorch when max_children > MAX_TRITON_CHILDREN.

    Returns:
        scores: (U, k) float32, descending; equal scores ordered by smaller flat index w*K + c.
        parent: (U, k) int64 beam index in [0, W), -1 in slots without a finite candidate.
        token: (U, k) int64 code in [0, K), -1 in those slots (whose score is -inf).
        node: (U, k) int64 the new beam's node id one level down (its position in child_codes),
            which is its `parents` entry at the next level; -1 in those slots.
    """
    choice = choose_kernel(kernel, logits, op="csr_beam_step")
    if choice == "triton" and (kernel == "triton" or min(max_children, logits.shape[-1]) <= MAX_TRITON_CHILDREN):
        return csr_beam_step_triton(logits, beam_scores, parents, child_ptr, child_codes, max_children, k)
    return csr_beam_step_reference(logits, beam_scores, parents, child_ptr, child_codes, max_children, k)
