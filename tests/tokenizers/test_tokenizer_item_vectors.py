"""Sequential item embeddings group the items that follow each other, which the user-item SVD cannot see."""

import numpy as np
import pytest

from genret.data.interactions import InteractionLog
from genret.tokenizers.item_vectors import collaborative_item_embeddings, sequential_item_embeddings
from genret.tokenizers.semantic_ids import SIDConfig, item_embeddings_for

N_GROUPS, GROUP_SIZE = 4, 10


def blocked_sequences(n_users=300, seed=0):
    """Every user touches a random 80% of the items once, group after group (in a random group
    order), so the items of one group are adjacent in time while who touched them is random."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        for g in rng.permutation(N_GROUPS):
            block = g * GROUP_SIZE + rng.permutation(GROUP_SIZE)[: GROUP_SIZE * 4 // 5]
            users += [u] * len(block)
            items += block.tolist()
    return np.array(users, np.int64), np.array(items, np.int64)


def group_separation(vectors):
    """Mean cosine inside a group minus mean cosine across groups."""
    sims = vectors @ vectors.T
    group = np.arange(len(vectors)) // GROUP_SIZE
    same = group[:, None] == group[None, :]
    off_diagonal = ~np.eye(len(vectors), dtype=bool)
    return sims[same & off_diagonal].mean() - sims[~same].mean()


def test_items_adjacent_in_time_land_together_where_the_user_item_svd_sees_nothing():
    users, items = blocked_sequences()
    n_items = N_GROUPS * GROUP_SIZE
    sequential = sequential_item_embeddings(users, items, n_items, dim=8, window=3)
    collaborative = collaborative_item_embeddings(users, items, users.max() + 1, n_items, dim=8)
    assert group_separation(sequential) > 0.5
    assert abs(group_separation(collaborative)) < 0.1  # who touched what is random: no signal
    # and the groups are what a nearest-neighbour search returns
    nearest = np.argsort(-(sequential @ sequential.T), axis=1)[:, 1:4]
    assert (nearest // GROUP_SIZE == (np.arange(n_items) // GROUP_SIZE)[:, None]).mean() > 0.95


def test_rows_are_unit_norm_deterministic_and_unseen_items_get_a_vector():
    users, items = blocked_sequences(n_users=50)
    n_items = N_GROUPS * GROUP_SIZE + 2  # two items nobody touched
    a = sequential_item_embeddings(users, items, n_items, dim=6, window=2, seed=3)
    b = sequential_item_embeddings(users, items, n_items, dim=6, window=2, seed=3)
    assert a.shape == (n_items, 6) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.isfinite(a).all() and np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_pairs_never_cross_users():
    # user 0 ends with item 1 and user 1 starts with item 2: a window over the concatenated rows would
    # pair them; these items never share a user's sequence, so they must share no context either.
    users = np.array([0, 0, 0, 1, 1, 1], np.int64)
    items = np.array([0, 3, 1, 2, 4, 5], np.int64)
    vectors = sequential_item_embeddings(users, items, 6, dim=4, window=1)
    assert abs(float(vectors[1] @ vectors[2])) < 1e-4


def test_window_must_be_positive():
    users, items = blocked_sequences(n_users=5)
    with pytest.raises(ValueError, match="sequence_window"):
        sequential_item_embeddings(users, items, N_GROUPS * GROUP_SIZE, window=0)


def test_sid_config_selects_sequential_embeddings_from_the_training_positives():
    users, items = blocked_sequences(n_users=40)
    log = InteractionLog.from_raw("blocks", users, items)
    cfg = SIDConfig(embeddings="sequential", embedding_dim=8, sequence_window=3)
    emb, source = item_embeddings_for(log, log, cfg)
    assert emb.shape == (N_GROUPS * GROUP_SIZE, 8)
    assert "sequential" in source and "window 3" in source
    assert group_separation(emb) > 0.5


def test_checkpoint_vectors_come_from_the_injected_reader_and_must_match_the_catalogue(tmp_path):
    users, items = blocked_sequences(n_users=10)
    log = InteractionLog.from_raw("blocks", users, items)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"read only by the reader below")
    cfg = SIDConfig(embeddings=str(ckpt))
    vectors = np.random.default_rng(0).normal(size=(log.n_items, 4))
    read_paths = []

    def reader(path):
        read_paths.append(path)
        return vectors, log.item_ids.tolist()

    emb, source = item_embeddings_for(log, log, cfg, checkpoint_vectors=reader)
    assert read_paths == [ckpt] and emb.dtype == np.float32 and np.allclose(emb, vectors)
    assert "checkpoint" in source
    with pytest.raises(ValueError, match="no checkpoint reader was given.*export-embeddings"):
        item_embeddings_for(log, log, cfg)
    with pytest.raises(ValueError, match=f"catalogue of {log.n_items - 1:,} items that is not the one of 'blocks'"):
        item_embeddings_for(log, log, cfg, checkpoint_vectors=lambda path: (vectors[1:], log.item_ids[1:]))


def test_a_data_set_without_titles_uses_the_fallback_and_says_so():
    users, items = blocked_sequences(n_users=40)
    log = InteractionLog.from_raw("no-titles", users, items)  # like an Amazon copy without titles.tsv
    assert not log.item_titles
    with pytest.raises(ValueError, match="no item titles.*data.sid.fallback"):
        item_embeddings_for(log, log, SIDConfig(embeddings="titles"))
    cfg = SIDConfig(embeddings="titles", fallback="sequential", embedding_dim=8, sequence_window=3)
    emb, source = item_embeddings_for(log, log, cfg)
    direct, _ = item_embeddings_for(log, log, SIDConfig(embeddings="sequential", embedding_dim=8, sequence_window=3))
    assert np.array_equal(emb, direct)
    assert "sequential" in source and "fallback" in source and "no item titles" in source
    for bad in ("titles", "dataset", "auto"):  # a fallback must exist on every data set
        with pytest.raises(ValueError, match="data.sid.fallback"):
            item_embeddings_for(log, log, SIDConfig(embeddings="titles", fallback=bad))
