"""SIDs for items added to a trained catalogue, kept on the paths the catalogue's SIDs take.

A generative retriever emits a SID code by code, and its heads learned to emit, after each prefix,
only the codes that training targets took there. An added item (cold start) whose greedy SID
leaves those paths (a code no catalogue SID continues its prefix with) is all but never decoded:
on ML-1M's cold start, items moved to free last codes reached a cold user's top 100 once in 2,377
users (docs/experiments/2026-12-05-dualgr-cold-start.md). `encode_on_paths` encodes greedily as
RQ-KMeans does, but at every level chooses among the codes that continue some catalogue SID's
prefix: the item lands on a path the decoder walks, beside the catalogue items nearest to it at
each level. Where its greedy code already continues a catalogue prefix it is kept, so an item the
plain encoder puts on a catalogue path gets the same SID here. The last level allows only codes
that complete a catalogue SID, so every added item shares the full SID of some catalogue item (the
nearest by residual at each level) and is listed right after it (the SID index's order for added
items): its score is that item's.
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode_on_paths"]


def encode_on_paths(tokenizer, X: np.ndarray, existing: np.ndarray) -> np.ndarray:
    """Greedy residual codes for `X`, restricted at every level to the prefixes of `existing`.

    Args:
        tokenizer: the fitted RQKMeans the catalogue's SIDs came from (its codebooks are used).
        X: (m, d) the added items' vectors, in the space the tokenizer was fitted on.
        existing: (N, L) the catalogue's SIDs (N >= 1); they are not changed.

    Returns:
        (m, L) int64 codes; every prefix of every row is a prefix of some row of `existing`.

    Raises:
        ValueError: `existing` empty or of another depth than the tokenizer, X of another width.
    """
    books = [np.asarray(b, dtype=np.float32) for b in tokenizer.codebooks_]
    n_levels = len(books)
    existing = np.asarray(existing, dtype=np.int64)
    X = np.asarray(X, dtype=np.float32)
    if existing.ndim != 2 or existing.shape[1] != n_levels or len(existing) == 0:
        raise ValueError(f"existing must be a non-empty (N, {n_levels}) array of catalogue SIDs, got shape "
                         f"{existing.shape}")
    if X.ndim != 2 or X.shape[1] != books[0].shape[1]:
        raise ValueError(f"X must have shape (m, {books[0].shape[1]}) (the tokenizer's width), got {X.shape}")
    # children[level][prefix] = the codes catalogue SIDs continue `prefix` (a tuple of `level` codes) with.
    children: list[dict[tuple, np.ndarray]] = []
    for level in range(n_levels):
        paths = np.unique(existing[:, :level + 1], axis=0)
        groups: dict[tuple, list[int]] = {}
        for row in paths.tolist():
            groups.setdefault(tuple(row[:-1]), []).append(row[-1])
        children.append({prefix: np.asarray(codes, dtype=np.int64) for prefix, codes in groups.items()})
    codes = np.empty((len(X), n_levels), dtype=np.int64)
    for i, residual in enumerate(X.copy()):
        prefix: tuple = ()
        for level, book in enumerate(books):
            allowed = children[level][prefix]
            # The nearest allowed centroid; ties go to the lower code, as the greedy encoder's argmin.
            code = int(allowed[np.argmin(((book[allowed] - residual) ** 2).sum(1))])
            codes[i, level] = code
            residual -= book[code]
            prefix += (code,)
    return codes
