"""A seeded synthetic feed with known ground truth: interest mixes, bursts, disliked categories, exposures.

The story, per user:
  * items sit in a category -> subcategory hierarchy; their content embeddings are
    category centre + subcategory offset (mostly shared across categories, so a residual
    quantiser's second level can find it) + small noise.
  * a stable long-term mix over 2-4 categories (Dirichlet weights), a preferred subcategory in each,
    and 1-2 disliked categories.
  * a feed shows items: mostly from the long-term mix, repeatedly from the disliked categories,
    some from anywhere else. The user clicks with a known per-category probability (the
    "affinity"): high for long-term categories, very low for disliked ones.
  * bursts: for some users the feed's last stretch is dominated by a transient category outside
    the long-term mix and the user clicks it eagerly, so the last 5-15 positives are mostly that
    category (a leave-one-out target then often comes from the burst); some users also have an
    earlier burst on another transient category.
Clicks are positives (label 1); exposures without a click are negatives (label 0).
"""

from __future__ import annotations

import numpy as np

from genret.data.interactions import DataError, InteractionLog

SOURCE_NAMES = ("long", "disliked", "other", "burst")  # values of truth["row_source"]

# Feed and click model (fixed so the truth stays simple to state; see the module docstring).
FEED_LONG, FEED_DISLIKED, FEED_OTHER = 0.55, 0.25, 0.20  # share of exposures outside bursts
CLICK_LONG_MIN, CLICK_LONG_MAX = 0.45, 0.90  # click probability of the weakest / strongest long-term category
CLICK_DISLIKED, CLICK_OTHER = 0.03, 0.12
BURST_FEED_SHARE, BURST_CLICK = 0.75, 0.90  # inside a burst window: share of burst exposures, their click prob.
PREFERRED_SUB_PROB, BURST_SUB_PROB = 0.6, 0.7  # chance an exposure hits the user's / burst's subcategory
HINT_PROB = 0.8  # chance a user feature states the truth rather than noise


def make_synthetic(
    n_users: int = 10_000,
    n_items: int = 20_000,
    n_categories: int = 16,
    n_subcategories: int = 8,
    emb_dim: int = 64,
    mean_length: float = 40,
    min_length: int = 5,
    burst_prob: float = 0.4,
    mid_burst_prob: float = 0.3,
    burst_length: tuple[int, int] = (5, 15),
    n_long: tuple[int, int] = (2, 4),
    n_disliked: tuple[int, int] = (1, 2),
    unique_positives: bool = True,
    seed: int = 0,
) -> InteractionLog:
    """Generate the synthetic data set (name "synthetic"); deterministic for a given seed.

    Args:
        n_users: users.
        n_items: items; at least n_categories * n_subcategories so every subcategory has one.
        n_categories: top-level categories.
        n_subcategories: subcategories per category.
        emb_dim: content embedding size.
        mean_length: approximate mean number of positives per user (before de-duplication).
        min_length: minimum target number of positives per user.
        burst_prob: fraction of users whose last `burst_length` positives form a burst.
        mid_burst_prob: fraction of users with an earlier burst inside the sequence.
        burst_length: (low, high) positives in a burst, inclusive.
        n_long: (low, high) long-term categories per user, inclusive.
        n_disliked: (low, high) disliked categories per user, inclusive.
        unique_positives: drop repeated clicks on an item the user already clicked.
        seed: random seed.

    Returns:
        InteractionLog with raw ids 0..n-1 (int64), time = position in the user's feed,
        side["watch_frac"] (float32 in [0, 1]), item_features "category" / "subcategory" (int64,
        subcategory ids are global: category * n_subcategories + local), item_embeddings
        (n_items, emb_dim) float32, item_titles, user_features ("interest_hint": the strongest
        long-term category + 1, "dislike_hint": a disliked category + 1, each true with
        probability 0.8, else random; 0 unused), and `truth`:
          item_category (n_items,), item_subcategory (n_items,), item_popularity (n_items,)
          (sampling weight inside its subcategory), user_long_categories (n_users, n_long[1])
          int64 strongest first, -1 padded, user_long_weights (n_users, n_categories) float32,
          user_preferred_subcategory (n_users, n_categories) global ids, user_disliked_categories
          (n_users, n_disliked[1]) -1 padded, user_burst_category / user_mid_burst_category
          (n_users,) -1 if none, user_burst_subcategory / user_mid_burst_subcategory,
          user_feed_mix and user_affinity (n_users, n_categories) (exposure share and click
          probability outside bursts), row_is_burst (n_rows,) bool (positives drawn from a
          burst), row_in_burst_window (n_rows,) bool, row_source (n_rows,) int8 index into
          `SOURCE_NAMES`, source_names, params.

    Raises:
        DataError: invalid parameters.
    """
    params = dict(n_users=n_users, n_items=n_items, n_categories=n_categories, n_subcategories=n_subcategories,
                  emb_dim=emb_dim, mean_length=mean_length, min_length=min_length, burst_prob=burst_prob,
                  mid_burst_prob=mid_burst_prob, burst_length=tuple(burst_length), n_long=tuple(n_long),
                  n_disliked=tuple(n_disliked), unique_positives=unique_positives, seed=seed)
    _check_params(params)
    rng = np.random.default_rng(seed)
    C, S, U = n_categories, n_subcategories, n_users

    items = _make_items(rng, n_items, C, S, emb_dim)
    users = _make_users(rng, U, C, S, n_long, n_disliked)

    # ---- how many exposures each user sees: enough for the target number of positives
    click_rate = (users["feed_mix"] * users["affinity"]).sum(1)  # (U,) expected clicks per exposure
    extra = rng.gamma(2.0, max(mean_length - min_length, 0) / 2.0, size=U)
    n_positive = min_length + np.round(extra).astype(np.int64)
    has_burst = rng.random(U) < burst_prob
    burst_positives = np.where(has_burst, rng.integers(burst_length[0], burst_length[1] + 1, U), 0)
    burst_rate = BURST_FEED_SHARE * BURST_CLICK + (1 - BURST_FEED_SHARE) * click_rate
    main_positives = np.maximum(n_positive - burst_positives, 3)
    n_main = np.ceil(main_positives / click_rate).astype(np.int64)
    n_burst = np.ceil(burst_positives / burst_rate).astype(np.int64)
    has_mid = rng.random(U) < mid_burst_prob
    mid_len = np.minimum(np.ceil(rng.integers(burst_length[0], burst_length[1] + 1, U) / burst_rate), n_main)
    mid_len = np.where(has_mid, mid_len, 0).astype(np.int64)
    mid_start = (rng.random(U) * (n_main - mid_len + 1)).astype(np.int64)

    # ---- the feed: one row per exposure, users in order, positions in order
    per_user = n_main + n_burst
    user = np.repeat(np.arange(U, dtype=np.int64), per_user)
    n = len(user)
    position = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    in_end = has_burst[user] & (position >= n_main[user])
    in_mid = has_mid[user] & (position >= mid_start[user]) & (position < mid_start[user] + mid_len[user])
    in_window = in_end | in_mid
    from_burst = in_window & (rng.random(n) < BURST_FEED_SHARE)
    burst_category = np.where(in_end, users["burst_category"][user], users["mid_burst_category"][user])
    burst_sub = np.where(in_end, users["burst_subcategory"][user], users["mid_burst_subcategory"][user])

    category = _sample_rows(rng, users["feed_mix"], user)
    category = np.where(from_burst, burst_category, category)
    is_long = users["long_weights"][user, category] > 0
    random_sub = category * S + rng.integers(0, S, n)
    subcategory = np.where(is_long & (rng.random(n) < PREFERRED_SUB_PROB),
                           users["preferred_subcategory"][user, category], random_sub)
    subcategory = np.where(from_burst & (rng.random(n) < BURST_SUB_PROB), burst_sub, subcategory)
    item = _sample_items(rng, items, subcategory)

    click_prob = np.where(from_burst, BURST_CLICK, users["affinity"][user, category])
    clicked = rng.random(n) < click_prob
    is_disliked = users["disliked_mask"][user, category]
    source = np.where(from_burst, 3, np.where(is_long, 0, np.where(is_disliked, 1, 2))).astype(np.int8)
    watch_frac = np.where(clicked, np.clip(click_prob * rng.uniform(0.7, 1.1, n) + 0.05, 0, 1),
                          rng.uniform(0.0, 0.15, n)).astype(np.float32)

    keep = np.ones(n, dtype=bool)
    if unique_positives:
        clicked_rows = np.flatnonzero(clicked)
        _, first = np.unique(user[clicked_rows] * n_items + item[clicked_rows], return_index=True)
        keep[clicked_rows] = False
        keep[clicked_rows[first]] = True

    truth = {
        "item_category": items["category"],
        "item_subcategory": items["subcategory"],
        "item_popularity": items["popularity"],
        "user_long_categories": users["long_categories"],
        "user_long_weights": users["long_weights"],
        "user_preferred_subcategory": users["preferred_subcategory"],
        "user_disliked_categories": users["disliked_categories"],
        "user_burst_category": np.where(has_burst, users["burst_category"], -1),
        "user_burst_subcategory": np.where(has_burst, users["burst_subcategory"], -1),
        "user_mid_burst_category": np.where(has_mid, users["mid_burst_category"], -1),
        "user_mid_burst_subcategory": np.where(has_mid, users["mid_burst_subcategory"], -1),
        "user_feed_mix": users["feed_mix"].astype(np.float32),
        "user_affinity": users["affinity"].astype(np.float32),
        "row_is_burst": (from_burst & clicked)[keep],
        "row_in_burst_window": in_window[keep],
        "row_source": source[keep],
        "source_names": SOURCE_NAMES,
        "params": params,
    }
    log = InteractionLog(
        name="synthetic",
        user=user[keep],
        item=item[keep],
        label=clicked[keep].astype(np.int8),
        time=position[keep],
        user_ids=np.arange(U, dtype=np.int64),
        item_ids=np.arange(n_items, dtype=np.int64),
        side={"watch_frac": watch_frac[keep]},
        item_titles=[f"category {c} subcategory {s % S} item {i}"
                     for i, (c, s) in enumerate(zip(items["category"].tolist(), items["subcategory"].tolist()))],
        item_features={"category": items["category"], "subcategory": items["subcategory"]},
        user_features=users["features"],
        user_feature_names=["interest_hint", "dislike_hint"],
        user_feature_cardinalities=[C + 1, C + 1],
        item_embeddings=items["embeddings"],
        truth=truth,
        skipped={"repeated_clicks": int(n - np.count_nonzero(keep))},
    )
    return log.validate()


def _check_params(p: dict) -> None:
    for key in ("n_users", "n_items", "n_categories", "n_subcategories", "emb_dim", "min_length"):
        if not isinstance(p[key], (int, np.integer)) or p[key] < 1:
            raise DataError(f"make_synthetic: {key} must be a positive integer, got {p[key]!r}")
    for key in ("n_long", "n_disliked", "burst_length"):
        low, high = p[key]
        if not 1 <= low <= high:
            raise DataError(f"make_synthetic: {key} must be (low, high) with 1 <= low <= high, got {p[key]!r}")
    for key in ("burst_prob", "mid_burst_prob"):
        if not 0.0 <= p[key] <= 1.0:
            raise DataError(f"make_synthetic: {key} must lie in [0, 1], got {p[key]!r}")
    if p["mean_length"] < p["min_length"]:
        raise DataError(f"make_synthetic: mean_length ({p['mean_length']}) must be >= min_length ({p['min_length']})")
    needed = p["n_long"][1] + p["n_disliked"][1] + 2  # long, disliked, end burst and mid burst are distinct
    if p["n_categories"] < needed:
        raise DataError(f"make_synthetic: n_categories must be >= {needed} for these n_long / n_disliked")
    if p["n_items"] < p["n_categories"] * p["n_subcategories"]:
        raise DataError("make_synthetic: n_items must be >= n_categories * n_subcategories")


def _make_items(rng: np.random.Generator, n_items: int, C: int, S: int, dim: int) -> dict[str, np.ndarray]:
    # Every subcategory gets one item; the rest follow uneven category sizes.
    category_share = rng.dirichlet(np.full(C, 8.0))
    rest = n_items - C * S
    group = np.concatenate([np.arange(C * S), rng.choice(C, rest, p=category_share) * S + rng.integers(0, S, rest)])
    group = group[rng.permutation(n_items)].astype(np.int64)  # item ids carry no information
    category = group // S
    scale = 1.0 / np.sqrt(dim)
    centres = rng.normal(size=(C, dim)) * scale
    shared_offsets = rng.normal(size=(S, dim)) * scale * 0.35
    own_offsets = rng.normal(size=(C, S, dim)) * scale * 0.12
    noise = rng.normal(size=(n_items, dim)) * scale * 0.08
    embeddings = centres[category] + shared_offsets[group % S] + own_offsets[category, group % S] + noise
    popularity = np.exp(rng.normal(0.0, 1.0, n_items))
    # Sampling table: items sorted by subcategory, key = subcategory + cumulative share inside it.
    order = np.lexsort((np.arange(n_items), group))
    weights = popularity[order]
    totals = np.bincount(group, weights=popularity, minlength=C * S)
    cumulative = np.cumsum(weights) - np.repeat(np.cumsum(totals) - totals, np.bincount(group, minlength=C * S))
    key = group[order] + cumulative / totals[group[order]]
    last = np.cumsum(np.bincount(group, minlength=C * S)) - 1
    key[last] = np.arange(C * S) + 1.0  # exact upper edge, so rounding never spills into the next group
    return {
        "category": category,
        "subcategory": group,
        "popularity": (popularity / totals[group]).astype(np.float32),
        "embeddings": embeddings.astype(np.float32),
        "sample_key": key,
        "sample_order": order,
    }


def _make_users(rng, U: int, C: int, S: int, n_long, n_disliked) -> dict[str, np.ndarray]:
    ranking = np.argsort(rng.random((U, C)), axis=1)  # a random order of categories per user
    k_long = rng.integers(n_long[0], n_long[1] + 1, U)
    k_disliked = rng.integers(n_disliked[0], n_disliked[1] + 1, U)
    slot = np.arange(C)[None, :]
    rows = np.arange(U)[:, None]
    long_slot = slot < k_long[:, None]
    disliked_slot = (slot >= k_long[:, None]) & (slot < (k_long + k_disliked)[:, None])

    raw_weights = rng.gamma(1.0, size=(U, C)) * long_slot + 1e-3 * long_slot  # never exactly 0 in a long slot
    weight_by_slot = raw_weights / raw_weights.sum(1, keepdims=True)
    long_weights = np.zeros((U, C))
    long_weights[rows, ranking] = weight_by_slot
    disliked_mask = np.zeros((U, C), dtype=bool)
    disliked_mask[rows, ranking] = disliked_slot
    other_mask = (long_weights == 0) & ~disliked_mask

    feed_mix = (FEED_LONG * long_weights
                + FEED_DISLIKED * disliked_mask / disliked_mask.sum(1, keepdims=True)
                + FEED_OTHER * other_mask / other_mask.sum(1, keepdims=True))
    strength = long_weights / long_weights.max(1, keepdims=True)
    affinity = np.where(long_weights > 0, CLICK_LONG_MIN + (CLICK_LONG_MAX - CLICK_LONG_MIN) * strength,
                        np.where(disliked_mask, CLICK_DISLIKED, CLICK_OTHER))

    by_weight = np.argsort(-weight_by_slot, axis=1, kind="stable")[:, : n_long[1]]
    long_categories = np.where(np.take_along_axis(long_slot, by_weight, 1), ranking[rows, by_weight], -1)
    disliked_categories = np.full((U, n_disliked[1]), -1, dtype=np.int64)
    for j in range(n_disliked[1]):  # at most a few columns
        disliked_categories[:, j] = np.where(j < k_disliked, ranking[np.arange(U), np.minimum(k_long + j, C - 1)], -1)
    burst_category = ranking[np.arange(U), k_long + k_disliked]
    mid_burst_category = ranking[np.arange(U), k_long + k_disliked + 1]
    preferred = np.arange(C)[None, :] * S + rng.integers(0, S, (U, C))

    primary = long_categories[:, 0]
    interest_hint = np.where(rng.random(U) < HINT_PROB, primary + 1, rng.integers(1, C + 1, U))
    dislike_hint = np.where(rng.random(U) < HINT_PROB, disliked_categories[:, 0] + 1, rng.integers(1, C + 1, U))
    return {
        "long_weights": long_weights.astype(np.float32),
        "long_categories": long_categories.astype(np.int64),
        "disliked_mask": disliked_mask,
        "disliked_categories": disliked_categories,
        "burst_category": burst_category.astype(np.int64),
        "mid_burst_category": mid_burst_category.astype(np.int64),
        "burst_subcategory": burst_category * S + rng.integers(0, S, U),
        "mid_burst_subcategory": mid_burst_category * S + rng.integers(0, S, U),
        "preferred_subcategory": preferred.astype(np.int64),
        "feed_mix": feed_mix,
        "affinity": affinity,
        "features": np.stack([interest_hint, dislike_hint], axis=1).astype(np.int64),
    }


def _sample_rows(rng: np.random.Generator, probs: np.ndarray, user: np.ndarray) -> np.ndarray:
    """One category per row from the row's user distribution `probs[user]` (vectorised inverse CDF)."""
    U, C = probs.shape
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0
    key = (cdf + np.arange(U)[:, None]).ravel()
    pos = np.searchsorted(key, user + rng.random(len(user)), side="right")
    return np.minimum(pos - user * C, C - 1).astype(np.int64)


def _sample_items(rng: np.random.Generator, items: dict, subcategory: np.ndarray) -> np.ndarray:
    """One item per row from its subcategory, proportional to popularity."""
    pos = np.searchsorted(items["sample_key"], subcategory + rng.random(len(subcategory)), side="right")
    return items["sample_order"][np.minimum(pos, len(items["sample_order"]) - 1)].astype(np.int64)
