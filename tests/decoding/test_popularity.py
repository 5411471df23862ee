from dataclasses import dataclass

import numpy as np
import pytest

from genret.decoding.popularity import PopularityRecommender


@dataclass
class ToyLog:
    item: np.ndarray
    label: np.ndarray
    n_items: int


@dataclass
class ToyEvalSet:
    users: np.ndarray
    history_offsets: np.ndarray
    history_items: np.ndarray
    targets: np.ndarray


def make_eval_set(histories):
    lengths = [len(h) for h in histories]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories] + [np.zeros(0, np.int64)])
    m = len(histories)
    return ToyEvalSet(np.arange(m, dtype=np.int64), offsets, items, np.zeros(m, dtype=np.int64))


@pytest.fixture
def fitted():
    # positives: item 3 x3, item 1 x2, item 4 x2, item 0 x1; item 2 only exposed (label 0); item 5 never seen.
    item = np.array([3, 3, 3, 1, 1, 4, 4, 0, 2, 2, 2, 2])
    label = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=np.int8)
    return PopularityRecommender().fit(ToyLog(item, label, n_items=6))


def test_counts_positives_only_and_breaks_ties_by_index(fitted):
    assert fitted.counts_.tolist() == [1, 2, 0, 3, 2, 0]
    assert fitted.order_.tolist() == [3, 1, 4, 0, 2, 5]


def test_recommend_without_exclusion(fitted):
    out = fitted.recommend(make_eval_set([[3], []]), k=3, exclude_history=False)
    assert out.dtype == np.int64
    assert out.tolist() == [[3, 1, 4], [3, 1, 4]]


def test_recommend_excludes_history(fitted):
    out = fitted.recommend(make_eval_set([[3, 4], [], [0, 1, 2, 3]]), k=3)
    assert out.tolist() == [[1, 0, 2], [3, 1, 4], [4, 5, -1]]


def test_k_beyond_catalogue_pads(fitted):
    out = fitted.recommend(make_eval_set([[5]]), k=8)
    assert out.tolist() == [[3, 1, 4, 0, 2, -1, -1, -1]]
    out = fitted.recommend(make_eval_set([[5]]), k=8, exclude_history=False)
    assert out.tolist() == [[3, 1, 4, 0, 2, 5, -1, -1]]


def test_matches_per_user_reference_on_random_data(monkeypatch):
    import genret.decoding.popularity as popularity

    monkeypatch.setattr(popularity, "_MAX_MASK_ELEMENTS", 500)  # force many user chunks
    rng = np.random.default_rng(1)
    n_items = 50
    log = ToyLog(rng.integers(0, n_items, 400), rng.integers(0, 2, 400).astype(np.int8), n_items)
    model = PopularityRecommender().fit(log)
    histories = [rng.choice(n_items, size=rng.integers(0, 30), replace=False) for _ in range(40)]
    out = model.recommend(make_eval_set(histories), k=25)
    for row, history in enumerate(histories):
        expected = [i for i in model.order_ if i not in set(history)][:25]
        expected += [-1] * (25 - len(expected))
        assert out[row].tolist() == expected


def test_errors(fitted):
    with pytest.raises(RuntimeError, match="not fitted"):
        PopularityRecommender().recommend(make_eval_set([[1]]), k=2)
    with pytest.raises(ValueError, match="outside"):
        fitted.recommend(make_eval_set([[6]]), k=2)
    with pytest.raises(ValueError, match="k must be"):
        fitted.recommend(make_eval_set([[1]]), k=0)
    with pytest.raises(ValueError, match="outside"):
        PopularityRecommender().fit(ToyLog(np.array([0, 7]), np.array([1, 1], dtype=np.int8), n_items=3))


@pytest.mark.realdata
def test_popularity_on_movielens_1m(shared_data):
    # Leave-one-out on ML-1M: train = all but the last two items, rank the last item, history excluded.
    lines = (shared_data / "ml-1m" / "sequences.txt").read_text().split("\n")
    sequences = [np.array(line.split()[1:], dtype=np.int64) for line in lines if line.strip()]
    raw_ids, flat = np.unique(np.concatenate(sequences), return_inverse=True)
    lengths = np.array([len(s) for s in sequences])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    last = offsets[1:] - 1
    is_train = np.ones(flat.size, dtype=bool)
    is_train[last] = is_train[last - 1] = False
    model = PopularityRecommender().fit(ToyLog(flat[is_train], np.ones(int(is_train.sum()), np.int8), raw_ids.size))
    history_mask = np.ones(flat.size, dtype=bool)
    history_mask[last] = False
    eval_set = ToyEvalSet(
        np.arange(lengths.size), offsets - np.arange(lengths.size + 1), flat[history_mask], flat[last]
    )
    from genret.eval import ranking_metrics

    out = ranking_metrics(model.recommend(eval_set, k=100), eval_set.targets, ks=(10, 100))
    assert out["n_users"] == 6040
    # Measured 0.0394 / 0.2326; popularity is far below the published SASRec HR@10 of 0.2853.
    assert 0.03 < out["hr@10"] < 0.05
    assert 0.20 < out["hr@100"] < 0.27
