"""Batch gathering: windows, negative positions and validation masks on a hand-built log."""

import numpy as np

from genret.data import InteractionLog
from genret.training.datamodule import UserSequences, gather_batch


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
