"""From a data set to semantic IDs: pick item vectors, fit (or reuse) RQ-KMeans, build the index."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from genret.tokenizers.item_vectors import (
    CheckpointVectors,
    checkpoint_item_vectors,
    collaborative_item_embeddings,
    npy_item_vectors,
    sequential_item_embeddings,
    title_embeddings,
)
from genret.tokenizers.report import codebook_report
from genret.tokenizers.rq_kmeans import RQKMeans
from genret.tokenizers.sid_index import SIDIndex
from genret.tokenizers.unique_codes import spread_last_level

log = logging.getLogger(__name__)

__all__ = ["CONTENT_EMBEDDINGS", "INTERACTION_EMBEDDINGS", "SIDConfig", "content_embeddings", "fit_semantic_ids",
           "item_embeddings_for"]

# Item vectors made from what an item is, never from interactions: a cold item gets one like any
# other, so its SID comes from the fitted tokenizer (the LOOC protocol needs one of these).
CONTENT_EMBEDDINGS = ("content", "titles", "dataset")
# Item vectors learnt from the training interactions; with SIDConfig.content_neighbours an item without
# interactions is placed among them by its content (the LOOC protocol accepts these then).
INTERACTION_EMBEDDINGS = ("sequential", "collaborative")


@dataclass
class SIDConfig:
    """How items get their semantic IDs.

    embeddings: "auto" (the data set's own item embeddings when it has them, e.g. the synthetic
        content vectors, else collaborative ones), "collaborative" (truncated SVD of the training
        user-item matrix), "sequential" (truncated SVD of the positive PMI of items that
        follow each other within `sequence_window` actions in the training sequences: item2vec's
        objective solved in closed form), "titles" (sentence embeddings of item titles; needs genret[text]),
        "content" (TF-IDF of the item features genret.data.item_features finds, reduced by SVD to
        `embedding_dim`: genres, year and title words of ML-1M, Amazon categories / brand ids and
        title words; no interaction is used, so cold items get vectors too), a
        path to an (n_items, d) .npy file in the data set's dense item order, or a KuaiFormer /
        SASRec checkpoint (.ckpt from `genret benchmark --model sasrec`) whose item vectors are used
        after checking that it was trained on the same catalogue.
    fallback: what to use instead when the data set lacks what `embeddings` needs (a copy without
        titles.tsv for "titles", no item embeddings for "dataset"), e.g. "sequential"; None makes
        such data an error. Lets one recipe serve a whole family of data sets, the copies without the
        optional files included; the SID report says which source was used.
    seed: RQ-KMeans' random_state, and the seed of the SVD item vectors.
    unique_sids: re-assign the last code inside each shared prefix so distinct items get distinct
        SIDs where the codebook allows (genret.tokenizers.spread_last_level); off keeps the greedy
        RQ-KMeans codes, whose colliding items the decoder can only return as a fixed-order block.
    content_neighbours: with SIDs made from interactions ("sequential", "collaborative"), an item
        that has none (a cold item, an item added after training) gets the similarity-weighted mean
        vector of its k most content-similar catalogue items (genret.tokenizers.content_neighbours)
        and its SID from that; 0 = off (such an item then needs its SID or vector from elsewhere).
        It places added items only: the catalogue's own SIDs do not depend on it.
    """

    n_levels: int = 3
    codebook_size: int = 256
    n_iter: int = 20
    embeddings: str = "auto"
    fallback: str | None = None
    embedding_dim: int = 64  # for collaborative, sequential and content embeddings
    content_features: list[str] | None = None  # for content embeddings; None = every feature but item_id
    sequence_window: int = 5  # for sequential embeddings: how many later actions count as an item's context
    seed: int = 0
    unique_sids: bool = True
    content_neighbours: int = 0  # k content neighbours that place an item without interactions
    cache_dir: str | None = "runs/cache"  # fitted tokenizers are reused across runs; None = no cache


def item_embeddings_for(log_all, train_log, cfg: SIDConfig,
                        checkpoint_vectors: CheckpointVectors | None = None) -> tuple[np.ndarray, str]:
    """The item vectors `cfg.embeddings` names.

    Args:
        log_all: the whole data set (catalogue, titles, item embeddings).
        train_log: its training split (collaborative and sequential vectors see only this).
        cfg: the SID settings.
        checkpoint_vectors: reads a .ckpt's item vectors and catalogue item ids; needed only when
            cfg.embeddings is a checkpoint (this stage cannot import training code itself).

    Returns:
        embeddings (n_items, d) float32, and a short description of where they came from.
    """
    choice = cfg.embeddings
    missing = _missing_source(log_all, choice)
    if missing and cfg.fallback is not None:
        if _missing_source(log_all, cfg.fallback) or cfg.fallback in ("titles", "dataset", "auto"):
            raise ValueError(f"data.sid.fallback must be a source every data set has (collaborative, sequential, "
                             f"or a file), got {cfg.fallback!r}")
        log.warning("data set %r %s: SIDs from data.sid.fallback = %r instead of embeddings = %r", log_all.name,
                    missing, cfg.fallback, choice)
        emb, source = item_embeddings_for(log_all, train_log, replace(cfg, embeddings=cfg.fallback, fallback=None),
                                          checkpoint_vectors)
        return emb, f"{source} (fallback: the data set {missing})"
    if choice == "auto":
        choice = "dataset" if getattr(log_all, "item_embeddings", None) is not None else "collaborative"
    if choice in CONTENT_EMBEDDINGS:
        return content_embeddings(log_all, replace(cfg, embeddings=choice))
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
    path = Path(choice)
    if not path.is_file():
        raise ValueError(
            f"embeddings={choice!r} is neither auto/dataset/collaborative/sequential/titles/content "
            "nor an existing .npy / .ckpt file"
        )
    if path.suffix == ".ckpt":
        return checkpoint_item_vectors(path, log_all, checkpoint_vectors), f"item vectors of checkpoint {path}"
    return npy_item_vectors(path, log_all), f"embeddings from {path}"


def content_embeddings(log_all, cfg: SIDConfig, fit_items: np.ndarray | None = None,
                       return_vectorizer: bool = False) -> tuple:
    """The content item vectors `cfg.embeddings` (one of CONTENT_EMBEDDINGS) names, for every item of
    `log_all`; what is fitted ("content": vocabularies, IDF, SVD) sees only `fit_items` (None = all).

    Returns:
        (n_items, d) float32 and where they came from; with `return_vectorizer` also the fitted
        ContentVectorizer ("content"; None for the others), which places items added later.
    """
    choice, vectorizer = cfg.embeddings, None
    if choice == "dataset":
        if log_all.item_embeddings is None:
            raise ValueError(f"data set {log_all.name!r} has no item embeddings; use embeddings: collaborative")
        emb, source = np.asarray(log_all.item_embeddings, np.float32), "dataset item embeddings"
    elif choice == "titles":
        if not log_all.item_titles:
            raise ValueError(f"data set {log_all.name!r} has no item titles; use embeddings: collaborative or sequential, "
                             "or set data.sid.fallback to one of them")
        emb = title_embeddings(list(log_all.item_titles), log_all.name, cfg.cache_dir)
        source = "title sentence embeddings (all-MiniLM-L6-v2)"
    elif choice == "content":
        from genret.tokenizers.content_vectors import ContentVectorizer

        vectorizer, emb, used = ContentVectorizer.fit_log(log_all, cfg.content_features, cfg.embedding_dim,
                                                          fit_items, cfg.seed)
        source = f"content TF-IDF SVD ({emb.shape[1]}-d) of item features: {', '.join(used)}"
    else:
        raise ValueError(f"embeddings={choice!r} is not made from item content; choose one of {CONTENT_EMBEDDINGS}")
    return (emb, source, vectorizer) if return_vectorizer else (emb, source)


def _missing_source(log_all, choice: str) -> str | None:
    """Why the data set cannot supply `choice` (an optional file it lacks), or None when it can."""
    if choice == "titles" and not log_all.item_titles:
        return "has no item titles (no titles.tsv)"
    if choice == "dataset" and getattr(log_all, "item_embeddings", None) is None:
        return "has no item embeddings"
    return None


def fit_semantic_ids(log_all, train_log, cfg: SIDConfig, progress: bool = True,
                     checkpoint_vectors: CheckpointVectors | None = None,
                     vectors: tuple[np.ndarray, str] | None = None):
    """Fit RQ-KMeans on item vectors (cached on disk by content hash) and build the SID index.

    Args:
        log_all, train_log, cfg, checkpoint_vectors: as in `item_embeddings_for`.
        progress: show a progress bar while fitting.
        vectors: (n_items, d) item vectors and their source, already made (e.g. the warm rows of
            `content_embeddings` fitted without the cold items); default: `item_embeddings_for`.

    Returns:
        tokenizer (RQKMeans), codes (n_items, L) int64 numpy, index (SIDIndex), report (dict).
    """
    embeddings, source = vectors or item_embeddings_for(log_all, train_log, cfg, checkpoint_vectors)
    K = cfg.codebook_size
    if K > embeddings.shape[0]:
        raise ValueError(
            f"codebook_size={K} exceeds the {embeddings.shape[0]} items of {log_all.name!r}; "
            f"a codebook larger than the catalogue is meaningless: use codebook_size <= {embeddings.shape[0] // 4}"
        )
    # The fallback only picks the vectors, which the key already hashes, and content_neighbours places items
    # added later; leaving them out keeps older caches valid.
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("fallback", "content_neighbours")}
    key = hashlib.sha1(embeddings.tobytes() + json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cfg.cache_dir) / f"rqkmeans-{log_all.name}-{key}.pt" if cfg.cache_dir else None
    tokenizer = None
    if cache is not None and cache.is_file():
        try:
            tokenizer = RQKMeans.load(cache)
            log.info("reusing tokenizer %s", cache)
        except (RuntimeError, ValueError) as err:  # a stale or corrupt cache is refitted, not fatal
            log.warning("ignoring cached tokenizer %s: %s", cache, err)
    if tokenizer is None:
        tokenizer = RQKMeans(n_levels=cfg.n_levels, codebook_size=K, n_iter=cfg.n_iter, random_state=cfg.seed,
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
