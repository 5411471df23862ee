import numpy as np
import pytest

from genret.data import DataError, InteractionLog


def small_log() -> InteractionLog:
    # Raw string ids given out of order; "b" has two rows at the same time (ties keep input order).
    return InteractionLog.from_raw(
        "toy",
        user=["b", "a", "b", "a", "b"],
        item=["x", "y", "z", "x", "y"],
        time=[5, 9, 5, 1, 2],
        label=[1, 0, 1, 1, 1],
        side={"watch": [0.1, 0.2, 0.3, 0.4, 0.5]},
    )


def test_from_raw_maps_ids_and_sorts_stably():
    log = small_log().validate()
    assert log.user_ids.tolist() == ["a", "b"] and log.user_ids.dtype == object
    assert log.item_ids.tolist() == ["x", "y", "z"]
    assert log.user.tolist() == [0, 0, 1, 1, 1]
    assert log.time.tolist() == [1, 9, 2, 5, 5]
    # the two time-5 rows of "b" keep their input order: x (input row 0) before z (input row 2)
    assert log.item.tolist() == [0, 1, 1, 0, 2]
    assert log.label.tolist() == [1, 0, 1, 1, 1]
    np.testing.assert_allclose(log.side["watch"], [0.4, 0.2, 0.5, 0.1, 0.3])
    assert log.side["watch"].dtype == np.float32
    for column, dtype in (("user", np.int64), ("item", np.int64), ("label", np.int8), ("time", np.int64)):
        assert getattr(log, column).dtype == dtype


def test_integer_raw_ids_stay_int64():
    log = InteractionLog.from_raw("ints", user=[30, 10], item=[7, 3])
    assert log.user_ids.dtype == np.int64 and log.user_ids.tolist() == [10, 30]
    assert log.item_index == {3: 0, 7: 1}
    assert log.user_index[30] == 1


def test_offsets_positives_subset_summary():
    log = small_log()
    assert log.user_offsets().tolist() == [0, 2, 5]
    pos = log.positives()
    assert pos.n_rows == 4 and (pos.label == 1).all()
    assert pos.n_items == log.n_items and pos.item_ids is log.item_ids  # same id maps
    sub = log.subset(np.array([0, 4]))
    assert sub.item.tolist() == [log.item[0], log.item[4]]
    s = log.summary()
    assert (s["users"], s["items"], s["rows"], s["positives"], s["negatives"]) == (2, 3, 5, 4, 1)


def test_subset_carries_per_row_truth():
    log = small_log()
    log.truth = {"row_flag": np.arange(5), "user_thing": np.array([7, 8])}
    sub = log.subset(log.label == 1)
    assert sub.truth["row_flag"].tolist() == [0, 2, 3, 4]
    assert sub.truth["user_thing"].tolist() == [7, 8]
    with pytest.raises(DataError):
        log.subset(np.ones(3, dtype=bool))


def test_validate_catches_broken_logs():
    log = small_log()
    log.time = log.time[::-1].copy()
    with pytest.raises(DataError, match="time goes backwards"):
        log.validate()
    log = small_log()
    log.item = log.item + 5
    with pytest.raises(DataError, match="item ids"):
        log.validate()
    log = small_log()
    log.label = log.label.astype(np.int64)
    with pytest.raises(DataError, match="label"):
        log.validate()
    log = small_log()
    log.user = log.user[::-1].copy()
    with pytest.raises(DataError, match="sorted"):
        log.validate()


def test_from_raw_rejects_bad_input():
    with pytest.raises(DataError, match="not in the catalogue"):
        InteractionLog.from_raw("c", user=[1, 2], item=[5, 6], item_ids=np.array([5, 7]))
    with pytest.raises(DataError, match="labels"):
        InteractionLog.from_raw("c", user=[1], item=[5], label=[2])
    with pytest.raises(DataError, match="time"):
        InteractionLog.from_raw("c", user=[1], item=[5], time=[0.5])


def test_catalogue_keeps_items_without_rows():
    log = InteractionLog.from_raw("c", user=[1, 1], item=[9, 3], item_ids=np.array([3, 5, 9]))
    assert log.n_items == 3 and log.item.tolist() == [2, 0]
