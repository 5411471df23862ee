"""DecodeWeights: one fused QKV projection per decoder block, equal to the trained projections, and
rebuilt whenever a source weight changes (so decoding during training never reads stale weights)."""

import pytest
import torch
import torch.nn.functional as F

from genret.decoding.beam_search import _PrefixCache
from genret.decoding.decode_weights import DecodeWeights, decode_weights
from genret.kernels import prefix_self_attention
from genret.models.dualgr import DualGR, DualGRConfig


def make_model():
    torch.manual_seed(0)
    return DualGR(DualGRConfig(codebook_size=8, n_levels=3, d_model=16, n_heads=2, n_blocks=2, d_ffn=32,
                               dropout=0.0, max_history=8, long_window=8, short_window=2)).eval()


def test_fused_projection_equals_query_key_value_projections():
    model = make_model()
    x = torch.randn(3, 5, 16)
    for block, (weight, bias) in zip(model.blocks, DecodeWeights.build(model).qkv):
        attn = block.self_attn
        q, kv = torch.nn.functional.linear(x, weight, bias).split([16, 32], -1)
        torch.testing.assert_close(q, attn.query(x) * attn.head_dim ** -0.5)
        torch.testing.assert_close(kv, attn.key_value(x))


def test_prefix_token_tables_equal_embedding_plus_level_position():
    model = make_model()
    codes = torch.tensor([[0, 3, 7], [5, 5, 1]])
    for level, table in enumerate(DecodeWeights.build(model).prefix_tokens):
        expected = model.prefix_embeddings[level](codes) + model.level_position[level + 1]
        torch.testing.assert_close(torch.nn.functional.embedding(codes, table), expected)


def test_cached_until_a_source_weight_changes():
    model = make_model()
    first = decode_weights(model)
    assert decode_weights(model) is first
    with torch.no_grad():
        model.blocks[1].self_attn.key_value.weight.mul_(2.0)  # an in-place update, as an optimiser step
    second = decode_weights(model)
    assert second is not first
    torch.testing.assert_close(second.qkv[1][0][16:], model.blocks[1].self_attn.key_value.weight)
    with torch.no_grad():
        model.level_position.add_(1.0)
    third = decode_weights(model)
    assert third is not second
    torch.testing.assert_close(third.prefix_tokens[0], model.prefix_embeddings[0].weight + model.level_position[1])
    model.double()  # new storage and dtype
    assert decode_weights(model).qkv[0][0].dtype == torch.float64


def test_a_model_built_under_inference_mode_gets_its_weights():
    # Inference tensors keep no version counter; the cache key must not need one.
    with torch.inference_mode():
        model = make_model()
        weights = decode_weights(model)
    assert decode_weights(model) is weights
    torch.testing.assert_close(weights.qkv[0][0][16:], model.blocks[0].self_attn.key_value.weight)


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_self_attention_through_the_prefix_cache_equals_causal_self_attention(kernel):
    # Token by token through the cache (the beams of each level reordered by a parent map) must give
    # what the training path computes over each beam's whole prefix at once.
    if kernel == "triton":
        pytest.importorskip("triton")
    model = make_model()
    block = model.blocks[0]
    U, W, L = 2, 3, 3
    weights = decode_weights(model)
    cache = _PrefixCache(1, U, W, L, block.self_attn.n_heads, block.self_attn.head_dim, torch.device("cpu"))

    def attend(x):  # the decode step's self-attention sub-layer (genret.decoding.beam_search._decoder_step)
        qkv = F.linear(block.norm_self(x), *weights.qkv[0])
        att = prefix_self_attention(qkv, cache.block(0, qkv), cache.level, kernel=kernel)
        return x + block.self_attn.out(att.flatten(-2))

    tokens = torch.randn(U, 1, 16)
    prefixes = tokens.unsqueeze(2)  # (U, W, n, d): each beam's prefix tokens so far
    out = attend(tokens)
    torch.testing.assert_close(out, block.self_attention(tokens))
    g = torch.Generator().manual_seed(3)
    for level in range(1, L):
        width = prefixes.shape[1]
        parent = torch.randint(0, width, (U, W), generator=g)
        cache.reorder(parent)
        prefixes = prefixes.gather(1, parent[..., None, None].expand(-1, -1, *prefixes.shape[2:]))
        new = torch.randn(U, W, 16, generator=g)
        prefixes = torch.cat([prefixes, new.unsqueeze(2)], 2)
        out = attend(new)
        full = block.self_attention(prefixes.reshape(U * W, level + 1, 16))[:, -1].reshape(U, W, 16)
        torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)
