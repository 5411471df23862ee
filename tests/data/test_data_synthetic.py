import functools
import time

import numpy as np
import pytest

from genret.data import DataError, leave_one_out, load_dataset, make_synthetic


@functools.lru_cache(maxsize=1)
def default_log():
    start = time.perf_counter()
    log = make_synthetic()  # 10k users x 20k items, the documented default
    return log, time.perf_counter() - start


def disliked_mask(log):
    truth = log.truth
    n_categories = truth["user_long_weights"].shape[1]
    mask = np.zeros((log.n_users, n_categories), dtype=bool)
    for column in truth["user_disliked_categories"].T:
        users = np.flatnonzero(column >= 0)
        mask[users, column[users]] = True
    return mask


def test_default_size_builds_quickly_and_validates():
    log, seconds = default_log()
    assert seconds < 30, f"make_synthetic() took {seconds:.1f} s"
    assert (log.name, log.n_users, log.n_items) == ("synthetic", 10_000, 20_000)
    log.validate()
    assert log.item_embeddings.shape == (20_000, 64) and log.item_embeddings.dtype == np.float32
    assert log.user_features.shape == (10_000, 2) and log.user_feature_cardinalities == [17, 17]
    assert log.side["watch_frac"].dtype == np.float32 and log.side["watch_frac"].max() <= 1.0
    assert len(log.item_titles) == 20_000
    for key in ("item_category", "item_subcategory", "user_long_categories", "user_disliked_categories"):
        assert key in log.truth
    assert log.truth["row_is_burst"].shape == (log.n_rows,)
    positives_per_user = np.bincount(log.user[log.label == 1], minlength=log.n_users)
    assert 0.75 * 40 < positives_per_user.mean() < 1.15 * 40
    assert 0.2 < np.mean(log.label == 0) < 0.8  # both clicks and skipped exposures are plentiful


def test_same_seed_same_data_other_seed_differs():
    a = make_synthetic(n_users=300, n_items=2_000, seed=7)
    b = make_synthetic(n_users=300, n_items=2_000, seed=7)
    c = make_synthetic(n_users=300, n_items=2_000, seed=8)
    for name in ("user", "item", "label", "time", "item_embeddings", "user_features"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.side["watch_frac"], b.side["watch_frac"])
    for key, value in a.truth.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b.truth[key])
    assert a.n_rows != c.n_rows or not np.array_equal(a.item, c.item)


def test_burst_rows_come_from_the_burst_category():
    log, _ = default_log()
    truth = log.truth
    category = truth["item_category"][log.item]
    burst = truth["row_is_burst"]
    assert burst.any() and (log.label[burst] == 1).all()
    users = log.user[burst]
    assert np.all((category[burst] == truth["user_burst_category"][users])
                  | (category[burst] == truth["user_mid_burst_category"][users]))
    # Burst categories lie outside the long-term mix.
    assert (truth["user_long_weights"][users, category[burst]] == 0).all()


def test_bursts_dominate_recent_positives_and_often_hold_the_target():
    log, _ = default_log()
    truth = log.truth
    split = leave_one_out(log)
    test_is_burst = truth["row_is_burst"][split.test_rows]
    assert 0.25 < test_is_burst.mean() < 0.5
    # Among users with an end burst, their positives in the window are mostly the burst category.
    has_end_burst = truth["user_burst_category"][log.user] >= 0
    window_positives = truth["row_in_burst_window"] & (log.label == 1) & has_end_burst
    assert truth["row_is_burst"][window_positives].mean() > 0.75
    end_burst_users = np.flatnonzero(truth["user_burst_category"] >= 0)
    assert 0.3 < len(end_burst_users) / log.n_users < 0.5
    target_category = truth["item_category"][log.item[split.test_rows]]
    in_burst = truth["user_burst_category"][split.users] == target_category
    assert in_burst[np.isin(split.users, end_burst_users)].mean() > 0.7


def test_disliked_categories_are_exposed_repeatedly_and_skipped():
    log, _ = default_log()
    category = log.truth["item_category"][log.item]
    disliked_row = disliked_mask(log)[log.user, category]
    assert np.bincount(log.user[disliked_row], minlength=log.n_users).mean() > 5
    assert (log.label[disliked_row] == 0).mean() > 0.9
    # Long-term categories are clicked far more often than disliked ones.
    long_row = log.truth["user_long_weights"][log.user, category] > 0
    assert (log.label[long_row] == 1).mean() > 0.5


def test_long_term_mix_explains_most_positives_and_user_features_hint_at_it():
    log, _ = default_log()
    truth = log.truth
    positive = log.label == 1
    category = truth["item_category"][log.item]
    outside_bursts = positive & ~truth["row_in_burst_window"]
    long_row = truth["user_long_weights"][log.user, category] > 0
    assert long_row[outside_bursts].mean() > 0.8
    primary = truth["user_long_categories"][:, 0]
    assert (log.user_features[:, 0] == primary + 1).mean() > 0.7
    weights = truth["user_long_weights"]
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
    assert (weights[np.arange(log.n_users), primary] == weights.max(1)).all()


def test_embeddings_follow_the_category_hierarchy():
    log = make_synthetic(n_users=50, n_items=3_000, seed=1)
    emb = log.item_embeddings
    category = log.truth["item_category"]
    subcategory = log.truth["item_subcategory"]
    assert np.array_equal(log.item_features["category"], category)
    assert np.array_equal(subcategory // 8, category)
    centres = np.stack([emb[category == c].mean(0) for c in range(16)])
    nearest = np.argmin(((emb[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == category).mean() > 0.99
    residual = emb - centres[category]
    sub_centres = np.stack([residual[subcategory % 8 == s].mean(0) for s in range(8)])
    nearest_sub = np.argmin(((residual[:, None, :] - sub_centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest_sub == subcategory % 8).mean() > 0.9


def test_bad_parameters():
    with pytest.raises(DataError, match="n_categories"):
        make_synthetic(n_users=10, n_items=500, n_categories=4)
    with pytest.raises(DataError, match="n_items"):
        make_synthetic(n_users=10, n_items=20)
    with pytest.raises(DataError, match="burst_prob"):
        make_synthetic(n_users=10, n_items=500, burst_prob=1.5)


def test_load_dataset_builds_synthetic_from_a_name():
    log = load_dataset("synthetic:40x300", seed=2)
    assert (log.n_users, log.n_items) == (40, 300)
    np.testing.assert_array_equal(log.item, make_synthetic(n_users=40, n_items=300, seed=2).item)
