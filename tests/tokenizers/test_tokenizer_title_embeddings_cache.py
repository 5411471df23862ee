"""Title embeddings are computed once per set of titles and then read from the cache."""

import numpy as np

import genret.tokenizers.text_embeddings as text_embeddings
from genret.tokenizers.item_vectors import title_embeddings


def counting_embedder(monkeypatch):
    calls = []

    def fake(titles, **_):
        calls.append(list(titles))
        return np.arange(len(titles) * 4, dtype=np.float32).reshape(len(titles), 4) + len(calls)

    monkeypatch.setattr(text_embeddings, "embed_titles", fake)
    return calls


def test_second_call_reads_the_cache_and_other_titles_miss_it(monkeypatch, tmp_path):
    calls = counting_embedder(monkeypatch)
    first = title_embeddings(["lipstick", "shampoo"], "beauty", str(tmp_path))
    again = title_embeddings(["lipstick", "shampoo"], "beauty", str(tmp_path))
    assert len(calls) == 1 and np.array_equal(first, again)
    other = title_embeddings(["lipstick", "soap"], "beauty", str(tmp_path))
    assert len(calls) == 2 and not np.array_equal(first, other)
    assert sorted(p.name.startswith("titles-beauty-") for p in tmp_path.iterdir()) == [True, True]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_corrupt_or_mismatched_cache_is_recomputed(monkeypatch, tmp_path):
    calls = counting_embedder(monkeypatch)
    title_embeddings(["a", "b", "c"], "x", str(tmp_path))
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(b"not a numpy file")
    out = title_embeddings(["a", "b", "c"], "x", str(tmp_path))
    assert len(calls) == 2 and out.shape == (3, 4)
    np.save(cached, np.zeros((2, 4), np.float32))  # a stale file with the wrong row count
    out = title_embeddings(["a", "b", "c"], "x", str(tmp_path))
    assert len(calls) == 3 and out.shape == (3, 4)
    assert np.load(cached).shape == (3, 4)  # and overwritten with the good one


def test_no_cache_dir_always_computes(monkeypatch, tmp_path):
    calls = counting_embedder(monkeypatch)
    title_embeddings(["a"], "x", None)
    title_embeddings(["a"], "x", None)
    assert len(calls) == 2
