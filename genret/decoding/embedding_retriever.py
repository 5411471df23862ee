"""Retrieval with an embedding model (KuaiFormer, SASRec): exact top-K over all item vectors by the
max-over-interests score (kuaiformer.txt eq. 10)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from genret.data.side_features import SideFeatureBuckets
from genret.decoding import requests
from genret.decoding.retriever import RetrievalResult
from genret.models.kuaiformer import KuaiFormer, max_interest_scores


def rank_items(user_vectors: torch.Tensor, item_vectors: torch.Tensor, k: int,
               exclude: tuple[np.ndarray, np.ndarray] | None = None, device=None) -> np.ndarray:
    """Exact top-k items by max-over-interests score (eq. 10), over the whole catalogue.

    With one interest this is `exact_topk`. With k_int interests it runs exact_topk per interest
    and merges: an item in the top-k of the max score is in the top-k of the interest that attains
    its max, so the union of per-interest lists holds the exact answer.

    Args:
        user_vectors: (m, k_int, d) float. item_vectors: (n_items, d) float.
        k: list length. exclude: CSR (offsets (m+1,), items) of items to drop per user.

    Returns:
        (m, k) int64 items best first, -1 padded when fewer remain.
    """
    from genret.decoding.exact_topk import exact_topk
    from genret.decoding.topk import distinct_topk

    m, n_interests, _ = user_vectors.shape
    per_scores, per_items = [], []
    for j in range(n_interests):
        scores, items = exact_topk(user_vectors[:, j], item_vectors, k, exclude=exclude, device=device,
                                   progress=False)
        per_scores.append(scores)
        per_items.append(items)
    if n_interests == 1:
        return per_items[0].numpy()
    items, _ = distinct_topk(torch.cat(per_items, dim=1), torch.cat(per_scores, dim=1), k)
    return items.numpy()


class EmbeddingRetriever:
    """Exact top-k retrieval with a trained KuaiFormer / SASRec.

    Example:
        >>> r = EmbeddingRetriever.from_checkpoint("runs/bench_sasrec/model.ckpt")
        >>> r.retrieve([[r.item_ids[0], r.item_ids[5]]], k=10).items[0]

    Args:
        model: a KuaiFormer (SASRec is its one-interest setting).
        item_ids: raw id of each dense item index.
        side: the bucket boundaries of the per-action side features the model embeds (None: none).
    """

    def __init__(self, model: KuaiFormer, item_ids: Sequence[Any], side: SideFeatureBuckets | None = None):
        n_side = len(model.config.side_cardinalities)
        if (len(side) if side is not None else 0) != n_side:
            raise ValueError(f"the model embeds {n_side} side features but {len(side) if side else 0} were given")
        self.model = model.eval()
        self.item_ids = np.asarray(item_ids)
        self.side = side if side is not None and len(side) else None
        self._item_index = requests.item_lookup(self.item_ids)
        self.model_version = "in-memory"  # a content hash when loaded from a file

    @property
    def side_features(self) -> list[str]:
        """Names of the per-action side features `retrieve(side=...)` takes (empty if none)."""
        return list(self.side.names) if self.side is not None else []

    @property
    def device(self) -> torch.device:
        return self.model.item_embedding.weight.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None) -> "EmbeddingRetriever":
        """Load a KuaiFormer / SASRec checkpoint written by `genret train` or `genret benchmark`."""
        from genret.training.embedding_module import load_kuaiformer

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        from genret.decoding.export import artifact_version

        model, entry = load_kuaiformer(path, device)
        catalogue = entry["catalogue"]
        retriever = cls(model, catalogue["item_ids"], SideFeatureBuckets.from_state_dict(catalogue["side_features"]))
        retriever.model_version = artifact_version(path)
        return retriever

    @torch.no_grad()
    def retrieve(self, histories: Sequence[Sequence[Any]], k: int = 100, unknown: str = "error",
                 batch_size: int = 256, side: dict[str, Sequence[Sequence[Any]]] | None = None,
                 exclude_seen: bool = True, user_features: Any = None) -> RetrievalResult:
        """Top-k distinct raw item ids per history (best first), scored by max_j x^T u_j over the
        whole catalogue. Arguments as `genret.Retriever.retrieve` (the request checks are shared:
        genret.decoding.requests); the window is the last `max_len` items of each history. The
        model embeds no static user features, so `user_features` must be None.
        """
        histories = requests.check_histories(histories)
        k = requests.check_k(k, len(self.item_ids))
        batch_size = requests.check_batch_size(batch_size)
        exclude_seen = requests.check_flag(exclude_seen, "exclude_seen")
        if user_features is not None:
            raise requests.RequestError("this model embeds no user features; leave user_features unset")
        buckets = requests.side_rows(histories, self.side, side)
        dense, kept, dropped = requests.encode_histories(histories, self._item_index, requests.check_unknown(unknown))
        if dropped:
            warnings.warn(f"dropped {len(dropped)} unknown item id(s), e.g. {dropped[:3]}", stacklevel=2)
        max_len, n_side = self.model.config.max_len, len(self.side_features)
        item_vectors = self.model.item_vectors().float()
        items_out, scores_out = [], []
        for start in range(0, len(dense), batch_size):
            rows = range(start, min(start + batch_size, len(dense)))
            T = max([min(len(dense[u]), max_len) for u in rows] + [1])
            # Right-aligned windows (the newest item last), left-padded with -1: KuaiFormer's layout.
            window = np.full((len(rows), T), -1, np.int64)
            window_side = np.zeros((len(rows), T, n_side), np.int64)
            for r, u in enumerate(rows):
                n = min(len(dense[u]), max_len)
                if n:
                    window[r, T - n:] = dense[u][-n:]
                    if buckets is not None:
                        window_side[r, T - n:] = buckets[u][kept[u]][-n:]
            users = self.model.user_vectors(torch.from_numpy(window).to(self.device),
                                            torch.from_numpy(window_side).to(self.device))
            scores = max_interest_scores(users.float(), item_vectors)  # (B, n_items)
            if exclude_seen:
                for r, u in enumerate(rows):
                    scores[r, dense[u]] = float("-inf")
            top_scores, top_items = scores.topk(k, dim=1)
            for row_items, row_scores in zip(top_items.cpu().numpy(), top_scores.cpu().numpy()):
                keep = np.isfinite(row_scores)  # fewer unseen items than k
                items_out.append(self.item_ids[row_items[keep]].tolist())
                scores_out.append(row_scores[keep].astype(float).tolist())
        return RetrievalResult(items_out, scores_out)
