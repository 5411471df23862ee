"""DualGR's weights laid out for decoding: one fused QKV projection per decoder block, and each
level's prefix-token table with its level position already added.

Trained, a block's self-attention projects queries and keys|values with two matmuls (training
needs them apart: many query tokens share one key set). A decode step projects one new prefix
token per beam to all three, so `DecodeWeights` concatenates them into one (3d, d) weight (and
bias) per block: one GEMM launch instead of two. The query rows are pre-multiplied by the
attention scale Dh^-0.5, so the step does not scale its scores either. A level's input token is
prefix_embeddings[l](code) + level_position[l + 1]; the sum is one (K, d) table per level, so the
step looks it up with one embedding op instead of a lookup and an add.

Built once per model: `Retriever` builds them when it loads, and `decode_weights(model)` caches
them beside the model and rebuilds only when a source weight changed (an optimiser step updates
parameters in place, which bumps their version counters; `.to()` gives them new storage), so
decoding during training (validation) never reads stale weights. The check reads no tensor value,
so it costs no host synchronisation.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from genret.models.dualgr import DualGR

__all__ = ["DecodeWeights", "decode_weights"]


@dataclass(frozen=True)
class DecodeWeights:
    """qkv[b]: block b's fused (weight (3d, d), bias (3d,)): rows [0, d) the scaled query, then key, value.
    prefix_tokens[l]: (K, d) the input token of level l + 2 (the first prefix code is level 1's)
    for each code of level l + 1."""

    qkv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    prefix_tokens: tuple[torch.Tensor, ...]

    @classmethod
    @torch.no_grad()
    def build(cls, model: DualGR) -> "DecodeWeights":
        fused = []
        for block in model.blocks:
            attn = block.self_attn
            scale = attn.head_dim ** -0.5
            weight = torch.cat([attn.query.weight * scale, attn.key_value.weight])
            bias = torch.cat([attn.query.bias * scale, attn.key_value.bias])
            fused.append((weight, bias))
        tables = tuple(embedding.weight + model.level_position[level + 1]
                       for level, embedding in enumerate(model.prefix_embeddings))
        return cls(tuple(fused), tables)


def _source_key(model: DualGR) -> tuple:
    """What the fused weights were built from: each source tensor's storage, version, dtype and device."""
    tensors = [t for block in model.blocks
               for t in (block.self_attn.query.weight, block.self_attn.query.bias,
                         block.self_attn.key_value.weight, block.self_attn.key_value.bias)]
    tensors += [model.level_position] + [embedding.weight for embedding in model.prefix_embeddings]
    return tuple((t.data_ptr(), _version(t), t.dtype, t.device) for t in tensors)


def _version(t: torch.Tensor) -> int | None:
    """The in-place update counter; None for an inference tensor (torch.inference_mode), which keeps none."""
    return None if t.is_inference() else t._version


_CACHE: "weakref.WeakKeyDictionary[DualGR, tuple[tuple, DecodeWeights]]" = weakref.WeakKeyDictionary()


def decode_weights(model: DualGR) -> DecodeWeights:
    """The model's DecodeWeights, built on first use and again whenever a source weight changed."""
    key = _source_key(model)
    cached = _CACHE.get(model)
    if cached is None or cached[0] != key:
        cached = (key, DecodeWeights.build(model))
        _CACHE[model] = cached
    return cached[1]
