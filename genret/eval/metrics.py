"""Leave-one-out ranking metrics (HR@K, NDCG@K, Recall@K) over full-catalogue ranked lists."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

DEFAULT_KS = (5, 10, 20, 50, 100, 500)

# Bound the (users x list length) comparison matrix so a million users x 1000 items stays small.
_MAX_COMPARE_ELEMENTS = 1 << 24


def _as_numpy(array: Any, name: str) -> np.ndarray:
    # torch tensors (possibly on a GPU) and lists are accepted; metrics are cheap on the CPU.
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer item indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def target_ranks(ranked: Any, targets: Any) -> np.ndarray:
    """0-based position of each user's target in their ranked list, or -1 when it is absent.

    Args:
        ranked: (m, Kmax) int item indices, best first; -1 marks padding (a model that returned
            fewer than Kmax items). numpy array or torch tensor.
        targets: (m,) int item indices (>= 0), one held-out item per user.

    Returns:
        (m,) int64 ranks. If a list holds the target twice, its first position counts.
    """
    ranked = _as_numpy(ranked, "ranked")
    targets = _as_numpy(targets, "targets")
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be 2-D (users, list length), got shape {ranked.shape}")
    if targets.ndim != 1:
        raise ValueError(f"targets must be 1-D (users,), got shape {targets.shape}")
    if ranked.shape[0] != targets.shape[0]:
        raise ValueError(
            f"ranked has {ranked.shape[0]} rows but targets has {targets.shape[0]} users; pass one row per user"
        )
    if targets.size and targets.min() < 0:
        raise ValueError("targets must be item indices >= 0 (-1 is reserved for padding in ranked lists)")
    m, list_len = ranked.shape
    ranks = np.full(m, -1, dtype=np.int64)
    if list_len == 0:
        return ranks
    # Padding (-1) never equals a valid target, so it counts as a miss without special care.
    rows_per_chunk = max(1, _MAX_COMPARE_ELEMENTS // list_len)
    for start in range(0, m, rows_per_chunk):
        stop = min(m, start + rows_per_chunk)
        hits = ranked[start:stop] == targets[start:stop, None]
        first = hits.argmax(axis=1)
        found = hits[np.arange(stop - start), first]
        ranks[start:stop] = np.where(found, first, -1)
    return ranks


def ranking_metrics(ranked: Any, targets: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """HR@K, NDCG@K and Recall@K for leave-one-out evaluation with one target per user.

    With a single held-out item per user, HR@K == Recall@K (both are "the target is in the top K"),
    and NDCG@K = 1 / log2(rank + 2) for a 0-based rank < K (the ideal DCG is 1), else 0.

    When K exceeds the list length Kmax, the metric is computed on the Kmax items available (a
    lower bound on the true value) and ``"truncated@K": True`` is added so nobody mistakes it for
    a full top-K number. Rows padded with -1 simply count the padding as misses.

    Args:
        ranked: (m, Kmax) int64 item indices best first; -1 = padding. numpy array or torch tensor.
        targets: (m,) int64 held-out item indices.
        ks: cut-offs, each >= 1.

    Returns:
        ``{"hr@K": float, "ndcg@K": float, "recall@K": float, ..., "n_users": m}`` for each K in
        ``ks`` (sorted, de-duplicated), plus ``"truncated@K": True`` for each K > Kmax.
    """
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise ValueError("ks is empty; pass at least one cut-off such as ks=(10,)")
    if ks[0] < 1:
        raise ValueError(f"every K in ks must be >= 1, got {ks[0]}")
    ranked = _as_numpy(ranked, "ranked")
    ranks = target_ranks(ranked, targets)
    m = ranks.shape[0]
    if m == 0:
        raise ValueError("no users to evaluate (ranked and targets are empty)")
    list_len = ranked.shape[1]
    out: dict[str, Any] = {}
    for k in ks:
        hit_rate = float(hits_at(ranks, k).mean())
        out[f"hr@{k}"] = hit_rate
        out[f"ndcg@{k}"] = float(ndcg_at(ranks, k).mean())
        out[f"recall@{k}"] = hit_rate
        if k > list_len:
            out[f"truncated@{k}"] = True
    out["n_users"] = int(m)
    return out


def hits_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """(m,) float64: 1 where a `target_ranks` rank is in the top k (-1 = not listed counts as a miss)."""
    return ((ranks >= 0) & (ranks < k)).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """(m,) float64: each user's NDCG@k from its `target_ranks` rank, 1 / log2(rank + 2) in the top k
    (as `ranking_metrics`), else 0 (-1 = not listed)."""
    return np.where(hits_at(ranks, k) > 0, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


_PER_USER = {"hr": hits_at, "ndcg": ndcg_at}


def paired_hit_difference(ranks_a: Any, ranks_b: Any, k: int) -> tuple[float, float]:
    """HR@k of A minus HR@k of B on the same users, with the half-width of its 95% interval.

    The two models rank the same held-out targets, so the per-user difference of hits (-1, 0 or
    +1) is what varies; its standard error is far smaller than that of either HR@k when the two
    models hit mostly the same users, which is what makes small ablation gaps readable.

    Args:
        ranks_a, ranks_b: (m,) 0-based rank of each user's target, -1 when not in the list
            (`target_ranks`), for the same m users in the same order.
        k: the cut-off.

    Returns:
        (mean difference, 1.96 x its standard error); the half-width is 0 when m < 2.
    """
    a, b = _as_numpy(ranks_a, "ranks_a"), _as_numpy(ranks_b, "ranks_b")
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"ranks_a and ranks_b must be (m,) for the same users, got {a.shape} and {b.shape}")
    if a.shape[0] == 0:
        raise ValueError("no users to compare (the rank arrays are empty)")
    diff = hits_at(a, k) - hits_at(b, k)
    half_width = 1.96 * float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return float(diff.mean()), half_width


def paired_hit_difference_over_seeds(ranks_a: Sequence[Any], ranks_b: Sequence[Any], k: int) -> dict[str, Any]:
    """HR@k of A minus HR@k of B over several training seeds, with a 95% interval clustered by user
    (`paired_difference_over_seeds` with metric "hr"; see there)."""
    return paired_difference_over_seeds(ranks_a, ranks_b, k, metric="hr")


def paired_difference_over_seeds(ranks_a: Sequence[Any], ranks_b: Sequence[Any], k: int,
                                 metric: str = "hr") -> dict[str, Any]:
    """HR@k (metric "hr") or NDCG@k ("ndcg") of A minus B's over several training seeds, with a 95%
    interval clustered by user.

    Each seed s gives both models' ranks on the same m users. The interval treats the *user* as the
    independent unit: every user's paired difference is first averaged over the seeds, and the
    interval is mean +- 1.96 x sd / sqrt(m) of those m per-user means. Why this and not the other two
    obvious choices:

    - pooling all S x m (seed, user) pairs as if independent overstates the evidence: one user's
      differences across seeds are correlated (a hard target is hard for every seed), so the
      interval would shrink like 1 / sqrt(S m) although only m users were drawn;
    - a t-interval over the S per-seed mean differences sees only training noise (every seed scores
      the same users, so user sampling is invisible in it) and, with S = 3, rests on an sd from 3
      numbers (t quantile 4.30).

    The per-user mean keeps the user sampling and the within-user seed noise in the interval; the
    per-seed differences and their sd are returned beside it, so a seed-level swing (one seed
    better everywhere) is visible too. With one seed and "hr" this equals `paired_hit_difference`.

    Args:
        ranks_a, ranks_b: one (m,) rank array per seed (`target_ranks`, -1 = not listed), seed s of
            A paired with seed s of B, the same m users in the same order in every array.
        k: the cut-off.
        metric: "hr" (= Recall@k with one target per user) or "ndcg".

    Returns:
        {"k", "diff" (mean), "ci95" [low, high], "half_width", "n_users", "n_seeds",
        "per_seed" [difference of each seed], "sd_over_seeds" (0.0 for one seed)}.
    """
    if metric not in _PER_USER:
        raise ValueError(f"metric must be one of {sorted(_PER_USER)}, got {metric!r}")
    per_user_metric = _PER_USER[metric]
    if len(ranks_a) != len(ranks_b) or not len(ranks_a):
        raise ValueError(f"need the same number (>= 1) of seeds for both models, got {len(ranks_a)} and {len(ranks_b)}")
    diffs = []
    for s, (a, b) in enumerate(zip(ranks_a, ranks_b)):
        a, b = _as_numpy(a, "ranks_a"), _as_numpy(b, "ranks_b")
        if a.shape != b.shape or a.ndim != 1 or (diffs and a.shape != diffs[0].shape):
            raise ValueError(f"seed {s}: ranks must be (m,) for the same m users in every seed, got {a.shape} "
                             f"and {b.shape}")
        if a.shape[0] == 0:
            raise ValueError("no users to compare (the rank arrays are empty)")
        diffs.append(per_user_metric(a, k) - per_user_metric(b, k))
    per_user = np.mean(diffs, axis=0)  # (m,) each user's difference averaged over seeds
    m = per_user.shape[0]
    half = 1.96 * float(per_user.std(ddof=1)) / np.sqrt(m) if m > 1 else 0.0
    mean = float(per_user.mean())
    per_seed = [float(d.mean()) for d in diffs]
    return {"k": int(k), "diff": mean, "ci95": [mean - half, mean + half], "half_width": half, "n_users": int(m),
            "n_seeds": len(diffs), "per_seed": per_seed,
            "sd_over_seeds": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0}
