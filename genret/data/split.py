"""Leave-one-out splits: per user, the last positive is the test target and the one before it the validation target."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from genret.data.interactions import DataError, InteractionLog

MIN_POSITIVES = 3  # one to train on, one to validate, one to test


@dataclass(eq=False)
class EvalSet:
    """Evaluation examples in CSR layout: example i is user `users[i]` predicting `targets[i]`.

    Attributes:
        users: (m,) int64 dense users, increasing.
        history_offsets: (m + 1,) int64; example i's positives are history_items[offsets[i]:offsets[i + 1]].
        history_items: int64 positive items before the target, oldest first (for "test" this
            includes the validation target).
        history_negatives_offsets: (m + 1,) int64, same layout for label-0 rows.
        history_negatives: int64 label-0 items before the target, oldest first (may be empty).
        targets: (m,) int64 target items.
        stage: "valid" or "test".
        target_rows: (m,) int64 row of each target in the full log.
        history_rows: int64 row in the full log of each entry of history_items (for per-action
            side features).
    """

    users: np.ndarray
    history_offsets: np.ndarray
    history_items: np.ndarray
    history_negatives_offsets: np.ndarray
    history_negatives: np.ndarray
    targets: np.ndarray
    stage: str = "test"
    target_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    history_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(len(self.users))

    def history(self, i: int) -> np.ndarray:
        """Positive history of example i, oldest first: (length,) int64."""
        return self.history_items[self.history_offsets[i]:self.history_offsets[i + 1]]

    def negatives(self, i: int) -> np.ndarray:
        """Label-0 history of example i, oldest first: (length,) int64."""
        return self.history_negatives[self.history_negatives_offsets[i]:self.history_negatives_offsets[i + 1]]

    def history_lengths(self) -> np.ndarray:
        """(m,) int64 positive-history length of each example."""
        return np.diff(self.history_offsets)

    def subset(self, indices: np.ndarray) -> "EvalSet":
        """The examples at `indices` (any order; kept in increasing order, without repeats)."""
        idx = np.unique(np.asarray(indices, dtype=np.int64))
        if len(idx) and (idx[0] < 0 or idx[-1] >= len(self)):
            raise IndexError(f"subset indices must lie in [0, {len(self)}), got {idx[0]}..{idx[-1]}")

        def gather(offsets: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            lengths = np.diff(offsets)[idx]
            new_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum(lengths, out=new_offsets[1:])
            # Position of every kept entry in the old flat array: its run start + its place in the run.
            starts = np.repeat(offsets[idx] - new_offsets[:-1], lengths)
            return new_offsets, values[starts + np.arange(new_offsets[-1])]

        history_offsets, history_items = gather(self.history_offsets, self.history_items)
        history_rows = gather(self.history_offsets, self.history_rows)[1] if len(self.history_rows) \
            else self.history_rows
        neg_offsets, negatives = gather(self.history_negatives_offsets, self.history_negatives)
        return EvalSet(users=self.users[idx], history_offsets=history_offsets, history_items=history_items,
                       history_negatives_offsets=neg_offsets, history_negatives=negatives,
                       targets=self.targets[idx], stage=self.stage,
                       target_rows=self.target_rows[idx] if len(self.target_rows) else self.target_rows,
                       history_rows=history_rows)


@dataclass(eq=False)
class LeaveOneOutSplit:
    """A leave-one-out split of `log`.

    Attributes:
        log: the full log.
        train: per evaluated user, every row strictly before the second-to-last positive (negatives
            included); users with fewer than 3 positives keep all their rows.
        valid_rows: (m,) int64 rows of the validation targets (second-to-last positive) in `log`.
        test_rows: (m,) int64 rows of the test targets (last positive) in `log`.
        n_skipped_users: users with fewer than 3 positives (not evaluated).
    """

    log: InteractionLog
    train: InteractionLog
    valid_rows: np.ndarray
    test_rows: np.ndarray
    n_skipped_users: int
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def users(self) -> np.ndarray:
        """(m,) int64 evaluated users."""
        return self.log.user[self.test_rows]

    def eval_set(self, stage: str) -> EvalSet:
        """Examples for `stage` ("valid" or "test"); built once, vectorised."""
        if stage not in ("valid", "test"):
            raise DataError(f"stage must be 'valid' or 'test', got {stage!r}")
        if stage not in self._cache:
            rows = self.valid_rows if stage == "valid" else self.test_rows
            self._cache[stage] = _build_eval_set(self.log, rows, stage)
        return self._cache[stage]


def leave_one_out(log: InteractionLog) -> LeaveOneOutSplit:
    """Split `log` leave-one-out by positives, in row order (time order inside a user).

    Per user with >= 3 positives: test target = last positive, validation target = second-to-last
    positive, train = every row strictly before the validation target (label-0 rows included).
    Users with fewer positives keep all rows in train, are not evaluated and are counted in
    `n_skipped_users`. Rows with equal times count in their row order.

    Args:
        log: a validated InteractionLog.

    Returns:
        LeaveOneOutSplit.
    """
    user = log.user
    is_positive = log.label == 1
    positives_per_user = np.bincount(user[is_positive], minlength=log.n_users)
    evaluated = positives_per_user >= MIN_POSITIVES
    # Index of each positive counted from the user's last positive (0 = last).
    first_positive = np.concatenate([[0], np.cumsum(positives_per_user)[:-1]])
    rank = np.cumsum(is_positive) - 1 - first_positive[user]
    from_end = positives_per_user[user] - 1 - rank
    candidate = is_positive & evaluated[user]
    test_rows = np.flatnonzero(candidate & (from_end == 0)).astype(np.int64)
    valid_rows = np.flatnonzero(candidate & (from_end == 1)).astype(np.int64)
    cut = np.full(log.n_users, np.iinfo(np.int64).max, dtype=np.int64)
    cut[user[valid_rows]] = valid_rows
    train = log.subset(np.arange(log.n_rows) < cut[user])
    return LeaveOneOutSplit(
        log=log, train=train, valid_rows=valid_rows, test_rows=test_rows,
        n_skipped_users=int(np.count_nonzero(~evaluated)),
    )


def _build_eval_set(log: InteractionLog, target_rows: np.ndarray, stage: str) -> EvalSet:
    users = log.user[target_rows]
    cut = np.full(log.n_users, -1, dtype=np.int64)
    cut[users] = target_rows
    before = np.arange(log.n_rows) < cut[log.user]

    def csr(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.bincount(log.user[mask], minlength=log.n_users)[users]
        offsets = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return offsets, log.item[mask]  # rows are grouped by user, so the concatenation lines up

    history_mask = before & (log.label == 1)
    history_offsets, history_items = csr(history_mask)
    negative_offsets, negatives = csr(before & (log.label == 0))
    return EvalSet(
        users=users, history_offsets=history_offsets, history_items=history_items,
        history_negatives_offsets=negative_offsets, history_negatives=negatives,
        targets=log.item[target_rows], stage=stage, target_rows=target_rows,
        history_rows=np.flatnonzero(history_mask).astype(np.int64),
    )
