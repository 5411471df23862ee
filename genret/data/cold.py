"""The leave-one-out-cold (LOOC) protocol of retrievalformer.txt (section 4, Table 2).

A seeded sample of users is drawn; their final items form the cold set; every user whose final
item is cold joins the cold users; the cold items and all their interactions leave the log that
anything is fitted on (model, tokenizer, SIDs, feature vocabularies, statistics). Cold users are
evaluated on their final (cold) item with the history that remains (their warm items); the other
users are evaluated leave-one-out on the warm log as usual.

Cold validation (`valid_seed_users`, off by default): the paper's protocol has no cold validation
set, so anything that shapes cold-start quality (how cold items get SIDs, which features) could
only be chosen on the cold test users. A second, nested draw on the log without the test cold items
makes one: its users' final items are the validation cold items, which leave training too, and
their users are evaluated as the cold users are (`ColdSplit.cold_valid`). Choose on it, report the
cold test users once. With it off the split is exactly the one built before it existed.
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
        warm_log: `log` without any row of a cold item, test or validation (same dense ids and
            catalogue).
        warm_split: leave_one_out(warm_log): its `train` is what models are fitted on.
        cold_items: (c,) int64 dense cold items, sorted: every item that never reaches training
            (`test_cold_items` and `valid_cold_items` together).
        cold: EvalSet of the cold users (target = their final item, cold; history = their warm
            positives, i.e. their positives in `warm_log`).
        warm_test: the warm split's test set without the cold users of either kind.
        test_cold_items: (c_t,) int64 the final items of the test draw's users, sorted.
        valid_cold_items: (c_v,) int64 the final items of the validation draw's users (the nested
            draw, `valid_seed_users`), sorted; empty when the draw is off.
        cold_valid: EvalSet (stage "valid") of the validation cold users, laid out as `cold`; empty
            when the draw is off.
        warm_valid: the warm split's validation set without the validation cold users; what
            chooses settings (the epoch) on warm users. With the draw off it is the warm split's
            validation set as it is (test cold users included, as always: their warm validation
            target is a warm item, and nothing of their cold target is in it).
    """

    log: InteractionLog
    warm_log: InteractionLog
    warm_split: LeaveOneOutSplit
    cold_items: np.ndarray
    cold: EvalSet
    warm_test: EvalSet
    test_cold_items: np.ndarray | None = None
    valid_cold_items: np.ndarray | None = None
    cold_valid: EvalSet | None = None
    warm_valid: EvalSet | None = None

    def __post_init__(self) -> None:
        if self.test_cold_items is None:
            self.test_cold_items = self.cold_items
        if self.valid_cold_items is None:
            self.valid_cold_items = np.zeros(0, np.int64)
        if self.warm_valid is None:
            self.warm_valid = self.warm_split.eval_set("valid")

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
        out = {"cold_items": int(len(self.cold_items)), "cold_users": len(self.cold),
               "warm_test_users": len(self.warm_test), "train_rows": int(self.train.n_rows),
               "removed_rows": int(self.log.n_rows - self.warm_log.n_rows)}
        if self.cold_valid is not None:
            out.update(test_cold_items=int(len(self.test_cold_items)),
                       valid_cold_items=int(len(self.valid_cold_items)), cold_valid_users=len(self.cold_valid),
                       warm_valid_users=len(self.warm_valid))
        return out


def leave_one_out_cold(log: InteractionLog, seed_users: int = 500, seed: int = 0,
                       cold_last: bool = False, valid_seed_users: int = 0,
                       valid_seed: int | None = None) -> ColdSplit:
    """Build the LOOC split (see the module docstring), optionally with a cold validation set.

    Cold validation (`valid_seed_users` > 0), a nested LOOC: the test cold set is drawn first,
    exactly as without it. W1 = `log` without the test cold items; `valid_seed_users` users are
    drawn among the users who are not test cold users and have >= MIN_POSITIVES positives in W1;
    their final W1 items are the validation cold items (warm w.r.t. the test draw, so disjoint from
    the test cold items). Validation cold users = the users who are not test cold users, whose final
    W1 positive is a validation cold item, with >= MIN_POSITIVES W1 positives (their final W1
    positive is their final positive). Both kinds of cold items and all their rows leave what is
    fitted: `warm_log` = W1 without the validation cold items, so a choice made on the validation
    cold users faces what the test cold users face: items no model or tokenizer was fitted on.
    Every cold user's history is their positives in `warm_log`: the other kind's cold items are
    dropped from it too, since they are in no model's training either.
    The evaluation sets are disjoint in users where they could otherwise disagree about a
    user's target: `cold`, `cold_valid` and `warm_test` pairwise, and `cold_valid` and
    `warm_valid` (a validation cold user's warm-split targets are other items than their cold
    target). `warm_valid` keeps the test cold users, as the split without the draw does.

    Args:
        log: a validated InteractionLog (positives in time order per user).
        seed_users: users drawn whose final items make the cold set (the paper: 500).
        seed: the draw's seed.
        cold_last: renumber the items so the cold ones (test and validation) come last (warm items
            keep their relative order, and so do the cold ones): a catalogue that grows by appending
            the cold items after training then keeps the log's dense ids. The draws and the sets are
            the same as without it (they depend on users only), in the new numbering; `log` of the
            split is the renumbered log.
        valid_seed_users: users drawn whose final (W1) items make the validation cold set; 0 (the
            default) = no cold validation set, the split exactly as before it existed.
        valid_seed: the validation draw's seed (default: seed + 1).

    Returns:
        ColdSplit; `train` holds no row of any cold item (checked).

    Raises:
        DataError: `seed_users` or `valid_seed_users` larger than the users it can be drawn from.
    """
    positive = log.label == 1
    counts = np.bincount(log.user[positive], minlength=log.n_users)
    eligible = np.flatnonzero(counts >= MIN_POSITIVES)
    if seed_users < 1 or seed_users > len(eligible):
        raise DataError(f"seed_users must lie in 1..{len(eligible)} (users with >= {MIN_POSITIVES} positives), "
                        f"got {seed_users}")
    if valid_seed_users < 0:
        raise DataError(f"valid_seed_users must be >= 0 (0 = no cold validation set), got {valid_seed_users}")
    last_row, final_item = _final_positives(log, positive)
    rng = np.random.default_rng(seed)
    seeds = rng.choice(eligible, size=seed_users, replace=False)
    test_cold_items = np.unique(final_item[seeds])
    is_test_cold = np.zeros(log.n_items, bool)
    is_test_cold[test_cold_items] = True
    # Users only: the same in any item numbering.
    cold_users = np.flatnonzero((final_item >= 0) & is_test_cold[np.maximum(final_item, 0)]
                                & (counts >= MIN_POSITIVES))
    valid_cold_items, valid_users = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if valid_seed_users:
        # W1 = the log without the test cold items; its final positives are what the validation draw sees.
        w1_positive = positive & ~is_test_cold[log.item]
        w1_counts = np.bincount(log.user[w1_positive], minlength=log.n_users)
        w1_last_row, w1_final = _final_positives(log, w1_positive)
        is_test_user = np.zeros(log.n_users, bool)
        is_test_user[cold_users] = True
        v_eligible = np.flatnonzero((w1_counts >= MIN_POSITIVES) & ~is_test_user)
        if valid_seed_users > len(v_eligible):
            raise DataError(
                f"valid_seed_users must lie in 0..{len(v_eligible)} (users who are not test cold users and keep "
                f">= {MIN_POSITIVES} positives without the test cold items), got {valid_seed_users}: lower "
                f"data.cold_valid_users (or data.cold_seed_users)")
        v_rng = np.random.default_rng(seed + 1 if valid_seed is None else valid_seed)
        v_seeds = v_rng.choice(v_eligible, size=valid_seed_users, replace=False)
        valid_cold_items = np.unique(w1_final[v_seeds])
        is_valid_cold = np.zeros(log.n_items, bool)
        is_valid_cold[valid_cold_items] = True
        valid_users = np.flatnonzero(~is_test_user & (w1_final >= 0) & is_valid_cold[np.maximum(w1_final, 0)]
                                     & (w1_counts >= MIN_POSITIVES))
        # A user who is not a test cold user and keeps >= MIN_POSITIVES W1 positives has a final
        # positive that is not test cold: their final W1 positive is their final positive.
        if not np.array_equal(w1_last_row[valid_users], last_row[valid_users]):
            raise RuntimeError("LOOC: a validation cold user's target is not their final positive")
    cold_items = np.union1d(test_cold_items, valid_cold_items).astype(np.int64)
    if cold_last:
        is_cold = np.zeros(log.n_items, bool)
        is_cold[cold_items] = True
        order = np.concatenate([np.flatnonzero(~is_cold), cold_items])
        new_id = np.empty(log.n_items, np.int64)
        new_id[order] = np.arange(log.n_items)
        log = _renumber_items(log, order)
        final_item = np.where(final_item >= 0, new_id[np.maximum(final_item, 0)], -1)
        # new_id is increasing on the (sorted) cold items: both kinds stay sorted.
        test_cold_items, valid_cold_items = new_id[test_cold_items], new_id[valid_cold_items]
        cold_items = np.arange(log.n_items - len(cold_items), log.n_items)
    is_cold_item = np.zeros(log.n_items, bool)
    is_cold_item[cold_items] = True
    warm_log = log.subset(~is_cold_item[log.item])
    warm_split = leave_one_out(warm_log)
    if np.isin(warm_split.train.item, cold_items).any():  # by construction; a guard against regressions
        raise RuntimeError("LOOC: a cold item leaked into training")
    cold = _cold_eval_set(warm_log, cold_users, final_item[cold_users], last_row[cold_users], "test")
    test = warm_split.eval_set("test")
    warm_test = test.subset(np.flatnonzero(~np.isin(test.users, np.concatenate([cold_users, valid_users]))))
    if not valid_seed_users:
        return ColdSplit(log=log, warm_log=warm_log, warm_split=warm_split, cold_items=cold_items, cold=cold,
                         warm_test=warm_test)
    cold_valid = _cold_eval_set(warm_log, valid_users, final_item[valid_users], last_row[valid_users], "valid")
    # Neither kind is in training: checked above (cold_items holds both). The kinds are disjoint by construction.
    if np.intersect1d(valid_cold_items, test_cold_items).size:
        raise RuntimeError("LOOC: the validation and test cold item sets overlap")
    valid = warm_split.eval_set("valid")
    warm_valid = valid.subset(np.flatnonzero(~np.isin(valid.users, valid_users)))
    return ColdSplit(log=log, warm_log=warm_log, warm_split=warm_split, cold_items=cold_items, cold=cold,
                     warm_test=warm_test, test_cold_items=test_cold_items, valid_cold_items=valid_cold_items,
                     cold_valid=cold_valid, warm_valid=warm_valid)


def _final_positives(log: InteractionLog, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the row of their last row where `positive` holds and its item: (n_users,) int64
    each, -1 for a user with none."""
    pos_rows = np.flatnonzero(positive)
    last_row = np.full(log.n_users, -1, np.int64)
    last_row[log.user[pos_rows]] = pos_rows  # rows are in order, so the last write is the final positive
    final_item = np.where(last_row >= 0, log.item[np.maximum(last_row, 0)], -1)
    return last_row, final_item


def _cold_eval_set(warm_log: InteractionLog, users: np.ndarray, targets: np.ndarray, target_rows: np.ndarray,
                   stage: str) -> EvalSet:
    """Cold users' EvalSet: history = their positives in `warm_log` (every one precedes the final
    item); `history_rows` index `warm_log` (the catalogue models are fitted on), `target_rows` the
    full log (the target is in no warm row)."""
    wpos = warm_log.label == 1
    w_counts = np.bincount(warm_log.user[wpos], minlength=warm_log.n_users)
    w_offsets = np.concatenate([[0], np.cumsum(w_counts)])
    w_items = warm_log.item[wpos]
    w_rows = np.flatnonzero(wpos)
    lengths = w_counts[users]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    take = np.concatenate([np.arange(w_offsets[u], w_offsets[u + 1]) for u in users]) if len(users) \
        else np.zeros(0, np.int64)
    empty = np.zeros(len(users) + 1, np.int64)
    return EvalSet(users=users.astype(np.int64), history_offsets=offsets,
                   history_items=w_items[take].astype(np.int64), history_negatives_offsets=empty,
                   history_negatives=np.zeros(0, np.int64), targets=targets.astype(np.int64),
                   stage=stage, target_rows=target_rows, history_rows=w_rows[take].astype(np.int64))


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
