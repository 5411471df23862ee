"""Retrieval with an embedding model (KuaiFormer, SASRec): exact top-K over all item vectors by the
max-over-interests score (kuaiformer.txt eq. 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from genret.data.side_features import SideFeatureBuckets
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
        self._item_index = {raw: i for i, raw in enumerate(self.item_ids.tolist())}

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
        model, entry = load_kuaiformer(path, device)
        catalogue = entry["catalogue"]
        return cls(model, catalogue["item_ids"], SideFeatureBuckets.from_state_dict(catalogue["side_features"]))

    def retrieve(self, histories: Sequence[Sequence[Any]], k: int = 100, unknown: str = "error",
                 batch_size: int = 256, side: dict[str, Sequence[Sequence[Any]]] | None = None) -> RetrievalResult:
        """Top-k distinct raw item ids per history (best first), scored by max_j x^T u_j.

        Args as `genret.Retriever.retrieve`; the window is the last `max_len` items of each history.
        """
        from genret.decoding.retriever import check_retrieve_args, dense_histories

        check_retrieve_args(k, batch_size, len(self.item_ids))
        offsets, dense, side_rows = dense_histories(histories, self._item_index, unknown, self.side, side)
        max_len = self.model.config.max_len
        items_out, scores_out = [], []
        with torch.no_grad():
            for start in range(0, len(offsets) - 1, batch_size):
                stop = min(start + batch_size, len(offsets) - 1)
                ends = offsets[start + 1:stop + 1]
                lengths = np.minimum(ends - offsets[start:stop], max_len)
                T = max(int(lengths.max(initial=0)), 1)
                # Right-aligned windows (the newest item last), left-padded with -1: KuaiFormer's layout.
                window = np.full((stop - start, T), -1, np.int64)
                window_side = np.zeros((stop - start, T, len(self.side or [])), np.int64)
                for u, (end, n) in enumerate(zip(ends, lengths)):
                    window[u, T - n:] = dense[end - n:end]
                    if side_rows is not None:
                        window_side[u, T - n:] = side_rows[end - n:end]
                users = self.model.user_vectors(torch.from_numpy(window).to(self.device),
                                                torch.from_numpy(window_side).to(self.device))
                scores = max_interest_scores(users.float(), self.model.item_vectors().float())
                top_scores, top_items = scores.topk(k, dim=1)
                for row_items, row_scores in zip(top_items.cpu().numpy(), top_scores.cpu().numpy()):
                    items_out.append(self.item_ids[row_items].tolist())
                    scores_out.append(row_scores.astype(float).tolist())
        return RetrievalResult(items_out, scores_out)
