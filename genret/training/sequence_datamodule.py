"""LightningDataModule: interaction logs -> batches of whole user sequences with every target.

One training example is a window of a user's training positives, each positive a target (its
history is the window's positives before it), plus the user's unclicked exposures (label 0) in that
span as negatives at their own positions; the model trains all of them in one forward pass. By
default a user gives one window, the last `max_history` positives; `train_windows: all` cuts the
whole sequence into windows, so a user longer than `max_history` contributes every positive.
Batches are gathered with array indexing, not a Python loop per example.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from genret.data.cold import PROTOCOLS
from genret.data.side_features import SideFeatureBuckets
from genret.models.dualgr import TrainBatch
from genret.tokenizers.new_items import COLD_SID_RULES, NewItemEncoder
from genret.tokenizers.semantic_ids import (CONTENT_EMBEDDINGS, INTERACTION_EMBEDDINGS, SIDConfig, content_embeddings,
                                            fit_semantic_ids, item_embeddings_for)
from genret.training.embedding_module import checkpoint_item_vectors
from genret.training.loaders import IndexDataset

log = logging.getLogger(__name__)


@dataclass
class UserSequences:
    """CSR view of each user's positives and negatives (negatives know their position)."""

    pos_offsets: np.ndarray  # (n_users + 1,)
    pos_items: np.ndarray  # positives in time order
    neg_offsets: np.ndarray  # (n_users + 1,)
    neg_items: np.ndarray
    neg_positions: np.ndarray  # number of the user's positives before each negative
    pos_side: np.ndarray | None = None  # (len(pos_items), S) int64 side-feature buckets (None: S = 0)

    def __post_init__(self) -> None:
        if self.pos_side is None:
            self.pos_side = np.zeros((len(self.pos_items), 0), np.int64)
        self._neg_key: tuple[np.ndarray, int] | None = None

    def negatives_end(self, rows: np.ndarray, n_positives: np.ndarray) -> np.ndarray:
        """End offset in neg_items of each row's negatives that precede its (n+1)-th positive
        (neg_positions <= n): one binary search on a (user, position) key, which is sorted
        because negatives are stored by user, then time."""
        if self._neg_key is None:
            big = int(np.diff(self.pos_offsets).max(initial=0)) + 2
            owner = np.repeat(np.arange(len(self.neg_offsets) - 1), np.diff(self.neg_offsets))
            self._neg_key = (owner * big + self.neg_positions, big)
        key, big = self._neg_key
        return np.searchsorted(key, rows * big + n_positives, side="right")

    @classmethod
    def from_log(cls, log_, side: np.ndarray | None = None) -> "UserSequences":
        """side: (n_rows, S) bucket ids of every row of `log_` (see SideFeatureBuckets.transform)."""
        users, items, labels = log_.user, log_.item, log_.label
        n_users = log_.n_users
        positive = labels == 1
        pos_offsets = _offsets(users[positive], n_users)
        neg_offsets = _offsets(users[~positive], n_users)
        # Positives before each row: a running count inside the user (rows are sorted by user, time).
        running = np.cumsum(positive) - positive  # positives before each row, over the whole log
        user_start = _offsets(users, n_users)[users]
        before = running - running[user_start]
        return cls(pos_offsets, items[positive], neg_offsets, items[~positive], before[~positive],
                   None if side is None else side[positive])

    @classmethod
    def from_histories(cls, offsets: np.ndarray, items: np.ndarray, side: np.ndarray | None = None) -> "UserSequences":
        empty = np.zeros(0, np.int64)
        return cls(offsets, items, np.zeros_like(offsets), empty, empty, side)


def _offsets(sorted_keys: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.bincount(sorted_keys, minlength=n))]).astype(np.int64)


def gather_batch(seq: UserSequences, rows: np.ndarray, codes: np.ndarray, user_feats: np.ndarray,
                 max_history: int, max_negatives: int, loss_last_only: bool = False,
                 ends: np.ndarray | None = None) -> TrainBatch:
    """Builds a TrainBatch for the sequences `rows` of `seq` (vectorised gather).

    Keeps the last `max_history` positives of each row up to `ends` (exclusive offsets into
    seq.pos_items; default: the row's end) and its `max_negatives` most recent negatives that
    fall inside that window (their positions are shifted to the window).
    With `loss_last_only` only the final positive of each row is a target (validation).
    """
    start = seq.pos_offsets[rows]
    end = seq.pos_offsets[rows + 1] if ends is None else np.asarray(ends, np.int64)
    length = np.minimum(end - start, max_history)
    T = max(int(length.max(initial=0)), 1)
    first = end - length  # window start in pos_items
    idx = first[:, None] + np.arange(T)[None, :]
    valid = np.arange(T)[None, :] < length[:, None]
    safe_idx = np.minimum(idx, max(len(seq.pos_items) - 1, 0))
    items = np.where(valid, seq.pos_items[safe_idx] if len(seq.pos_items) else -1, -1)
    side = np.where(valid[..., None], seq.pos_side[safe_idx], 0) if len(seq.pos_items) else \
        np.zeros(items.shape + (seq.pos_side.shape[1],), np.int64)

    # Negatives: keep those whose position lies inside the window, most recent last.
    n_start = seq.neg_offsets[rows]
    n_end = seq.neg_offsets[rows + 1] if ends is None else seq.negatives_end(rows, end - start)
    shift = (end - start) - length  # positives dropped before the window
    n_count = np.minimum(n_end - n_start, max_negatives)
    N = max(int(n_count.max(initial=0)), 0)
    if N and len(seq.neg_items):
        nidx = (n_end - n_count)[:, None] + np.arange(N)[None, :]
        nvalid = np.arange(N)[None, :] < n_count[:, None]
        nidx = np.minimum(nidx, len(seq.neg_items) - 1)
        neg_pos = seq.neg_positions[nidx] - shift[:, None]
        nvalid &= neg_pos >= 0
        neg_items = np.where(nvalid, seq.neg_items[nidx], -1)
        neg_pos = np.where(nvalid, neg_pos, 0)
    else:
        neg_items = np.full((len(rows), 0), -1, np.int64)
        neg_pos = np.zeros((len(rows), 0), np.int64)

    L = codes.shape[1]
    item_codes = np.where(valid[..., None], codes[np.maximum(items, 0)], 0) if len(codes) else np.zeros(items.shape + (L,), np.int64)
    neg_codes = codes[np.maximum(neg_items, 0)] * (neg_items >= 0)[..., None]
    loss_mask = valid.copy()
    if loss_last_only:
        loss_mask[:] = False
        has = length > 0
        loss_mask[np.nonzero(has)[0], length[has] - 1] = True
    batch = TrainBatch(
        items=torch.from_numpy(items.astype(np.int64)),
        codes=torch.from_numpy(item_codes.astype(np.int64)),
        user_feats=torch.from_numpy(user_feats[rows].astype(np.int64)),
        side=torch.from_numpy(side.astype(np.int64)),
        neg_items=torch.from_numpy(neg_items.astype(np.int64)),
        neg_codes=torch.from_numpy(neg_codes.astype(np.int64)),
        neg_pos=torch.from_numpy(neg_pos.astype(np.int64)),
        loss_mask=torch.from_numpy(loss_mask),
    )
    return batch


TRAIN_WINDOW_MODES = ("last", "all")


def check_protocol(protocol: str, sid: SIDConfig) -> None:
    """LOOC needs SIDs a cold item can get without interactions: item vectors made from content, or
    interaction vectors with a content placer for the items that have none."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"data.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if sid.content_neighbours < 0:
        raise ValueError(f"data.sid.content_neighbours must be >= 0 (0 = off), got {sid.content_neighbours}")
    placed = sid.embeddings in INTERACTION_EMBEDDINGS and sid.content_neighbours > 0
    if protocol == "looc" and sid.embeddings not in CONTENT_EMBEDDINGS and not placed:
        raise ValueError(
            f"data.protocol looc needs SIDs a cold item can get from the fitted tokenizer without interactions; "
            f"data.sid.embeddings={sid.embeddings!r} cannot give it one (it is built from interactions or item "
            f"ids, or, for 'auto', may be). Set data.sid.embeddings: content (TF-IDF of genres, year, title words, "
            f"categories; or titles / dataset), or sequential / collaborative with data.sid.content_neighbours: K "
            f"(a cold item is placed among its K most content-similar items); and model.use_item_id: false")


def _check_train_windows(mode: str) -> None:
    if mode not in TRAIN_WINDOW_MODES:
        raise ValueError(f"train_windows must be 'last' (one window per user) or 'all' (every positive a "
                         f"target), got {mode!r}")


def log_sid_report(report: dict, unique_sids: bool) -> None:
    """Every run states how unique its SIDs are; a shortfall with unique_sids on says why (see
    genret.tokenizers.unique_codes: an (s1..s_{L-2}) prefix holds more than K^2 items)."""
    overall = report["overall"]
    log.info("SIDs: unique-path fraction %.4f (%d SIDs for %d items, largest collision %d)",
             overall["unique_path_fraction"], overall["n_sids"], report["n_items"], overall["largest_collision"])
    if unique_sids and overall["unique_path_fraction"] < 1:
        K, L = report["codebook_size"], report["n_levels"]
        where = (f"some (s1..s{L - 2}) prefix holds more than codebook_size^2 = {K * K} items" if L >= 3 else
                 f"some s1 holds more than codebook_size = {K} items" if L == 2 else f"there are more than {K} items")
        log.warning("%d items share a SID although data.sid.unique_sids is on: %s; a shared SID returns its items "
                    "with one score, in the SID index's order (a larger codebook_size or n_levels removes this)",
                    round((1 - overall["unique_path_fraction"]) * report["n_items"]), where)


def training_windows(pos_offsets: np.ndarray, max_history: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The training examples as (user, end offset) pairs.

    "last": one per user with positives, ending at its last one. "all": each user's positives cut
    into consecutive windows of `max_history`, newest first (the oldest may be shorter), so every
    positive is a target exactly once per epoch.
    """
    _check_train_windows(mode)
    lengths = np.diff(pos_offsets)
    if mode == "last":
        users = np.nonzero(lengths > 0)[0]
        return users, pos_offsets[users + 1]
    n_windows = -(-lengths // max_history)  # "all": ceil
    users = np.repeat(np.arange(len(lengths)), n_windows)
    newest_first = np.arange(len(users)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    return users, pos_offsets[users + 1] - newest_first * max_history


class SequenceDataModule(pl.LightningDataModule):
    """Loads a data set, splits it leave-one-out, gives items semantic IDs, serves batches.

    Args:
        data: a data folder (ML-1M, P5 Amazon, KuaiRand), a table file, or "synthetic" /
            "synthetic:<users>x<items>" (see genret.data.load_dataset). Relative names are also
            looked up under $GENRET_DATA_DIR.
        sid: how semantic IDs are made (codebook size, levels, embeddings source, cache).
        max_history: positives kept per user sequence (the model's H_t).
        max_negatives: unclicked exposures kept per user (most recent).
        batch_size: user sequences per batch.
        num_workers: DataLoader workers (0 keeps CI simple; batches are cheap to gather).
        load_options: extra keyword arguments for the loader, e.g. for ML-1M
            {low_ratings_as_negatives: false} keeps every rating a positive (the published protocol).
        side_features: per-action features embedded with each action, quantile-bucketised on the
            training positives: any column of the loader's `side` (ML-1M "rating", KuaiRand
            "play_time_ms" / "duration_ms", synthetic "watch_frac") or the derived "time_gap".
        side_buckets: value buckets per side feature (bucket 0 is "missing").
        train_windows: "last" (one example per user: its last `max_history` positives) or "all"
            (every positive a target: long sequences are cut into windows of `max_history`).
        protocol: "loo" (leave-one-out) or "looc" (leave-one-out-cold, genret.data.cold, as
            RetrievalFormer's data module: same keys). Under LOOC the items are renumbered with the
            cold ones last, `log_all` is the warm catalogue (cold items and all their rows gone),
            and everything is fitted on it: the content vectors' vocabularies / IDF / SVD, the
            tokenizer and SIDs, the side-feature buckets; training sequences and ENTP negatives
            hold warm items only. `cold_vectors` keeps the cold items' content vectors (made with
            the warm fit) for `cold_items`, which gives them SIDs after training. `eval_sets`:
            "valid", "test" (warm users) and "cold" (cold users), and "cold_valid" with
            `cold_valid_users`.
        cold_seed_users: LOOC: users drawn whose final items become cold.
        cold_seed: LOOC: the draw's seed.
        cold_valid_users: LOOC: users drawn (after the test draw, among the others) whose final items
            become validation cold items (genret.data.cold's `valid_seed_users`): they leave training
            as the test cold items do, and their users make `eval_sets["cold_valid"]`, on which
            cold-start choices are made without reading the cold test users. 0 (default) = off,
            the split as before.
        cold_valid_seed: LOOC: the validation draw's seed (default: cold_seed + 1).
        cold_sids: where an item added after training goes (LOOC's cold items, and the items a
            served model gains through `Retriever.add_items`: the checkpoint records the rule).
            "shared" (default) gives a cold item the fitted tokenizer's SID as it is, even
            when a warm item holds it (the cold item is then listed right after it); "spread" moves
            it to a free last code under the same prefix. The decoder's heads never saw a free code
            as a target, so they give it almost no probability: with "spread" ML-1M's cold items
            were all but never decoded (docs/experiments/2026-12-05-dualgr-cold-start.md).
            "paths" encodes it greedily among the codes that continue a warm SID's prefix at every
            level (genret.tokenizers.catalogue_paths), so every cold item shares the SID of a warm
            item near it, a path training targets took, and is listed right after that item; an
            item "shared" already puts on a warm SID keeps it.
        item_feature_table: a CSV/TSV/Parquet table of item content (an item id column, then one
            column per feature, multi-valued cells "a|b"), as RetrievalFormer's data module takes:
            its columns join the data set's own features wherever content is read (content SIDs,
            the content term, LOOC's content baseline), so any data set can be described.
    """

    def __init__(self, data: str = "synthetic", sid: SIDConfig = SIDConfig(), max_history: int = 200,
                 max_negatives: int = 64, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 load_options: dict | None = None, side_features: list[str] | None = None,
                 side_buckets: int = 16, train_windows: str = "last", protocol: str = "loo",
                 cold_seed_users: int = 500, cold_seed: int = 0, cold_sids: str = "shared",
                 cold_valid_users: int = 0, cold_valid_seed: int | None = None,
                 item_feature_table: str | None = None):
        super().__init__()
        self.data = data
        self.item_feature_table = item_feature_table
        self.load_options = dict(load_options or {})
        self.sid = dataclasses.replace(sid)  # a copy: the default instance is shared
        self.max_history = max_history
        self.max_negatives = max_negatives
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.side_features = list(side_features or [])
        self.side_buckets = side_buckets
        _check_train_windows(train_windows)  # at construction, not at setup
        self.train_windows = train_windows
        check_protocol(protocol, self.sid)  # at construction: a bad config fails before any work
        self.protocol = protocol
        self.cold_seed_users = cold_seed_users
        self.cold_seed = cold_seed
        if cold_valid_users < 0:
            raise ValueError(f"data.cold_valid_users must be >= 0 (0 = no cold validation set), got {cold_valid_users}")
        self.cold_valid_users = cold_valid_users
        self.cold_valid_seed = cold_valid_seed
        if cold_sids not in COLD_SID_RULES:
            raise ValueError(f"data.cold_sids must be 'shared', 'spread' or 'paths', got {cold_sids!r}")
        self.cold_sids = cold_sids
        self._ready = False

    # -- facts the model needs (valid after setup)
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        from genret.data import leave_one_out, load_dataset

        full = load_dataset(self.data, **self.load_options)
        if self.item_feature_table is not None:  # before any split: LOOC renumbers the items with their features
            from genret.data.item_features import attach_item_feature_table

            names = attach_item_feature_table(full, self.item_feature_table)
            log.info("%s: item features %s from %s", full.name, names, self.item_feature_table)
        self.cold_split, vectors = None, None
        if self.protocol == "looc":
            from genret.data.cold import leave_one_out_cold

            self.cold_split = leave_one_out_cold(full, self.cold_seed_users, self.cold_seed, cold_last=True,
                                                 valid_seed_users=self.cold_valid_users,
                                                 valid_seed=self.cold_valid_seed)
            self.log_all = self.cold_split.warm_catalogue()
            log.info("LOOC split of %s: %s", full.name, self.cold_split.summary())
            if self.sid.embeddings in CONTENT_EMBEDDINGS:
                # Content vectors of every item, fitted on the warm ones (the first n_warm after renumbering).
                n_warm = self.log_all.n_items
                every, source, self.content_vectorizer = content_embeddings(
                    self.cold_split.log, self.sid, fit_items=np.arange(n_warm), return_vectorizer=True)
                vectors, self.cold_vectors = (every[:n_warm], source), every[n_warm:]
        else:
            self.log_all = full
            self.content_vectorizer = None
            if self.sid.embeddings == "content":  # made here so the fitted vectorizer can travel in the checkpoint
                every, source, self.content_vectorizer = content_embeddings(full, self.sid, return_vectorizer=True)
                vectors = (every, source)
        self.split = leave_one_out(self.log_all)  # under LOOC: the warm split, on the warm catalogue
        self.train_log = self.split.train
        if self.sid.embeddings in INTERACTION_EMBEDDINGS and self.sid.content_neighbours > 0:
            vectors = self._place_by_content_neighbours(full)
        self.tokenizer, self.codes, self.sid_index, self.sid_report = fit_semantic_ids(
            self.log_all, self.train_log, self.sid, checkpoint_vectors=checkpoint_item_vectors, vectors=vectors)
        self.eval_sets = {"valid": self.split.eval_set("valid"), "test": self.split.eval_set("test")}
        if self.cold_split is not None:
            self.eval_sets.update(test=self.cold_split.warm_test, cold=self.cold_split.cold)
            if self.cold_split.cold_valid is not None:
                # The cold split's warm split has log_all's rows, so its sets index log_all too; warm
                # validation then leaves out the validation cold users (cold_valid holds them).
                self.eval_sets.update(valid=self.cold_split.warm_valid, cold_valid=self.cold_split.cold_valid)
        # Side-feature boundaries come from the training positives only (no peeking at targets).
        self.side = SideFeatureBuckets.fit(self.train_log, self.side_features, self.side_buckets)
        self.side_codes = self.side.transform(self.log_all)  # (rows of log_all, S)
        self.train_sequences = UserSequences.from_log(self.train_log, self.side.transform(self.train_log))
        if self.log_all.user_features is not None:
            self.user_feats = np.asarray(self.log_all.user_features, np.int64)
            self.user_feature_cardinalities = [int(c) for c in self.log_all.user_feature_cardinalities]
        else:
            self.user_feats = np.zeros((self.log_all.n_users, 0), np.int64)
            self.user_feature_cardinalities = []
        self.train_users, self.train_ends = training_windows(self.train_sequences.pos_offsets, self.max_history,
                                                            self.train_windows)
        self.valid_sequences, self.valid_users = self._eval_sequences("valid")
        self.test_sequences, self.test_users = self._eval_sequences("test")
        self._ready = True
        log.info("data %s: %s", self.log_all.name, self.log_all.summary())
        log_sid_report(self.sid_report, self.sid.unique_sids)

    def _eval_sequences(self, stage: str) -> tuple[UserSequences, np.ndarray]:
        """Evaluation sequences = history + target (only the target is scored), and their users."""
        es = self.eval_sets[stage]
        m = len(es)
        hist_len = np.diff(es.history_offsets)
        offsets = es.history_offsets + np.arange(m + 1)
        rows = np.empty(offsets[-1], np.int64)
        rows[np.arange(len(es.history_rows)) + np.repeat(np.arange(m), hist_len)] = es.history_rows
        rows[offsets[1:] - 1] = es.target_rows
        return UserSequences.from_histories(offsets, self.log_all.item[rows], self.side_codes[rows]), es.users

    @property
    def n_items(self) -> int:
        return self.log_all.n_items

    def _place_by_content_neighbours(self, full) -> tuple[np.ndarray, str]:
        """Interaction item vectors of the (warm) catalogue, and the ContentNeighbours placer fitted
        on them, which gives LOOC's cold items (and items added after training) their vectors.
        Outside LOOC a data set without item content keeps its SIDs and gets no placer (a warning)."""
        from genret.tokenizers.content_neighbours import ContentNeighbours

        emb, source = item_embeddings_for(self.log_all, self.train_log, self.sid)
        k, catalogue = self.sid.content_neighbours, self.cold_split.log if self.cold_split is not None else full
        try:
            self.content_vectorizer, every, used = ContentNeighbours.fit_log(
                catalogue, emb, k, self.sid.content_features, fit_items=np.arange(self.log_all.n_items))
        except ValueError as err:
            if self.cold_split is not None:
                raise ValueError(f"data.protocol looc with data.sid.content_neighbours places cold items by their "
                                 f"content, and {full.name} has none usable: {err}") from None
            log.warning("data.sid.content_neighbours: %s; items added later need their SIDs or vectors", err)
            return emb, source
        if self.cold_split is not None:
            self.cold_vectors = every[self.log_all.n_items:]
        return emb, f"{source}; items without interactions placed by their {k} nearest by content ({', '.join(used)})"

    def cold_items(self) -> tuple[np.ndarray, np.ndarray]:
        """LOOC: the cold items' raw ids and SIDs, their content vectors encoded by the tokenizer fitted
        on the warm items (no refit; with `cold_sids: spread` a taken SID moves to a free last
        code, with `paths` every code continues a warm SID's prefix; warm SIDs never change); pass
        them to `Retriever.add_items` after training. Their dense ids in the full catalogue follow
        the warm ones, in this order. Every item outside the
        trained catalogue is here: the test cold items and, with `cold_valid_users`, the
        validation cold items (interleaved in their original order; `cold_split.test_cold_items`
        / `valid_cold_items` tell them apart)."""
        if self.cold_split is None:
            raise ValueError("cold_items exists under data.protocol: looc only")
        codes = self.new_item_encoder().codes(self.cold_vectors, self.codes)
        return self.cold_split.log.item_ids[self.n_items:], codes

    def new_item_encoder(self):
        """What gives an item added after training its SID (genret.tokenizers.new_items): the fitted
        tokenizer, the `cold_sids` rule and, for content SIDs, the fitted content vectorizer. The
        LOOC cold items go through it, and the checkpoint carries it for serving."""
        return NewItemEncoder(self.tokenizer, self.cold_sids, self.content_vectorizer,
                              self.sid_report.get("embedding_source", ""))

    def content_term(self):
        """DualGR's content term (genret.models.content_term) for the trained catalogue: TF-IDF rows
        over `data.sid.content_features` (default: every content feature), vocabularies and IDF fitted
        on the trained (under LOOC: warm) items, as the content-only baseline's are. Items added later
        get their rows from their features (`Retriever.add_items`).

        None where the data set has no content feature at all and `data.sid.content_features` names
        none (e.g. an Amazon category with `sequential.txt` alone): a content recipe then ranks by
        the beams alone and says so."""
        from genret.data.item_features import raw_item_features
        from genret.models.content_term import ContentTerm

        full = self.cold_split.log if self.cold_split is not None else self.log_all
        if self.sid.content_features is None and set(raw_item_features(full)) <= {"item_id"}:
            return None
        try:
            return ContentTerm.fit_log(full, self.sid.content_features, self.n_items)
        except ValueError as err:
            raise ValueError(f"model.config.content_weight > 0 ranks by item content: {err}") from None

    def history_side(self, eval_set) -> np.ndarray:
        """(len(history_items), S) side-feature buckets of an EvalSet's histories."""
        return self.side_codes[eval_set.history_rows]

    def _collate(self, seq: UserSequences, feats: np.ndarray, last_only: bool,
                 windows: tuple[np.ndarray, np.ndarray] | None = None):
        """Batch of example indices -> TrainBatch; `windows` maps an index to (user, end offset)."""
        def collate(rows: list[int]) -> TrainBatch:
            rows = np.asarray(rows, np.int64)
            ends = None
            if windows is not None:
                rows, ends = windows[0][rows], windows[1][rows]
            return gather_batch(seq, rows, self.codes, feats, self.max_history,
                                self.max_negatives, loss_last_only=last_only, ends=ends)
        return collate

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device) if isinstance(batch, TrainBatch) else super().transfer_batch_to_device(
            batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        # Random batches: length-sorted ones train faster but worse (see DualGRModule.length_chunks).
        return DataLoader(IndexDataset(len(self.train_users)), batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers,
                          collate_fn=self._collate(self.train_sequences, self.user_feats, False,
                                                   (self.train_users, self.train_ends)))

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader(self.valid_sequences, self.valid_users)

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader(self.test_sequences, self.test_users)

    def _eval_dataloader(self, sequences: UserSequences, users: np.ndarray) -> DataLoader:
        feats = self.user_feats[users]
        lengths = np.minimum(np.diff(sequences.pos_offsets), self.max_history)
        # Longest first, so each batch pads to its own rows: evaluation scores one target per user,
        # so the epoch's loss is the same per-user mean in any order.
        order = np.argsort(-lengths, kind="stable").tolist()
        return DataLoader(IndexDataset(len(users)), batch_size=self.batch_size * 2, sampler=order,
                          num_workers=self.num_workers, collate_fn=self._collate(sequences, feats, True))
