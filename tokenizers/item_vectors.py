"""Item vectors for the tokenizer to cluster: collaborative, sequential, title and stored ones.

Each builder returns (n_items, d) float32 rows in the data set's dense item order. A trained
model's checkpoint can also supply vectors, but reading a checkpoint is training code, which this
stage must not import: the caller passes a `CheckpointVectors` reader (genret.training does).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from genret.io import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointVectors",
    "TITLE_CACHE_FORMAT",
    "checkpoint_item_vectors",
    "collaborative_item_embeddings",
    "npy_item_vectors",
    "sequential_item_embeddings",
    "title_embeddings",
]

# Reads a checkpoint: (n_items, d) float32 item vectors, and the raw item ids of the catalogue it
# was trained on (row i belongs to item_ids[i]).
CheckpointVectors = Callable[[Path], tuple[np.ndarray, Sequence]]

TITLE_CACHE_FORMAT = "all-MiniLM-L6-v2/normalized/1"  # part of the cache key: a new model or layout misses


def collaborative_item_embeddings(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                                  dim: int = 64, seed: int = 0) -> np.ndarray:
    """Item vectors from a truncated SVD of the (users x items) positive matrix.

    Rows are IDF-weighted (popular items would otherwise dominate the top components) and the
    output rows are L2-normalised, so items that share audiences land close together: the
    structure RQ-KMeans needs for SIDs that help a sequence model.

    Args:
        users, items: (n,) int64 positive interactions (training split only, to avoid leakage).
    Returns:
        (n_items, dim) float32.
    """
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD

    matrix = csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
    matrix.data[:] = 1.0  # repeated interactions count once
    item_counts = np.asarray(matrix.sum(0)).ravel()
    idf = np.log((1 + n_users) / (1 + item_counts)).astype(np.float32)
    weighted = matrix.multiply(idf[None, :]).tocsr().T.tocsr()  # (n_items, n_users)
    dim = max(2, min(dim, min(weighted.shape) - 1))
    vectors = TruncatedSVD(n_components=dim, random_state=seed, algorithm="randomized").fit_transform(weighted)
    return _unit_rows(vectors, seed)


def _unit_rows(vectors: np.ndarray, seed: int) -> np.ndarray:
    """L2-normalised float32 rows; an all-zero row (an item never seen in training) becomes a tiny
    random unit vector instead of NaN."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    unseen = norms[:, 0] == 0
    vectors[unseen] = rng.normal(scale=1e-3, size=(unseen.sum(), vectors.shape[1]))
    norms[unseen] = np.linalg.norm(vectors[unseen], axis=1, keepdims=True)
    return (vectors / norms).astype(np.float32)


def sequential_item_embeddings(users: np.ndarray, items: np.ndarray, n_items: int, dim: int = 64,
                               window: int = 5, seed: int = 0) -> np.ndarray:
    """Item vectors from the order of actions: truncated SVD of the positive PMI matrix of items that
    occur within `window` actions of each other in a user's time-ordered positives.

    The user-item SVD (collaborative_item_embeddings) puts items together when the same users ever
    touched them; a next-item model needs them together when they follow each other, which is what
    a SASRec's item vectors learn and what item2vec's skip-gram objective factorises (Levy and
    Goldberg, 2014: skip-gram with negative sampling ~ a factorisation of the shifted PMI). Closer
    pairs weigh more (1/offset); contexts use counts**0.75 as word2vec does, so rare items do not get
    inflated PMIs.

    Args:
        users, items: (n,) int64 positives sorted by (user, time) (training split only).
    Returns:
        (n_items, dim) float32, rows L2-normalised; items with no co-occurrence get a tiny random vector.
    """
    from scipy.sparse import coo_matrix
    from sklearn.decomposition import TruncatedSVD

    if window < 1:
        raise ValueError(f"sequence_window must be >= 1, got {window}")
    rows, cols, weights = [], [], []
    for offset in range(1, window + 1):
        same_user = users[offset:] == users[:-offset]
        a, b = items[:-offset][same_user], items[offset:][same_user]
        w = np.full(len(a), 1.0 / offset, np.float32)
        rows += [a, b]
        cols += [b, a]
        weights += [w, w]
    counts = coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(n_items, n_items)).tocsr()  # tocsr sums the repeated pairs
    row_sum = np.asarray(counts.sum(1)).ravel()
    context = np.asarray(counts.sum(0)).ravel() ** 0.75
    coo = counts.tocoo()
    # PMI = log p(i, j) / (p(i) p_0.75(j)) = log c_ij * sum(context) / (row_i * context_j); no shift.
    pmi = np.log(coo.data * context.sum() / (row_sum[coo.row] * context[coo.col]))
    keep = pmi > 0
    ppmi = coo_matrix((pmi[keep].astype(np.float32), (coo.row[keep], coo.col[keep])), shape=counts.shape).tocsr()
    dim = max(2, min(dim, n_items - 1))
    svd = TruncatedSVD(n_components=dim, random_state=seed, algorithm="randomized")
    vectors = svd.fit_transform(ppmi)  # U * S; the 1/sqrt(S) rescaling would only reweigh components
    return _unit_rows(vectors, seed)


def title_embeddings(titles: list, name: str, cache_dir: str | None) -> np.ndarray:
    """Sentence embeddings of item titles, cached on disk by the titles' content.

    Encoding 12k Beauty titles takes about two minutes on 2 CPU cores, paid by every benchmark
    run before the RQ-KMeans cache can even be looked up (its key hashes the embeddings). A cache
    file that cannot be read, or has the wrong number of rows, is recomputed and overwritten.
    """
    from genret.tokenizers.text_embeddings import embed_titles  # the optional `text` extra

    if cache_dir is None:
        return embed_titles(titles)
    key = hashlib.sha1(json.dumps([TITLE_CACHE_FORMAT, titles]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"titles-{name}-{key}.npy"
    if path.is_file():
        try:
            emb = np.load(path, allow_pickle=False)
            if emb.shape[0] == len(titles):
                log.info("reusing title embeddings %s", path)
                return emb
            log.warning("ignoring cached title embeddings %s: %d rows for %d titles", path, emb.shape[0], len(titles))
        except (OSError, ValueError) as err:
            log.warning("ignoring cached title embeddings %s: %s", path, err)
    emb = embed_titles(titles)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, emb)
    return emb


def npy_item_vectors(path: Path, log_all) -> np.ndarray:
    """An (n_items, d) .npy file of item vectors in `log_all`'s dense item order, as float32."""
    emb = np.load(path)
    if emb.ndim != 2 or emb.shape[0] != log_all.n_items:
        raise ValueError(
            f"{path} holds an array of shape {emb.shape}; expected ({log_all.n_items}, d), one row per item "
            f"of {log_all.name!r} in dense item order"
        )
    return emb.astype(np.float32)


def checkpoint_item_vectors(path: Path, log_all, read: CheckpointVectors | None) -> np.ndarray:
    """Item vectors of a trained model's checkpoint, checked to be of `log_all`'s catalogue.

    Args:
        path: the .ckpt file.
        log_all: the data set the SIDs are for (its item_ids fix the row order).
        read: the checkpoint reader (genret.training's data module passes one); None is an error.

    Raises:
        ValueError: no reader was given, or the checkpoint was trained on another catalogue (or
            the same items in another order).
    """
    if read is None:
        raise ValueError(
            f"embeddings={str(path)!r} is a checkpoint, but no checkpoint reader was given: pass "
            "checkpoint_vectors= (genret.training's SequenceDataModule does), or export the vectors "
            "first with `genret export-embeddings` and use the .npy"
        )
    vectors, trained_ids = read(path)
    trained_ids = list(trained_ids)
    if trained_ids != log_all.item_ids.tolist():
        raise ValueError(f"{path} was trained on a catalogue of {len(trained_ids):,} items that is not the one of "
                         f"{log_all.name!r} ({log_all.n_items:,} items, or another order); train it on the same data")
    return np.asarray(vectors, np.float32)
