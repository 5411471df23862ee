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
from genret.io import ARTIFACT_VERSION
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
        merge_branches: decode both DBR branches and merge them (off: long branch only).
        branch_merge: how an item both branches decode is scored: "sum" of its two weighted
            probabilities (default; the branches' mixture) or "max" (its better branch's score).
        short_weight: the short branch's weight in the merge, P(short) (the long one gets 1 - it).
            Default: the model's `short_prior`, how often the DBR gate routed a training target to the
            short window where the two windows differ (0.5 for a checkpoint from before it was recorded).
        side_features: the bucket boundaries of the per-action side features the model was trained
            with (a checkpoint carries them); None when it uses none.
    """

    def __init__(self, model: DualGR, index, item_ids: Sequence[Any], kernel: str = "auto",
                 beam_width: int | None = None, merge_branches: bool = True,
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
        self.merge_branches = merge_branches
        self.branch_merge = branch_merge
        self.short_weight = short_weight

    @property
    def branch_weight(self) -> float:
        """The short branch's weight this retriever merges with (the model's prior unless overridden)."""
        return self.model.short_prior if self.short_weight is None else self.short_weight

    @property
    def device(self) -> torch.device:
        return self.model.bos.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None, **kwargs) -> "Retriever":
        """Load a checkpoint written by `genret train` / `genret quickstart` (tokenizer, SID index
        and raw item ids travel inside it)."""
        from genret.tokenizers import SIDIndex

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist; train one with `genret train --config ...`")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            # Our own checkpoint format holds plain Python containers next to tensors.
            ckpt = torch.load(path, map_location=device, weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to a user
            raise RuntimeError(f"cannot read checkpoint {path}: {err}") from err
        extra = ckpt.get("genret") if isinstance(ckpt, dict) else None
        if extra is None:
            raise RuntimeError(f"{path} is not a genret checkpoint (no 'genret' entry)")
        if extra.get("version") != ARTIFACT_VERSION:
            raise RuntimeError(f"{path} has genret format version {extra.get('version')}; this genret reads "
                               f"version {ARTIFACT_VERSION}")
        model = DualGR(DualGRConfig(**extra["config"]))
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state)
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
        if unknown not in ("error", "drop"):
            raise ValueError(f"unknown must be 'error' or 'drop', got {unknown!r}")
        side_rows = self._side_rows(histories, side)
        dense, lengths, dropped, kept_side = [], [], [], []
        for u, history in enumerate(histories):
            row = []
            for j, raw in enumerate(history):
                idx = self._item_index.get(raw)
                if idx is None and isinstance(raw, str) and raw.lstrip("-").isdigit():
                    idx = self._item_index.get(int(raw))  # JSON users often quote integer ids
                if idx is None:
                    if unknown == "error":
                        raise ValueError(
                            f"item id {raw!r} in history {u} is not in the catalogue of {len(self.item_ids):,} "
                            f"items; pass unknown='drop' to skip unknown items")
                    dropped.append(raw)
                    continue
                row.append(idx)
                if side_rows is not None:
                    kept_side.append(side_rows[u][j])
            dense.extend(row)
            lengths.append(len(row))
        if dropped:
            warnings.warn(f"dropped {len(dropped)} unknown item id(s), e.g. {dropped[:3]}", stacklevel=2)
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]), device=self.device)
        n_fields = len(self.model.user_embeddings)
        feats = torch.zeros(len(lengths), n_fields, dtype=torch.long, device=self.device)
        if user_feats is not None:
            feats = torch.as_tensor(user_feats, dtype=torch.long, device=self.device)
        side_tensor = None
        if side_rows is not None:
            side_tensor = torch.as_tensor(np.asarray(kept_side, np.int64).reshape(len(dense), len(self.side)),
                                          device=self.device)
        return Histories(offsets, torch.tensor(dense, dtype=torch.long, device=self.device), feats, side_tensor)

    def _side_rows(self, histories, side) -> list[np.ndarray] | None:
        """Per history, (len, S) bucket ids; None when the model has no side features or none were given."""
        if self.side is None:
            if side:
                raise ValueError(f"this model was trained without side features; got {sorted(side)}")
            return None
        if side is None:
            warnings.warn(f"the model was trained with side features {self.side.names}; without them every action "
                          f"uses the 'missing' bucket and retrieval may be less accurate", stacklevel=3)
            return None
        missing = [name for name in self.side.names if name not in side]
        extra = sorted(set(side) - set(self.side.names))
        if missing or extra:
            raise ValueError(f"side must map exactly the model's features {self.side.names}; missing {missing}, "
                             f"unexpected {extra} (use None values for unknown entries)")
        rows = []
        for u, history in enumerate(histories):
            columns = []
            for f, name in enumerate(self.side.names):
                if u >= len(side[name]) or len(side[name][u]) != len(history):
                    got = len(side[name][u]) if u < len(side[name]) else "no"
                    raise ValueError(f"side[{name!r}][{u}] has {got} values but history {u} has "
                                     f"{len(history)} items; give one value per item (None = missing)")
                columns.append(self.side.bucketise(f, list(side[name][u])))
            rows.append(np.stack(columns, 1) if columns else np.zeros((len(history), 0), np.int64))
        return rows

    def retrieve_indices(self, hist: Histories, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense-index version of `retrieve` (used by evaluation). Returns (U, k) items, scores."""
        return retrieve_indices(self.model, self.index, hist, k, beam_width=max(self.beam_width or k, 1),
                                merge_branches=self.merge_branches, kernel=self.kernel,
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
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if k > len(self.item_ids):
            raise ValueError(f"k={k} exceeds the catalogue of {len(self.item_ids):,} items")
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
