"""The in-memory interaction log: one columnar table of (user, item, time, label) rows plus item/user tables."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np


class DataError(ValueError):
    """Bad input data: a missing file, a malformed line, an id that does not exist, an empty data set."""


@dataclass(eq=False)
class InteractionLog:
    """A columnar interaction log; rows are sorted by (user, time), ties kept in input order.

    Users and items are dense integers; `user_ids` / `item_ids` map them back to the raw ids of the
    source (int64 when the raw ids are integers, else Python str objects).

    Attributes:
        name: data set name (e.g. "ml-1m", "synthetic").
        user: (n,) int64 dense user of each row, in 0..n_users-1, non-decreasing.
        item: (n,) int64 dense item of each row, in 0..n_items-1.
        label: (n,) int8; 1 = positive (click, rating >= 3, sequence entry), 0 = negative (exposed
            but not clicked, or explicitly disliked).
        time: (n,) int64 order key inside a user (a timestamp or a position); non-decreasing per user.
        side: per-row float32 (n,) features, e.g. "rating", "play_time_ms", "watch_frac".
        user_ids: (n_users,) raw user ids.
        item_ids: (n_items,) raw item ids.
        item_titles: n_items titles, or None.
        item_features: per-item arrays with first dimension n_items (e.g. "genre" int64 ids, 0 = unknown).
            Non-numeric ones (raw strings such as Amazon "asin") have dtype object.
        user_features: (n_users, F) int64 categorical ids (0 = unknown), or None.
        user_feature_names: F names.
        user_feature_cardinalities: F sizes (max id + 1, counting the reserved 0).
        item_embeddings: (n_items, d) float32 content embeddings, or None.
        truth: synthetic ground truth, or None. Keys starting with "row_" are per-row arrays and
            follow `subset`; the rest describe users / items / the generator.
        skipped: what the loader dropped and why, e.g. {"empty_lines": 2}; shown by `summary`.
    """

    name: str
    user: np.ndarray
    item: np.ndarray
    label: np.ndarray
    time: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    side: dict[str, np.ndarray] = field(default_factory=dict)
    item_titles: list[str] | None = None
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    user_features: np.ndarray | None = None
    user_feature_names: list[str] = field(default_factory=list)
    user_feature_cardinalities: list[int] = field(default_factory=list)
    item_embeddings: np.ndarray | None = None
    truth: dict[str, Any] | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes and lookups
    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(len(self.item_ids))

    @property
    def n_rows(self) -> int:
        return int(len(self.user))

    @cached_property
    def item_index(self) -> dict:
        """Raw item id -> dense item id (built once)."""
        return {raw: i for i, raw in enumerate(self.item_ids.tolist())}

    @cached_property
    def user_index(self) -> dict:
        """Raw user id -> dense user id (built once)."""
        return {raw: u for u, raw in enumerate(self.user_ids.tolist())}

    def user_offsets(self) -> np.ndarray:
        """CSR offsets: rows of user u are `offsets[u]:offsets[u + 1]`.

        Returns:
            (n_users + 1,) int64.
        """
        offsets = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.user, minlength=self.n_users), out=offsets[1:])
        return offsets

    # ------------------------------------------------------------------ views
    def subset(self, row_mask: np.ndarray) -> "InteractionLog":
        """Rows where `row_mask` is True (or the given row indices, kept in row order).

        Users, items and their tables are unchanged, so dense ids stay valid across subsets.

        Args:
            row_mask: (n,) bool, or an int array of row indices.
        """
        row_mask = np.asarray(row_mask)
        if row_mask.dtype != bool:
            indices = row_mask.astype(np.int64)
            row_mask = np.zeros(self.n_rows, dtype=bool)
            row_mask[indices] = True
        if row_mask.shape != (self.n_rows,):
            raise DataError(f"row mask has shape {row_mask.shape}, expected ({self.n_rows},)")
        truth = None
        if self.truth is not None:
            truth = {k: (v[row_mask] if k.startswith("row_") else v) for k, v in self.truth.items()}
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(
            user=self.user[row_mask],
            item=self.item[row_mask],
            label=self.label[row_mask],
            time=self.time[row_mask],
            side={k: v[row_mask] for k, v in self.side.items()},
            truth=truth,
            skipped=dict(self.skipped),
        )
        return InteractionLog(**values)

    def positives(self) -> "InteractionLog":
        """The label == 1 rows."""
        return self.subset(self.label == 1)

    # ------------------------------------------------------------------ checks and reports
    def summary(self) -> dict[str, int]:
        """Counts: users, items, rows, positives, negatives, users_with_rows, plus the loader's skipped counts."""
        positives = int(np.count_nonzero(self.label == 1))
        counts = {
            "users": self.n_users,
            "items": self.n_items,
            "rows": self.n_rows,
            "positives": positives,
            "negatives": self.n_rows - positives,
            "users_with_rows": int(len(np.unique(self.user))),
        }
        counts.update({f"skipped_{k}": int(v) for k, v in self.skipped.items()})
        return counts

    def validate(self) -> "InteractionLog":
        """Check dtypes, shapes, id ranges and the (user, time) order; raise DataError on the first problem.

        Returns:
            self, so loaders can `return log.validate()`.
        """
        n = self.n_rows
        for column, dtype in (("user", np.int64), ("item", np.int64), ("label", np.int8), ("time", np.int64)):
            array = getattr(self, column)
            if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != (n,):
                got = getattr(array, "dtype", type(array).__name__), getattr(array, "shape", None)
                raise DataError(f"{self.name}: column '{column}' must be {np.dtype(dtype)} of shape ({n},), got {got}")
        if n:
            if self.user.min() < 0 or self.user.max() >= self.n_users:
                raise DataError(f"{self.name}: user ids must lie in 0..{self.n_users - 1}")
            if self.item.min() < 0 or self.item.max() >= self.n_items:
                raise DataError(f"{self.name}: item ids must lie in 0..{self.n_items - 1}")
            if not np.isin(self.label, (0, 1)).all():
                raise DataError(f"{self.name}: labels must be 0 or 1")
            same_user = self.user[1:] == self.user[:-1]
            if (self.user[1:] < self.user[:-1]).any():
                raise DataError(f"{self.name}: rows are not sorted by user")
            if (same_user & (self.time[1:] < self.time[:-1])).any():
                row = int(np.flatnonzero(same_user & (self.time[1:] < self.time[:-1]))[0]) + 1
                raise DataError(f"{self.name}: time goes backwards inside user {self.user[row]} at row {row}")
        for key, array in self.side.items():
            if array.dtype != np.float32 or array.shape != (n,):
                raise DataError(f"{self.name}: side feature '{key}' must be float32 of shape ({n},)")
        for key, array in self.item_features.items():
            if len(array) != self.n_items:
                raise DataError(f"{self.name}: item feature '{key}' has {len(array)} entries for {self.n_items} items")
        if self.item_titles is not None and len(self.item_titles) != self.n_items:
            raise DataError(f"{self.name}: {len(self.item_titles)} titles for {self.n_items} items")
        if self.user_features is not None:
            uf = self.user_features
            n_fields = len(self.user_feature_names)
            if uf.dtype != np.int64 or uf.shape != (self.n_users, n_fields):
                raise DataError(f"{self.name}: user_features must be int64 of shape ({self.n_users}, {n_fields})")
            if len(self.user_feature_cardinalities) != n_fields:
                raise DataError(f"{self.name}: need one cardinality per user feature")
            if uf.size and ((uf < 0).any() or (uf >= np.asarray(self.user_feature_cardinalities)).any()):
                raise DataError(f"{self.name}: user feature ids must lie in 0..cardinality-1")
        if self.item_embeddings is not None:
            emb = self.item_embeddings
            if emb.dtype != np.float32 or emb.ndim != 2 or len(emb) != self.n_items:
                raise DataError(f"{self.name}: item_embeddings must be float32 of shape ({self.n_items}, d)")
        for ids, what in ((self.user_ids, "user"), (self.item_ids, "item")):
            if len(np.unique(ids)) != len(ids):
                raise DataError(f"{self.name}: raw {what} ids are not unique")
        return self

    def __repr__(self) -> str:
        s = self.summary()
        return (f"InteractionLog(name={self.name!r}, users={s['users']:,}, items={s['items']:,}, "
                f"rows={s['rows']:,}, positives={s['positives']:,}, negatives={s['negatives']:,})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_raw(
        cls,
        name: str,
        user: np.ndarray,
        item: np.ndarray,
        time: np.ndarray | None = None,
        label: np.ndarray | None = None,
        side: dict[str, np.ndarray] | None = None,
        user_ids: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
    ) -> "InteractionLog":
        """Build a log from raw ids: map them to dense ids and sort rows by (user, time), stably.

        Args:
            name: data set name.
            user: (n,) raw user ids (integers or strings).
            item: (n,) raw item ids (integers or strings).
            time: (n,) int order key; default: the row's position in the input.
            label: (n,) 0/1; default all 1.
            side: per-row features, cast to float32.
            user_ids: optional catalogue of raw user ids (dense id = position); default sorted unique `user`.
            item_ids: optional catalogue of raw item ids (dense id = position); default sorted unique `item`.
                With a catalogue, entities without rows are kept and unknown raw ids raise DataError.
        """
        user = _as_ids(user)
        item = _as_ids(item)
        n = len(user)
        if len(item) != n:
            raise DataError(f"{name}: {n} users but {len(item)} items")
        time = np.arange(n, dtype=np.int64) if time is None else np.asarray(time)
        if time.dtype.kind not in "iu":
            raise DataError(f"{name}: time must be integers, got {time.dtype}")
        label = np.ones(n, dtype=np.int8) if label is None else np.asarray(label)
        if len(time) != n or len(label) != n:
            raise DataError(f"{name}: time and label need {n} entries")
        if n and not np.isin(label, (0, 1)).all():
            raise DataError(f"{name}: labels must be 0 or 1")
        user_ids, user_dense = _dense(user, user_ids, name, "user")
        item_ids, item_dense = _dense(item, item_ids, name, "item")
        return cls.from_dense(name, user_dense, item_dense, time, label, user_ids, item_ids, side)

    @classmethod
    def from_dense(
        cls,
        name: str,
        user: np.ndarray,
        item: np.ndarray,
        time: np.ndarray,
        label: np.ndarray,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        side: dict[str, np.ndarray] | None = None,
    ) -> "InteractionLog":
        """Build a log from dense ids (positions in `user_ids` / `item_ids`), sorting rows by (user, time) stably."""
        order = np.lexsort((time, user))  # lexsort is stable: ties keep input order
        return cls(
            name=name,
            user=np.asarray(user, dtype=np.int64)[order],
            item=np.asarray(item, dtype=np.int64)[order],
            label=np.asarray(label, dtype=np.int8)[order],
            time=np.asarray(time, dtype=np.int64)[order],
            user_ids=user_ids,
            item_ids=item_ids,
            side={k: np.asarray(v, dtype=np.float32)[order] for k, v in (side or {}).items()},
        )


def lookup(sorted_ids: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `raw` in the sorted, unique `sorted_ids`, and whether each was found.

    Returns:
        (positions (n,) int64, found (n,) bool); positions of missing ids are arbitrary.
    """
    raw = np.asarray(raw)
    if len(sorted_ids) == 0:
        return np.zeros(len(raw), dtype=np.int64), np.zeros(len(raw), dtype=bool)
    if sorted_ids.dtype.kind in "iu" and raw.dtype.kind in "iu" and len(raw):
        low, high = int(sorted_ids[0]), int(sorted_ids[-1])
        if high - low < max(4 * len(raw), 1 << 20):
            # A dense lookup table beats binary search when the id range is small (the usual case).
            table = np.full(high - low + 1, -1, dtype=np.int64)
            table[sorted_ids - low] = np.arange(len(sorted_ids))
            inside = (raw >= low) & (raw <= high)
            pos = np.full(len(raw), -1, dtype=np.int64)
            pos[inside] = table[raw[inside] - low]
            found = pos >= 0
            return np.where(found, pos, 0), found
    pos = np.searchsorted(sorted_ids, raw).clip(max=len(sorted_ids) - 1).astype(np.int64)
    return pos, sorted_ids[pos] == raw


def _as_ids(ids: Any) -> np.ndarray:
    """Raw ids as int64 when they are integers, else as an object array of str."""
    ids = np.asarray(ids)
    if ids.size == 0 or ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    if ids.dtype.kind == "b" or ids.dtype.kind == "f":
        raise DataError(f"raw ids must be integers or strings, got {ids.dtype}")
    return ids.astype(str).astype(object)


def _dense(raw: np.ndarray, catalogue: np.ndarray | None, name: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Map raw ids to positions in `catalogue` (default: sorted unique raw ids)."""
    if catalogue is None:
        catalogue, dense = np.unique(raw, return_inverse=True)
        return catalogue, dense.astype(np.int64).reshape(-1)
    catalogue = _as_ids(catalogue)
    if catalogue.dtype != raw.dtype and len(raw):
        raise DataError(f"{name}: raw {what} ids are {raw.dtype} but the {what} catalogue is {catalogue.dtype}")
    order = np.argsort(catalogue, kind="stable")
    pos, found = lookup(catalogue[order], raw)
    if not found.all():
        missing = raw[np.flatnonzero(~found)[0]]
        raise DataError(f"{name}: {what} id {missing!r} is not in the catalogue of {len(catalogue):,} {what}s")
    return catalogue, order[pos].astype(np.int64)
