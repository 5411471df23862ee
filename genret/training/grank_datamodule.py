"""LightningDataModule for GRank: KuaiFormer's cut-point windows plus a long window for the ranker.

A training example is a cut t of a user's training positives: the generator window (the last
`max_len` positives before t), the ranker window (the last `long_len` before t) and the target
(item t). Evaluation batches add each user's seen items as a (B, n_items) mask, so generation
never returns a history item. With `example_rows` set (GRankModule sets it for
`hard_negatives_from: generator`) training batches also say which training user each example is
and whether its cut is the user's last.
"""

from __future__ import annotations

import numpy as np
import torch

from genret.training.embedding_datamodule import KuaiFormerDataModule, _trim, gather_windows


class GRankDataModule(KuaiFormerDataModule):
    """KuaiFormerDataModule (cut points) with a ranker window and seen-item masks.

    Args:
        long_len: ranker history in items (the paper: up to 1,000).
        Others as KuaiFormerDataModule; `targets` must stay "cut_points" (one user vector per example).
    """

    def __init__(self, data: str = "synthetic", load_kwargs: dict | None = None, max_len: int = 64,
                 long_len: int = 1000, cuts_per_user: int = 4, include_last_cut: bool = True,
                 batch_size: int = 128, eval_batch_size: int = 256, num_workers: int = 0, seed: int = 0):
        super().__init__(data=data, load_kwargs=load_kwargs, max_len=max_len, targets="cut_points",
                         cuts_per_user=cuts_per_user, include_last_cut=include_last_cut, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        if long_len < 1:
            raise ValueError(f"data.long_len must be >= 1, got {long_len}")
        self.long_len = long_len
        # Set by the module, not a config key: add "user_rows" / "last_cut" to training batches.
        self.example_rows = False

    def _long(self, users, ends, offsets, items) -> torch.Tensor:
        window, valid = gather_windows(offsets, items, users, ends, self.long_len, -1)
        return torch.from_numpy(window[:, -_trim(valid):])

    def train_batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """items (N, T), long (N, L), targets (N,) for N = len(rows) * cuts_per_user examples; with
        `example_rows` also user_rows (N,) int64 (the example's index into `train_users`) and
        last_cut (N,) bool (its target is the user's last training positive, its history all before)."""
        users = self.train_users[rows]
        lengths = np.diff(self.train_offsets)[users]
        C = self.cuts_per_user
        cuts = self._rng.integers(1, lengths[:, None], size=(len(users), C))
        if self.include_last_cut:
            cuts[:, 0] = lengths - 1
        users_rep, cuts = np.repeat(users, C), cuts.reshape(-1)
        window, valid = gather_windows(self.train_offsets, self.train_items, users_rep, cuts, self.max_len, -1)
        batch = {"items": torch.from_numpy(window[:, -_trim(valid):]),
                 "long": self._long(users_rep, cuts, self.train_offsets, self.train_items),
                 "targets": torch.from_numpy(self.train_items[self.train_offsets[users_rep] + cuts])}
        if self.example_rows:
            batch["user_rows"] = torch.from_numpy(np.repeat(np.asarray(rows, np.int64), C))
            batch["last_cut"] = torch.from_numpy(cuts == np.repeat(lengths, C) - 1)
        return batch

    def last_cut_histories(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR dense histories (offsets (U + 1,), items) of every training user's last cut, in
        `train_users` order: the user's training positives but the last one."""
        offsets, index = self._last_cut_index()
        return offsets, self.train_items[index]

    def _last_cut_index(self) -> tuple[np.ndarray, np.ndarray]:
        # (offsets, positions in train_items) of the last-cut histories
        starts = self.train_offsets[self.train_users]
        lengths = np.diff(self.train_offsets)[self.train_users] - 1
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        owner = np.repeat(np.arange(len(lengths)), lengths)
        return offsets, starts[owner] + np.arange(offsets[-1]) - offsets[owner]

    def history_side_values(self, names, stage: str) -> dict[str, np.ndarray] | None:
        """Raw per-action side-feature values (NaN = missing) of the histories an external generator
        is asked about, aligned with their items: stage "last_cut" (`last_cut_histories`) or an
        evaluation stage ("valid" / "test": the EvalSet's histories). GRank embeds none itself; a
        generator trained with some (e.g. DualGR with the rating) needs them. None: no names."""
        from genret.data.side_features import side_feature_values

        if not names:
            return None
        if stage == "last_cut":
            log_, rows = self.train_log, np.flatnonzero(self.train_log.label == 1)[self._last_cut_index()[1]]
        else:
            es = self.eval_sets[stage]
            if len(es.history_rows) != len(es.history_items):
                raise ValueError(f"the {stage} histories carry no log rows, so side features {list(names)} cannot be "
                                 "looked up for the generator")
            log_, rows = self.log_all, es.history_rows
        return {name: side_feature_values(log_, name)[rows] for name in names}

    def history_user_features(self, names, stage: str) -> np.ndarray | None:
        """(U, len(names)) categorical user-feature ids (0 = unknown) of the users whose histories an
        external generator is asked about (stage as in `history_side_values`), in `names` order; GRank
        embeds none itself, a generator trained with some (e.g. DualGR on ML-1M) needs them. None: no
        names."""
        if not names:
            return None
        known = list(self.log_all.user_feature_names)
        missing = [n for n in names if n not in known]
        if missing or self.log_all.user_features is None:
            raise ValueError(f"the generator embeds user features {list(names)} but data set {self.log_all.name!r} "
                             f"has {known}; train the generator and GRank on the same data")
        users = self.train_users if stage == "last_cut" else self.eval_sets[stage].users
        return np.asarray(self.log_all.user_features)[np.asarray(users)][:, [known.index(n) for n in names]]

    def eval_batch(self, stage: str, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """items (B, T), long (B, L), seen (B, n_items) bool, index (B,) of evaluation examples `rows`."""
        es = self.eval_sets[stage]
        rows = np.asarray(rows, np.int64)
        users, ends = es.users[rows], es.history_lengths()[rows]
        window, valid = gather_windows(self.full_offsets, self.full_items, users, ends, self.max_len, -1)
        seen = np.zeros((len(rows), self.n_items), bool)
        for r, row in enumerate(rows):
            seen[r, es.history_items[es.history_offsets[row]:es.history_offsets[row + 1]]] = True
        return {"items": torch.from_numpy(window[:, -_trim(valid):]),
                "long": self._long(users, ends, self.full_offsets, self.full_items),
                "seen": torch.from_numpy(seen), "index": torch.from_numpy(rows)}
