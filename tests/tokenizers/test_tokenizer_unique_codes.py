"""spread_last_level: colliding items get distinct SIDs; prefixes and untouched prefixes stay."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from genret.tokenizers import RQKMeans, spread_last_level


def _fitted(X: np.ndarray, K: int, levels: int = 2) -> RQKMeans:
    return RQKMeans(n_levels=levels, codebook_size=K, n_iter=10, random_state=0).fit(X)


def _hand_tokenizer(level1: list[float], last: list[float]) -> RQKMeans:
    """A 1-d, 2-level tokenizer with the given centroids (no fitting)."""
    tok = RQKMeans(n_levels=2, codebook_size=len(last))
    assert len(level1) == len(last)
    tok.codebooks_ = torch.tensor([[[c] for c in level1], [[c] for c in last]], dtype=torch.float32)
    tok.n_features_in_ = 1
    return tok


def test_duplicates_get_distinct_sids_and_prefixes_stay():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8)).astype(np.float32)
    X = np.concatenate([base, base[:10], base[:10]])  # items 40-59 duplicate items 0-9
    tok = _fitted(X, K=8)
    greedy = tok.encode(X)
    assert (greedy[40:50] == greedy[:10]).all()  # the greedy codes collide by construction
    codes, residual = spread_last_level(tok, X, greedy)
    # Every prefix holds min(its items, K) distinct SIDs: collisions only where the codebook is full.
    _, prefix_count = np.unique(greedy[:, :-1], axis=0, return_counts=True)
    assert len(np.unique(codes, axis=0)) == np.minimum(prefix_count, 8).sum()
    assert len(np.unique(greedy, axis=0)) < np.minimum(prefix_count, 8).sum()
    assert (codes[:, :-1] == greedy[:, :-1]).all()
    # Prefixes without a collision are not touched.
    _, sid_of, sid_size = np.unique(greedy, axis=0, return_inverse=True, return_counts=True)
    _, prefix_of = np.unique(greedy[:, :-1], axis=0, return_inverse=True)
    crowded = np.isin(prefix_of.reshape(-1), prefix_of.reshape(-1)[sid_size[sid_of.reshape(-1)] > 1])
    assert (~crowded).any()
    assert (codes[~crowded] == greedy[~crowded]).all()
    np.testing.assert_allclose(residual, np.linalg.norm(X - tok.decode(codes), axis=1), rtol=1e-5, atol=1e-5)


def test_assignment_is_the_minimum_cost_distinct_one():
    # One used level-1 code (0.0); last-level centroids at 0, 1 and 10. Items at 0.1 and 0.1
    # collide on code 0, the item at 0.9 is alone on code 1. Brute force over every distinct
    # assignment must agree with the result (it moves the lone item to 10: 0.01 + 0.81 + 82.81
    # beats keeping it, 0.01 + 98.01 + 0.01).
    tok = _hand_tokenizer([0.0, 0.0, 0.0], [0.0, 1.0, 10.0])
    X = np.array([[0.1], [0.1], [0.9]], np.float32)
    greedy = np.array([[0, 0], [0, 0], [0, 1]])
    codes, _ = spread_last_level(tok, X, greedy)
    centroids = np.array([0.0, 1.0, 10.0])
    best = min(((X[:, 0] - centroids[list(p)]) ** 2).sum() for p in itertools.permutations(range(3)))
    got = ((X[:, 0] - centroids[codes[:, 1]]) ** 2).sum()
    assert got == pytest.approx(best, abs=1e-5)
    assert len({tuple(c) for c in codes}) == 3


def test_crowded_prefix_collides_as_little_as_possible():
    X = np.zeros((10, 4), np.float32)  # ten identical items, K = 4 last codes
    tok = _fitted(np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32), K=4)
    codes, _ = spread_last_level(tok, X, tok.encode(X))
    _, sizes = np.unique(codes, axis=0, return_counts=True)
    assert sorted(sizes.tolist()) == [2, 2, 3, 3]  # ceil(10 / 4) at most


def test_single_level_and_shape_errors():
    X = np.random.default_rng(2).normal(size=(12, 3)).astype(np.float32)
    tok = _fitted(X, K=4, levels=1)
    greedy = tok.encode(X)
    codes, _ = spread_last_level(tok, X, greedy)  # one level: no prefix to keep, nothing moves
    assert (codes == greedy).all()
    with pytest.raises(ValueError, match="codes must have shape"):
        spread_last_level(tok, X, greedy[:5])


def test_three_levels_move_the_surplus_of_a_full_prefix_to_siblings():
    # 3 levels, K = 4: a tight cluster of 12 near-identical items shares (s1, s2) greedily; one
    # prefix holds at most K = 4 distinct SIDs, but its s1 has K^2 = 16 slots, so all 12 fit.
    rng = np.random.default_rng(3)
    spread_out = rng.normal(size=(40, 6)).astype(np.float32) * 3
    cluster = spread_out[0] + rng.normal(size=(12, 6)).astype(np.float32) * 1e-3
    X = np.concatenate([spread_out, cluster])
    tok = _fitted(X, K=4, levels=3)
    greedy = tok.encode(X)
    _, prefix_size = np.unique(greedy[:, :2], axis=0, return_counts=True)
    assert prefix_size.max() > 4  # a prefix overflows: the last level alone cannot separate it
    codes, residual = spread_last_level(tok, X, greedy)
    assert (codes[:, 0] == greedy[:, 0]).all()  # s1 (the S2D bucket) never changes
    _, s1_size = np.unique(greedy[:, 0], return_counts=True)
    assert s1_size.max() <= 16  # so the contract holds: every item its own SID
    assert len(np.unique(codes, axis=0)) == len(X)
    _, new_prefix_size = np.unique(codes[:, :2], axis=0, return_counts=True)
    assert new_prefix_size.max() <= 4
    # Only the surplus of overflowing prefixes moves: items of the other prefixes keep their s2.
    _, prefix_of = np.unique(greedy[:, :2], axis=0, return_inverse=True)
    calm = prefix_size[prefix_of.reshape(-1)] <= 4
    assert (codes[calm, 1] == greedy[calm, 1]).all() and (codes[~calm, 1] != greedy[~calm, 1]).any()
    np.testing.assert_allclose(residual, np.linalg.norm(X - tok.decode(codes), axis=1), rtol=1e-5, atol=1e-5)


def test_three_levels_over_capacity_share_sids_evenly():
    # 20 identical items under one s1 with K = 2: K^2 = 4 SIDs at most, so ceil(20 / 4) = 5 per SID.
    tok = _fitted(np.random.default_rng(4).normal(size=(30, 4)).astype(np.float32), K=2, levels=3)
    X = np.zeros((20, 4), np.float32)
    codes, _ = spread_last_level(tok, X, tok.encode(X))
    assert len(np.unique(codes[:, 0])) == 1
    _, sizes = np.unique(codes, axis=0, return_counts=True)
    assert sorted(sizes.tolist()) == [5, 5, 5, 5]


def test_quickstart_sids_are_unique():
    # The README's contract on the quickstart's data: 4,000 items, 3 x 32 codes, one SID each
    # (greedy codes plus the last-level spread alone left 578 SIDs shared by up to 6 items).
    from genret.data import leave_one_out, load_dataset
    from genret.tokenizers import SIDConfig, fit_semantic_ids

    log = load_dataset("synthetic:3000x4000")
    _, codes, _, report = fit_semantic_ids(log, leave_one_out(log).train,
                                           SIDConfig(codebook_size=32, n_iter=15, cache_dir=None), progress=False)
    assert report["overall"]["unique_path_fraction"] == 1.0 and report["overall"]["largest_collision"] == 1
