"""Checks and encodings every family's retriever applies to a retrieval request.

A retriever of any family (DualGR's beam search, an embedding model's exact top-K) takes the same
request: raw item-id histories, k, how to treat unknown ids, optional static user features, and
whether items the user has already seen may come back. These functions turn that request into
dense indices with errors that name the argument at fault, and filter seen items from a ranked
list the way evaluation does. `RequestError` (HTTP 400) and `UnknownItemError` (HTTP 422) let a
server tell a malformed request from one that names an item the catalogue does not hold.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

UNKNOWN_POLICIES = ("error", "drop")

# Extra list slots decoded when seen items are excluded, as `genret.eval.ranked_lists.evaluate_retriever`
# (history_margin=20) does: with the same margin a served list equals the evaluated one.
HISTORY_MARGIN = 20


class RequestError(ValueError):
    """A retrieval argument is malformed or out of range (a server answers 400)."""


class UnknownItemError(RequestError):
    """A history names an item id the catalogue does not hold, with unknown="error" (a server answers 422)."""


def is_int(value: Any) -> bool:
    """An integer, numpy's included, but not a bool."""
    # bool is an int subclass, and True == 1 would silently look up item 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_k(k: Any, n_items: int) -> int:
    """k must be an integer in [1, n_items]; returns it as a Python int."""
    if not is_int(k):
        raise RequestError(f"k must be an integer number of items, got {k!r} ({type(k).__name__})")
    if not 1 <= k <= n_items:
        raise RequestError(f"k must lie in [1, {n_items:,}] (the catalogue holds {n_items:,} items), got {k}")
    return int(k)


def check_batch_size(batch_size: Any) -> int:
    """batch_size (users decoded together) must be a positive integer."""
    if not is_int(batch_size) or batch_size < 1:
        raise RequestError(f"batch_size must be a positive integer (users decoded together), got {batch_size!r}")
    return int(batch_size)


def check_unknown(unknown: Any) -> str:
    if unknown not in UNKNOWN_POLICIES:
        raise RequestError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
    return unknown


def check_not_empty(lengths: Sequence[int] | np.ndarray, unknown: str, why: str) -> None:
    """Refuse the first empty history (after unknown items were dropped) for a family that cannot
    score one; `why` says what the family needs the history for."""
    empty = np.flatnonzero(np.asarray(lengths) == 0)
    if len(empty):
        after = " after dropping unknown items" if unknown == "drop" else ""
        raise RequestError(f"history {int(empty[0])} is empty{after}; {why} (serve users without history with "
                           "the popularity family)")


def check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise RequestError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def check_histories(histories: Any) -> list[list[Any]]:
    """histories: a list of histories, each a list of raw item ids (ints or strings), oldest first.

    A flat list of ids (one history without its brackets) is refused rather than read as many
    one-item histories. Returns the histories as lists of Python ints / strings.
    """
    if isinstance(histories, (str, bytes, Mapping)) or not isinstance(histories, (Sequence, np.ndarray)):
        raise RequestError(f"histories must be a list of histories (lists of item ids), got {type(histories).__name__}")
    out = []
    for u, history in enumerate(histories):
        if isinstance(history, np.ndarray):
            history = history.tolist()
        if isinstance(history, (list, tuple)) and set(map(type, history)) <= _PLAIN_ID_TYPES:
            out.append(list(history))  # plain ints / strings: nothing to check per item (the common case)
            continue
        if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
            raise RequestError(f"histories[{u}] must be a list of item ids, got {history!r}; pass a list of lists, "
                               f"e.g. [[12, 7, 3]] for one user")
        row = []
        for j, raw in enumerate(history):
            if is_int(raw):
                row.append(int(raw))
            elif isinstance(raw, str):
                row.append(raw)
            else:
                raise RequestError(f"histories[{u}][{j}] must be an item id (an int or a string), got {raw!r} "
                                   f"({type(raw).__name__})")
        out.append(row)
    return out


# Exactly these types need no per-item conversion (bool, numpy ints and str subclasses take the slow path).
_PLAIN_ID_TYPES = {int, str}


class ItemLookup(dict):
    """raw id -> dense index (a dict over Python scalars, so numpy and JSON ids hash alike), plus,
    for an integer catalogue, its ids sorted once: then a whole request of integer ids is looked
    up by one `np.searchsorted` instead of a dict lookup per item."""

    def __init__(self, item_ids: Sequence[Any]):
        ids = np.asarray(item_ids)
        super().__init__((raw, i) for i, raw in enumerate(ids.tolist()))
        self.sorted_ids: np.ndarray | None = None
        self.sorted_index: np.ndarray | None = None
        int_ids = ids.dtype.kind == "i" or (ids.dtype.kind == "u" and (not ids.size or ids.max() < 2**63))
        if int_ids and ids.ndim == 1:
            ids = ids.astype(np.int64)
            # Stable, so among repeated ids the last position comes last: the one the dict keeps.
            self.sorted_index = np.argsort(ids, kind="stable")
            self.sorted_ids = ids[self.sorted_index]

    def lookup_ints(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """raw (n,) int64 ids -> dense indices (n,) int64 (-1 where unknown) and found (n,) bool."""
        if not self.sorted_ids.size:
            return np.full(raw.shape, -1, np.int64), np.zeros(raw.shape, bool)
        # Sorted queries: each binary search starts near the last one (3x faster on a 1M catalogue).
        order = np.argsort(raw, kind="stable")
        pos = np.empty(raw.shape, np.int64)
        pos[order] = np.searchsorted(self.sorted_ids, raw[order], side="right") - 1
        found = (pos >= 0) & (self.sorted_ids[pos.clip(min=0)] == raw)
        return np.where(found, self.sorted_index[pos.clip(min=0)], -1), found


def item_lookup(item_ids: Sequence[Any]) -> ItemLookup:
    """raw id -> dense index, over Python scalars so numpy and JSON ids hash alike (an `ItemLookup`)."""
    return ItemLookup(item_ids)


def encode_histories(histories: Sequence[Sequence[Any]], item_index: Mapping[Any, int], unknown: str = "error"
                     ) -> tuple[list[list[int]], list[list[int]], list[Any]]:
    """Raw ids -> dense indices (histories from `check_histories`).

    A string of digits also matches an integer id (JSON users often quote them).

    Returns:
        dense: per history, its known items' dense indices (oldest first);
        kept: per history, the positions of those items in the raw history (to keep side values aligned);
        dropped: the unknown raw ids skipped (empty unless unknown="drop").

    Raises:
        UnknownItemError: an unknown id with unknown="error", naming it and its history.
    """
    check_unknown(unknown)
    items, offsets, kept, dropped = encode_flat(histories, item_index, unknown)
    if not len(histories):
        return [], [], dropped
    cuts = offsets[1:-1]
    return ([row.tolist() for row in np.split(items, cuts)],
            [(row - start).tolist() for row, start in zip(np.split(kept, cuts), _raw_starts(histories))], dropped)


def _raw_starts(histories: Sequence[Sequence[Any]]) -> np.ndarray:
    """Where each history starts in the flat list of all raw ids."""
    return np.concatenate([[0], np.cumsum([len(h) for h in histories], dtype=np.int64)])[:-1]


def encode_flat(histories: Sequence[Sequence[Any]], item_index: Mapping[Any, int], unknown: str = "error"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
    """`encode_histories` as flat arrays (CSR), vectorised when the ids allow it.

    When `item_index` is an `ItemLookup` of an integer catalogue and every raw id is a Python int,
    the ids are looked up all at once (np.searchsorted over the sorted catalogue); otherwise (string
    ids, digit strings for an integer catalogue) one dict lookup per item, with the same results.

    Returns:
        items (n,) int64 dense indices of the known items, history after history, oldest first;
        offsets (U + 1,) int64: history u's items are items[offsets[u]:offsets[u + 1]];
        kept (n,) int64 each item's position in the flat list of all raw ids (to align side values);
        dropped: the unknown raw ids skipped (empty unless unknown="drop").

    Raises:
        UnknownItemError: an unknown id with unknown="error", naming it and its history.
    """
    check_unknown(unknown)
    flat = [raw for history in histories for raw in history]
    raw_lengths = np.fromiter(map(len, histories), np.int64, count=len(histories))
    raw_history = np.repeat(np.arange(len(histories)), raw_lengths)  # history of each raw id
    found = None
    if isinstance(item_index, ItemLookup) and item_index.sorted_ids is not None and set(map(type, flat)) <= {int}:
        try:
            raw = np.array(flat, dtype=np.int64)
        except OverflowError:  # an id beyond int64 cannot be in the catalogue; the dict path says so
            raw = None
        if raw is not None:
            dense, found = item_index.lookup_ints(raw)
    if found is None:
        dense = np.fromiter((_lookup_one(item_index, raw) for raw in flat), np.int64, count=len(flat))
        found = dense >= 0
    if not found.all():
        missing = np.flatnonzero(~found)
        if unknown == "error":
            first = int(missing[0])
            raise UnknownItemError(f"item id {flat[first]!r} in history {int(raw_history[first])} is not in the "
                                   f"catalogue of {len(item_index):,} items; to skip unknown items pass unknown='drop' "
                                   f"(`genret decode --unknown drop`, \"unknown\": \"drop\" over HTTP)")
        dropped = [flat[i] for i in missing.tolist()]
    else:
        dropped = []
    kept = np.flatnonzero(found)
    lengths = np.bincount(raw_history[kept], minlength=len(histories)) if len(histories) else raw_lengths
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return dense[kept].astype(np.int64), offsets, kept.astype(np.int64), dropped


def _lookup_one(item_index: Mapping[Any, int], raw: Any) -> int:
    """One raw id's dense index, -1 if unknown. A string of digits also matches an integer id."""
    idx = item_index.get(raw)
    if idx is None and isinstance(raw, str) and raw.lstrip("-").isdigit():
        idx = item_index.get(int(raw))
    return -1 if idx is None else idx


def request_size(k: int, n_items: int, exclude_seen: bool) -> int:
    """How many items to decode so that k remain after seen items are removed, as evaluation does."""
    return min(k + (HISTORY_MARGIN if exclude_seen else 0), n_items)


def drop_seen(items: np.ndarray, histories: Sequence[Sequence[int]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each user's history items from its ranked list, keeping the order of the rest.

    Args:
        items: (U, M) int64 dense item indices, best first, -1 padded.
        histories: U lists of dense indices.
        k: list length to return.

    Returns:
        keep_idx (U, k) int64 column indices into `items` of the first k unseen entries (-1 where fewer);
        short (U,) bool, True where fewer than k unseen items were listed.
    """
    U = items.shape[0]
    keep_idx = np.full((U, k), -1, np.int64)
    short = np.zeros(U, bool)
    for u in range(U):
        cols = np.flatnonzero((items[u] >= 0) & ~np.isin(items[u], histories[u]))[:k]
        keep_idx[u, :len(cols)] = cols
        short[u] = len(cols) < k
    return keep_idx, short


def user_feature_names(names: Sequence[str] | None, n_fields: int) -> list[str]:
    """The names a retriever takes `user_features` by: the checkpoint's, or "user_feature_0", ... when it
    has none; a count that differs from the model's `n_fields` is an error (a mismatched checkpoint)."""
    out = list(names or [f"user_feature_{f}" for f in range(n_fields)])
    if len(out) != n_fields:
        raise ValueError(f"the model embeds {n_fields} user features but {len(out)} names were given ({out})")
    return out


def user_feature_matrix(user_features: Any, names: Sequence[str], cardinalities: Sequence[int],
                        n_users: int) -> np.ndarray:
    """Static user features -> (n_users, F) int64 categorical ids, 0 = unknown.

    Args:
        user_features: None (all unknown); a mapping {name: one id per user} (None = unknown, a
            field left out is unknown for every user); or an (n_users, F) array in `names` order.
        names: the F fields the model embeds; cardinalities: their sizes (ids lie in [0, size)).
        n_users: number of histories in the request.
    """
    F = len(names)
    out = np.zeros((n_users, F), np.int64)
    if user_features is None:
        return out
    if isinstance(user_features, Mapping):
        extra = sorted(set(user_features) - set(names))
        if extra:
            raise RequestError(f"user_features {extra} are not fields this model embeds "
                               f"({list(names) or 'none'})")
        for f, name in enumerate(names):
            values = user_features.get(name)
            if values is None:
                continue
            if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (Sequence, np.ndarray)) \
                    or len(values) != n_users:
                raise RequestError(f"user_features[{name!r}] must be a list with one id per history "
                                   f"({n_users}), got {values!r}")
            for u, value in enumerate(values):
                if value is None:
                    continue
                if not is_int(value) or not 0 <= value < cardinalities[f]:
                    raise RequestError(f"user_features[{name!r}][{u}] must be an integer id in "
                                       f"[0, {cardinalities[f]}) (0 = unknown), got {value!r}")
                out[u, f] = int(value)
        return out
    array = np.asarray(user_features)
    if array.shape != (n_users, F) or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise RequestError(f"user_features must be a {{name: ids}} mapping or an integer array of shape "
                           f"({n_users}, {F}); got shape {array.shape}, dtype {array.dtype}")
    for f in range(F):
        bad = (array[:, f] < 0) | (array[:, f] >= cardinalities[f])
        if bad.any():
            raise RequestError(f"user_features column {f} ({names[f]!r}) must hold ids in [0, {cardinalities[f]}), "
                               f"got {array[bad.argmax(), f]}")
    return array.astype(np.int64)


def side_rows(histories: Sequence[Sequence[Any]], buckets, side: Any) -> list[np.ndarray] | None:
    """Raw per-action side values -> per history, (len, S) bucket ids (`buckets`: the model's
    SideFeatureBuckets, None when it embeds none); None when the model has none or none were given."""
    if side is not None and not isinstance(side, dict):
        raise RequestError(f"side must map feature names to lists of values per history, got "
                           f"{type(side).__name__}")
    if buckets is None:
        if side:
            raise RequestError(f"this model was trained without side features; got {sorted(side)}")
        return None
    if side is None:
        warnings.warn(f"the model was trained with side features {buckets.names}; without them every action "
                      f"uses the 'missing' bucket and retrieval may be less accurate", stacklevel=4)
        return None
    missing = [name for name in buckets.names if name not in side]
    extra = sorted(set(side) - set(buckets.names))
    if missing or extra:
        raise RequestError(f"side must map exactly the model's features {buckets.names}; "
                           f"missing {missing}, unexpected {extra} (use None values for unknown entries)")
    rows = []
    for u, history in enumerate(histories):
        columns = []
        for f, name in enumerate(buckets.names):
            values = side[name][u] if isinstance(side[name], (list, tuple)) and u < len(side[name]) else None
            if not isinstance(values, (list, tuple)) or len(values) != len(history):
                got = len(values) if isinstance(values, (list, tuple)) else "no"
                raise RequestError(f"side[{name!r}][{u}] has {got} values but history {u} has "
                                   f"{len(history)} items; give one value per item (None = missing)")
            if not all(v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool))
                       for v in values):
                raise RequestError(f"side[{name!r}][{u}] must hold numbers or None, got {list(values)}")
            columns.append(buckets.bucketise(f, list(values)))
        rows.append(np.stack(columns, 1) if columns else np.zeros((len(history), 0), np.int64))
    return rows
