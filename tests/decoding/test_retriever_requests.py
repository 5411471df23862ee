"""The decode API returns what evaluation scores: seen items excluded, user features used, every
argument checked with a message naming it; and the batch CLI never loses an earlier --out."""

import json
import os
import stat

import numpy as np
import pytest

from genret.cli import main
from genret.decoding import requests
from genret.decoding.requests import RequestError, UnknownItemError
from genret.decoding.retriever import Retriever
from genret.io import write_text
from genret.eval.ranked_lists import retriever_ranked_lists


@pytest.fixture
def retriever(tiny_ckpt):
    return Retriever.from_checkpoint(tiny_ckpt, device="cpu", kernel="torch")


def test_seen_items_are_excluded_and_k_still_come_back(retriever):
    ids = retriever.item_ids.tolist()
    histories = [ids[:25], ids[3:5], []]
    res = retriever.retrieve(histories, k=10)
    for history, items in zip(histories, res.items):
        assert len(items) == 10 and len(set(items)) == 10 and not set(items) & set(history)
    raw = retriever.retrieve(histories, k=10, exclude_seen=False)
    assert set(raw.items[0]) & set(histories[0])  # without exclusion the history comes back
    # Only 15 unseen items exist for the first user: all of them, no padding.
    assert len(retriever.retrieve([ids[:25]], k=20).items[0]) == 15
    # 35 seen items fill the first k + 20 = 25 decoded: decoded again, longer, k still come back.
    sizes = []
    decode = retriever.retrieve_indices
    retriever.retrieve_indices = lambda hist, k: sizes.append(k) or decode(hist, k)
    long = retriever.retrieve([ids[:35]], k=5)
    assert sorted(long.items[0]) == ids[35:] and sizes == [25, 40]


def test_served_lists_equal_the_evaluated_lists(retriever):
    """retrieve(exclude_seen=True) == evaluation's ranked lists (history excluded, same margin)."""
    rng = np.random.default_rng(0)
    rows = [rng.choice(40, size=n, replace=False).tolist() for n in (0, 1, 5, 12, 18)]
    feats = np.array([[0], [1], [2], [1], [0]])

    class EvalSet:
        history_offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
        history_items = np.array([i for r in rows for i in r], np.int64)

        def __len__(self):
            return len(rows)

    evaluated = retriever_ranked_lists(retriever, EvalSet(), 10, user_feats=feats)
    served = retriever.retrieve([retriever.item_ids[r].tolist() for r in rows], k=10,
                                user_features={"segment": feats[:, 0].tolist()})
    assert [retriever.item_ids[row[row >= 0]].tolist() for row in evaluated] == served.items


def test_user_features_reach_the_model(retriever):
    history = [retriever.item_ids[:4].tolist()]
    scores = {s: retriever.retrieve(history, k=5, user_features={"segment": [s]}).scores[0] for s in (0, 1, 2)}
    assert scores[0] != scores[1] != scores[2]
    assert retriever.retrieve(history, k=5).scores[0] == scores[0]  # omitted = unknown (id 0)
    assert retriever.retrieve(history, k=5, user_features=np.array([[2]])).scores[0] == scores[2]
    with pytest.raises(RequestError, match=r"\['age'\] are not fields this model embeds \(\['segment'\]\)"):
        retriever.retrieve(history, k=5, user_features={"age": [1]})
    with pytest.raises(RequestError, match=r"user_features\['segment'\]\[0\] must be an integer id in \[0, 3\)"):
        retriever.retrieve(history, k=5, user_features={"segment": [7]})
    with pytest.raises(RequestError, match="one id per history"):
        retriever.retrieve(history, k=5, user_features={"segment": [1, 2]})


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=2.5), "k must be an integer"),
    (dict(k=True), "k must be an integer"),
    (dict(k=0), r"k must lie in \[1, 40\]"),
    (dict(k=41), r"k must lie in \[1, 40\]"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(batch_size=-1), "batch_size must be a positive integer"),
    (dict(unknown="skip"), "unknown must be one of"),
    (dict(exclude_seen="yes"), "exclude_seen must be true or false"),
    (dict(histories=[100, 101]), r"histories\[0\] must be a list of item ids"),
    (dict(histories=[[True]]), r"histories\[0\]\[0\] must be an item id .* got True"),
    (dict(histories=[[100.0]]), r"histories\[0\]\[0\] must be an item id"),
    (dict(histories="100"), "histories must be a list of histories"),
    (dict(side={"rating": [[1]]}), "trained without side features"),
    (dict(side={"rating": 5}), "side must map each feature name to a list with one list of values per history"),
    (dict(side=[[1]]), "side must map each feature name"),
])
def test_bad_arguments_name_themselves(retriever, kwargs, message):
    args = dict(histories=[[100, 101]], k=5) | kwargs
    with pytest.raises(RequestError, match=message):
        retriever.retrieve(args.pop("histories"), **args)


def test_unknown_ids_and_quoted_ids(retriever):
    with pytest.raises(UnknownItemError, match="item id 7 in history 0 is not in the catalogue of 40 items; "
                       "to skip unknown items pass unknown='drop' .`genret decode --unknown drop`"):
        retriever.retrieve([[7]], k=5)
    assert retriever.retrieve([["100", "101"]], k=5).items == retriever.retrieve([[100, 101]], k=5).items
    with pytest.warns(UserWarning, match="dropped 1 unknown"):
        dropped = retriever.retrieve([[100, 7, 101]], k=5, unknown="drop")
    assert dropped.items == retriever.retrieve([[100, 101]], k=5).items


def test_narrow_beam_is_widened_and_batches_agree(tiny_ckpt, retriever):
    narrow = Retriever.from_checkpoint(tiny_ckpt, device="cpu", kernel="torch", beam_width=2)
    assert [len(x) for x in narrow.retrieve([[100], []], k=12).items] == [12, 12]
    assert narrow.retrieve([[100], []], k=12).items == retriever.retrieve([[100], []], k=12).items
    with pytest.raises(ValueError, match="beam_width must be a positive integer"):
        Retriever.from_checkpoint(tiny_ckpt, device="cpu", beam_width=0)
    histories = [[100 + i for i in range(j % 7)] for j in range(9)]
    together = retriever.retrieve(histories, k=6, batch_size=9)
    alone = retriever.retrieve(histories, k=6, batch_size=1)
    assert together.items == alone.items
    np.testing.assert_allclose(np.array(together.scores), np.array(alone.scores), rtol=1e-5)


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


def test_decode_cli_keeps_an_earlier_output_unless_it_succeeds(tiny_ckpt, tmp_path, retriever):
    lines = tmp_path / "h.jsonl"
    lines.write_text(json.dumps({"user": "a", "history": [100, 101], "user_features": {"segment": 2}}) + "\n"
                     + json.dumps([102]) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["decode", "--checkpoint", str(tiny_ckpt), "--histories", str(lines), "--k", "5", "--kernel", "torch"]
    assert main(args + ["--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["items"] == retriever.retrieve([[100, 101]], k=5, user_features={"segment": [2]}).items[0]
    assert rows[1]["items"] == retriever.retrieve([[102]], k=5).items[0]
    before = out.read_text()
    for bad in (["--batch-size", "-1"], ["--batch-size", "0"], ["--k", "0"], ["--k", "500"], ["--beam-width", "0"]):
        with pytest.raises(SystemExit) as err:
            main(args + ["--out", str(out)] + bad)
        assert err.value.code != 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SystemExit, match="holds no histories; nothing written"):
        main(["decode", "--checkpoint", str(tiny_ckpt), "--histories", str(empty), "--out", str(out)])
    assert out.read_text() == before
    assert main(args + ["--include_seen", "--out", str(out)]) == 0
    assert json.loads(out.read_text().splitlines()[0])["items"] == \
        retriever.retrieve([[100, 101]], k=5, exclude_seen=False, user_features={"segment": [2]}).items[0]


def _encode_per_item(histories, item_index, unknown):
    """The per-item dict loop the vectorised lookup replaced (the specification)."""
    dense, kept, dropped = [], [], []
    for history in histories:
        row, positions = [], []
        for j, raw in enumerate(history):
            idx = item_index.get(raw)
            if idx is None and isinstance(raw, str) and raw.lstrip("-").isdigit():
                idx = item_index.get(int(raw))
            if idx is None:
                dropped.append(raw)
                continue
            row.append(idx)
            positions.append(j)
        dense.append(row)
        kept.append(positions)
    return dense, kept, dropped


@pytest.mark.parametrize("catalogue", [
    np.array([7, 3, 9, 3, -4, 2**40]),  # a repeated id: the last position wins, as in a dict
    np.array([7, 3, 9], dtype=np.uint32),
    np.array(["a", "7", "b"]),
    np.array([], dtype=np.int64),
])
def test_vectorised_lookup_equals_the_per_item_loop(catalogue):
    lookup = requests.item_lookup(catalogue)
    assert isinstance(lookup, dict) and lookup == {raw: i for i, raw in enumerate(catalogue.tolist())}
    rng = np.random.default_rng(0)
    pool = catalogue.tolist() + [11, -1, 2**70, "7", "x"]
    int_pool = [raw for raw in pool if isinstance(raw, int)]
    cases = [[], [[]],
             [[int_pool[i] for i in rng.choice(len(int_pool), 6)] for _ in range(3)],  # all ints: vectorised
             [[pool[i] for i in rng.choice(len(pool), 6)] for _ in range(3)]]  # mixed: the dict path
    for histories in cases:
        histories = requests.check_histories(histories)
        assert requests.encode_histories(histories, lookup, "drop") == _encode_per_item(histories, lookup, "drop")
        expected = _encode_per_item(histories, lookup, "drop")
        if expected[2]:
            first = expected[2][0]
            with pytest.raises(requests.UnknownItemError, match=f"item id {first!r} in history"):
                requests.encode_histories(histories, lookup, "error")


def test_check_histories_fast_path_keeps_the_checks():
    assert requests.check_histories([[1, 2], ("a", 3), np.array([4, 5])]) == [[1, 2], ["a", 3], [4, 5]]
    assert requests.check_histories([[np.int64(4), 5]]) == [[4, 5]]
    for bad in ([[True, 2]], [[1.5]], [[None]]):
        with pytest.raises(requests.RequestError, match=r"histories\[0\]\["):
            requests.check_histories(bad)
