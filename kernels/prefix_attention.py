"""Decode-time self-attention of each beam's new SID token over its prefix, through the prefix cache.

At level l every beam has one new token; its query attends the keys of the beam's prefix tokens
(levels 0..l-1, kept in the cache) and its own. With DualGR's fused projection (one matmul gives
q, k and v of the new token, q already scaled by Dh^-0.5; genret.decoding.decode_weights) the op is:

    cache[u, w, l] = (k, v) of the new token of beam (u, w)
    out[u, w, h] = softmax_n(q[u, w, h] . cache[u, w, n, 0, h]) @ cache[u, w, n, 1, h],  n = 0..l

The cache of one decoder block is (U, max_width, n_levels, 2, H, Dh) (genret.decoding.beam_search's
_PrefixCache keeps every block's in one buffer; rows past this level's width and slots past l are
not read). Few keys (at most n_levels), so this is no tiled attention: per beam row it is a handful
of dot products, and what matters is launching one kernel instead of the cache write plus five
elementwise and reduction ops of the PyTorch form.

Three pieces, as for every op of genret.kernels: `prefix_self_attention_reference` (PyTorch, the
specification), `prefix_self_attention_triton` (one program per beam row, every head in one tile,
online softmax in fp32 over the cached slots) and `prefix_self_attention` (the dispatcher). Both
write the new token's key and value into the cache, which is part of the op's result.
"""

from __future__ import annotations

import torch

from genret.kernels.dispatch import HAVE_TRITON, choose_kernel, next_power_of_2, tl, triton

__all__ = ["prefix_self_attention", "prefix_self_attention_reference", "prefix_self_attention_triton"]


def _check_inputs(qkv: torch.Tensor, cache: torch.Tensor, level: int) -> None:
    name = "prefix_self_attention"
    if qkv.dim() != 3:
        raise ValueError(f"{name}: qkv must be (U, W, 3 * d), got shape {tuple(qkv.shape)}")
    if cache.dim() != 6 or cache.shape[3] != 2:
        raise ValueError(f"{name}: cache must be (U, max_width, n_levels, 2, H, Dh), got shape {tuple(cache.shape)}")
    U, W, three_d = qkv.shape
    H, Dh = cache.shape[-2:]
    if three_d != 3 * H * Dh or cache.shape[0] != U or cache.shape[1] < W:
        raise ValueError(f"{name}: qkv (U, W, 3 * H * Dh) = {tuple(qkv.shape)} does not fit the cache "
                         f"{tuple(cache.shape)} (U rows, at least W beams, H heads of Dh)")
    if not 0 <= level < cache.shape[2]:
        raise ValueError(f"{name}: level must be in [0, {cache.shape[2]}) (the cache's slots), got {level}")
    if qkv.dtype != cache.dtype or qkv.device != cache.device:
        raise ValueError(f"{name}: qkv ({qkv.dtype}, {qkv.device}) and cache ({cache.dtype}, {cache.device}) "
                         f"must share dtype and device")


def prefix_self_attention_reference(qkv: torch.Tensor, cache: torch.Tensor, level: int) -> torch.Tensor:
    """PyTorch reference (the specification); args and returns as `prefix_self_attention`."""
    _check_inputs(qkv, cache, level)
    U, W, _ = qkv.shape
    H, Dh = cache.shape[-2:]
    d = H * Dh
    cache[:, :W, level] = qkv[..., d:].unflatten(-1, (2, H, Dh))
    kv = cache[:, :W, :level + 1]  # (U, W, n, 2, H, Dh)
    q = qkv[..., :d].unflatten(-1, (1, H, Dh))  # broadcast over the prefix tokens
    # Products and sums take the cache's strides as they are (einsum would copy it first).
    scores = (q * kv[..., 0, :, :]).sum(-1)  # (U, W, n, H)
    weights = scores.softmax(2, dtype=torch.float32).to(kv.dtype)
    return (weights.unsqueeze(-1) * kv[..., 1, :, :]).sum(2)  # (U, W, H, Dh)


if HAVE_TRITON:

    @triton.jit
    def _prefix_attention_kernel(
        qkv_ptr, cache_ptr, out_ptr,
        W, MAX_W, N_SLOTS, LEVEL, H, DH,
        BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # Program = one beam row (u, w), all heads: a (heads x head dim) tile.
        row = tl.program_id(0).to(tl.int64)
        user = row // W
        beam = row % W
        heads = tl.arange(0, BLOCK_H)[:, None]
        dims = tl.arange(0, BLOCK_D)[None, :]
        inside = (heads < H) & (dims < DH)
        offset = heads * DH + dims
        D = H * DH
        token = qkv_ptr + row * 3 * D
        q = tl.load(token + offset, mask=inside, other=0.0).to(tl.float32)
        k_new = tl.load(token + D + offset, mask=inside, other=0.0)
        v_new = tl.load(token + 2 * D + offset, mask=inside, other=0.0)
        slots = cache_ptr + (user * MAX_W + beam) * N_SLOTS * 2 * D
        tl.store(slots + LEVEL * 2 * D + offset, k_new, mask=inside)
        tl.store(slots + LEVEL * 2 * D + D + offset, v_new, mask=inside)
        # Online softmax over the slots, starting from the new token (already in registers).
        running_max = tl.sum(q * k_new.to(tl.float32), axis=1)
        running_sum = tl.full((BLOCK_H,), 1.0, tl.float32)
        acc = v_new.to(tl.float32)
        for n in range(0, LEVEL):
            k = tl.load(slots + n * 2 * D + offset, mask=inside, other=0.0).to(tl.float32)
            v = tl.load(slots + n * 2 * D + D + offset, mask=inside, other=0.0).to(tl.float32)
            score = tl.sum(q * k, axis=1)
            new_max = tl.maximum(running_max, score)
            alpha = tl.exp(running_max - new_max)
            p = tl.exp(score - new_max)
            running_sum = running_sum * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * v
            running_max = new_max
        out = acc / running_sum[:, None]
        tl.store(out_ptr + row * D + offset, out.to(out_ptr.dtype.element_ty), mask=inside)


def prefix_self_attention_triton(qkv: torch.Tensor, cache: torch.Tensor, level: int) -> torch.Tensor:
    """The Triton kernel; args and returns as `prefix_self_attention`. qkv and cache must be contiguous."""
    if not HAVE_TRITON:
        raise RuntimeError("prefix_self_attention_triton needs triton; install it or use kernel='torch'")
    _check_inputs(qkv, cache, level)
    if not (qkv.is_contiguous() and cache.is_contiguous()):
        # The cache is written in place, so a contiguous copy would lose the write.
        raise ValueError("prefix_self_attention: the Triton kernel needs contiguous qkv and cache")
    U, W, _ = qkv.shape
    H, Dh = cache.shape[-2:]
    out = torch.empty((U, W, H, Dh), dtype=qkv.dtype, device=qkv.device)
    if U * W == 0:
        return out
    _prefix_attention_kernel[(U * W,)](
        qkv, cache, out, W, cache.shape[1], cache.shape[2], level, H, Dh,
        BLOCK_H=next_power_of_2(H), BLOCK_D=max(16, next_power_of_2(Dh)),
    )
    return out


def prefix_self_attention(qkv: torch.Tensor, cache: torch.Tensor, level: int, kernel: str = "auto") -> torch.Tensor:
    """Write each beam's new key / value into the prefix cache and attend the beam's prefix.

    Args:
        qkv: (U, W, 3 * H * Dh): the new token's query (scaled by Dh^-0.5), key and value per beam.
        cache: (U, max_width, n_levels, 2, H, Dh), qkv's dtype: slots 0..level-1 of rows [0, W)
            hold each beam's prefix keys / values (slot level is written here).
        level: the new token's slot.
        kernel: "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else PyTorch), "torch" or "triton".

    Returns:
        (U, W, H, Dh) in qkv's dtype: each head's attention output.
    """
    choice = choose_kernel(kernel, qkv, cache, op="prefix_self_attention")
    if choice == "triton":
        return prefix_self_attention_triton(qkv, cache, level)
    return prefix_self_attention_reference(qkv, cache, level)
