"""Batch gathering: windows, negative positions and validation masks on a hand-built log."""

import numpy as np
import pytest
import torch

from genret.data import InteractionLog
from genret.training.sequence_datamodule import UserSequences, gather_batch, training_windows


def hand_log():
    # user 0: + + - + + - +   (items 1 2 9 3 4 8 5); user 1: - +   (items 7 6)
    users = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1])
    items = np.array([1, 2, 9, 3, 4, 8, 5, 7, 6])
    labels = np.array([1, 1, 0, 1, 1, 0, 1, 0, 1])
    return InteractionLog.from_raw("hand", users, items, time=np.arange(9), label=labels)


def test_user_sequences_count_positives_before_each_negative():
    log = hand_log()
    seq = UserSequences.from_log(log)
    raw = log.item_ids
    assert raw[seq.pos_items].tolist() == [1, 2, 3, 4, 5, 6]
    assert raw[seq.neg_items].tolist() == [9, 8, 7]
    assert seq.neg_positions.tolist() == [2, 4, 0]


def test_gather_batch_window_shifts_negative_positions():
    log = hand_log()
    seq = UserSequences.from_log(log)
    codes = np.stack([np.arange(log.n_items) % 3, np.arange(log.n_items) % 2], 1)
    batch = gather_batch(seq, np.array([0, 1]), codes, np.zeros((2, 0), np.int64), max_history=3, max_negatives=5)
    raw = log.item_ids
    assert raw[batch.items[0].numpy()].tolist() == [3, 4, 5]  # the last 3 positives
    assert batch.items[1].tolist()[1:] == [-1, -1]
    # Positions move with the window: 9 came after 2 positives, both now cut, so it sits at 0;
    # 8 came after 4 positives, 2 of them cut.
    kept = batch.neg_items[0] >= 0
    assert raw[batch.neg_items[0][kept].numpy()].tolist() == [9, 8]
    assert batch.neg_pos[0][kept].tolist() == [0, 2]
    # With a window of 2, negative 9 (before the window's first positive) is dropped.
    small = gather_batch(seq, np.array([0]), codes, np.zeros((1, 0), np.int64), max_history=2, max_negatives=5)
    assert raw[small.neg_items[0][small.neg_items[0] >= 0].numpy()].tolist() == [8]
    assert small.neg_pos[0][small.neg_items[0] >= 0].tolist() == [1]
    assert batch.neg_pos[1][batch.neg_items[1] >= 0].tolist() == [0]
    assert (batch.codes[0, :, 0].numpy() == codes[batch.items[0].numpy(), 0]).all()
    assert batch.loss_mask.tolist() == [[True, True, True], [True, False, False]]
    last = gather_batch(seq, np.array([0, 1]), codes, np.zeros((2, 0), np.int64), 3, 5, loss_last_only=True)
    assert last.loss_mask.tolist() == [[False, False, True], [True, False, False]]


def test_gather_batch_carries_each_positives_side_buckets():
    log = hand_log()
    side = np.arange(log.n_rows)[:, None] * np.array([[1, 10]])  # row r -> (r, 10 r)
    seq = UserSequences.from_log(log, side)
    codes = np.zeros((log.n_items, 1), np.int64)
    batch = gather_batch(seq, np.array([0, 1]), codes, np.zeros((2, 0), np.int64), max_history=3, max_negatives=5)
    # User 0's last 3 positives are rows 3, 4, 6; user 1's only positive is row 8, then padding (0).
    assert batch.side[0].tolist() == [[3, 30], [4, 40], [6, 60]]
    assert batch.side[1].tolist() == [[8, 80], [0, 0], [0, 0]]


def test_training_windows_cover_every_positive_once():
    offsets = np.array([0, 7, 7, 9])  # users with 7, 0 and 2 positives
    users, ends = training_windows(offsets, max_history=3, mode="last")
    assert users.tolist() == [0, 2] and ends.tolist() == [7, 9]
    users, ends = training_windows(offsets, max_history=3, mode="all")
    assert users.tolist() == [0, 0, 0, 2] and ends.tolist() == [7, 4, 1, 9]  # newest window first
    seq = UserSequences.from_histories(offsets, np.arange(9))
    batch = gather_batch(seq, users, np.zeros((9, 1), np.int64), np.zeros((3, 0), np.int64), 3, 0, ends=ends)
    targets = batch.items[batch.loss_mask].tolist()
    assert sorted(targets) == list(range(9))  # every positive a target exactly once
    assert batch.items.tolist() == [[4, 5, 6], [1, 2, 3], [0, -1, -1], [7, 8, -1]]
    with pytest.raises(ValueError, match="train_windows"):
        training_windows(offsets, 3, "random")


def test_an_earlier_window_keeps_only_its_own_negatives():
    log = hand_log()  # user 0: + + - + + - +  (negatives after 2 and after 4 positives)
    seq = UserSequences.from_log(log)
    codes = np.zeros((log.n_items, 1), np.int64)
    raw = log.item_ids
    # The window of user 0's positives 1..3 (items 2, 3, 4): negative 9 sits after its first
    # positive, 8 right after its last; both belong to it, shifted by the one positive cut.
    batch = gather_batch(seq, np.array([0]), codes, np.zeros((1, 0), np.int64), 3, 5, ends=np.array([4]))
    assert raw[batch.items[0].numpy()].tolist() == [2, 3, 4]
    kept = batch.neg_items[0] >= 0
    assert raw[batch.neg_items[0][kept].numpy()].tolist() == [9, 8]
    assert batch.neg_pos[0][kept].tolist() == [1, 3]
    # The window of positives 0..1 (items 1, 2) ends before 8 and keeps only 9, after both.
    early = gather_batch(seq, np.array([0]), codes, np.zeros((1, 0), np.int64), 3, 5, ends=np.array([2]))
    assert raw[early.neg_items[0][early.neg_items[0] >= 0].numpy()].tolist() == [9]
    assert early.neg_pos[0][early.neg_items[0] >= 0].tolist() == [2]
    # Default ends reproduce the last window.
    same = gather_batch(seq, np.array([0, 1]), codes, np.zeros((2, 0), np.int64), 3, 5)
    explicit = gather_batch(seq, np.array([0, 1]), codes, np.zeros((2, 0), np.int64), 3, 5,
                            ends=seq.pos_offsets[1:])
    for a, b in zip(same.__dict__.values(), explicit.__dict__.values()):
        assert torch.equal(a, b)


def test_validation_batches_come_longest_first_and_cover_every_user_once(tmp_path):
    from genret.tokenizers.semantic_ids import SIDConfig
    from genret.training.sequence_datamodule import SequenceDataModule

    sid = SIDConfig(codebook_size=8, n_iter=3, cache_dir=str(tmp_path))
    dm = SequenceDataModule("synthetic:200x300", sid=sid, max_history=20, batch_size=16, max_negatives=4)
    dm.setup("fit")
    widths, targets = [], 0
    for batch in dm.val_dataloader():
        lengths = (batch.items >= 0).sum(1)
        assert lengths.max() == batch.items.shape[1]  # padded to its own longest row only
        widths.append(batch.items.shape[1])
        targets += int(batch.loss_mask.sum())
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    assert targets == len(dm.valid_users)


def test_runs_log_the_unique_path_fraction_and_say_why_it_falls_short(caplog):
    import logging

    from genret.training.sequence_datamodule import log_sid_report

    report = {"n_items": 20, "n_levels": 3, "codebook_size": 2,
              "overall": {"unique_path_fraction": 0.0, "n_sids": 4, "largest_collision": 5}}
    with caplog.at_level(logging.INFO, logger="genret.training.sequence_datamodule"):
        log_sid_report(report, unique_sids=True)
    assert "unique-path fraction 0.0000 (4 SIDs for 20 items" in caplog.text
    assert "20 items share a SID" in caplog.text and "more than codebook_size^2 = 4 items" in caplog.text
