"""A residual add and the LayerNorm that reads its sum, in one pass over each row.

A pre-norm decoder block adds every sub-layer's output to the residual stream and the next
sub-layer starts with a LayerNorm of that sum (the next block's first one, or the final norm after
the last block). Decoding one token per beam, these are small row-wise ops, and launching two
kernels for each pair (an add, then a norm that reads the sum back) is what the level-step spends
its launches on. The fused op reads x and y once and writes both results:

    s = x + y                      (the new residual stream, in PyTorch's promoted dtype of x and y)
    h = (s - mean(s)) / sqrt(var(s) + eps) * weight + bias      (over the last dim)

Three pieces, as for every op of genret.kernels: `add_layer_norm_reference` (PyTorch, the
specification: `x + y`, then `F.layer_norm`), `add_layer_norm_triton` (one program per row;
statistics in fp32 over the sum rounded to its dtype, as PyTorch normalises the stored sum) and
`add_layer_norm` (the dispatcher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genret.kernels.dispatch import HAVE_TRITON, choose_kernel, next_power_of_2, tl, triton

__all__ = ["add_layer_norm", "add_layer_norm_reference", "add_layer_norm_triton"]


def _check_inputs(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    name = "add_layer_norm"
    if x.shape != y.shape or x.dim() == 0:
        raise ValueError(f"{name}: x and y must have one shape (..., d), got {tuple(x.shape)} and {tuple(y.shape)}")
    d = x.shape[-1]
    if weight.shape != (d,) or bias.shape != (d,):
        raise ValueError(f"{name}: weight and bias must be ({d},) (x's last dim), got {tuple(weight.shape)} "
                         f"and {tuple(bias.shape)}")
    if len({t.device for t in (x, y, weight, bias)}) != 1:
        raise ValueError(f"{name}: x ({x.device}), y ({y.device}) and the norm's weights ({weight.device}) "
                         "must be on one device")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"{name}: x and y must be floating point, got {x.dtype} and {y.dtype}")


def add_layer_norm_reference(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference (the specification); args and returns as `add_layer_norm`."""
    _check_inputs(x, y, weight, bias)
    s = x + y
    return s, F.layer_norm(s, (s.shape[-1],), weight, bias, eps)


if HAVE_TRITON:

    @triton.jit
    def _add_layer_norm_kernel(x_ptr, y_ptr, w_ptr, b_ptr, sum_ptr, out_ptr, X_ROW, Y_ROW, D, eps,
                               BLOCK_D: tl.constexpr):
        # Program = one row of d values; x / y rows at their own strides (0 for a broadcast row).
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        inside = cols < D
        x = tl.load(x_ptr + row * X_ROW + cols, mask=inside, other=0.0)
        y = tl.load(y_ptr + row * Y_ROW + cols, mask=inside, other=0.0)
        s = (x.to(tl.float32) + y.to(tl.float32)).to(sum_ptr.dtype.element_ty)  # what the stream stores
        tl.store(sum_ptr + row * D + cols, s, mask=inside)
        v = s.to(tl.float32)
        mean = tl.sum(v, axis=0) / D
        centred = tl.where(inside, v - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / D + eps)
        w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * D + cols, (centred * rstd * w + b).to(out_ptr.dtype.element_ty), mask=inside)


def add_layer_norm_triton(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton kernel; args and returns as `add_layer_norm`."""
    _check_inputs(x, y, weight, bias)
    if not HAVE_TRITON:
        raise RuntimeError("add_layer_norm_triton needs triton (pip install triton)")
    d = x.shape[-1]
    s = torch.empty(x.shape, dtype=torch.result_type(x, y), device=x.device)
    # Under autocast F.layer_norm runs (and returns) fp32; the reference does the same.
    h_dtype = torch.float32 if _autocast_on(x.device) else s.dtype
    h = torch.empty(x.shape, dtype=h_dtype, device=x.device)
    rows = s.numel() // d
    if rows:
        x_rows, y_rows = _as_rows(x, d), _as_rows(y, d)
        _add_layer_norm_kernel[(rows,)](x_rows, y_rows, weight.contiguous(), bias.contiguous(), s, h,
                                        x_rows.stride(0), y_rows.stride(0), d, float(eps),
                                        BLOCK_D=next_power_of_2(d))
    return s, h


def _autocast_on(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled() if device.type == "cpu" else torch.is_autocast_enabled()


def _as_rows(t: torch.Tensor, d: int) -> torch.Tensor:
    """t (..., d) as (rows, d) with unit stride along d, without a copy when its layout allows one
    (e.g. level 1's start token broadcast over the users: row stride 0)."""
    if t.stride(-1) == 1:
        try:
            return t.view(-1, d)
        except RuntimeError:  # leading dims that no single stride walks
            pass
    return t.reshape(-1, d).contiguous()


def add_layer_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
                   kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream's new value and its LayerNorm, in one op.

    Args:
        x: (..., d) the residual stream.
        y: (..., d) a sub-layer's output (in another float dtype under autocast: the sum promotes).
        weight, bias: (d,) the LayerNorm's affine parameters; eps its epsilon.
        kernel: "auto" | "torch" | "triton" (genret.kernels.dispatch).

    Returns:
        (s, h): s = x + y, h = layer_norm(s), (..., d) each; s in the promoted dtype, h in s's
        (fp32 under autocast, as F.layer_norm).
    """
    if choose_kernel(kernel, x, y, op="add_layer_norm") == "triton":
        return add_layer_norm_triton(x, y, weight, bias, eps)
    return add_layer_norm_reference(x, y, weight, bias, eps)
