"""LightningDataModule for the embedding families (KuaiFormer, SASRec): windows of positive histories.

Training targets (data.targets):
  * "every_position" (SASRec): one row per user, the last max_len + 1 training positives; every
    position predicts the next item, so a forward pass trains ~max_len targets per user.
  * "cut_points" (KuaiFormer): the query tokens only predict the item after the whole input, so
    each epoch draws `cuts_per_user` cut points per user (the latest one always included with
    `include_last_cut`); a cut t gives the example (last max_len positives before t -> item t).
    This is the offline analogue of the paper's streaming samples (one request = one sequence and
    its next item) and keeps every example's compression layout anchored at its own cut. Cuts of
    one user cannot share a forward pass: which items are grouped and which stay raw depends on
    the cut.

Histories are right-aligned (the newest item last) and left-padded with -1, KuaiFormer's layout
(its compression groups count from the oldest end of a full window).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from genret.data.side_features import SideFeatureBuckets
from genret.training.loaders import IndexDataset, LengthBucketBatches

log = logging.getLogger(__name__)

MISSING_FEATURE_RULES = ("error", "skip")

TARGET_MODES = ("every_position", "cut_points")


# ------------------------------------------------------------------------------------------ data
def gather_windows(offsets: np.ndarray, values: np.ndarray, users: np.ndarray, ends: np.ndarray,
                   length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned windows of a CSR table: the `length` entries of user u before position `end`.

    Args:
        offsets: (n_users + 1,) int64 CSR offsets. values: (n,) or (n, S) entries.
        users: (B,) int64. ends: (B,) int64 exclusive end inside each user's run (0 = empty window).
        length: window length. pad: fill value of missing entries.

    Returns:
        windows (B, length) or (B, length, S), and valid (B, length) bool; the last column is the
        entry just before `end`.
    """
    start = offsets[users]
    stop = start + ends
    idx = stop[:, None] - length + np.arange(length)[None, :]
    valid = idx >= start[:, None]
    if len(values) == 0:
        return np.full((len(users), length) + values.shape[1:], pad, dtype=values.dtype), valid
    windows = values[np.clip(idx, 0, len(values) - 1)]
    mask = valid if values.ndim == 1 else valid[..., None]
    return np.where(mask, windows, pad), valid


def _trim(valid: np.ndarray) -> int:
    """Columns needed to hold every row's valid (right-aligned) entries."""
    return max(int(valid.sum(1).max(initial=0)), 1)


def item_feature_table(array: np.ndarray, name: str) -> np.ndarray:
    """A per-item feature as an id list per item, (n_items, W) int64, 0 = none.

    Accepts categorical ids (n_items,) (0 = unknown), id lists (n_items, W) padded with 0, or a
    multi-hot (n_items, F) 0/1 matrix (column j -> id j + 1).
    """
    array = np.asarray(array)
    if array.dtype.kind not in "iub":
        raise ValueError(f"item feature {name!r} has dtype {array.dtype}; only integer ids are supported")
    if array.ndim == 1:
        table = array[:, None].astype(np.int64)
    elif array.ndim == 2 and (array.dtype.kind == "b" or array.dtype.itemsize == 1) and set(np.unique(array)) <= {0, 1}:
        hot = array.astype(bool)
        width = max(int(hot.sum(1).max(initial=0)), 1)
        rank = np.cumsum(hot, axis=1) - 1  # slot of each set column inside its row
        table = np.zeros((len(array), width), np.int64)
        rows, cols = np.nonzero(hot)
        table[rows, rank[rows, cols]] = cols + 1
    elif array.ndim == 2:
        table = array.astype(np.int64)
    else:
        raise ValueError(f"item feature {name!r} must be 1-D or 2-D, got shape {array.shape}")
    if table.size and table.min() < 0:
        raise ValueError(f"item feature {name!r} holds negative ids; ids must be >= 0 (0 = unknown)")
    return table


class KuaiFormerDataModule(pl.LightningDataModule):
    """Loads a data set, splits it leave-one-out and serves batches of positive histories.

    Args:
        data: a data folder, table, or "synthetic[:<users>x<items>]" (genret.data.load_dataset).
        load_kwargs: extra arguments for the loader, e.g. {"low_ratings_as_negatives": false} for
            the published ML-1M protocol (every rating a positive).
        max_len: history window in items (the model's max_len).
        targets: "every_position" (SASRec) or "cut_points" (KuaiFormer); see the module docstring.
        cuts_per_user: cut points drawn per user per epoch ("cut_points").
        include_last_cut: the latest cut (the whole training sequence) is always one of them.
        batch_size: users per training batch (each gives cuts_per_user examples with cut points).
        eval_batch_size: evaluation histories per batch.
        item_features: names in `log.item_features` fed to the item MLP (e.g. ["genre"]).
        missing_item_features: what a name in `item_features` that the data set lacks does: "error"
            (stop, naming it) or "skip" (train without it, with a warning; `item_features` then
            lists the ones used, `skipped_item_features` the others). A family's recipe skips, so it
            runs unchanged on a copy without the optional file (an Amazon category with
            sequential.txt alone trains on item ids).
        side_features: names in `log.side` (per-row floats, e.g. ["rating"]), quantile-bucketised.
        side_buckets: buckets per side feature (bucket 0 = missing).
        num_workers: DataLoader workers.
        seed: seed of the cut-point sampler.
    """

    def __init__(self, data: str = "synthetic", load_kwargs: dict[str, Any] | None = None, max_len: int = 256,
                 targets: str = "cut_points", cuts_per_user: int = 8, include_last_cut: bool = True,
                 batch_size: int = 128, eval_batch_size: int = 512, item_features: list[str] | None = None,
                 side_features: list[str] | None = None, side_buckets: int = 16, num_workers: int = 0,
                 seed: int = 0, missing_item_features: str = "error"):
        super().__init__()
        self.data = data
        self.load_kwargs = dict(load_kwargs or {})
        self.max_len = max_len
        self.targets = targets
        self.cuts_per_user = cuts_per_user
        self.include_last_cut = include_last_cut
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        if missing_item_features not in MISSING_FEATURE_RULES:
            raise ValueError(f"data.missing_item_features must be one of {MISSING_FEATURE_RULES}, "
                             f"got {missing_item_features!r}")
        self.item_features = list(item_features or [])
        self.missing_item_features = missing_item_features
        self.skipped_item_features: list[str] = []
        self.side_features = list(side_features or [])
        self.side_buckets = side_buckets
        self.num_workers = num_workers
        self.seed = seed
        self._ready = False

    def _check(self) -> None:
        if self.targets not in TARGET_MODES:
            raise ValueError(f"data.targets must be one of {TARGET_MODES}, got {self.targets!r}")
        for name, value in (("max_len", self.max_len), ("cuts_per_user", self.cuts_per_user),
                            ("batch_size", self.batch_size), ("eval_batch_size", self.eval_batch_size),
                            ("side_buckets", self.side_buckets)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        from genret.data import leave_one_out, load_dataset

        self._check()
        self.log_all = load_dataset(self.data, **self.load_kwargs)
        self.split = leave_one_out(self.log_all)
        self.train_log = self.split.train
        self.n_items = self.log_all.n_items
        self._setup_features()
        # Training positives (CSR per user) and the full log's positives (for evaluation histories).
        self.train_offsets, self.train_items, self.train_side = self._positives(self.train_log)
        self.full_offsets, self.full_items, self.full_side = self._positives(self.log_all)
        lengths = np.diff(self.train_offsets)
        self.train_users = np.flatnonzero(lengths >= 2)  # a user needs a history and a target
        if not len(self.train_users):
            raise ValueError(f"{self.log_all.name}: no user has 2 training positives; nothing to train on")
        counts = np.bincount(self.train_items, minlength=self.n_items).astype(np.float64) + 1.0
        self.item_log_prob = np.log(counts / counts.sum()).astype(np.float32)  # p(item) for log Q
        self.eval_sets = {stage: self.split.eval_set(stage) for stage in ("valid", "test")}
        for stage, es in self.eval_sets.items():
            self._check_eval_histories(es, stage)
        self._rng = np.random.default_rng(self.seed)
        self._ready = True
        log.info("data %s: %s; %d training users", self.log_all.name, self.log_all.summary(), len(self.train_users))

    def _setup_features(self) -> None:
        log_ = self.log_all
        self.item_feature_tables = []
        missing = [name for name in self.item_features if name not in log_.item_features]
        if missing:
            found = sorted(log_.item_features) or "none"
            if self.missing_item_features == "error":
                raise ValueError(f"item feature(s) {missing} not in {log_.name}; it has {found} (drop them from "
                                 "data.item_features, or set data.missing_item_features: skip to train without them)")
            warnings.warn(f"item feature(s) {missing} not in {log_.name} (it has {found}): trained without them "
                          "(data.missing_item_features: skip)", stacklevel=2)
            self.skipped_item_features = missing
            self.item_features = [name for name in self.item_features if name not in missing]
        for name in self.item_features:
            self.item_feature_tables.append(item_feature_table(log_.item_features[name], name))
        self.item_feature_cardinalities = [int(t.max(initial=0)) + 1 for t in self.item_feature_tables]
        # Quantile buckets fitted on the training positives (shared with DualGR's data module).
        self.side = SideFeatureBuckets.fit(self.train_log, self.side_features, self.side_buckets)
        self.side_boundaries = self.side.boundaries
        self.side_cardinalities = [len(b) + 2 for b in self.side_boundaries]  # 0 = missing, 1..len+1

    def _positives(self, log_) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        positive = log_.label == 1
        offsets = np.zeros(log_.n_users + 1, np.int64)
        np.cumsum(np.bincount(log_.user[positive], minlength=log_.n_users), out=offsets[1:])
        return offsets, log_.item[positive], self.side.transform(log_)[positive]

    def _check_eval_histories(self, es, stage: str) -> None:
        # Evaluation windows are cut from the full log's positives; they must be the EvalSet's histories.
        lengths = es.history_lengths()
        owner = np.repeat(np.arange(len(es)), lengths)
        rank = np.arange(len(es.history_items)) - es.history_offsets[owner]
        if not np.array_equal(self.full_items[self.full_offsets[es.users][owner] + rank], es.history_items):
            raise RuntimeError(f"{stage} histories do not match the log's positives; the split and the log disagree")

    # ------------------------------------------------------------------------------- batches
    def _batch(self, users: np.ndarray, ends: np.ndarray, offsets, items, side,
               targets=None) -> dict[str, torch.Tensor]:
        window, valid = gather_windows(offsets, items, users, ends, self.max_len, -1)
        side_window, _ = gather_windows(offsets, side, users, ends, self.max_len, 0)
        T = _trim(valid)
        batch = {"items": torch.from_numpy(window[:, -T:]), "side": torch.from_numpy(side_window[:, -T:])}
        if targets is not None:
            batch["targets"] = torch.from_numpy(targets)
        return batch

    def train_batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Training batch for `self.train_users[rows]`.

        Returns:
            every_position: items (B, T), side (B, T, S), targets (B, T) (-1 = no target).
            cut_points: items (B*C, T), side (B*C, T, S), targets (B*C,).
        """
        users = self.train_users[rows]
        lengths = np.diff(self.train_offsets)[users]
        if self.targets == "every_position":
            window, valid = gather_windows(self.train_offsets, self.train_items, users, lengths, self.max_len + 1, -1)
            side, _ = gather_windows(self.train_offsets, self.train_side, users, lengths, self.max_len + 1, 0)
            T = min(_trim(valid), self.max_len + 1)
            inputs = window[:, -T:-1] if T > 1 else window[:, :0]
            targets = np.where(inputs >= 0, window[:, -T + 1:], -1)
            return {"items": torch.from_numpy(inputs), "side": torch.from_numpy(side[:, -T:-1]),
                    "targets": torch.from_numpy(targets)}
        C = self.cuts_per_user
        cuts = self._rng.integers(1, lengths[:, None], size=(len(users), C))  # target index; history = before it
        if self.include_last_cut:
            cuts[:, 0] = lengths - 1
        users_rep = np.repeat(users, C)
        cuts = cuts.reshape(-1)
        targets = self.train_items[self.train_offsets[users_rep] + cuts]
        return self._batch(users_rep, cuts, self.train_offsets, self.train_items, self.train_side, targets)

    def eval_batch(self, stage: str, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Histories of evaluation examples `rows` of `stage`: items (B, T), side (B, T, S), index (B,)."""
        es = self.eval_sets[stage]
        batch = self._batch(es.users[rows], es.history_lengths()[rows], self.full_offsets, self.full_items,
                            self.full_side)
        batch["index"] = torch.from_numpy(np.asarray(rows, np.int64))
        return batch

    def train_dataloader(self) -> DataLoader:
        collate = lambda rows: self.train_batch(np.asarray(rows))  # noqa: E731
        if self.targets == "every_position":  # similar lengths per batch: about half the padding on ML-1M
            lengths = np.minimum(np.diff(self.train_offsets)[self.train_users], self.max_len + 1)
            sampler = LengthBucketBatches(lengths, self.batch_size, seed=int(self._rng.integers(1 << 31)))
            return DataLoader(IndexDataset(len(self.train_users)), batch_sampler=sampler, num_workers=self.num_workers,
                              collate_fn=collate)
        return DataLoader(IndexDataset(len(self.train_users)), batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers, collate_fn=collate)

    def eval_dataloader(self, stage: str) -> DataLoader:
        return DataLoader(IndexDataset(len(self.eval_sets[stage])), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers,
                          collate_fn=lambda rows: self.eval_batch(stage, np.asarray(rows)))

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
