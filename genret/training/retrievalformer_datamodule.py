"""LightningDataModule for RetrievalFormer: KuaiFormer's windows of positive histories, plus the
item feature tables the item tower reads, the users' profile features, and the leave-one-out-cold
protocol (`protocol: looc`).

Under LOOC the data module's `log_all` is the warm log (cold items and all their rows removed;
same dense ids and catalogue) and every vocabulary and statistic is fitted on it: the item-feature
vocabularies on the warm items only, log Q on the warm training rows. `eval_sets` then holds
"valid" (warm validation, picks the epoch), "test" (warm users) and "cold" (cold users); with
`cold_valid_users` also "cold_valid" (the validation cold users, genret.data.cold), whose items
leave training as the test cold items do, and "valid" then leaves out their users.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from genret.data.cold import PROTOCOLS
from genret.training.embedding_datamodule import KuaiFormerDataModule

log = logging.getLogger(__name__)


class RetrievalFormerDataModule(KuaiFormerDataModule):
    """Args as KuaiFormerDataModule's, plus:

    Args:
        item_features: raw feature names (genret.data.item_features), e.g. ["genres", "year",
            "title_words", "item_id"]; None = every feature the data set has; "content" = every
            feature but the item id (what a cold-start recipe wants on any copy of a family, with
            or without its optional files).
        item_feature_table: a CSV/TSV/Parquet table of extra item features (item id + columns).
        min_count: a feature value on fewer fitting items is unknown (per feature name, or one int).
        max_values: values kept per item and feature.
        user_features: feed the data set's user profile (gender, age, ...) to the user tower.
        protocol: "loo" (leave-one-out) or "looc" (leave-one-out-cold).
        cold_seed_users: LOOC: users drawn whose final items become cold.
        cold_seed: LOOC: the draw's seed.
        cold_valid_users: LOOC: users drawn for the cold validation set (genret.data.cold's
            `valid_seed_users`); 0 (default) = none, the split as before.
        cold_valid_seed: LOOC: the validation draw's seed (default: cold_seed + 1).
    """

    def __init__(self, data: str = "synthetic", load_kwargs: dict[str, Any] | None = None, max_len: int = 50,
                 targets: str = "every_position", cuts_per_user: int = 8, include_last_cut: bool = True,
                 batch_size: int = 128, eval_batch_size: int = 512, item_features: list[str] | str | None = None,
                 item_feature_table: str | None = None, min_count: int | dict[str, int] = 2, max_values: int = 16,
                 user_features: bool = True, protocol: str = "loo", cold_seed_users: int = 500,
                 cold_seed: int = 0, num_workers: int = 0, seed: int = 0, cold_valid_users: int = 0,
                 cold_valid_seed: int | None = None):
        super().__init__(data=data, load_kwargs=load_kwargs, max_len=max_len, targets=targets,
                         cuts_per_user=cuts_per_user, include_last_cut=include_last_cut, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, item_features=None, side_features=None,
                         num_workers=num_workers, seed=seed)
        if protocol not in PROTOCOLS:
            raise ValueError(f"data.protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if isinstance(item_features, str) and item_features != "content":
            raise ValueError(f"data.item_features must be a list of feature names, null (every feature) or "
                             f"'content' (every feature but item_id), got {item_features!r}")
        self.feature_names = item_features if item_features in (None, "content") else list(item_features)
        self.item_feature_table = item_feature_table
        self.min_count = min_count
        self.max_values = max_values
        self.use_user_features = user_features
        self.protocol = protocol
        self.cold_seed_users = cold_seed_users
        self.cold_seed = cold_seed
        if cold_valid_users < 0:
            raise ValueError(f"data.cold_valid_users must be >= 0 (0 = no cold validation set), got {cold_valid_users}")
        self.cold_valid_users = cold_valid_users
        self.cold_valid_seed = cold_valid_seed

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        from genret.data import leave_one_out, load_dataset
        from genret.data.item_features import ItemFeatureEncoder, feature_report, raw_item_features, value_idf

        self._check()
        full = load_dataset(self.data, **self.load_kwargs)
        self.cold_split = None
        if self.protocol == "looc":
            from genret.data.cold import leave_one_out_cold

            self.cold_split = leave_one_out_cold(full, self.cold_seed_users, self.cold_seed,
                                                 valid_seed_users=self.cold_valid_users,
                                                 valid_seed=self.cold_valid_seed)
            self.log_all = self.cold_split.warm_log
            self.split = self.cold_split.warm_split
            log.info("LOOC split of %s: %s", full.name, self.cold_split.summary())
        else:
            self.log_all = full
            self.split = leave_one_out(full)
        self.train_log = self.split.train
        self.n_items = self.log_all.n_items
        # Item features: raw lists from the data, vocabularies fitted on the warm items only.
        content_only = self.feature_names == "content"
        self.raw_features = raw_item_features(full, None if content_only else self.feature_names,
                                              self.item_feature_table)
        if content_only:
            self.raw_features.pop("item_id", None)
            if not self.raw_features:
                raise ValueError(f"{full.name} has no item feature besides the item id (data.item_features: "
                                 "content): add titles, attributes or an item feature table "
                                 "(data.item_feature_table)")
        self.feature_report = feature_report(self.raw_features)
        log.info("item features of %s: %s", full.name, self.feature_report)
        fit_items = np.ones(self.n_items, bool)
        if self.cold_split is not None:
            fit_items[self.cold_split.cold_items] = False
        self.encoder = ItemFeatureEncoder(list(self.raw_features), self.min_count, self.max_values).fit(
            self.raw_features, fit_items)
        self.item_feature_tables = self.encoder.transform(self.raw_features)
        self.item_features = list(self.raw_features)
        self.item_feature_cardinalities = self.encoder.cardinalities
        # Per-value IDF on the warm items: IDF pooling and the content term weigh values by it.
        self.value_idf = [value_idf(t, card, fit_items).astype(np.float32) for t, card in
                          zip(self.item_feature_tables, self.item_feature_cardinalities)]
        if self.use_user_features and self.log_all.user_features is not None and self.log_all.user_feature_names:
            self.user_feats = np.asarray(self.log_all.user_features, np.int64)
            self.user_feature_names = list(self.log_all.user_feature_names)
            self.user_feature_cardinalities = [int(c) for c in self.log_all.user_feature_cardinalities]
        else:
            self.user_feats = np.zeros((self.log_all.n_users, 0), np.int64)
            self.user_feature_names, self.user_feature_cardinalities = [], []
        # KuaiFormer's per-action side features are not used (no time / rating context on Beauty).
        from genret.data.side_features import SideFeatureBuckets

        self.side = SideFeatureBuckets.fit(self.train_log, [], 1)
        self.side_boundaries, self.side_cardinalities = self.side.boundaries, []
        self.train_offsets, self.train_items, self.train_side = self._positives(self.train_log)
        self.full_offsets, self.full_items, self.full_side = self._positives(self.log_all)
        self.train_users = np.flatnonzero(np.diff(self.train_offsets) >= 2)
        if not len(self.train_users):
            raise ValueError(f"{self.log_all.name}: no user has 2 training positives; nothing to train on")
        # Items the training loss may use as negatives: every item, except LOOC's cold items, which
        # must not reach training in any role (a softmax over them would push them down by name).
        self.train_item_mask = np.ones(self.n_items, bool)
        if self.cold_split is not None:
            self.train_item_mask[self.cold_split.cold_items] = False
        counts = np.bincount(self.train_items, minlength=self.n_items).astype(np.float64) + 1.0
        self.item_log_prob = np.log(counts / counts.sum()).astype(np.float32)
        self.eval_sets = {"valid": self.split.eval_set("valid"), "test": self.split.eval_set("test")}
        if self.cold_split is not None:
            self.eval_sets["test"] = self.cold_split.warm_test
            self.eval_sets["cold"] = self.cold_split.cold
            if self.cold_split.cold_valid is not None:
                self.eval_sets["valid"] = self.cold_split.warm_valid
                self.eval_sets["cold_valid"] = self.cold_split.cold_valid
        for name, es in self.eval_sets.items():
            self._check_eval_histories(es, name)
        self._rng = np.random.default_rng(self.seed)
        self._ready = True

    def train_batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        batch = super().train_batch(rows)
        users = self.train_users[rows]
        if self.targets == "cut_points":
            users = np.repeat(users, self.cuts_per_user)
        batch["user_features"] = torch.from_numpy(self.user_feats[users])
        return batch

    def eval_batch(self, stage: str, rows: np.ndarray) -> dict[str, torch.Tensor]:
        batch = super().eval_batch(stage, rows)
        batch["user_features"] = torch.from_numpy(self.user_feats[self.eval_sets[stage].users[rows]])
        return batch
