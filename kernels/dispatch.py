"""The `kernel="auto" | "torch" | "triton"` choice shared by every op in genret.kernels.

auto = the Triton kernel when the inputs are on CUDA or when TRITON_INTERPRET=1 (the Triton
interpreter, which runs kernels on CPU tensors); otherwise the PyTorch reference.
Importing this module never fails when triton is missing: then auto means torch and
kernel="triton" raises a RuntimeError that says what to install.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except Exception as error:  # ImportError, or a broken install that fails while importing
    triton = None
    tl = None
    TRITON_IMPORT_ERROR: str | None = f"{type(error).__name__}: {error}"
else:
    TRITON_IMPORT_ERROR = None

HAVE_TRITON = triton is not None

# triton.jit decides interpreter-or-compiler when a kernel is decorated, i.e. when genret.kernels
# is imported, so remember what the environment said then.
INTERPRETED_AT_IMPORT = os.environ.get("TRITON_INTERPRET") == "1"

KERNEL_CHOICES = ("auto", "torch", "triton")


def interpreting() -> bool:
    """True when the environment asks for the Triton interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def choose_kernel(kernel: str, *tensors: torch.Tensor, op: str = "op") -> str:
    """Resolve a `kernel` argument to "torch" or "triton".

    Args:
        kernel: "auto", "torch" or "triton".
        *tensors: the op's tensor inputs (their device decides "auto").
        op: the op's name, for error messages.

    Returns:
        "torch" or "triton".

    Raises:
        ValueError: `kernel` is not one of the three choices.
        RuntimeError: "triton" was asked for but cannot run here.
    """
    if kernel not in KERNEL_CHOICES:
        raise ValueError(f"{op}: kernel={kernel!r} is not one of {KERNEL_CHOICES}")
    if kernel == "torch":
        return "torch"
    on_cuda = any(t.is_cuda for t in tensors)
    if kernel == "auto" and not (HAVE_TRITON and (on_cuda or interpreting())):
        return "torch"
    if not HAVE_TRITON:
        raise RuntimeError(
            f"{op}: kernel='triton' needs the triton package, which failed to import "
            f"({TRITON_IMPORT_ERROR}); install it (pip install triton) or use kernel='torch'"
        )
    if not on_cuda and not interpreting():
        raise RuntimeError(
            f"{op}: kernel='triton' got CPU tensors; move them to a CUDA GPU, or set TRITON_INTERPRET=1 "
            "(before importing triton / genret.kernels) to run the kernel in the Triton interpreter"
        )
    if not on_cuda and not INTERPRETED_AT_IMPORT:
        # triton.jit picked the compiler when genret.kernels was imported; it cannot take CPU tensors.
        raise RuntimeError(
            f"{op}: TRITON_INTERPRET=1 was set after genret.kernels was imported; Triton fixes the "
            "interpreter choice at import, so set it before importing triton / genret.kernels"
        )
    return "triton"


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()
