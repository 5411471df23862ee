"""The loaders on the real data sets in ../shared/data (counts from its README)."""

import functools
from pathlib import Path

import numpy as np
import pytest

from genret.data import leave_one_out, load_amazon, load_dataset, load_kuairand, load_movielens

pytestmark = pytest.mark.realdata


@functools.lru_cache(maxsize=None)
def movielens(path: Path):
    return load_movielens(path / "ml-1m")


def sequences_line(path: Path, user: int) -> list[int]:
    with open(path / "ml-1m" / "sequences.txt") as f:
        for line in f:
            fields = line.split()
            if int(fields[0]) == user:
                return [int(x) for x in fields[1:]]
    raise AssertionError(f"user {user} not found")


def test_movielens_counts_titles_and_features(shared_data):
    log = movielens(shared_data)
    s = log.summary()
    assert (s["users"], s["items"], s["rows"]) == (6040, 3706, 1_000_209)
    # ratings <= 2 of users 1-2999 became explicit negatives (counted with awk on the ratings file)
    assert s["negatives"] == 81_310 and s["positives"] == 1_000_209 - 81_310
    assert log.user_ids.dtype == np.int64 and log.item_ids.dtype == np.int64
    assert log.item_titles[log.item_index[1]] == "Toy Story (1995)"
    assert log.item_features["genre"][log.item_index[1]] == 3  # Animation
    assert log.item_features["genres"].shape == (3706, 18)
    assert log.user_features.shape == (6040, 4) and (log.user_features > 0).all()
    assert log.user_feature_names == ["gender", "age", "occupation", "zip_prefix"]


def test_movielens_label_rule_and_order(shared_data):
    log = movielens(shared_data)
    offsets = log.user_offsets()
    # User 1 is covered by the ratings file: rows follow sequences.txt, label = rating >= 3.
    u = log.user_index[1]
    rows = slice(offsets[u], offsets[u + 1])
    assert log.item_ids[log.item[rows]].tolist() == sequences_line(shared_data, 1)
    rating = log.side["rating"][rows]
    assert (rating >= 1).all()
    np.testing.assert_array_equal(log.label[rows], (rating >= 3).astype(np.int8))
    # User 6040 is not covered: every entry is a positive, rating 0 (unknown).
    u = log.user_index[6040]
    rows = slice(offsets[u], offsets[u + 1])
    assert log.item_ids[log.item[rows]].tolist() == sequences_line(shared_data, 6040)
    assert (log.label[rows] == 1).all() and (log.side["rating"][rows] == 0).all()


def test_movielens_all_positive_protocol(shared_data):
    log = load_movielens(shared_data / "ml-1m", low_ratings_as_negatives=False)
    assert log.summary()["positives"] == 1_000_209
    split = leave_one_out(log)
    assert len(split.eval_set("test")) == 6040 and split.n_skipped_users == 0


def test_amazon_beauty(shared_data):
    log = load_amazon(shared_data / "amazon-beauty")
    s = log.summary()
    assert (s["users"], s["items"], s["rows"], s["negatives"]) == (22_363, 12_101, 198_502, 0)
    np.testing.assert_array_equal(log.item_ids, np.arange(1, 12_102))  # P5 integer ids kept
    assert log.item_features["asin"][0] == "B004756YJA"
    assert log.item_titles[0].startswith("OPI Nail Lacquer")
    assert sum(t == "" for t in log.item_titles) == 7
    attributes = log.item_features["attributes"]
    assert attributes.shape[0] == 12_101 and (attributes[:, 0] > 0).all()
    # user 1's line is "1 1 2 3 4 5"
    assert log.item_ids[log.item[log.user == log.user_index[1]]].tolist() == [1, 2, 3, 4, 5]
    split = leave_one_out(log)
    test = split.eval_set("test")
    assert len(test) == 22_363 and log.item_ids[test.targets[0]] == 5
    assert log.item_ids[test.history(0)].tolist() == [1, 2, 3, 4]


def test_kuairand(shared_data):
    log = load_kuairand(shared_data / "kuairand-subset")
    s = log.summary()
    assert (s["users"], s["items"], s["rows"], s["negatives"]) == (664, 9_359, 41_828, 14_344)
    assert set(log.side) == {"play_time_ms", "duration_ms"}
    assert log.time.min() > 1_600_000_000_000  # milliseconds since the epoch
    test = leave_one_out(log).eval_set("test")
    assert len(test) == 664 and test.history_negatives.size > 0


def test_load_dataset_detects_formats(shared_data, monkeypatch):
    assert load_dataset(shared_data / "kuairand-subset").name == "kuairand-subset"
    monkeypatch.setenv("GENRET_DATA_DIR", str(shared_data))
    assert load_dataset("amazon-beauty").n_items == 12_101
