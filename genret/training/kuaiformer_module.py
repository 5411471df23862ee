"""Training and evaluation of KuaiFormer / SASRec: data module, LightningModule, benchmark, export.

Training targets (data.targets):
  * "every_position" (SASRec): one row per user, the last max_len + 1 training positives; every
    position predicts the next item, so a forward pass trains ~max_len targets per user.
  * "cut_points" (KuaiFormer): the query tokens only predict the item after the whole input, so
    each epoch draws `cuts_per_user` cut points per user (the latest one always included with
    `include_last_cut`); a cut t gives the example (last max_len positives before t -> item t).
    This is the offline analogue of the paper's streaming samples (one request = one sequence and
    its next item) and keeps every example's compression layout anchored at its own cut. Cuts of
    one user cannot share a forward pass: which items are grouped and which stay raw depends on
    the cut. One target per example learns slowly, so `model.position_loss_weight` (not in the
    paper; 0 = off) adds a dense next-item loss on the latest, uncompressed item tokens (each
    predicts the item after it, the last one the example's target). On the synthetic data it
    doubles HR@10 at equal epochs; the shipped KuaiFormer configs turn it on.

Loss (model.loss):
  * "sampled_softmax": eq. 11-12. Candidates are the batch's positives (plus optional shared
    uniform negatives); accidental hits of a row's own positive are dropped; every logit has log Q
    subtracted (Q from training frequencies, `logq_correction`); label smoothing alpha moves
    alpha / |B| to each negative.
  * "full_softmax": softmax over the whole catalogue (no sampling, so no log Q); smoothing spreads
    alpha over the other n_items - 1 items.

Evaluation: leave-one-out, exact top-K over all items by max-over-interests score, history excluded.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from genret.data.side_features import SideFeatureBuckets
from genret.io import ARTIFACT_VERSION, atomic_path
from genret.models.kuaiformer import (
    KuaiFormer,
    KuaiFormerConfig,
    in_batch_candidates,
    max_interest_scores,
    sampling_log_q,
    smoothed_softmax_loss,
)
from genret.training.schedule import warmup_cosine

log = logging.getLogger(__name__)

TARGET_MODES = ("every_position", "cut_points")
LOSSES = ("full_softmax", "sampled_softmax")


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


class LengthBucketBatches(Sampler):
    """Shuffled batches of similar-length sequences, so padding (wasted work) stays small.

    Each epoch: shuffle the rows, cut them into pools of `pool_batches` batches, sort each pool by
    length, cut it into batches and shuffle the batch order.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, pool_batches: int = 32, seed: int = 0):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.pool = batch_size * pool_batches
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start:start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i:i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size)]
        for b in self.rng.permutation(len(batches)):
            yield batches[b]


class _Indices(Dataset):
    """Indices only; the collate function gathers the whole batch with array indexing."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


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
        side_features: names in `log.side` (per-row floats, e.g. ["rating"]), quantile-bucketised.
        side_buckets: buckets per side feature (bucket 0 = missing).
        num_workers: DataLoader workers.
        seed: seed of the cut-point sampler.
    """

    def __init__(self, data: str = "synthetic", load_kwargs: dict[str, Any] | None = None, max_len: int = 256,
                 targets: str = "cut_points", cuts_per_user: int = 8, include_last_cut: bool = True,
                 batch_size: int = 128, eval_batch_size: int = 512, item_features: list[str] | None = None,
                 side_features: list[str] | None = None, side_buckets: int = 16, num_workers: int = 0,
                 seed: int = 0):
        super().__init__()
        self.data = data
        self.load_kwargs = dict(load_kwargs or {})
        self.max_len = max_len
        self.targets = targets
        self.cuts_per_user = cuts_per_user
        self.include_last_cut = include_last_cut
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.item_features = list(item_features or [])
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
        for name in self.item_features:
            if name not in log_.item_features:
                raise ValueError(f"item feature {name!r} is not in {log_.name}; it has "
                                 f"{sorted(log_.item_features) or 'none'}")
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
            return DataLoader(_Indices(len(self.train_users)), batch_sampler=sampler, num_workers=self.num_workers,
                              collate_fn=collate)
        return DataLoader(_Indices(len(self.train_users)), batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers, collate_fn=collate)

    def eval_dataloader(self, stage: str) -> DataLoader:
        return DataLoader(_Indices(len(self.eval_sets[stage])), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers,
                          collate_fn=lambda rows: self.eval_batch(stage, np.asarray(rows)))

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("valid")


# ---------------------------------------------------------------------------------- ranking
def rank_items(user_vectors: torch.Tensor, item_vectors: torch.Tensor, k: int,
               exclude: tuple[np.ndarray, np.ndarray] | None = None, device=None) -> np.ndarray:
    """Exact top-k items by max-over-interests score (eq. 10), over the whole catalogue.

    With one interest this is `genret.eval.exact_topk`. With k_int interests it runs exact_topk per
    interest and merges: an item in the top-k of the max score is in the top-k of the interest that
    attains its max, so the union of per-interest lists holds the exact answer.

    Args:
        user_vectors: (m, k_int, d) float. item_vectors: (n_items, d) float.
        k: list length. exclude: CSR (offsets (m+1,), items) of items to drop per user.

    Returns:
        (m, k) int64 items best first, -1 padded when fewer remain.
    """
    from genret.eval import exact_topk

    m, n_interests, _ = user_vectors.shape
    per_scores, per_items = [], []
    for j in range(n_interests):
        scores, items = exact_topk(user_vectors[:, j], item_vectors, k, exclude=exclude, device=device,
                                   progress=False)
        per_scores.append(scores)
        per_items.append(items)
    if n_interests == 1:
        return per_items[0].numpy()
    scores = torch.cat(per_scores, dim=1)  # (m, k_int * k)
    items = torch.cat(per_items, dim=1)
    order = scores.argsort(dim=1, descending=True, stable=True)
    scores, items = scores.gather(1, order), items.gather(1, order)
    # Keep each item's first (best) occurrence: a stable sort by item id keeps score order inside ties.
    by_item = items.argsort(dim=1, stable=True)
    sorted_items = items.gather(1, by_item)
    repeat = torch.zeros_like(sorted_items, dtype=torch.bool)
    repeat[:, 1:] = sorted_items[:, 1:] == sorted_items[:, :-1]
    duplicate = torch.zeros_like(repeat).scatter(1, by_item, repeat) | (items < 0)
    scores = scores.masked_fill(duplicate, float("-inf"))
    top_scores, pick = scores.topk(k, dim=1)
    out = items.gather(1, pick)
    out[torch.isneginf(top_scores)] = -1
    return out.numpy()


# ------------------------------------------------------------------------------------ module
class KuaiFormerModule(pl.LightningModule):
    """Trains KuaiFormer (or SASRec as its setting) for next-item prediction.

    The catalogue size, window and feature cardinalities come from the data module at
    `configure_model` time. Validation computes full-ranking HR@K / NDCG@K on the validation
    users; the best weights (by `monitor`) are kept in memory and restored at the end of fit, and
    training stops after `patience` validations without improvement.

    Args:
        config: model sizes and switches (KuaiFormerConfig).
        loss: "sampled_softmax" (eq. 11-12) or "full_softmax".
        label_smoothing: alpha of eq. 12.
        logq_correction: subtract log Q from in-batch logits (sampled_softmax only).
        uniform_negatives: shared uniformly drawn negatives added to the in-batch ones.
        temperature: logits are scores / temperature.
        lr, weight_decay: AdamW. warmup_steps: linear warm-up. cosine: cosine decay to 10% after it.
        monitor: validation metric that picks the best weights (e.g. "val/ndcg@10").
        patience: validations without improvement before stopping (None = never stop early).
        eval_ks: cut-offs logged at validation.
        position_loss_weight: weight of an extra dense next-item loss on the latest (uncompressed)
            item tokens with cut points (not in the paper; 0 = off). Each example then trains up to
            latest_items + 1 targets instead of one, which matters when epochs are few (CPU).
        max_in_batch_candidates: with more targets than this in a batch, the in-batch softmax scores
            each row's positive against the positives of this many randomly drawn rows instead of
            all N (an N x N matrix of dense position targets would not fit).
    """

    def __init__(self, config: KuaiFormerConfig | None = None, loss: str = "sampled_softmax",
                 label_smoothing: float = 0.0, logq_correction: bool = True, uniform_negatives: int = 0,
                 temperature: float = 1.0, lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 0,
                 cosine: bool = False, monitor: str = "val/ndcg@10", patience: int | None = None,
                 eval_ks: list[int] | None = None, position_loss_weight: float = 0.0,
                 max_in_batch_candidates: int = 2048):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"model.loss must be one of {LOSSES}, got {loss!r}")
        if loss == "full_softmax" and logq_correction:
            raise ValueError("logq_correction corrects sampled negatives; set logq_correction: false with full_softmax")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.config = config or KuaiFormerConfig()
        self.loss_name = loss
        self.label_smoothing = label_smoothing
        self.logq_correction = logq_correction
        self.uniform_negatives = uniform_negatives
        self.temperature = temperature
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.cosine = cosine
        self.monitor = monitor
        self.patience = patience
        self.eval_ks = sorted(set(eval_ks or [10, 100]))
        self.position_loss_weight = position_loss_weight
        self.max_in_batch_candidates = max_in_batch_candidates
        self.save_hyperparameters({"config": dataclasses.asdict(self.config), "loss": loss,
                                   "label_smoothing": label_smoothing, "logq_correction": logq_correction,
                                   "uniform_negatives": uniform_negatives, "temperature": temperature, "lr": lr,
                                   "weight_decay": weight_decay, "warmup_steps": warmup_steps, "cosine": cosine,
                                   "position_loss_weight": position_loss_weight,
                                   "max_in_batch_candidates": max_in_batch_candidates})
        self.model: KuaiFormer | None = None
        self.catalogue: dict[str, Any] | None = None
        self.best_score: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self._bad_validations = 0
        self._val_vectors: list[torch.Tensor] = []

    # ------------------------------------------------------------------ model from data facts
    def configure_model(self) -> None:
        if self.model is not None:
            return
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            raise RuntimeError("KuaiFormerModule needs a KuaiFormerDataModule to size its model; pass datamodule=")
        dm.setup("fit")
        self.build_from_data(dm)

    def build_from_data(self, dm: KuaiFormerDataModule) -> KuaiFormer:
        """Resolve the config with the data's facts, create the network and copy the feature tables."""
        if dm.targets == "every_position" and (self.config.readout != "last_position" or self.config.compression):
            raise ValueError("data.targets 'every_position' needs model.config.readout 'last_position' and "
                             "compression false (SASRec); use targets 'cut_points' for query tokens")
        self.config = dataclasses.replace(
            self.config, n_items=dm.n_items, max_len=dm.max_len,
            item_feature_widths=[t.shape[1] for t in dm.item_feature_tables],
            item_feature_cardinalities=list(dm.item_feature_cardinalities),
            side_cardinalities=list(dm.side_cardinalities))
        self.model = KuaiFormer(self.config)
        self.model.set_item_features([torch.from_numpy(t) for t in dm.item_feature_tables])
        self.register_buffer("item_log_prob", torch.from_numpy(dm.item_log_prob))
        self.catalogue = {
            "dataset": dm.log_all.name,
            "item_ids": dm.log_all.item_ids.tolist(),
            "item_features": list(dm.item_features),
            "side_features": list(dm.side_features),
            "side_boundaries": [b.tolist() for b in dm.side_boundaries],
        }
        return self.model

    # ------------------------------------------------------------------ loss
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Mean loss over the batch's targets, and the number of targets."""
        targets = batch["targets"]
        if targets.ndim == 2:  # every position predicts the next item
            states = self.model.position_vectors(batch["items"], batch["side"])
            has_target = targets >= 0
            return self.softmax_loss(states[has_target][:, None], targets[has_target]), int(has_target.sum())
        if self.position_loss_weight <= 0:
            return self.softmax_loss(self.model.user_vectors(batch["items"], batch["side"]), targets), len(targets)
        hidden, n_tokens = self.model.encode(batch["items"], batch["side"])
        loss = self.softmax_loss(self.model.interests(hidden, n_tokens), targets)
        states, following = self.model.latest_item_states(hidden, n_tokens, batch["items"], targets)
        return loss + self.position_loss_weight * self.softmax_loss(states, following), len(targets)

    def softmax_loss(self, users: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean full or in-batch (eq. 11-12) softmax loss of interests `users` (N, k, d) for `targets` (N,)."""
        item_table = self.model.item_vectors()
        if self.loss_name == "full_softmax":
            logits = max_interest_scores(users, item_table) / self.temperature
            return smoothed_softmax_loss(logits, targets, None, self.label_smoothing).mean()
        n, n_items = len(targets), self.config.n_items
        if n <= self.max_in_batch_candidates:
            candidates, allowed = in_batch_candidates(targets, n_items, self.uniform_negatives)
            logits = max_interest_scores(users, item_table[candidates]) / self.temperature
            if self.logq_correction:
                logits = logits - sampling_log_q(self.item_log_prob, candidates, n, self.uniform_negatives,
                                                 n_items)[None]
            column = torch.arange(n, device=targets.device)
            return smoothed_softmax_loss(logits, column, allowed, self.label_smoothing).mean()
        # Too many rows for an N x N matrix (dense position targets): every row scores its own
        # positive (column 0) against the positives of R randomly drawn rows (+ uniform draws).
        r = self.max_in_batch_candidates
        shared = targets[torch.randperm(n, device=targets.device)[:r]]
        if self.uniform_negatives > 0:
            shared = torch.cat([shared, torch.randint(0, n_items, (self.uniform_negatives,), device=shared.device)])
        allowed = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=targets.device),
                             shared[None, :] != targets[:, None]], dim=1)
        positive = (users * item_table[targets][:, None]).sum(-1).amax(1, keepdim=True)  # (N, 1)
        logits = torch.cat([positive, max_interest_scores(users, item_table[shared])], dim=1) / self.temperature
        if self.logq_correction:
            log_q = sampling_log_q(self.item_log_prob, torch.cat([targets, shared]), r, self.uniform_negatives,
                                   n_items)
            logits = logits - torch.cat([log_q[:n, None], log_q[None, n:].expand(n, -1)], dim=1)
        column = torch.zeros(n, dtype=torch.long, device=targets.device)
        return smoothed_softmax_loss(logits, column, allowed, self.label_smoothing).mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, n = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/targets", float(n), reduce_fx="sum", batch_size=1)
        return loss

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_vectors = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._val_vectors.append(self.model.user_vectors(batch["items"], batch["side"]).float().cpu())

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val_vectors:
            return
        dm = self.trainer.datamodule
        es = dm.eval_sets["valid"]
        users = torch.cat(self._val_vectors)
        self._val_vectors = []
        if len(users) != len(es):
            return  # a partial validation (limit_val_batches) cannot be ranked against all targets
        from genret.eval import ranking_metrics

        ranked = rank_items(users, self.model.item_vectors().detach().float().cpu(), max(self.eval_ks),
                            exclude=(es.history_offsets, es.history_items), device="cpu")
        metrics = ranking_metrics(ranked, es.targets, self.eval_ks)
        for k in self.eval_ks:
            self.log(f"val/hr@{k}", metrics[f"hr@{k}"], prog_bar=k == 10)
            self.log(f"val/ndcg@{k}", metrics[f"ndcg@{k}"], prog_bar=k == 10)
        score = metrics.get(self.monitor.removeprefix("val/"))
        if score is None:
            raise ValueError(f"monitor {self.monitor!r} is not among the logged metrics; use val/hr@K or val/ndcg@K "
                             f"with K in eval_ks={self.eval_ks}")
        if self.best_score is None or score > self.best_score:
            self.best_score = score
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._bad_validations = 0
        else:
            self._bad_validations += 1
            if self.patience is not None and self._bad_validations >= self.patience:
                log.info("no %s improvement in %d validations; stopping", self.monitor, self.patience)
                self.trainer.should_stop = True
        self.log("val/best", self.best_score)
        log.info("epoch %d: val %s", self.current_epoch,
                 " ".join(f"{name}@{k} {metrics[f'{name}@{k}']:.4f}" for k in self.eval_ks for name in ("hr", "ndcg")))

    def on_fit_end(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "embedding" in name or "norm" in name else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=(0.9, 0.98))
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine(opt, self.warmup_steps, self.trainer.estimated_stepping_batches,
                                              cosine=self.cosine)}

    # ------------------------------------------------------------------ checkpoint contents
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["genret"] = {
            "version": ARTIFACT_VERSION,
            "model": "kuaiformer",
            "config": dataclasses.asdict(self.config),
            "catalogue": self.catalogue,
            "best_score": self.best_score,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = _genret_entry(checkpoint, "checkpoint")
        self.catalogue = extra["catalogue"]
        if self.model is None:
            self.config = KuaiFormerConfig(**extra["config"])
            self.model = KuaiFormer(self.config)
            self.register_buffer("item_log_prob", torch.zeros(self.config.n_items))


def _genret_entry(checkpoint: Any, where: str) -> dict[str, Any]:
    extra = checkpoint.get("genret") if isinstance(checkpoint, dict) else None
    if extra is None or extra.get("model") != "kuaiformer":
        raise RuntimeError(f"{where} was not written by genret's KuaiFormerModule (no kuaiformer 'genret' entry)")
    if extra.get("version") != ARTIFACT_VERSION:
        raise RuntimeError(f"{where} has genret format version {extra.get('version')}; this genret reads "
                           f"version {ARTIFACT_VERSION}; retrain or use the matching release")
    return extra


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model: KuaiFormer, dm: KuaiFormerDataModule, stage: str, ks=(5, 10, 20, 50, 100, 500),
             device=None) -> dict[str, Any]:
    """Leave-one-out full-ranking metrics: exact top-K over all items, history items excluded.

    Args:
        model: a trained KuaiFormer. dm: its data module (set up). stage: "valid" or "test".

    Returns:
        `genret.eval.ranking_metrics` output (hr@K, ndcg@K, recall@K, n_users).
    """
    from tqdm.auto import tqdm

    from genret.eval import ranking_metrics

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    was_training = model.training
    model.eval().to(device)
    es = dm.eval_sets[stage]
    vectors = []
    for batch in tqdm(dm.eval_dataloader(stage), desc=f"user vectors ({stage})", unit="batch", disable=None):
        vectors.append(model.user_vectors(batch["items"].to(device), batch["side"].to(device)).float().cpu())
    ranked = rank_items(torch.cat(vectors), model.item_vectors().float(), max(ks),
                        exclude=(es.history_offsets, es.history_items), device=device)
    model.train(was_training)
    return ranking_metrics(ranked, es.targets, ks)


def build(config: str | Path, out_dir: str | Path, data: str | None = None, overrides: list[str] | None = None):
    """(module, datamodule, trainer) from a YAML through LightningCLI, logging to out_dir/logs (no run).

    `overrides` are LightningCLI arguments, e.g. ["--trainer.max_epochs", "3"].
    """
    from pytorch_lightning.cli import LightningCLI

    out_dir = Path(out_dir)
    args = ["--config", str(config)]
    if data is not None:
        args += ["--data.data", str(data)]
    args += [
        "--trainer.default_root_dir", str(out_dir),
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(out_dir), "--trainer.logger.name", "logs",
        "--trainer.logger.version", "0",
        "--trainer.enable_checkpointing", "false",  # the best weights are kept in memory; one checkpoint at the end
    ]
    args += list(overrides or [])
    cli = LightningCLI(KuaiFormerModule, KuaiFormerDataModule, args=args, run=False,
                       save_config_kwargs={"overwrite": True}, parser_kwargs={"default_env": False})
    return cli.model, cli.datamodule, cli.trainer


def run_embedding_benchmark(config: str, out_dir: Path, data: str | None = None, overrides: list[str] | None = None,
                            ks=(5, 10, 20, 50, 100, 500), model_name: str = "kuaiformer") -> dict[str, Any]:
    """Train KuaiFormer / SASRec from a YAML and evaluate it leave-one-out with full ranking.

    Writes only out_dir/model.ckpt (the best-validation weights) and Lightning's logs under
    out_dir/logs.

    Args:
        config: YAML path, e.g. configs/kuaiformer_ml1m.yaml.
        out_dir: output folder.
        data: data set path overriding the YAML's data.data.
        overrides: LightningCLI arguments, e.g. ["--trainer.max_epochs", "2"].
        ks: metric cut-offs.
        model_name: the name reported as "model".

    Returns:
        {"model", "dataset", "train_seconds", "val", "test", "checkpoint", "datamodule"}; val / test
        are `ranking_metrics` dicts (exact top-K over all items, history excluded); "datamodule" is
        the set-up KuaiFormerDataModule (its split / train_log serve baselines such as popularity).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module, dm, trainer = build(config, out_dir, data, overrides)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_seconds = time.perf_counter() - start
    checkpoint = out_dir / "model.ckpt"
    with atomic_path(checkpoint) as tmp:
        trainer.save_checkpoint(tmp, weights_only=True)
    result: dict[str, Any] = {"model": model_name, "dataset": dm.log_all.name, "train_seconds": train_seconds,
                              "checkpoint": str(checkpoint)}
    for stage, key in (("valid", "val"), ("test", "test")):
        result[key] = evaluate(module.model, dm, stage, ks)
    result["datamodule"] = dm
    log.info("%s on %s: test hr@10 %.4f ndcg@10 %.4f, %.0f s training", model_name, result["dataset"],
             result["test"].get("hr@10", float("nan")), result["test"].get("ndcg@10", float("nan")), train_seconds)
    return result


# ------------------------------------------------------------------------------------ export
def load_kuaiformer(checkpoint: str | Path, device="cpu") -> tuple[KuaiFormer, dict[str, Any]]:
    """Rebuild the network from a checkpoint written by KuaiFormerModule.

    Returns:
        (model in eval mode, the checkpoint's "genret" entry: config, catalogue, ...).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train one with run_embedding_benchmark / "
                                f"`genret benchmark --model kuaiformer`")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)  # our own format: plain containers
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to a user
        raise RuntimeError(f"cannot read checkpoint {path}: {err}") from err
    extra = _genret_entry(ckpt, str(path))
    model = KuaiFormer(KuaiFormerConfig(**extra["config"]))
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), extra


def checkpoint_item_vectors(checkpoint: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The item vectors (the scoring side of eq. 10) of a KuaiFormer / SASRec checkpoint.

    Returns:
        (n_items, d) float32, row i = dense item i, and the checkpoint's "genret" entry (its
        catalogue's item_ids[i] is the raw id of row i).
    """
    model, extra = load_kuaiformer(checkpoint)
    with torch.no_grad():
        vectors = np.ascontiguousarray(model.item_vectors().float().cpu().numpy(), dtype=np.float32)
    return vectors, extra


def export_item_embeddings(checkpoint: str | Path, out_npy: str | Path) -> np.ndarray:
    """Write the item vectors of a checkpoint (`checkpoint_item_vectors`) to a .npy file, atomically.

    Args:
        checkpoint: a KuaiFormer / SASRec checkpoint. out_npy: target .npy path.

    Returns:
        (n_items, d) float32, row i = dense item i (raw id: the checkpoint's catalogue item_ids[i]).
    """
    vectors, _ = checkpoint_item_vectors(checkpoint)
    with atomic_path(out_npy) as tmp, open(tmp, "wb") as handle:
        np.save(handle, vectors)
    return vectors
