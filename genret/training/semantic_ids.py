"""From a data set to semantic IDs: pick item embeddings, fit (or reuse) RQ-KMeans, build the index."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from genret.io import atomic_path

log = logging.getLogger(__name__)


@dataclass
class SIDConfig:
    """How items get their semantic IDs.

    embeddings: "auto" (the data set's own item embeddings when it has them, e.g. the synthetic
        content vectors, else collaborative ones), "collaborative" (truncated SVD of the training
        user-item matrix), "sequential" (truncated SVD of the positive PMI of items that
        follow each other within `sequence_window` actions in the training sequences: item2vec's
        objective solved in closed form), "titles" (sentence embeddings of item titles; needs genret[text]), a
        path to an (n_items, d) .npy file in the data set's dense item order, or a KuaiFormer /
        SASRec checkpoint (.ckpt from `genret benchmark --model sasrec`) whose item vectors are used
        after checking that it was trained on the same catalogue.
    unique_sids: re-assign the last code inside each shared prefix so distinct items get distinct
        SIDs where the codebook allows (genret.tokenizers.spread_last_level); off keeps the greedy
        RQ-KMeans codes, whose colliding items the decoder can only return as a fixed-order block.
    """

    n_levels: int = 3
    codebook_size: int = 256
    n_iter: int = 20
    embeddings: str = "auto"
    embedding_dim: int = 64  # for collaborative and sequential embeddings
    sequence_window: int = 5  # for sequential embeddings: how many later actions count as an item's context
    seed: int = 0
    unique_sids: bool = True
    cache_dir: str | None = "runs/cache"  # fitted tokenizers are reused across runs; None = no cache


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


def item_embeddings_for(log_all, train_log, cfg: SIDConfig) -> tuple[np.ndarray, str]:
    """Returns (embeddings (n_items, d) float32, a short description of where they came from)."""
    choice = cfg.embeddings
    if choice == "auto":
        choice = "dataset" if getattr(log_all, "item_embeddings", None) is not None else "collaborative"
    if choice == "dataset":
        if log_all.item_embeddings is None:
            raise ValueError(f"data set {log_all.name!r} has no item embeddings; use embeddings: collaborative")
        return np.asarray(log_all.item_embeddings, np.float32), "dataset item embeddings"
    if choice == "collaborative":
        positive = train_log.label == 1
        emb = collaborative_item_embeddings(train_log.user[positive], train_log.item[positive],
                                            train_log.n_users, train_log.n_items, cfg.embedding_dim, cfg.seed)
        return emb, f"collaborative SVD ({emb.shape[1]}-d) of the training split"
    if choice == "sequential":
        positive = train_log.label == 1
        emb = sequential_item_embeddings(train_log.user[positive], train_log.item[positive], train_log.n_items,
                                         cfg.embedding_dim, cfg.sequence_window, cfg.seed)
        return emb, f"sequential PPMI SVD ({emb.shape[1]}-d, window {cfg.sequence_window}) of the training split"
    if choice == "titles":
        if not log_all.item_titles:
            raise ValueError(f"data set {log_all.name!r} has no item titles; use embeddings: collaborative")
        emb = title_embeddings(list(log_all.item_titles), log_all.name, cfg.cache_dir)
        return emb, "title sentence embeddings (all-MiniLM-L6-v2)"
    path = Path(choice)
    if not path.is_file():
        raise ValueError(
            f"embeddings={choice!r} is neither auto/dataset/collaborative/sequential/titles nor an existing .npy / .ckpt file"
        )
    if path.suffix == ".ckpt":
        return _checkpoint_item_vectors(path, log_all)
    emb = np.load(path)
    if emb.ndim != 2 or emb.shape[0] != log_all.n_items:
        raise ValueError(
            f"{path} holds an array of shape {emb.shape}; expected ({log_all.n_items}, d), one row per item "
            f"of {log_all.name!r} in dense item order"
        )
    return emb.astype(np.float32), f"embeddings from {path}"


def _checkpoint_item_vectors(path: Path, log_all) -> tuple[np.ndarray, str]:
    """Item vectors of a KuaiFormer / SASRec checkpoint, aligned with `log_all`'s dense items."""
    from genret.training.embedding_module import checkpoint_item_vectors

    vectors, trained_ids = checkpoint_item_vectors(path)
    if trained_ids != log_all.item_ids.tolist():
        raise ValueError(f"{path} was trained on a catalogue of {len(trained_ids):,} items that is not the one of "
                         f"{log_all.name!r} ({log_all.n_items:,} items, or another order); train it on the same data")
    return vectors, f"item vectors of the embedding model checkpoint {path}"


TITLE_CACHE_FORMAT = "all-MiniLM-L6-v2/normalized/1"  # part of the cache key: a new model or layout misses


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


def fit_semantic_ids(log_all, train_log, cfg: SIDConfig, progress: bool = True):
    """Fit RQ-KMeans on item embeddings (cached on disk by content hash) and build the SID index.

    Returns:
        tokenizer (RQKMeans), codes (n_items, L) int64 numpy, index (SIDIndex), report (dict).
    """
    from genret.tokenizers import RQKMeans, SIDIndex, codebook_report, spread_last_level

    embeddings, source = item_embeddings_for(log_all, train_log, cfg)
    K = cfg.codebook_size
    if K > embeddings.shape[0]:
        raise ValueError(
            f"codebook_size={K} exceeds the {embeddings.shape[0]} items of {log_all.name!r}; "
            f"a codebook larger than the catalogue is meaningless: use codebook_size <= {embeddings.shape[0] // 4}"
        )
    key = hashlib.sha1(embeddings.tobytes() + json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cfg.cache_dir) / f"rqkmeans-{log_all.name}-{key}.pt" if cfg.cache_dir else None
    tokenizer = None
    if cache is not None and cache.is_file():
        try:
            tokenizer = RQKMeans.load(cache)
            log.info("reusing tokenizer %s", cache)
        except (RuntimeError, ValueError) as err:  # a stale or corrupt cache is refitted, not fatal
            log.warning("ignoring cached tokenizer %s: %s", cache, err)
    if tokenizer is None:
        tokenizer = RQKMeans(n_levels=cfg.n_levels, codebook_size=K, n_iter=cfg.n_iter, seed=cfg.seed,
                             verbose=progress)
        tokenizer.fit(embeddings)
        if cache is not None:
            tokenizer.save(cache)
    codes, residual = tokenizer.encode(embeddings, return_residual_norm=True)
    if cfg.unique_sids:
        codes, residual = spread_last_level(tokenizer, embeddings, codes)
    index = SIDIndex.build(codes, K, residual_norm=residual)
    report = codebook_report(tokenizer, embeddings, codes=codes)
    report["embedding_source"] = source
    return tokenizer, codes, index, report
