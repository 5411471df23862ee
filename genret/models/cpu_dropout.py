"""Dropout whose CPU forward pass costs about a quarter of `nn.Dropout`'s.

On the CPU `nn.Dropout` draws one Mersenne-Twister number per element (`bernoulli_`), which
profiled at 16% of a DualGR training step on ML-1M: 19-26 ms for a (6400, 3, 128) tensor on 2
cores, against 7 ms here (3 of them the random draws). Here one 64-bit draw feeds four elements:
an int64 drawn over its whole range (`random_(-2**63, None)`) is four independent uniform 16-bit
words, and an element is dropped when its word falls below a threshold. The drop probability is
therefore p rounded to a multiple of 2^-16 (0.1 -> 0.100006), and the kept values are scaled by
1 / (1 - that probability), so the expectation is unchanged as in `nn.Dropout`. Off the CPU
(where dropout masks come from a fast counter-based generator) and in eval mode it is
`F.dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # 16-bit words: the drop probability's resolution is 2^-16


def cpu_drop_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A bool mask of `shape`, True where an element is dropped, and the drop probability it
    realises (p rounded to a multiple of 2^-16)."""
    threshold = round(p * _LEVELS)
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    uniform16 = words.view(torch.int16)[:n]  # each uniform on [-2^15, 2^15)
    return (uniform16 < threshold - _LEVELS // 2).view(shape), threshold / _LEVELS


class CPUFastDropout(nn.Module):
    """Drop-in for `nn.Dropout(p)` that draws its CPU mask from 64-bit words (module docstring)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        drop, p_realised = cpu_drop_mask(x.shape, self.p)
        # masked_fill + an in-place scale: two passes over x, no float mask kept for backward.
        return x.masked_fill(drop, 0.0).mul_(1.0 / (1.0 - p_realised))

    def extra_repr(self) -> str:
        return f"p={self.p}"
