"""`Retriever`: the user-facing decode API, built from a genret training checkpoint."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from genret.data.side_features import SideFeatureBuckets
from genret.decoding.beam_search import BRANCH_MERGES, Histories, check_short_weight, retrieve_indices
from genret.models.dualgr import DualGR, DualGRConfig


@dataclass
class RetrievalResult:
    """items[u]: k distinct raw item ids, best first; scores[u]: their log-probabilities."""

    items: list[list[Any]]
    scores: list[list[float]]


class Retriever:
    """Constrained beam-search retrieval with a trained DualGR.

    Example:
        >>> r = Retriever.from_checkpoint("runs/quickstart/model.ckpt")
        >>> r.retrieve([[r.item_ids[0], r.item_ids[5]]], k=10).items[0]

    Args:
        model: a DualGR whose item codes are set.
        index: the SIDIndex every decoded SID is constrained to.
        item_ids: raw id of each dense item index.
        kernel: "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else PyTorch), "torch", "triton".
        beam_width: beams per level (default: k of each call); must be >= k to fill k items.
        branch_merge: how an item both branches decode is scored: "sum" of its two weighted
            probabilities (default; the branches' mixture) or "max" (its better branch's score).
        short_weight: the short branch's weight in the merge, P(short) (the long one gets 1 - it).
            Default: the model's own `short_weight`, how often the DBR gate routed a training target
            to the short window where the two windows differ.
        side_features: the bucket boundaries of the per-action side features the model was trained
            with (a checkpoint carries them); None when it uses none.
    """

    def __init__(self, model: DualGR, index, item_ids: Sequence[Any], kernel: str = "auto",
                 beam_width: int | None = None,
                 side_features: SideFeatureBuckets | None = None, branch_merge: str = "sum",
                 short_weight: float | None = None):
        if branch_merge not in BRANCH_MERGES:
            raise ValueError(f"branch_merge must be one of {BRANCH_MERGES}, got {branch_merge!r}")
        check_short_weight(short_weight)
        if side_features is not None and len(side_features) != model.cfg.n_side_features:
            raise ValueError(f"the model embeds {model.cfg.n_side_features} side features but "
                             f"{len(side_features)} were given ({side_features.names})")
        if side_features is None and model.cfg.n_side_features:
            raise ValueError(f"the model embeds {model.cfg.n_side_features} side features: pass their "
                             f"SideFeatureBuckets (Retriever.from_checkpoint does this)")
        self.model = model.eval()
        self.side = side_features
        self.index = index
        self.item_ids = np.asarray(item_ids)
        self._item_index = {raw: i for i, raw in enumerate(self.item_ids.tolist())}
        self.kernel = kernel
        self.beam_width = beam_width
        self.branch_merge = branch_merge
        # The short DBR branch's weight this retriever merges with: the model's unless overridden.
        self.short_weight = model.short_weight if short_weight is None else short_weight

    @property
    def device(self) -> torch.device:
        return self.model.bos.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None, **kwargs) -> "Retriever":
        """Load a checkpoint written by `genret train` / `genret quickstart` (tokenizer, SID index
        and raw item ids travel inside it)."""
        from genret.tokenizers import SIDIndex
        from genret.training.checkpoint import load_checkpoint, model_state

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        ckpt, extra = load_checkpoint(path, device, family="dualgr")
        model = DualGR(DualGRConfig(**extra["config"]))
        model.load_state_dict(model_state(ckpt))
        catalogue = extra["catalogue"]
        model.set_item_codes(catalogue["codes"])
        model.to(device)
        index = SIDIndex.from_state_dict(catalogue["sid_index"]).to(device)
        side = catalogue.get("side_features")
        side = SideFeatureBuckets.from_state_dict(side) if side and side["names"] else None
        return cls(model, index, catalogue["item_ids"], side_features=side, **kwargs)

    @property
    def side_features(self) -> list[str]:
        """Names of the per-action side features `retrieve(side=...)` takes (empty if none)."""
        return list(self.side.names) if self.side is not None else []

    def encode_histories(self, histories: Sequence[Sequence[Any]], unknown: str = "error",
                         user_feats: np.ndarray | None = None,
                         side: dict[str, Sequence[Sequence[Any]]] | None = None) -> Histories:
        """Raw item-id sequences (oldest first) -> dense CSR Histories on the model's device.

        side: per feature name, one list of raw values per history, aligned with its items (None
        or NaN = missing); bucketised with the checkpoint's boundaries. See `retrieve`.
        """
        offsets, dense, side_rows = dense_histories(histories, self._item_index, unknown, self.side, side)
        n_fields = len(self.model.user_embeddings)
        feats = torch.zeros(len(offsets) - 1, n_fields, dtype=torch.long, device=self.device)
        if user_feats is not None:
            feats = torch.as_tensor(user_feats, dtype=torch.long, device=self.device)
        return Histories(torch.as_tensor(offsets, device=self.device), torch.as_tensor(dense, device=self.device),
                         feats, None if side_rows is None else torch.as_tensor(side_rows, device=self.device))

    def retrieve_indices(self, hist: Histories, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense-index version of `retrieve` (used by evaluation). Returns (U, k) items, scores."""
        return retrieve_indices(self.model, self.index, hist, k, beam_width=max(self.beam_width or k, 1),
                                kernel=self.kernel,
                                branch_merge=self.branch_merge, short_weight=self.short_weight)

    def retrieve(self, histories: Sequence[Sequence[Any]], k: int = 500, unknown: str = "error",
                 batch_size: int = 64, side: dict[str, Sequence[Sequence[Any]]] | None = None) -> RetrievalResult:
        """Top-k distinct raw item ids per history (best first), with their scores.

        Args:
            histories: one sequence of raw item ids per user, oldest first (may be empty).
            k: items per user; at most the catalogue size.
            unknown: "error" (ValueError naming the id) or "drop" (skip with a warning).
            batch_size: users decoded together.
            side: the per-action side features the model was trained with (`self.side_features`),
                raw values, e.g. {"rating": [[5, 3], [4]]} for two histories of 2 and 1 items;
                None / NaN entries are "missing". For "time_gap" pass the time since the
                previous action (`genret.data.side_features.time_gaps(timestamps)` computes it).
                Omitted: every action is "missing" (with a warning).
        """
        check_retrieve_args(k, batch_size, len(self.item_ids))
        items_out: list[list[Any]] = []
        scores_out: list[list[float]] = []
        for start in range(0, len(histories), batch_size):
            chunk = None if side is None else {name: values[start:start + batch_size] for name, values in side.items()}
            hist = self.encode_histories(histories[start:start + batch_size], unknown=unknown, side=chunk)
            items, scores = self.retrieve_indices(hist, k)
            for row_items, row_scores in zip(items.cpu().numpy(), scores.cpu().numpy()):
                keep = row_items >= 0
                items_out.append(self.item_ids[row_items[keep]].tolist())
                scores_out.append(row_scores[keep].astype(float).tolist())
        return RetrievalResult(items_out, scores_out)

    def add_items(self, raw_ids: Sequence[Any], codes: np.ndarray | torch.Tensor) -> None:
        """Add items to the catalogue without retraining: DualGR's own cold-start path.

        A new item needs only a SID: encode its text / feature embedding with the tokenizer the
        SIDs were fitted with (`RQKMeans.encode(vectors)`, the same embedding recipe as the
        catalogue's), and pass the codes here. The SID index grows with `SIDIndex.add_items`
        (existing items keep their SIDs and order) and the model's SID table gains the rows, so
        new items can be decoded and can appear in histories.

        Args:
            raw_ids: the new items' raw ids (not already in the catalogue).
            codes: (m, L) int64 SIDs.

        Raises:
            ValueError: duplicate ids, bad codes, or a model with item-id embeddings (a new item
                has no trained id row; train with `model.use_item_id: false` for cold start).
        """
        if self.model.item_embedding is not None:
            raise ValueError("this DualGR embeds item ids, and a new item has no trained id row; train it with "
                             "model.use_item_id: false to add items by their SIDs alone")
        raw_ids = list(raw_ids)
        dup = [r for r in raw_ids if r in self._item_index]
        if dup:
            raise ValueError(f"items {dup[:5]} are already in the catalogue")
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.shape != (len(raw_ids), self.model.cfg.n_levels):
            raise ValueError(f"codes must have shape ({len(raw_ids)}, {self.model.cfg.n_levels}), got {tuple(codes.shape)}")
        self.index = self.index.add_items(codes)
        self.model.set_item_codes(torch.cat([self.model.item_codes.cpu(), codes]))
        start = len(self.item_ids)
        self.item_ids = np.concatenate([self.item_ids, np.asarray(raw_ids, dtype=self.item_ids.dtype)])
        self._item_index.update({raw: start + i for i, raw in enumerate(raw_ids)})


def check_retrieve_args(k: int, batch_size: int, n_items: int) -> None:
    """The checks every family's `retrieve` makes on its list length and batch size."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n_items:
        raise ValueError(f"k={k} exceeds the catalogue of {n_items:,} items")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def dense_histories(histories: Sequence[Sequence[Any]], item_index: dict, unknown: str = "error",
                    buckets: SideFeatureBuckets | None = None,
                    side: dict[str, Sequence[Sequence[Any]]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Raw item-id histories -> CSR dense indices: offsets (U + 1,), items (N,) and, when the model
    embeds side features and they are given, their buckets (N, S); unknown ids raise or are dropped."""
    if unknown not in ("error", "drop"):
        raise ValueError(f"unknown must be 'error' or 'drop', got {unknown!r}")
    side_rows = _side_rows(histories, buckets, side)
    dense, lengths, dropped, kept_side = [], [], [], []
    for u, history in enumerate(histories):
        row = []
        for j, raw in enumerate(history):
            idx = item_index.get(raw)
            if idx is None and isinstance(raw, str) and raw.lstrip("-").isdigit():
                idx = item_index.get(int(raw))  # JSON users often quote integer ids
            if idx is None:
                if unknown == "error":
                    raise ValueError(
                        f"item id {raw!r} in history {u} is not in the catalogue of {len(item_index):,} "
                        f"items; pass unknown='drop' to skip unknown items")
                dropped.append(raw)
                continue
            row.append(idx)
            if side_rows is not None:
                kept_side.append(side_rows[u][j])
        dense.extend(row)
        lengths.append(len(row))
    if dropped:
        warnings.warn(f"dropped {len(dropped)} unknown item id(s), e.g. {dropped[:3]}", stacklevel=3)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    kept = None if side_rows is None else np.asarray(kept_side, np.int64).reshape(len(dense), len(buckets))
    return offsets, np.asarray(dense, np.int64), kept


def _side_rows(histories, buckets: SideFeatureBuckets | None, side) -> list[np.ndarray] | None:
    """Per history, (len, S) bucket ids; None when the model has no side features or none were given."""
    if buckets is None:
        if side:
            raise ValueError(f"this model was trained without side features; got {sorted(side)}")
        return None
    if side is None:
        warnings.warn(f"the model was trained with side features {buckets.names}; without them every action "
                      f"uses the 'missing' bucket and retrieval may be less accurate", stacklevel=4)
        return None
    missing = [name for name in buckets.names if name not in side]
    extra = sorted(set(side) - set(buckets.names))
    if missing or extra:
        raise ValueError(f"side must map exactly the model's features {buckets.names}; missing {missing}, "
                         f"unexpected {extra} (use None values for unknown entries)")
    rows = []
    for u, history in enumerate(histories):
        columns = []
        for f, name in enumerate(buckets.names):
            if u >= len(side[name]) or len(side[name][u]) != len(history):
                got = len(side[name][u]) if u < len(side[name]) else "no"
                raise ValueError(f"side[{name!r}][{u}] has {got} values but history {u} has "
                                 f"{len(history)} items; give one value per item (None = missing)")
            columns.append(buckets.bucketise(f, list(side[name][u])))
        rows.append(np.stack(columns, 1) if columns else np.zeros((len(history), 0), np.int64))
    return rows
