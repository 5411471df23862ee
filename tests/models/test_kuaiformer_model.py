"""KuaiFormer maths: compression length, query-token masking, eq. 10 scores, eq. 11-12 loss."""

import math

import numpy as np
import pytest
import torch

from genret.models.kuaiformer import (
    KuaiFormer,
    KuaiFormerConfig,
    attention_mask,
    in_batch_candidates,
    max_interest_scores,
    sampling_log_q,
    smoothed_softmax_loss,
)


def small_model(**overrides) -> KuaiFormer:
    values = dict(n_items=50, d_model=16, n_heads=2, n_layers=2, d_ffn=32, dropout=0.0)
    values.update(overrides)
    torch.manual_seed(0)
    return KuaiFormer(KuaiFormerConfig(**values)).eval()


def histories(batch: int, length: int, n_items: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, n_items, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_default_compression_turns_256_items_into_55_tokens():
    config = KuaiFormerConfig(n_items=50)
    groups = (config.early_group_size, config.early_groups, config.middle_group_size, config.middle_groups)
    assert groups == (64, 2, 16, 5)
    assert config.latest_items == 48 and config.sequence_tokens == 55
    model = small_model()
    tokens, valid = model.tokens(histories(3, 256))
    compressed, compressed_valid = model.compress(tokens, valid)
    assert compressed.shape == (3, 55, 16) and bool(compressed_valid.all())
    hidden, n_sequence = model.encode(histories(3, 256))
    assert n_sequence == 55 and hidden.shape == (3, 55 + 4, 16)
    assert model.user_vectors(histories(3, 256)).shape == (3, 4, 16)


def test_short_history_leaves_empty_groups_as_padding():
    model = small_model()
    items = torch.full((2, 256), -1)
    items[0, -60:] = histories(1, 60)[0]  # 48 latest + 12 items in the last middle group
    items[1, -48:] = histories(1, 48, seed=1)[0]
    tokens, valid = model.tokens(items)
    _, group_valid = model.compress(tokens, valid)
    assert group_valid[0, :7].tolist() == [False] * 6 + [True]
    assert not group_valid[1, :7].any() and group_valid[:, 7:].all()


def test_left_padding_does_not_change_user_vectors():
    for overrides in ({}, {"positions": "rope"}, {"compression": False, "max_len": 40}):
        model = small_model(**overrides)
        items = histories(2, 30)
        padded = torch.cat([torch.full((2, 10), -1), items], dim=1)
        torch.testing.assert_close(model.user_vectors(items), model.user_vectors(padded), atol=1e-5, rtol=1e-5)


def test_mask_lets_query_tokens_see_the_sequence_and_earlier_queries_only():
    valid = torch.tensor([[False, True, True, True, True, True, True]])  # 1 pad, 3 items, 3 queries
    mask = attention_mask(valid, causal=True)[0]
    queries = range(4, 7)
    for q in queries:
        assert mask[q, 1:4].all(), "a query token sees every sequence token"
        assert not mask[q, 0], "and no padding"
        assert mask[q, 4:q + 1].all() and not mask[q, q + 1:].any(), "earlier queries only"
    assert not mask[1:4, 4:].any(), "sequence tokens never see query tokens"
    assert mask[0, 0] and mask[0].sum() == 1, "a padding row attends only to itself (no NaN)"


def test_perturbing_a_later_query_token_leaves_earlier_interests_unchanged():
    model = small_model(compression=False, max_len=20)
    items = histories(2, 12)
    before, _ = model.encode(items)
    with torch.no_grad():
        model.query_tokens[2] += 1.0
    after, n_sequence = model.encode(items)
    torch.testing.assert_close(after[:, :n_sequence + 2], before[:, :n_sequence + 2])
    assert not torch.allclose(after[:, n_sequence + 2:], before[:, n_sequence + 2:])
    # ... while every interest depends on the oldest item of the sequence.
    changed = items.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 50
    moved = (model.user_vectors(changed) - model.user_vectors(items)).abs().amax(-1)
    assert (moved > 1e-6).all()


def test_items_in_an_early_group_reach_every_interest():
    model = small_model()
    items = histories(1, 256)
    changed = items.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 50  # inside the first group of 64
    moved = (model.user_vectors(changed) - model.user_vectors(items)).abs().amax(-1)
    assert (moved > 1e-6).all()


def test_sasrec_setting_reads_the_last_position():
    model = small_model(compression=False, readout="last_position", n_interests=1, item_mlp=False, max_len=20)
    items = histories(3, 15)
    positions = model.position_vectors(items)
    torch.testing.assert_close(model.user_vectors(items)[:, 0], positions[:, -1])
    with pytest.raises(ValueError, match="position_vectors"):
        small_model().position_vectors(items)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="max_len"):
        KuaiFormer(KuaiFormerConfig(n_items=5, max_len=200))  # 208 items are compressed
    with pytest.raises(ValueError, match="n_interests"):
        KuaiFormer(KuaiFormerConfig(n_items=5, readout="last_position", n_interests=4))
    with pytest.raises(ValueError, match="item_mlp"):
        KuaiFormer(KuaiFormerConfig(n_items=5, item_mlp=False, side_cardinalities=[4]))
    with pytest.raises(ValueError, match="catalogue"):
        small_model().user_vectors(torch.tensor([[1, 50]]))


def test_score_is_the_max_over_interests():
    users = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2 interests, d=2)
    items = torch.tensor([[3.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    assert max_interest_scores(users, items).tolist() == [[3.0, 2.0, -1.0]]


def test_logq_and_label_smoothing_match_eq_11_12_by_hand():
    # Two rows; candidates are the in-batch positives [0, 1] plus uniform negatives [2, 0].
    targets = torch.tensor([0, 1])
    torch.manual_seed(0)
    candidates, allowed = in_batch_candidates(targets, n_items=3, n_uniform=0)
    assert candidates.tolist() == [0, 1] and allowed.all()
    candidates = torch.tensor([0, 1, 2, 0])
    allowed = candidates[None] != targets[:, None]
    allowed[0, 0] = allowed[1, 1] = True  # row 0's extra copy of item 0 (column 3) is an accidental hit
    scores = torch.tensor([[2.0, 0.5, -1.0, 2.0], [0.0, 1.0, 0.3, 0.0]])
    item_prob = torch.tensor([0.5, 0.3, 0.2])
    log_q = sampling_log_q(item_prob.log(), candidates, n_in_batch=2, n_uniform=2, n_items=3)
    q = [2 * 0.5 + 2 / 3, 2 * 0.3 + 2 / 3, 2 * 0.2 + 2 / 3, 2 * 0.5 + 2 / 3]  # expected count of each candidate
    torch.testing.assert_close(log_q, torch.tensor(q).log())
    alpha = 0.1
    loss = smoothed_softmax_loss(scores - log_q[None], torch.tensor([0, 1]), allowed, alpha)

    def by_hand(row, positive, columns):
        corrected = {c: scores[row, c].item() - math.log(q[c]) for c in columns}
        log_norm = math.log(sum(math.exp(v) for v in corrected.values()))
        negatives = [c for c in columns if c != positive]
        return (-(1 - alpha) * (corrected[positive] - log_norm)
                - alpha / len(negatives) * sum(corrected[c] - log_norm for c in negatives))

    expected = torch.tensor([by_hand(0, 0, [0, 1, 2]), by_hand(1, 1, [0, 1, 2, 3])])
    torch.testing.assert_close(loss, expected)
    # logQ changes the loss (popular items lose weight as negatives) ...
    plain = smoothed_softmax_loss(scores, torch.tensor([0, 1]), allowed, alpha)
    assert (plain - loss).abs().min() > 1e-3
    # ... unless Q is uniform, where it is a constant shift that cancels in the softmax.
    uniform = smoothed_softmax_loss(scores - 0.7, torch.tensor([0, 1]), allowed, alpha)
    torch.testing.assert_close(uniform, plain)
    # alpha = 0 is the cross-entropy of eq. 11.
    ce = smoothed_softmax_loss(scores, torch.tensor([0, 1]), None, 0.0)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1]), reduction="none"))


def test_accidental_hits_are_masked_for_their_row_only():
    candidates, allowed = in_batch_candidates(torch.tensor([4, 7, 4]), n_items=10)
    assert allowed.tolist() == [[True, True, False], [True, True, True], [False, True, True]]
    assert np.array_equal(candidates.numpy(), [4, 7, 4])


def test_item_features_and_side_buckets_enter_the_token():
    model = small_model(item_feature_widths=[2], item_feature_cardinalities=[5], side_cardinalities=[4])
    model.set_item_features([torch.randint(0, 5, (50, 2))])
    items = histories(2, 10)
    side = torch.randint(1, 4, (2, 10, 1))
    changed = side.clone()
    changed[0, 3, 0] = side[0, 3, 0] % 3 + 1
    tokens, _ = model.tokens(items, side)
    tokens_changed, _ = model.tokens(items, changed)
    differs = (tokens - tokens_changed).abs().amax(-1) > 0
    assert differs[0, 3] and differs.sum() == 1
    # Deduplicated MLP evaluation equals the per-token computation.
    x = model.item_embedding(items)
    features = model.item_feature_embeddings[0](model.item_feature_0[items])
    count = (model.item_feature_0[items] > 0).sum(-1, keepdim=True).clamp(min=1)
    direct = x + model.item_mlp(torch.cat([x, features.sum(-2) / count, model.side_embeddings[0](side[..., 0])], -1))
    torch.testing.assert_close(tokens, direct)


def test_latest_item_states_pair_each_raw_item_with_the_next_one():
    model = small_model(max_len=100, early_group_size=16, early_groups=2, middle_group_size=8, middle_groups=2)
    assert model.config.latest_items == 52
    items = torch.full((2, 60), -1)
    items[0] = histories(1, 60)[0]
    items[1, -5:] = torch.tensor([1, 2, 3, 4, 5])
    targets = torch.tensor([7, 9])
    hidden, n_sequence = model.encode(items)
    states, following = model.latest_item_states(hidden, n_sequence, items, targets)
    assert states.shape == (52 + 5, 1, 16)
    assert following[:52].tolist() == items[0, -51:].tolist() + [7]
    assert following[52:].tolist() == [2, 3, 4, 5, 9]
    torch.testing.assert_close(states[51, 0], hidden[0, n_sequence - 1])
