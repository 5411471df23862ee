import numpy as np
import pytest

from genret.data import DataError, InteractionLog, leave_one_out


def hand_log() -> InteractionLog:
    # user 0: p1 n1 p2 n2 p3 n3 p4   (4 positives, negatives between)
    # user 1: two positives          -> skipped
    # user 2: exactly three positives
    # user 3: one interaction        -> skipped
    rows = [
        (0, 101, 1), (0, 901, 0), (0, 102, 1), (0, 902, 0), (0, 103, 1), (0, 903, 0), (0, 104, 1),
        (1, 201, 1), (1, 202, 1),
        (2, 301, 1), (2, 904, 0), (2, 302, 1), (2, 303, 1),
        (3, 401, 1),
    ]
    user, item, label = map(np.array, zip(*rows))
    return InteractionLog.from_raw("hand", user, item, label=label).validate()


def raw(log, dense_items):
    return log.item_ids[dense_items].tolist()


def test_leave_one_out_by_hand():
    log = hand_log()
    split = leave_one_out(log)
    assert split.n_skipped_users == 2
    assert split.users.tolist() == [0, 2]

    # train: user 0 up to (not including) p3; user 1 and 3 complete; user 2 only p1 n.
    train = split.train
    assert raw(train, train.item[train.user == 0]) == [101, 901, 102, 902]
    assert raw(train, train.item[train.user == 1]) == [201, 202]
    assert raw(train, train.item[train.user == 2]) == [301, 904]
    assert raw(train, train.item[train.user == 3]) == [401]
    assert train.n_items == log.n_items

    valid = split.eval_set("valid")
    assert len(valid) == 2
    assert raw(log, valid.targets) == [103, 302]
    assert raw(log, valid.history(0)) == [101, 102]
    assert raw(log, valid.negatives(0)) == [901, 902]
    assert raw(log, valid.history(1)) == [301]
    assert raw(log, valid.negatives(1)) == [904]

    assert split.valid_rows.tolist() == [4, 11] and split.test_rows.tolist() == [6, 12]


def test_test_stage_history_includes_validation_target():
    log = hand_log()
    test = leave_one_out(log).eval_set("test")
    assert raw(log, test.targets) == [104, 303]
    assert raw(log, test.history(0)) == [101, 102, 103]
    assert raw(log, test.negatives(0)) == [901, 902, 903]
    assert raw(log, test.history(1)) == [301, 302]
    assert test.history_offsets.tolist() == [0, 3, 5]
    assert test.history_negatives_offsets.tolist() == [0, 3, 4]
    assert test.history_lengths().tolist() == [3, 2]


def test_unknown_stage():
    with pytest.raises(DataError):
        leave_one_out(hand_log()).eval_set("train")


def test_matches_a_plain_python_reference():
    rng = np.random.default_rng(3)
    n = 400
    log = InteractionLog.from_raw("random", user=rng.integers(0, 80, n), item=rng.integers(0, 50, n),
                                  time=rng.integers(0, 30, n), label=(rng.random(n) < 0.6).astype(np.int8))
    split = leave_one_out(log)
    expected = {"valid": [], "test": []}
    skipped = 0
    train_rows = []
    offsets = log.user_offsets()
    for u in range(log.n_users):
        rows = list(range(offsets[u], offsets[u + 1]))
        pos_rows = [r for r in rows if log.label[r] == 1]
        if len(pos_rows) < 3:
            skipped += 1
            train_rows += rows
            continue
        train_rows += [r for r in rows if r < pos_rows[-2]]
        for stage, target in (("valid", pos_rows[-2]), ("test", pos_rows[-1])):
            hist = [log.item[r] for r in rows if r < target and log.label[r] == 1]
            negs = [log.item[r] for r in rows if r < target and log.label[r] == 0]
            expected[stage].append((u, log.item[target], hist, negs))
    assert skipped > 0 and split.n_skipped_users == skipped
    assert split.train.n_rows == len(train_rows)
    np.testing.assert_array_equal(split.train.item, log.item[train_rows])
    for stage in ("valid", "test"):
        ev = split.eval_set(stage)
        assert len(ev) == len(expected[stage])
        for i, (u, target, hist, negs) in enumerate(expected[stage]):
            assert ev.users[i] == u and ev.targets[i] == target
            assert ev.history(i).tolist() == hist
            assert ev.negatives(i).tolist() == negs


def test_equal_times_count_in_row_order():
    log = InteractionLog.from_raw("ties", user=[0, 0, 0, 0], item=[1, 2, 3, 4], time=[5, 5, 5, 5]).validate()
    test = leave_one_out(log).eval_set("test")
    assert raw(log, test.targets) == [4] and raw(log, test.history(0)) == [1, 2, 3]


def test_eval_set_subset_keeps_each_example_whole():
    log = hand_log()
    full = leave_one_out(log).eval_set("test")
    sub = full.subset([1])
    assert sub.users.tolist() == [2] and sub.targets.tolist() == full.targets[1:].tolist()
    assert sub.history(0).tolist() == full.history(1).tolist()
    assert sub.negatives(0).tolist() == full.negatives(1).tolist()
    assert sub.history_rows.tolist() == full.history_rows[full.history_offsets[1]:].tolist()
    assert sub.target_rows.tolist() == full.target_rows[1:].tolist()
    both = full.subset([1, 0, 1])  # order and repeats do not matter
    assert both.users.tolist() == full.users.tolist()
    assert both.history_items.tolist() == full.history_items.tolist()
    assert both.history_negatives.tolist() == full.history_negatives.tolist()
    assert len(full.subset([])) == 0
    with pytest.raises(IndexError, match=r"lie in \[0, 2\)"):
        full.subset([2])
