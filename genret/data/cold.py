"""The leave-one-out-cold (LOOC) protocol of retrievalformer.txt (section 4, Table 2).

A seeded sample of users is drawn; their final items form the cold set; every user whose final
item is cold joins the cold users; the cold items and all their interactions leave the log that
anything is fitted on (model, tokenizer, SIDs, feature vocabularies, statistics). Cold users are
evaluated on their final (cold) item with the history that remains (their warm items); the other
users are evaluated leave-one-out on the warm log as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from genret.data.interactions import DataError, InteractionLog
from genret.data.split import MIN_POSITIVES, EvalSet, LeaveOneOutSplit, leave_one_out

PROTOCOLS = ("loo", "looc")  # data.protocol of every family's data module that supports cold start


@dataclass(eq=False)
class ColdSplit:
    """A LOOC split.

    Attributes:
        log: the full log (cold rows included; never fit on it).
        warm_log: `log` without any row of a cold item (same dense ids and catalogue).
        warm_split: leave_one_out(warm_log): its `train` is what models are fitted on; its "valid"
            set chooses settings.
        cold_items: (c,) int64 dense cold items, sorted.
        cold: EvalSet of the cold users (target = their final item, cold; history = their warm positives).
        warm_test: the warm split's test set without the cold users.
    """

    log: InteractionLog
    warm_log: InteractionLog
    warm_split: LeaveOneOutSplit
    cold_items: np.ndarray
    cold: EvalSet
    warm_test: EvalSet

    @property
    def train(self) -> InteractionLog:
        return self.warm_split.train

    def warm_catalogue(self) -> InteractionLog:
        """`warm_log` with the cold items cut from the catalogue (items 0..n_warm-1 only), for models
        whose catalogue is built from warm items and grows by the cold ones after training
        (DualGR's SID index). Needs a split built with `cold_last=True`."""
        n_warm = self.log.n_items - len(self.cold_items)
        if not np.array_equal(self.cold_items, np.arange(n_warm, self.log.n_items)):
            raise ValueError("warm_catalogue needs the cold items numbered last: build the split with cold_last=True")
        return _renumber_items(self.warm_log, np.arange(n_warm))

    def summary(self) -> dict[str, int]:
        return {"cold_items": int(len(self.cold_items)), "cold_users": len(self.cold),
                "warm_test_users": len(self.warm_test), "train_rows": int(self.train.n_rows),
                "removed_rows": int(self.log.n_rows - self.warm_log.n_rows)}


def leave_one_out_cold(log: InteractionLog, seed_users: int = 500, seed: int = 0,
                       cold_last: bool = False) -> ColdSplit:
    """Build the LOOC split (see the module docstring).

    Args:
        log: a validated InteractionLog (positives in time order per user).
        seed_users: users drawn whose final items make the cold set (the paper: 500).
        seed: the draw's seed.
        cold_last: renumber the items so the cold ones come last (warm items keep their relative
            order): a catalogue that grows by appending the cold items after training then keeps
            the log's dense ids. The draw and the sets are the same as without it (it depends on
            users only), in the new numbering; `log` of the split is the renumbered log.

    Returns:
        ColdSplit; `train` holds no row of any cold item (checked).
    """
    positive = log.label == 1
    counts = np.bincount(log.user[positive], minlength=log.n_users)
    eligible = np.flatnonzero(counts >= MIN_POSITIVES)
    if seed_users < 1 or seed_users > len(eligible):
        raise DataError(f"seed_users must lie in 1..{len(eligible)} (users with >= {MIN_POSITIVES} positives), "
                        f"got {seed_users}")
    pos_rows = np.flatnonzero(positive)
    last_row = np.full(log.n_users, -1, np.int64)
    last_row[log.user[pos_rows]] = pos_rows  # rows are in order, so the last write is the final positive
    final_item = np.where(last_row >= 0, log.item[np.maximum(last_row, 0)], -1)
    rng = np.random.default_rng(seed)
    seeds = rng.choice(eligible, size=seed_users, replace=False)
    cold_items = np.unique(final_item[seeds])
    if cold_last:
        is_cold = np.zeros(log.n_items, bool)
        is_cold[cold_items] = True
        order = np.concatenate([np.flatnonzero(~is_cold), cold_items])
        new_id = np.empty(log.n_items, np.int64)
        new_id[order] = np.arange(log.n_items)
        log = _renumber_items(log, order)
        final_item = np.where(final_item >= 0, new_id[np.maximum(final_item, 0)], -1)
        cold_items = np.arange(log.n_items - len(cold_items), log.n_items)
    is_cold_item = np.zeros(log.n_items, bool)
    is_cold_item[cold_items] = True
    cold_users = np.flatnonzero((final_item >= 0) & is_cold_item[np.maximum(final_item, 0)]
                                & (counts >= MIN_POSITIVES))
    warm_log = log.subset(~is_cold_item[log.item])
    warm_split = leave_one_out(warm_log)
    if np.isin(warm_split.train.item, cold_items).any():  # by construction; a guard against regressions
        raise RuntimeError("LOOC: a cold item leaked into training")
    # Cold users: history = their positives in the warm log (every warm positive precedes the final item).
    wpos = warm_log.label == 1
    w_counts = np.bincount(warm_log.user[wpos], minlength=log.n_users)
    w_offsets = np.concatenate([[0], np.cumsum(w_counts)])
    w_items = warm_log.item[wpos]
    w_rows = np.flatnonzero(wpos)
    lengths = w_counts[cold_users]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    take = np.concatenate([np.arange(w_offsets[u], w_offsets[u + 1]) for u in cold_users]) if len(cold_users) \
        else np.zeros(0, np.int64)
    empty = np.zeros(len(cold_users) + 1, np.int64)
    cold = EvalSet(users=cold_users.astype(np.int64), history_offsets=offsets,
                   history_items=w_items[take].astype(np.int64), history_negatives_offsets=empty,
                   history_negatives=np.zeros(0, np.int64), targets=final_item[cold_users].astype(np.int64),
                   stage="test", target_rows=last_row[cold_users], history_rows=w_rows[take].astype(np.int64))
    test = warm_split.eval_set("test")
    warm_test = test.subset(np.flatnonzero(~np.isin(test.users, cold_users)))
    return ColdSplit(log=log, warm_log=warm_log, warm_split=warm_split, cold_items=cold_items, cold=cold,
                     warm_test=warm_test)


def _renumber_items(log: InteractionLog, order: np.ndarray) -> InteractionLog:
    """`log` with new dense item i = old item order[i]; items not in `order` leave the catalogue
    (no row may reference them). Per-item tables (ids, titles, features, embeddings, the synthetic
    truth's "item_" arrays) follow."""
    order = np.asarray(order, np.int64)
    new_id = np.full(log.n_items, -1, np.int64)
    new_id[order] = np.arange(len(order))
    item = new_id[log.item]
    if (item < 0).any():
        raise ValueError("renumbering would drop items that rows still reference")
    values = {f.name: getattr(log, f.name) for f in fields(log)}
    truth = None if log.truth is None else {
        k: (np.asarray(v)[order] if k.startswith("item_") else v) for k, v in log.truth.items()}
    values.update(item=item, item_ids=log.item_ids[order],
                  item_titles=None if log.item_titles is None else [log.item_titles[i] for i in order],
                  item_features={k: np.asarray(v)[order] for k, v in log.item_features.items()},
                  item_embeddings=None if log.item_embeddings is None else log.item_embeddings[order],
                  truth=truth, skipped=dict(log.skipped))
    return InteractionLog(**values)
