"""Most-popular baseline: rank every item by its number of positive interactions in training."""

from __future__ import annotations

from typing import Any

import numpy as np

# Bound the (users x candidate prefix) mask built per chunk in `recommend`.
_MAX_MASK_ELEMENTS = 1 << 25


class PopularityRecommender:
    """Recommends the globally most clicked items, optionally skipping what each user has seen.

    Ties in the count are broken by item index (lower first), so the output is deterministic.

    Attributes (after ``fit``):
        counts_: (n_items,) int64 positives per item in the training log.
        order_: (n_items,) int64 item indices, most popular first.
        n_items_: catalogue size.
    """

    def fit(self, train_log: Any) -> "PopularityRecommender":
        """Count positives (label == 1) per item.

        Args:
            train_log: an ``InteractionLog`` (or anything with ``item`` (n,) int, ``label`` (n,) int or
                None = all positive, and ``n_items``). Pass the training split only, never the
                held-out targets.

        Returns:
            self.
        """
        for name in ("item", "n_items"):
            if not hasattr(train_log, name):
                raise ValueError(f"train_log has no attribute {name!r}; pass a genret.data.InteractionLog")
        items = np.asarray(train_log.item).astype(np.int64, copy=False)
        n_items = int(train_log.n_items)
        if items.ndim != 1:
            raise ValueError(f"train_log.item must be 1-D, got shape {items.shape}")
        if n_items < 1:
            raise ValueError(f"train_log.n_items must be >= 1, got {n_items}")
        if items.size and (items.min() < 0 or items.max() >= n_items):
            raise ValueError(
                f"train_log.item holds indices outside [0, {n_items}) (min {items.min()}, max {items.max()}); "
                "item indices must be remapped to the catalogue first"
            )
        label = getattr(train_log, "label", None)
        if label is not None:
            label = np.asarray(label)
            if label.shape != items.shape:
                raise ValueError(f"train_log.label has shape {label.shape} but item has {items.shape}")
            items = items[label == 1]
        self.counts_ = np.bincount(items, minlength=n_items).astype(np.int64)
        ids = getattr(train_log, "item_ids", None)
        self.item_ids = np.asarray(ids) if ids is not None else np.arange(n_items)
        # Stable sort on -count: equal counts keep index order.
        self.order_ = np.argsort(-self.counts_, kind="stable").astype(np.int64)
        self.n_items_ = n_items
        return self

    def recommend(self, eval_set: Any, k: int, exclude_history: bool = True) -> np.ndarray:
        """Top-k popular items per evaluation user.

        Args:
            eval_set: an ``EvalSet`` (``history_offsets`` (m+1,) int64 and ``history_items`` int64,
                CSR of each user's positive history; ``targets`` (m,) gives m when present).
            k: list length, >= 1.
            exclude_history: drop items already in the user's history (the usual protocol).

        Returns:
            (m, k) int64 item indices, best first; -1 pads rows when fewer than k items remain.
        """
        if not hasattr(self, "counts_"):
            raise RuntimeError("PopularityRecommender is not fitted; call fit(train_log) before recommend()")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        offsets = np.asarray(eval_set.history_offsets).astype(np.int64, copy=False)
        history = np.asarray(eval_set.history_items).astype(np.int64, copy=False)
        if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != history.size:
            raise ValueError(
                "eval_set.history_offsets must be 1-D CSR offsets starting at 0 and ending at len(history_items)"
            )
        if np.any(np.diff(offsets) < 0):
            raise ValueError("eval_set.history_offsets must be non-decreasing")
        if history.size and (history.min() < 0 or history.max() >= self.n_items_):
            raise ValueError(
                f"eval_set.history_items holds indices outside the fitted catalogue [0, {self.n_items_})"
            )
        m = offsets.size - 1
        width = min(k, self.n_items_)
        out = np.full((m, k), -1, dtype=np.int64)
        if not exclude_history:
            out[:, :width] = self.order_[:width]
            return out

        # Each user needs at most k + len(history) candidates from the global order. Mark the
        # history items' positions in that prefix, then keep the first k unmarked positions.
        position = np.empty(self.n_items_, dtype=np.int64)
        position[self.order_] = np.arange(self.n_items_)
        longest = int(np.diff(offsets).max()) if m else 0
        prefix = min(self.n_items_, k + longest)
        rows_per_chunk = max(1, _MAX_MASK_ELEMENTS // prefix)
        for start in range(0, m, rows_per_chunk):
            stop = min(m, start + rows_per_chunk)
            out[start:stop] = self._recommend_chunk(
                offsets[start : stop + 1] - offsets[start],
                history[offsets[start] : offsets[stop]],
                position,
                k,
                prefix,
            )
        return out

    def _recommend_chunk(
        self, offsets: np.ndarray, history: np.ndarray, position: np.ndarray, k: int, prefix: int
    ) -> np.ndarray:
        m = offsets.size - 1
        rows = np.repeat(np.arange(m), np.diff(offsets))
        seen_position = position[history]
        keep = seen_position < prefix
        blocked = np.zeros((m, prefix), dtype=bool)
        blocked[rows[keep], seen_position[keep]] = True
        # Stable argsort puts unblocked positions first, in popularity order.
        chosen = np.argsort(blocked, axis=1, kind="stable")[:, :k]
        items = self.order_[chosen]
        valid = ~np.take_along_axis(blocked, chosen, axis=1)
        out = np.full((m, k), -1, dtype=np.int64)
        out[:, : items.shape[1]] = np.where(valid, items, -1)
        return out

    # ------------------------------------------------------------------ the family's serving interface
    side_features: list[str] = []  # popularity reads no per-action features
    model_version = "in-memory"  # a content hash when loaded from a file

    def retrieve(self, histories: Any, k: int = 100, unknown: str = "error", batch_size: int = 4096,
                 side: Any = None, exclude_seen: bool = True, user_features: Any = None):
        """Top-k most popular raw item ids per history (the history's own items skipped unless
        `exclude_seen` is off); scores are training counts. The same request as every family's
        retriever (genret.decoding.requests); side and user features are not used."""
        from genret.decoding import requests
        from genret.decoding.retriever import RetrievalResult

        histories = requests.check_histories(histories)
        k = requests.check_k(k, self.n_items_)
        requests.check_batch_size(batch_size)
        exclude_seen = requests.check_flag(exclude_seen, "exclude_seen")
        dense, _, _ = requests.encode_histories(histories, requests.item_lookup(self.item_ids),
                                                requests.check_unknown(unknown))
        offsets = np.concatenate([[0], np.cumsum([len(row) for row in dense])]).astype(np.int64)
        flat = np.asarray([i for row in dense for i in row], np.int64)
        ranked = self.recommend(_Histories(offsets, flat), k, exclude_history=exclude_seen)
        items = [self.item_ids[row[row >= 0]].tolist() for row in ranked]
        scores = [self.counts_[row[row >= 0]].astype(float).tolist() for row in ranked]
        return RetrievalResult(items, scores)

    def save(self, path: Any) -> None:
        """Write the fitted counts as a versioned JSON artifact (atomically)."""
        from genret.io import ARTIFACT_VERSION, write_json

        write_json(path, {"version": ARTIFACT_VERSION, "family": "popularity",
                          "item_ids": self.item_ids.tolist(), "counts": self.counts_.tolist()})

    @classmethod
    def from_checkpoint(cls, path: Any, **_: Any) -> "PopularityRecommender":
        """Load what `save` wrote."""
        import json
        from pathlib import Path

        from genret.io import ARTIFACT_VERSION

        state = json.loads(Path(path).read_text())
        if state.get("family") != "popularity" or state.get("version") != ARTIFACT_VERSION:
            raise RuntimeError(f"{path} is not a genret popularity artifact of version {ARTIFACT_VERSION}")
        rec = cls()
        rec.counts_ = np.asarray(state["counts"], np.int64)
        rec.order_ = np.argsort(-rec.counts_, kind="stable").astype(np.int64)
        rec.n_items_ = len(rec.counts_)
        rec.item_ids = np.asarray(state["item_ids"])
        from genret.decoding.export import artifact_version

        rec.model_version = artifact_version(path)
        return rec


class _Histories:
    """The CSR fields `recommend` reads, for histories given as raw ids."""

    def __init__(self, offsets: np.ndarray, items: np.ndarray):
        self.history_offsets, self.history_items = offsets, items
