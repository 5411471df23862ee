"""Decode-time cross-attention of beam queries over jagged, per-user key ranges.

One new query token per beam (incremental decoding). All users' keys/values are packed into one
(N, H, Dh) tensor; user u owns rows seg_offsets[u]:seg_offsets[u+1]. A beam attends the first
`n_always` keys of its user's segment (the user static token(s)) plus the range [lo, hi) of that
segment: at the fine SID levels the caller sorts each history by s1 once, so a beam's in-bucket
keys are one contiguous range.

Three pieces: `decode_cross_attention_reference` (readable PyTorch, the specification),
`decode_cross_attention_triton` (all W beams of a user packed into one tile, so the user's K/V
are read once per head, not once per beam; key blocks outside every beam of the tile are
skipped; online softmax in fp32) and `decode_cross_attention` (the dispatcher).
"""

from __future__ import annotations

import math

import torch

from genret.kernels.dispatch import HAVE_TRITON, INTERPRETED_AT_IMPORT, choose_kernel, next_power_of_2, tl, triton

__all__ = [
    "decode_cross_attention",
    "decode_cross_attention_reference",
    "decode_cross_attention_triton",
]


def _check_inputs(q, k, v, seg_offsets, key_lo, key_hi, n_always, check_offsets: bool = True) -> None:
    """Shape/dtype/device checks that need no device sync; value checks of seg_offsets too when on
    CPU and `check_offsets` (they read it on the host)."""
    name = "decode_cross_attention"
    if q.dim() != 4:
        raise ValueError(f"{name}: q must be (U, W, H, Dh), got shape {tuple(q.shape)}")
    U, W, H, Dh = q.shape
    if k.dim() != 3 or k.shape[1:] != (H, Dh):
        raise ValueError(f"{name}: k must be (N, H={H}, Dh={Dh}) to match q, got shape {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"{name}: v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if not (q.is_floating_point() and k.is_floating_point() and v.is_floating_point()):
        raise ValueError(f"{name}: q, k, v must be floating point, got {q.dtype}, {k.dtype}, {v.dtype}")
    if seg_offsets.shape != (U + 1,):
        raise ValueError(f"{name}: seg_offsets must be (U+1,) = ({U + 1},), got {tuple(seg_offsets.shape)}")
    for arg, tensor in (("key_lo", key_lo), ("key_hi", key_hi)):
        if tensor.shape != (U, W):
            raise ValueError(f"{name}: {arg} must be (U, W) = ({U}, {W}), got {tuple(tensor.shape)}")
    for arg, tensor in (("seg_offsets", seg_offsets), ("key_lo", key_lo), ("key_hi", key_hi)):
        if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
            raise ValueError(f"{name}: {arg} must be an integer tensor (int64), got {tensor.dtype}")
    devices = {t.device for t in (q, k, v, seg_offsets, key_lo, key_hi)}
    if len(devices) > 1:
        raise ValueError(f"{name}: all inputs must be on one device, got {sorted(map(str, devices))}")
    if int(n_always) < 0:
        raise ValueError(f"{name}: n_always must be >= 0, got {n_always}")
    if check_offsets and not q.is_cuda:
        # Cheap on CPU; on CUDA it would cost a device sync per decoding step, so it is skipped there.
        if U > 0 and int(seg_offsets[0]) < 0:
            raise ValueError(f"{name}: seg_offsets[0] = {int(seg_offsets[0])} is negative")
        if U > 0 and bool((seg_offsets[1:] < seg_offsets[:-1]).any()):
            raise ValueError(f"{name}: seg_offsets must be non-decreasing (CSR offsets of the packed keys)")
        if U > 0 and int(seg_offsets[-1]) > k.shape[0]:
            raise ValueError(
                f"{name}: seg_offsets[-1] = {int(seg_offsets[-1])} exceeds the {k.shape[0]} packed key rows"
            )


def attended_mask(lengths: torch.Tensor, key_lo: torch.Tensor, key_hi: torch.Tensor, n_always: int, max_len: int):
    """Which padded key positions each beam attends.

    Args:
        lengths: (U,) int64 segment lengths.
        key_lo, key_hi: (U, W) int64, relative to the segment start.
        n_always: the first n_always keys of every segment are always attended.
        max_len: padded length L (>= lengths.max()).

    Returns:
        (U, W, L) bool: position j is attended iff j < length and (j < n_always or lo' <= j < hi'),
        with lo' = max(lo, n_always) (so the always-keys are never counted twice) and hi' = min(hi, length).
    """
    j = torch.arange(max_len, device=lengths.device)  # (L,)
    in_segment = j < lengths[:, None, None]  # (U, 1, L)
    lo = key_lo.clamp(min=n_always)[..., None]  # (U, W, 1)
    hi = torch.minimum(key_hi, lengths[:, None])[..., None]
    return in_segment & ((j < n_always) | ((j >= lo) & (j < hi)))


def decode_cross_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seg_offsets: torch.Tensor,
    key_lo: torch.Tensor,
    key_hi: torch.Tensor,
    n_always: int = 1,
    scale: float | None = None,
    max_len: int | None = None,
    check_offsets: bool = True,
) -> torch.Tensor:
    """PyTorch reference (the specification): pad every segment to the longest, mask, softmax in fp32.

    Args and returns as `decode_cross_attention`.
    """
    _check_inputs(q, k, v, seg_offsets, key_lo, key_hi, n_always, check_offsets)
    U, W, H, Dh = q.shape
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    seg_offsets = seg_offsets.long()
    lengths = seg_offsets[1:] - seg_offsets[:-1]  # (U,)
    if max_len is None:
        max_len = int(lengths.max()) if U > 0 else 0  # a host sync; callers that know it pass it
    elif U == 0:
        max_len = 0
    if max_len == 0:
        return torch.zeros_like(q)
    j = torch.arange(max_len, device=q.device)
    rows = (seg_offsets[:-1, None] + j).clamp(max=k.shape[0] - 1)  # (U, L); padding rows are masked below
    keys = k[rows].float()  # (U, L, H, Dh)
    values = v[rows].float()
    mask = attended_mask(lengths, key_lo.long(), key_hi.long(), int(n_always), max_len)  # (U, W, L)
    scores = torch.einsum("uwhd,ulhd->uhwl", q.float(), keys) * scale  # (U, H, W, L)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.where(mask[:, None], probs, 0.0)  # a beam with nothing to attend gets zeros, not NaN
    out = torch.einsum("uhwl,ulhd->uwhd", probs, values)  # (U, W, H, Dh)
    return out.to(q.dtype)


if HAVE_TRITON:

    def _attention_configs():
        # Several configs fail without a GPU driver, so the interpreter gets exactly one.
        if INTERPRETED_AT_IMPORT:
            return [triton.Config({"BLOCK_W": 16, "BLOCK_N": 16}, num_warps=4)]
        return [
            triton.Config({"BLOCK_W": bw, "BLOCK_N": bn}, num_warps=nw, num_stages=ns)
            for bw, bn, nw, ns in [
                (16, 64, 4, 2),
                (32, 64, 4, 2),
                (64, 32, 4, 2),
                (64, 64, 4, 3),
                (64, 64, 8, 3),
                (128, 32, 8, 2),
                (128, 64, 8, 3),
                (256, 32, 8, 2),  # W = 256: one tile per (user, head), the history read exactly once
            ]
        ]

    @triton.jit
    def _attend_key_block(
        q, acc, m_i, l_i, k_ptr, v_ptr, key_rows, attend, offs_d, d_mask,
        stride_kn, stride_kh, stride_kd, stride_vn, stride_vh, stride_vd, head, scale_log2e,
        DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ):
        """One flash-attention update for a (BLOCK_W beams) x (BLOCK_N keys) block."""
        row_mask = tl.max(attend.to(tl.int32), axis=0) > 0  # keys some beam attends: only those are read
        load_mask = row_mask[:, None] & d_mask[None, :]
        k_block = tl.load(
            k_ptr + key_rows[:, None] * stride_kn + head * stride_kh + offs_d[None, :] * stride_kd,
            mask=load_mask, other=0.0,
        ).to(DOT_DTYPE)  # (BLOCK_N, BLOCK_D)
        v_block = tl.load(
            v_ptr + key_rows[:, None] * stride_vn + head * stride_vh + offs_d[None, :] * stride_vd,
            mask=load_mask, other=0.0,
        ).to(DOT_DTYPE)
        s = tl.dot(q, tl.trans(k_block), input_precision=INPUT_PRECISION) * scale_log2e  # (BLOCK_W, BLOCK_N)
        s = tl.where(attend, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A beam that has attended nothing yet keeps m = -inf; shift by 0 instead so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_shift[:, None])
        alpha = tl.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v_block, input_precision=INPUT_PRECISION)
        return acc, m_new, l_i

    @triton.autotune(configs=_attention_configs(), key=["W", "HEAD_DIM", "BLOCK_D"])
    @triton.jit
    def _decode_attention_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, seg_ptr, lo_ptr, hi_ptr,
        W, HEAD_DIM, n_always, scale_log2e,
        stride_qu, stride_qw, stride_qh, stride_qd,
        stride_kn, stride_kh, stride_kd,
        stride_vn, stride_vh, stride_vd,
        stride_ou, stride_ow, stride_oh, stride_od,
        BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ):
        # Program = (beam block, head, user): the tile's beams share every K/V block read.
        beam_block = tl.program_id(0)
        head = tl.program_id(1).to(tl.int64)
        user = tl.program_id(2).to(tl.int64)
        seg_start = tl.load(seg_ptr + user)
        seg_len = tl.load(seg_ptr + user + 1) - seg_start
        n_fixed = tl.minimum(seg_len, n_always)

        offs_w = beam_block * BLOCK_W + tl.arange(0, BLOCK_W)
        w_mask = offs_w < W
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < HEAD_DIM
        lo = tl.load(lo_ptr + user * W + offs_w, mask=w_mask, other=0)
        hi = tl.load(hi_ptr + user * W + offs_w, mask=w_mask, other=0)
        lo = tl.maximum(lo, n_fixed)  # the always-keys are counted once, by the first loop
        hi = tl.minimum(hi, seg_len)
        has_range = w_mask & (lo < hi)
        tile_lo = tl.min(tl.where(has_range, lo, seg_len), axis=0)
        tile_hi = tl.max(tl.where(has_range, hi, 0), axis=0)

        q = tl.load(
            q_ptr + user * stride_qu + offs_w[:, None] * stride_qw + head * stride_qh + offs_d[None, :] * stride_qd,
            mask=w_mask[:, None] & d_mask[None, :], other=0.0,
        ).to(DOT_DTYPE)  # (BLOCK_W, BLOCK_D)
        acc = tl.zeros((BLOCK_W, BLOCK_D), dtype=tl.float32)
        m_i = tl.full((BLOCK_W,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_W,), dtype=tl.float32)
        offs_n = tl.arange(0, BLOCK_N)

        # The user static token(s): attended by every live beam of the tile.
        for start in range(0, n_fixed, BLOCK_N):
            j = start + offs_n
            attend = w_mask[:, None] & (j < n_fixed)[None, :]
            acc, m_i, l_i = _attend_key_block(
                q, acc, m_i, l_i, k_ptr, v_ptr, seg_start + j, attend, offs_d, d_mask,
                stride_kn, stride_kh, stride_kd, stride_vn, stride_vh, stride_vd, head, scale_log2e,
                DOT_DTYPE, INPUT_PRECISION,
            )
        # The per-beam ranges: only [min lo, max hi) of the tile, and inside it only blocks some beam needs.
        for start in range(tile_lo, tile_hi, BLOCK_N):
            needed = tl.sum((has_range & (lo < start + BLOCK_N) & (hi > start)).to(tl.int32), axis=0)
            if needed > 0:
                j = start + offs_n
                attend = has_range[:, None] & (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
                acc, m_i, l_i = _attend_key_block(
                    q, acc, m_i, l_i, k_ptr, v_ptr, seg_start + j, attend, offs_d, d_mask,
                    stride_kn, stride_kh, stride_kd, stride_vn, stride_vh, stride_vd, head, scale_log2e,
                    DOT_DTYPE, INPUT_PRECISION,
                )

        out = tl.where((l_i > 0)[:, None], acc / tl.where(l_i > 0, l_i, 1.0)[:, None], 0.0)
        tl.store(
            out_ptr + user * stride_ou + offs_w[:, None] * stride_ow + head * stride_oh + offs_d[None, :] * stride_od,
            out.to(out_ptr.dtype.element_ty),
            mask=w_mask[:, None] & d_mask[None, :],
        )


def decode_cross_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seg_offsets: torch.Tensor,
    key_lo: torch.Tensor,
    key_hi: torch.Tensor,
    n_always: int = 1,
    scale: float | None = None,
    input_precision: str | None = None,
    check_offsets: bool = True,
) -> torch.Tensor:
    """The Triton kernel; args and returns as `decode_cross_attention`.

    Args:
        input_precision: tl.dot precision for fp32 inputs: "ieee" (exact fp32) or "tf32".
            None: "ieee" in the interpreter, else "tf32" iff torch.backends.cuda.matmul.allow_tf32.
            bf16/fp16 inputs always multiply in their own dtype (fp32 accumulation).
    """
    if not HAVE_TRITON:
        raise RuntimeError("decode_cross_attention_triton needs triton; install it or use kernel='torch'")
    _check_inputs(q, k, v, seg_offsets, key_lo, key_hi, n_always, check_offsets)
    U, W, H, Dh = q.shape
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    out = torch.empty_like(q)
    if q.numel() == 0:
        return out
    if input_precision is None:
        input_precision = "ieee" if INTERPRETED_AT_IMPORT or not torch.backends.cuda.matmul.allow_tf32 else "tf32"
    if input_precision not in ("ieee", "tf32"):
        raise ValueError(f"decode_cross_attention: input_precision must be 'ieee' or 'tf32', got {input_precision!r}")
    # The interpreter gets bf16 arithmetic wrong, so it always computes in fp32.
    low_precision = q.dtype in (torch.bfloat16, torch.float16) and not INTERPRETED_AT_IMPORT
    dot_dtype = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[q.dtype] if low_precision else tl.float32
    if low_precision:
        k, v = k.to(q.dtype), v.to(q.dtype)  # tl.dot wants both operands in one dtype
        input_precision = "tf32"  # only meaningful for fp32 operands
    seg_offsets = seg_offsets.to(torch.int64).contiguous()
    key_lo = key_lo.to(torch.int64).contiguous()
    key_hi = key_hi.to(torch.int64).contiguous()
    head_dim_block = max(16, next_power_of_2(Dh))

    def grid(meta):
        return (triton.cdiv(W, meta["BLOCK_W"]), H, U)

    _decode_attention_kernel[grid](
        q, k, v, out, seg_offsets, key_lo, key_hi,
        W, Dh, int(n_always), scale * math.log2(math.e),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        BLOCK_D=head_dim_block, DOT_DTYPE=dot_dtype, INPUT_PRECISION=input_precision,
    )
    return out


def decode_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seg_offsets: torch.Tensor,
    key_lo: torch.Tensor,
    key_hi: torch.Tensor,
    n_always: int = 1,
    scale: float | None = None,
    kernel: str = "auto",
    max_len: int | None = None,
    check_offsets: bool = True,
) -> torch.Tensor:
    """Cross-attention of one new query token per beam over its user's keys.

    Beam (u, w) attends, in user u's segment rows seg_offsets[u] + j, the keys j in
    [0, n_always) ∪ [max(lo, n_always), min(hi, length)), with lo, hi = key_lo[u, w], key_hi[u, w].
    A beam with nothing to attend (n_always = 0 and an empty range, or an empty segment) gets zeros.

    Args:
        q: (U, W, H, Dh) float: one query per beam; U users, W beams each.
        k, v: (N, H, Dh) float: all users' keys/values packed (jagged).
        seg_offsets: (U+1,) int64: user u owns rows seg_offsets[u]:seg_offsets[u+1] (non-decreasing).
        key_lo, key_hi: (U, W) int64, relative to the user's segment start.
        n_always: the first n_always keys of every segment are always attended (user static tokens).
        scale: softmax scale; default 1/sqrt(Dh).
        kernel: "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else PyTorch), "torch" or "triton".
        max_len: the longest segment (>= every seg_offsets[u+1] - seg_offsets[u]) when the caller
            knows it; the reference pads to it instead of reading the lengths on the host (a sync).
        check_offsets: False skips the CPU-only value checks of seg_offsets (they read it on the
            host); for callers that built the offsets themselves, such as the decode loop.

    Returns:
        (U, W, H, Dh) in q's dtype. Softmax and accumulation are fp32.
    """
    choice = choose_kernel(kernel, q, k, v, op="decode_cross_attention")
    if choice == "triton":
        return decode_cross_attention_triton(q, k, v, seg_offsets, key_lo, key_hi, n_always, scale,
                                             check_offsets=check_offsets)
    return decode_cross_attention_reference(q, k, v, seg_offsets, key_lo, key_hi, n_always, scale, max_len,
                                            check_offsets)
