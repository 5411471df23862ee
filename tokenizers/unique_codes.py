"""Spread colliding items over the last two levels' codes, so distinct items get distinct SIDs.

Greedy RQ-KMeans gives near-duplicate items the same SID. A generative retriever can only
return such a SID as a block of items with one score, so a colliding target ranks no better
than its place in that block (on ML-1M's collaborative SIDs 40% of test targets collided and
a quarter of the SID-level hits at @10 were lost inside blocks). TIGER appends a fourth
"collision index" code; we keep the depth and re-assign codes instead, in two steps:

1. Overflow (L >= 3): a prefix (s1..s_{L-1}) with more than K items cannot give them distinct
   last codes, so its surplus moves to sibling prefixes under the same (s1..s_{L-2}): the K items
   nearest the prefix's level-(L-1) centroid stay, the others, in order of how close their nearest
   sibling with room is, each take the nearest level-(L-1) code whose prefix still has room
   (at most K items). Their last code is re-chosen for the new residual.
2. Last level: inside each prefix that still holds a collision, the items get pairwise distinct
   last codes by a minimum-cost assignment on their distance to the last level's centroids. The
   assignment covers every item of that prefix, so an item that was alone may yield its nearest
   code to a crowded neighbour when that lowers the total distance.

s1 never changes (the decoder's coarse step and S2D's buckets depend on it); step 1 changes
s_{L-1} of surplus items only, step 2 the last code.

The contract: distinct items get distinct SIDs whenever every (s1..s_{L-2}) prefix holds at most
K^2 items (for L = 2: every s1 at most K items; L = 1: at most K items in all). Where a prefix
holds more, SIDs are shared as evenly as the codes allow: step 1 caps each child at ceil(n / K) items
and step 2 shares last codes in rounds, so a SID holds about ceil(n / K^2) items. Items on a shared
SID are returned with one score, in the SID index's order (ascending residual norm, then item
index; genret.tokenizers.SIDIndex), which is how `Retriever.retrieve` breaks those ties.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["spread_added_items", "spread_last_level"]


def spread_last_level(tokenizer, X: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-assign the codes of items that share a full SID (see the module docstring for the rule).

    Args:
        tokenizer: a fitted RQKMeans (its last codebook is the candidate set).
        X: (N, d) the embeddings `codes` were encoded from.
        codes: (N, L) their greedy codes.

    Returns:
        codes (N, L) int64 with the last two columns changed where needed (s1 never changes for
        L >= 3), and each item's residual norm ||x - decode(codes)|| (N,) float32 for the new codes.
    """
    X = np.asarray(X, dtype=np.float32)
    codes = np.array(codes, dtype=np.int64, copy=True)
    if codes.ndim != 2 or codes.shape[0] != X.shape[0]:
        raise ValueError(f"codes must have shape ({X.shape[0]}, L); got {codes.shape}")
    last_book = tokenizer.codebooks_[-1].numpy()  # (K, d)
    K = last_book.shape[0]
    if codes.shape[1] >= 3:
        _move_overflow(tokenizer, X, codes)
    _, sid_of, sid_size = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    sid_of = sid_of.reshape(-1)
    if codes.shape[1] > 1 and (sid_size > 1).any():
        _, prefix_of = np.unique(codes[:, :-1], axis=0, return_inverse=True)
        prefix_of = prefix_of.reshape(-1)
        crowded = np.unique(prefix_of[sid_size[sid_of] > 1])
        order = np.argsort(prefix_of, kind="stable")
        bounds = np.searchsorted(prefix_of[order], crowded)
        ends = np.searchsorted(prefix_of[order], crowded, side="right")
        for lo, hi in zip(bounds, ends):
            members = order[lo:hi]
            # Residual before the last level (what the last code approximates), for this prefix only.
            r = X[members] - tokenizer.decode(codes[members]) + last_book[codes[members, -1]]
            cost = (r * r).sum(1, keepdims=True) - 2 * r @ last_book.T + (last_book * last_book).sum(1)
            for start in range(0, len(members), K):  # > K items: rounds of K distinct codes
                rows = np.arange(start, min(start + K, len(members)))
                picked_rows, picked_codes = linear_sum_assignment(cost[rows])
                codes[members[rows[picked_rows]], -1] = picked_codes
    residual = np.linalg.norm(X - tokenizer.decode(codes), axis=1).astype(np.float32)
    return codes, residual



def spread_added_items(tokenizer, X: np.ndarray, codes: np.ndarray, existing: np.ndarray) -> np.ndarray:
    """The same contract for items added to a catalogue whose SIDs stay fixed (cold start).

    An added item whose greedy SID is already taken (by a catalogue item or an earlier added one)
    takes the free last code nearest to its residual under the same prefix (s1..s_{L-1}); where
    that prefix has no free code it keeps the shared SID (and is returned after the items
    already on it). Existing SIDs never change, so nothing trained is re-tokenised.

    Args:
        tokenizer: the fitted RQKMeans the catalogue's SIDs came from.
        X: (m, d) the added items' embeddings. codes: (m, L) their greedy codes (`tokenizer.encode(X)`).
        existing: (N, L) the catalogue's SIDs.

    Returns:
        (m, L) int64 codes; only last codes change.
    """
    X = np.asarray(X, dtype=np.float32)
    codes = np.array(codes, dtype=np.int64, copy=True)
    last_book = tokenizer.codebooks_[-1].numpy()
    taken = {tuple(c) for c in np.asarray(existing).tolist()}
    for i in range(len(codes)):
        sid = tuple(codes[i].tolist())
        if sid in taken:
            # Residual before the last level, as spread_last_level measures it.
            r = X[i] - tokenizer.decode(codes[i:i + 1])[0] + last_book[codes[i, -1]]
            for c in np.argsort(((last_book - r) ** 2).sum(1), kind="stable").tolist():
                if sid[:-1] + (c,) not in taken:
                    codes[i, -1] = c
                    break
        taken.add(tuple(codes[i].tolist()))
    return codes


def _move_overflow(tokenizer, X: np.ndarray, codes: np.ndarray) -> None:
    """Step 1 of the module docstring, in place: cap every (s1..s_{L-1}) prefix at K items (or at
    ceil(n / K) when its (s1..s_{L-2}) parent holds n > K^2 items) by moving the surplus to the
    nearest level-(L-1) sibling codes with room."""
    book = tokenizer.codebooks_[-2].numpy()  # (K, d): level L-1
    last_book = tokenizer.codebooks_[-1].numpy()
    K = book.shape[0]
    _, prefix_of, prefix_size = np.unique(codes[:, :-1], axis=0, return_inverse=True, return_counts=True)
    prefix_of = prefix_of.reshape(-1)
    if (prefix_size <= K).all():
        return
    _, parent_of = np.unique(codes[:, :-2], axis=0, return_inverse=True)
    parent_of = parent_of.reshape(-1)
    crowded = np.unique(parent_of[prefix_size[prefix_of] > K])
    order = np.argsort(parent_of, kind="stable")
    starts = np.searchsorted(parent_of[order], crowded)
    ends = np.searchsorted(parent_of[order], crowded, side="right")
    book_sq = (book * book).sum(1)
    for lo, hi in zip(starts, ends):
        members = np.sort(order[lo:hi])  # item order: ties below fall to the lower item index
        cap = max(K, -(-len(members) // K))
        # Residual before level L-1 (what s_{L-1} and s_L approximate together).
        r = X[members] - tokenizer.decode(codes[members]) + book[codes[members, -2]] + last_book[codes[members, -1]]
        dist = (r * r).sum(1, keepdims=True) - 2 * r @ book.T + book_sq  # (n, K)
        child = codes[members, -2].copy()
        load = np.bincount(child, minlength=K)
        movers = []
        for code in np.flatnonzero(load > cap):
            in_child = np.flatnonzero(child == code)
            keep_order = in_child[np.argsort(dist[in_child, code], kind="stable")]
            movers.extend(keep_order[cap:].tolist())
            load[code] = cap
        movers = np.array(sorted(movers))
        # Who moves first: the mover whose nearest sibling with room is nearest (computed once).
        open_dist = np.where(load[None, :] < cap, dist[movers], np.inf)
        for i in movers[np.argsort(open_dist.min(1), kind="stable")]:
            room = load < cap
            code = int(np.argmin(np.where(room, dist[i], np.inf)))
            load[code] += 1
            child[i] = code
        changed = child != codes[members, -2]
        moved = members[changed]
        if moved.size:
            codes[moved, -2] = child[changed]
            rest = r[changed] - book[child[changed]]  # the residual the new last code approximates
            last_dist = -2 * rest @ last_book.T + (last_book * last_book).sum(1)
            codes[moved, -1] = np.argmin(last_dist, axis=1)
