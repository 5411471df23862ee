import math

import numpy as np
import pytest
import torch

from genret.eval import DEFAULT_KS, paired_hit_difference, ranking_metrics, target_ranks


def test_hand_checked_values():
    ranked = np.array(
        [
            [7, 1, 2, 3, 4, 5],  # target 7 at rank 0
            [1, 2, 3, 9, 4, 5],  # target 9 at rank 3
            [1, 2, 3, 4, 5, 6],  # target 8 missing
            [-1, -1, -1, -1, -1, -1],  # model returned nothing
            [4, 6, -1, -1, -1, -1],  # short list, target 6 at rank 1
        ]
    )
    targets = np.array([7, 9, 8, 0, 6])
    out = ranking_metrics(ranked, targets, ks=(1, 3, 4, 6))
    assert out["n_users"] == 5
    assert out["hr@1"] == pytest.approx(1 / 5)
    assert out["ndcg@1"] == pytest.approx(1 / 5)
    assert out["hr@3"] == pytest.approx(2 / 5)
    assert out["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3)) / 5)
    assert out["hr@4"] == pytest.approx(3 / 5)
    assert out["ndcg@4"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 5)
    for k in (1, 3, 4, 6):
        assert out[f"recall@{k}"] == out[f"hr@{k}"]
        assert f"truncated@{k}" not in out


def test_k_beyond_list_is_flagged_and_computed_on_available_items():
    ranked = np.array([[5, 2], [1, 0]])
    targets = np.array([2, 3])
    out = ranking_metrics(ranked, targets, ks=(1, 2, 10))
    assert out["truncated@10"] is True
    assert "truncated@2" not in out
    assert out["hr@10"] == pytest.approx(0.5)
    assert out["ndcg@10"] == pytest.approx(0.5 / math.log2(3))
    assert out["hr@1"] == 0.0


def test_default_ks_keys_and_torch_input():
    ranked = torch.arange(600).repeat(4, 1)
    targets = torch.tensor([0, 99, 499, 599])
    out = ranking_metrics(ranked, targets)
    for k in DEFAULT_KS:
        assert {f"hr@{k}", f"ndcg@{k}", f"recall@{k}"} <= set(out)
    assert out["hr@5"] == 0.25 and out["hr@100"] == 0.5 and out["hr@500"] == 0.75
    assert not any(key.startswith("truncated") for key in out)


def test_duplicate_target_counts_first_position_and_matches_loop(monkeypatch):
    import genret.eval.metrics as metrics

    monkeypatch.setattr(metrics, "_MAX_COMPARE_ELEMENTS", 100)  # several user chunks
    rng = np.random.default_rng(0)
    ranked = rng.integers(-1, 40, size=(300, 25))
    targets = rng.integers(0, 40, size=300)
    ranks = target_ranks(ranked, targets)
    for row in range(300):
        where = np.flatnonzero(ranked[row] == targets[row])
        assert ranks[row] == (where[0] if where.size else -1)
    out = ranking_metrics(ranked, targets, ks=(10,))
    expected = np.mean([1 / math.log2(r + 2) if 0 <= r < 10 else 0.0 for r in ranks])
    assert out["ndcg@10"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "ranked, targets, ks, message",
    [
        (np.zeros((2, 3), dtype=np.int64), np.zeros(3, dtype=np.int64), (1,), "rows"),
        (np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64), (1,), "2-D"),
        (np.zeros((2, 3), dtype=np.int64), np.array([0, -1]), (1,), ">= 0"),
        (np.zeros((2, 3)), np.zeros(2, dtype=np.int64), (1,), "integer"),
        (np.zeros((2, 3), dtype=np.int64), np.zeros(2, dtype=np.int64), (0,), ">= 1"),
        (np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64), (1,), "no users"),
    ],
)
def test_bad_input_raises(ranked, targets, ks, message):
    with pytest.raises(ValueError, match=message):
        ranking_metrics(ranked, targets, ks=ks)


def test_paired_hit_difference_by_hand():
    # HR@2: a hits users 0, 1, 2; b hits users 1, 3 -> per-user differences [1, 0, 1, -1, 0].
    a = np.array([0, 1, 1, 5, -1])
    b = np.array([-1, 0, 4, 1, 3])
    diff, half = paired_hit_difference(a, b, k=2)
    d = np.array([1, 0, 1, -1, 0], dtype=float)
    assert diff == pytest.approx(0.2)
    assert half == pytest.approx(1.96 * d.std(ddof=1) / math.sqrt(5))
    # Identical rankings: no difference and no spread.
    assert paired_hit_difference(a, a, k=2) == (0.0, 0.0)


def test_paired_hit_difference_needs_the_same_users():
    with pytest.raises(ValueError, match="same users"):
        paired_hit_difference(np.zeros(3, int), np.zeros(4, int), k=1)
    with pytest.raises(ValueError, match="empty"):
        paired_hit_difference(np.zeros(0, int), np.zeros(0, int), k=1)
