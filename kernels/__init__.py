"""genret.kernels: decoding ops, each a PyTorch reference (the specification) beside a Triton kernel.

Every op takes `kernel="auto" | "torch" | "triton"`: auto runs Triton when the inputs are on CUDA or
TRITON_INTERPRET=1 (the interpreter, on CPU tensors), else the reference. Importing this package
works without triton installed (auto then means torch).
"""

from genret.kernels.add_layer_norm import add_layer_norm, add_layer_norm_reference, add_layer_norm_triton
from genret.kernels.beam_step import beam_step, beam_step_reference, beam_step_triton
from genret.kernels.csr_beam_step import csr_beam_step, csr_beam_step_reference, csr_beam_step_triton
from genret.kernels.decode_attention import (
    decode_cross_attention,
    decode_cross_attention_reference,
    decode_cross_attention_triton,
)
from genret.kernels.dispatch import HAVE_TRITON, choose_kernel
from genret.kernels.prefix_attention import (
    prefix_self_attention,
    prefix_self_attention_reference,
    prefix_self_attention_triton,
)

__all__ = [
    "HAVE_TRITON",
    "add_layer_norm",
    "add_layer_norm_reference",
    "add_layer_norm_triton",
    "beam_step",
    "beam_step_reference",
    "beam_step_triton",
    "choose_kernel",
    "csr_beam_step",
    "csr_beam_step_reference",
    "csr_beam_step_triton",
    "decode_cross_attention",
    "decode_cross_attention_reference",
    "decode_cross_attention_triton",
    "prefix_self_attention",
    "prefix_self_attention_reference",
    "prefix_self_attention_triton",
]
