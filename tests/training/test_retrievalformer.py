"""RetrievalFormer: item features, the LOOC split, scoring unseen items from features, checkpoint
round trip, ANN vs exact search, clear errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from genret.data import load_dataset
from genret.data.cold import leave_one_out_cold
from genret.data.interactions import DataError
from genret.data.item_features import ItemFeatureEncoder, load_item_feature_table, raw_item_features, title_words
from genret.models.retrievalformer import RetrievalFormer, RetrievalFormerConfig

GENRES = ["Action", "Comedy", "Drama", "Horror"]
WORDS = ["space", "love", "ghost", "night", "war", "city", "dream", "river"]


def write_movielens(folder: Path, n_users: int = 80, n_items: int = 40, seed: int = 0) -> Path:
    """A tiny MovieLens-1M folder (sequences.txt, movies.dat, users.dat) where users prefer one genre."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    genre = rng.integers(0, len(GENRES), n_items)
    movies = []
    for i in range(n_items):
        words = " ".join(rng.choice(WORDS, 2, replace=False))
        movies.append(f"{i + 1}::{words.title()} {GENRES[genre[i]]} ({1980 + i % 20})::{GENRES[genre[i]]}")
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    lines, users = [], []
    for u in range(n_users):
        liked = np.flatnonzero(genre == u % len(GENRES))
        seq = rng.choice(liked, size=min(len(liked), int(rng.integers(4, 9))), replace=False) + 1
        lines.append(" ".join(map(str, [u + 1, *seq.tolist()])))
        users.append(f"{u + 1}::{'MF'[u % 2]}::{[1, 18, 25][u % 3]}::{u % 5}::{u % 9}0000")
    (folder / "sequences.txt").write_text("\n".join(lines) + "\n")
    (folder / "users.dat").write_text("\n".join(users) + "\n")
    return folder


@pytest.fixture
def tiny_ml(tmp_path) -> Path:
    return write_movielens(tmp_path / "tiny-ml")


def test_item_features_found_on_movielens(tiny_ml):
    log = load_dataset(tiny_ml, low_ratings_as_negatives=False)
    raw = raw_item_features(log)
    assert {"genres", "year", "title_words", "item_id"} <= set(raw)
    assert raw["year"][0] == ["1980"] and raw["genres"][0][0] in GENRES
    assert "1980" not in raw["title_words"][0]  # the year is its own feature
    assert title_words("The Matrix (1999)") == ["matrix"]
    with pytest.raises(ValueError, match="unknown item feature.*'brand'"):
        raw_item_features(log, ["genres", "brand"])
    with pytest.raises(FileNotFoundError, match="item feature table"):
        raw_item_features(log, table=tiny_ml / "missing.csv")


def test_generic_item_feature_table(tiny_ml):
    table = tiny_ml / "features.csv"
    table.write_text("item_id,colour,tags\n1,red,a|b\n2,blue,b\n")
    ids, raw = load_item_feature_table(table)
    assert ids == ["1", "2"] and raw["tags"] == [["a", "b"], ["b"]]
    log = load_dataset(tiny_ml, low_ratings_as_negatives=False)
    merged = raw_item_features(log, ["colour", "tags"], table=table)
    index = log.item_index[1]
    assert merged["colour"][index] == ["red"]
    enc = ItemFeatureEncoder(["tags"]).fit(merged)
    assert enc.transform(merged)[0].shape[1] == 2


def test_looc_cold_items_never_reach_training(tiny_ml):
    log = load_dataset(tiny_ml, low_ratings_as_negatives=False)
    split = leave_one_out_cold(log, seed_users=10, seed=1)
    cold = set(split.cold_items.tolist())
    assert cold and not (set(split.train.item.tolist()) & cold)
    assert not (set(split.warm_log.item.tolist()) & cold)
    assert set(split.cold.targets.tolist()) <= cold
    assert not (set(split.cold.history_items.tolist()) & cold)
    # Every user whose final item is cold is a cold user, and no warm test user is one.
    assert not set(split.cold.users.tolist()) & set(split.warm_test.users.tolist())


def _split_fingerprint(split) -> str:
    """A hash of every array of a LOOC split: its logs, cold items and evaluation sets."""
    import hashlib

    h = hashlib.sha256()
    for es in (split.cold, split.warm_test, split.warm_split.eval_set("valid")):
        for a in (es.users, es.history_offsets, es.history_items, es.targets, es.target_rows, es.history_rows):
            h.update(np.ascontiguousarray(a, np.int64).tobytes())
    for lg in (split.log, split.warm_log, split.train):
        for a in (lg.user, lg.item, lg.label):
            h.update(np.ascontiguousarray(a, np.int64).tobytes())
    h.update(np.asarray(split.cold_items, np.int64).tobytes())
    return h.hexdigest()[:16]


def _same_eval_set(a, b) -> bool:
    return a.stage == b.stage and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in (
        "users", "history_offsets", "history_items", "history_negatives_offsets", "history_negatives", "targets",
        "target_rows", "history_rows"))


def _same_log(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("user", "item", "label", "time", "item_ids"))


def test_looc_without_cold_validation_is_the_split_it_always_was():
    log = load_dataset("synthetic:300x400")
    # The hashes of the split made by cold.py before the cold validation set existed (commit bfca762)
    # on this synthetic log: existing LOOC results stay reproducible. (A change to the synthetic
    # generator changes them too: recompute them with that commit's cold.py.)
    pinned = {False: "0d8d0e4bb0950d41", True: "4d67d3cabaf99b19"}
    for cold_last in (False, True):
        before = leave_one_out_cold(log, 20, 3, cold_last=cold_last)
        assert _split_fingerprint(before) == pinned[cold_last]
        off = leave_one_out_cold(log, 20, 3, cold_last=cold_last, valid_seed_users=0, valid_seed=11)
        assert _split_fingerprint(off) == pinned[cold_last]
        for name in ("log", "warm_log", "train"):
            assert _same_log(getattr(off, name), getattr(before, name))
        for name in ("cold_items", "test_cold_items", "valid_cold_items"):
            assert np.array_equal(getattr(off, name), getattr(before, name))
        assert _same_eval_set(off.cold, before.cold) and _same_eval_set(off.warm_test, before.warm_test)
        assert _same_eval_set(off.warm_valid, before.warm_split.eval_set("valid"))
        assert off.cold_valid is None and len(off.valid_cold_items) == 0
        assert np.array_equal(off.test_cold_items, off.cold_items)
        assert off.summary() == before.summary() and set(off.summary()) == {
            "cold_items", "cold_users", "warm_test_users", "train_rows", "removed_rows"}


@pytest.mark.parametrize("cold_last", [False, True])
def test_looc_cold_validation_set(cold_last):
    log = load_dataset("synthetic:300x400")
    plain = leave_one_out_cold(log, 20, 3, cold_last=cold_last)
    split = leave_one_out_cold(log, 20, 3, cold_last=cold_last, valid_seed_users=20)
    raw = split.log.item_ids
    # The test cold set is the one without the validation draw (by raw id: cold_last renumbers).
    assert sorted(raw[split.test_cold_items]) == sorted(plain.log.item_ids[plain.cold_items])
    assert np.array_equal(split.cold.users, plain.cold.users)
    assert np.array_equal(raw[split.cold.targets], plain.log.item_ids[plain.cold.targets])
    test_cold, valid_cold = set(split.test_cold_items.tolist()), set(split.valid_cold_items.tolist())
    assert valid_cold and not test_cold & valid_cold
    assert set(split.cold_items.tolist()) == test_cold | valid_cold
    assert np.array_equal(split.cold_items, np.sort(split.cold_items))
    # Neither kind reaches anything fitted.
    assert not set(split.train.item.tolist()) & (test_cold | valid_cold)
    assert not set(split.warm_log.item.tolist()) & (test_cold | valid_cold)
    # Validation cold users: a validation cold target that is their final positive; no cold item in
    # any cold user's history (the other kind's cold items are dropped from it too).
    cv = split.cold_valid
    assert len(cv) and cv.stage == "valid" and set(cv.targets.tolist()) <= valid_cold
    assert set(split.cold.targets.tolist()) <= test_cold
    for es in (cv, split.cold):
        assert not set(es.history_items.tolist()) & (test_cold | valid_cold)
        assert np.array_equal(split.log.item[es.target_rows], es.targets)
        assert np.array_equal(split.warm_log.item[es.history_rows], es.history_items)
    pos = split.log.label == 1
    final_row = {u: r for r, u in zip(np.flatnonzero(pos), split.log.user[pos])}  # the last write wins
    assert all(final_row[u] == r for u, r in zip(cv.users.tolist(), cv.target_rows.tolist()))
    # The sets are disjoint in users where a user's targets would disagree.
    users = {name: set(getattr(split, name).users.tolist()) for name in ("cold", "cold_valid", "warm_test",
                                                                          "warm_valid")}
    for a, b in (("cold", "cold_valid"), ("cold", "warm_test"), ("cold_valid", "warm_test"),
                 ("cold_valid", "warm_valid")):
        assert not users[a] & users[b], (a, b)
    # Warm validation = the warm split's validation users but the validation cold ones (test cold
    # users stay, as without the draw); the validation cold users leave the warm test set too.
    assert users["warm_valid"] == set(split.warm_split.eval_set("valid").users.tolist()) - users["cold_valid"]
    assert users["cold"] & users["warm_valid"]
    assert users["warm_test"] <= set(plain.warm_test.users.tolist()) - users["cold_valid"]
    summary = split.summary()
    assert summary["test_cold_items"] == len(test_cold) and summary["valid_cold_items"] == len(valid_cold)
    assert summary["cold_valid_users"] == len(cv) and summary["cold_items"] == len(test_cold | valid_cold)
    if cold_last:  # every cold item, of either kind, numbered last; the warm catalogue is the rest
        n_warm = split.log.n_items - len(split.cold_items)
        assert np.array_equal(split.cold_items, np.arange(n_warm, split.log.n_items))
        assert split.warm_catalogue().n_items == n_warm
    else:
        with pytest.raises(ValueError, match="cold_last=True"):
            split.warm_catalogue()
    # The draws do not depend on the numbering, but on the validation seed (default: seed + 1).
    other = leave_one_out_cold(log, 20, 3, cold_last=not cold_last, valid_seed_users=20)
    assert sorted(other.log.item_ids[other.valid_cold_items]) == sorted(raw[split.valid_cold_items])
    assert np.array_equal(other.cold_valid.users, cv.users)
    same = leave_one_out_cold(log, 20, 3, cold_last=cold_last, valid_seed_users=20, valid_seed=4)
    assert np.array_equal(same.valid_cold_items, split.valid_cold_items)
    moved = leave_one_out_cold(log, 20, 3, cold_last=cold_last, valid_seed_users=20, valid_seed=5)
    assert not np.array_equal(moved.cold_valid.users, cv.users)


def test_looc_cold_validation_sizes_are_checked():
    log = load_dataset("synthetic:300x400")
    with pytest.raises(DataError, match=r"valid_seed_users must lie in 0\.\.\d+ .*lower data.cold_valid_users"):
        leave_one_out_cold(log, 20, 3, valid_seed_users=10_000)
    with pytest.raises(DataError, match="valid_seed_users must be >= 0"):
        leave_one_out_cold(log, 20, 3, valid_seed_users=-1)


def _model(n_items=6, cards=(5, 4, 7)) -> RetrievalFormer:
    cfg = RetrievalFormerConfig(n_items=n_items, max_len=8, d_model=16, n_heads=2, fusion_heads=2, n_layers=1,
                                item_feature_names=["genres", "year", "item_id"], item_feature_widths=[2, 1, 1],
                                item_feature_cardinalities=list(cards), user_feature_cardinalities=[3])
    model = RetrievalFormer(cfg)
    tables = [torch.randint(0, cards[0], (n_items, 2)), torch.randint(1, cards[1], (n_items, 1)),
              torch.arange(1, n_items + 1)[:, None]]
    model.set_item_features(tables)
    return model.eval()


def test_attention_value_pooling_starts_as_the_mean_and_can_single_out_a_value():
    torch.manual_seed(0)
    mean = _model()
    torch.manual_seed(0)
    cfg = RetrievalFormerConfig(**{**mean.config.__dict__, "value_pooling": "attention"})
    attention = RetrievalFormer(cfg)
    attention.load_state_dict({**mean.state_dict(), "value_queries": torch.zeros(3, 16)})
    attention.eval()
    # Zero queries: every present value weighs the same, as the mean.
    with torch.no_grad():
        torch.testing.assert_close(attention.item_vectors(), mean.item_vectors())
    # A query that prefers value 1: [1, 3] pools to (almost) value 1 alone; the mean does not.
    two, one = [torch.tensor([[1, 3]])], [torch.tensor([[1, 0]])]
    rest = [torch.tensor([[2]]), torch.tensor([[0]])]
    with torch.no_grad():
        gap = attention.feature_tables[0].weight[1] - attention.feature_tables[0].weight[3]
        attention.value_queries[0] = 1e3 * gap / gap.square().sum()  # value 1's logit 1,000 above value 3's
        assert torch.allclose(attention.encode_features(two + rest), attention.encode_features(one + rest), atol=1e-4)
        assert not torch.allclose(mean.encode_features(two + rest), mean.encode_features(one + rest), atol=1e-2)
        # An item without any value of a feature: no NaN, the feature is masked as missing.
        empty = attention.encode_features([torch.zeros(1, 2, dtype=torch.long), *rest])
    assert torch.isfinite(empty).all()
    with pytest.raises(ValueError, match="value_pooling must be 'mean', 'attention' or 'idf'"):
        RetrievalFormer(RetrievalFormerConfig(**{**mean.config.__dict__, "value_pooling": "max"}))


def test_idf_value_pooling_weighs_rare_values_and_its_weights_come_from_warm_items_only(tiny_ml):
    from genret.data.item_features import value_idf
    from genret.training.retrievalformer_datamodule import RetrievalFormerDataModule
    from genret.training.retrievalformer_module import RetrievalFormerModule

    torch.manual_seed(0)
    mean = _model()
    idf = RetrievalFormer(RetrievalFormerConfig(**{**mean.config.__dict__, "value_pooling": "idf"}))
    idf.load_state_dict({**mean.state_dict(), **{k: v for k, v in idf.state_dict().items() if "value_weight" in k}})
    idf.eval()
    with torch.no_grad():  # equal weights pool as the mean
        torch.testing.assert_close(idf.item_vectors(), mean.item_vectors())
    idf.set_value_weights([torch.tensor([0.0, 5.0, 1.0, 1e-6, 1.0]), torch.ones(4), torch.ones(7)])
    two, one = [torch.tensor([[1, 3]])], [torch.tensor([[1, 0]])]
    rest = [torch.tensor([[2]]), torch.tensor([[0]])]
    with torch.no_grad():  # value 3 weighs (almost) nothing beside value 1
        assert torch.allclose(idf.encode_features(two + rest), idf.encode_features(one + rest), atol=1e-4)
        assert not torch.allclose(mean.encode_features(two + rest), mean.encode_features(one + rest), atol=1e-2)
    with pytest.raises(ValueError, match="value weights of 'genres' must be 5 finite, non-negative"):
        idf.set_value_weights([-torch.ones(5), torch.ones(4), torch.ones(7)])
    with pytest.raises(ValueError, match="value weights are for value_pooling 'idf'"):
        mean.set_value_weights([torch.ones(5), torch.ones(4), torch.ones(7)])
    # The weights: smoothed IDF among the fitting rows; a value seen only on other rows counts as unseen.
    table = np.array([[1, 2], [1, 0], [1, 3], [3, 3]])
    w = value_idf(table, 4, np.array([True, True, True, False]))
    np.testing.assert_allclose(w, [0.0, 1.0, 1 + np.log(4 / 2), 1 + np.log(4 / 2)], rtol=1e-6)
    # Under LOOC the data module fits them on the warm items and the module hands them to the model.
    dm = RetrievalFormerDataModule(data=str(tiny_ml), load_kwargs={"low_ratings_as_negatives": False}, max_len=8,
                                   protocol="looc", cold_seed_users=10, min_count=1)
    dm.setup()
    warm = np.ones(dm.n_items, bool)
    warm[dm.cold_split.cold_items] = False
    module = RetrievalFormerModule(config=RetrievalFormerConfig(d_model=16, n_heads=2, fusion_heads=2,
                                                                value_pooling="idf"))
    module.build_from_data(dm)
    for f, t in enumerate(dm.item_feature_tables):
        np.testing.assert_allclose(getattr(module.model, f"value_weight_{f}").numpy(),
                                   value_idf(t, dm.item_feature_cardinalities[f], warm))
    assert "model.value_weight_0" in module.state_dict()  # the checkpoint carries them


def test_model_scores_an_unseen_item_from_its_features():
    model = _model()
    tables = model.feature_tables_of()
    # A new item with item 2's genres and year but no id row: the tower places it from features alone.
    new = [tables[0][2:3], tables[1][2:3], torch.zeros(1, 1, dtype=torch.long)]
    with torch.no_grad():
        vector = model.encode_features(new)
        users = model.user_vectors(torch.tensor([[0, 1, -1]]).roll(1, 1), torch.tensor([[1]]))
    assert vector.shape == (1, 16) and torch.isfinite(vector).all()
    assert torch.isfinite(users @ vector.T).all()
    # Features decide the vector: the same features give the same vector.
    with torch.no_grad():
        assert torch.allclose(model.encode_features(new), vector)


def test_retrievalformer_trains_round_trips_and_serves_cold_items(tiny_ml, tmp_path):
    pytest.importorskip("faiss")
    from genret.decoding.retrievalformer_retriever import RetrievalFormerRetriever
    from genret.eval.retrievalformer_benchmark import run_retrievalformer

    config = Path(__file__).resolve().parents[2] / "configs" / "retrievalformer_ml1m.yaml"
    out = tmp_path / "run"
    res = run_retrievalformer("retrievalformer", config, out, data=str(tiny_ml), ks=(5, 10, 20),
                              overrides=["--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
                                         "--data.batch_size", "16", "--data.protocol", "looc",
                                         "--data.cold_seed_users", "8", "--data.min_count", "1"])
    extra = res["extra"]
    for block in ("cold", "warm"):
        assert set(extra[block]) == set(res["test"]) and "recall@20" in extra[block]
    assert set(extra["baselines"]["content"]) == {"cold", "warm"}
    dm = res["datamodule"]
    # Round trip: the checkpoint's retriever scores like the trained module.
    r = RetrievalFormerRetriever.from_checkpoint(res["checkpoint"], device="cpu")
    from genret.training.retrievalformer_module import load_retrievalformer

    model, _ = load_retrievalformer(res["checkpoint"])
    with torch.no_grad():
        assert torch.allclose(r.item_vectors(), model.item_vectors())
    history = [dm.log_all.item_ids[:3].tolist()]
    exact = r.retrieve(history, k=5)
    assert len(exact.items[0]) == 5
    # The user tower's profile by field name, as `genret decode` and the server pass it, or as an array.
    from genret.decoding.requests import RequestError

    assert r.user_feature_names == dm.user_feature_names and r.user_feature_names
    profile = dm.user_feats[0]
    by_name = r.retrieve(history, k=5, user_features={n: [int(v)] for n, v in zip(r.user_feature_names, profile)})
    assert by_name == r.retrieve(history, k=5, user_features=profile[None])
    assert by_name.scores != exact.scores  # the profile reaches the user vector
    with pytest.raises(RequestError, match="not fields this model embeds"):
        r.retrieve(history, k=5, user_features={"colour": [1]})
    with pytest.raises(RequestError, match="no per-action side features"):
        r.retrieve(history, k=5, side={"rating": [[5, 5, 5]]})
    with pytest.raises(RequestError, match="history 1 is empty after dropping unknown items"):
        r.retrieve(history + [["no-such-movie"]], k=5, unknown="drop")
    # ANN (flat and HNSW) through the same API agrees with exact search on this small catalogue.
    path = r.build_index("flat")
    assert path.is_file() and path.with_name(path.name + ".json").is_file()
    assert r.retrieve(history, k=5, search="ann").items == exact.items
    r.build_index("hnsw", save=False)
    assert set(r.retrieve(history, k=5, search="ann").items[0]) == set(exact.items[0])
    # Tuned on users' histories: the breadth chosen finds the whole exact top 5 of those users.
    r.build_index("hnsw", save=False, tune_histories=[history[0], history[0][:1]], target_recall=1.0, tune_k=5)
    assert r.ann.params["tuned"] == {"recall": 1.0, "target_recall": 1.0, "k": 5, "queries": 2}
    r2 = RetrievalFormerRetriever.from_checkpoint(res["checkpoint"], device="cpu", index="flat")
    assert r2.retrieve(history, k=5, search="ann").items == exact.items
    # Catalogue update: a new movie with a known genre and year joins the catalogue and the index.
    r.add_items([9999], {"genres": [["Comedy"]], "year": [["1985"]], "title_words": [["love", "city"]]})
    assert r.item_ids[-1] == 9999 and r.ann.n_items == len(r.item_ids)
    ranked = r.retrieve(history, k=len(r.item_ids))
    assert 9999 in ranked.items[0]
    with pytest.raises(ValueError, match="no known feature value"):
        r.add_items([10000], {"genres": [["Western"]], "year": [["1700"]], "title_words": [["zzz"]]})
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        r.add_items([10001], {"genres": [["Comedy"]], "year": [["1985"]], "title_words": [[]], "colour": [["red"]]})
    with pytest.raises(ValueError, match="no ANN index"):
        RetrievalFormerRetriever.from_checkpoint(res["checkpoint"], device="cpu").retrieve(history, 5, search="ann")


def test_cli_builds_a_tuned_index_and_decodes_through_it(tiny_ml, tmp_path, capsys):
    """genret build-index writes a tuned index beside the checkpoint; decode --index searches it;
    --index is refused, by name, for a family without one and where the index was not built."""
    pytest.importorskip("faiss")
    import importlib.util
    import json

    from genret.cli import main
    from genret.eval.retrievalformer_benchmark import run_retrievalformer

    config = Path(__file__).resolve().parents[2] / "configs" / "retrievalformer_ml1m.yaml"
    res = run_retrievalformer("retrievalformer", config, tmp_path / "run", data=str(tiny_ml), ks=(5,),
                              overrides=["--trainer.max_epochs", "1", "--data.batch_size", "16", "--data.min_count", "1"])
    ckpt = res["checkpoint"]
    ids = res["datamodule"].log_all.item_ids.tolist()
    histories = tmp_path / "h.jsonl"
    histories.write_text("".join(json.dumps({"user": u, "history": ids[u:u + 4]}) + "\n" for u in range(12)))
    assert main(["build-index", "--checkpoint", str(ckpt), "--kind", "hnsw", "--tune_histories", str(histories),
                 "--target_recall", "1.0", "--k", "5"]) == 0
    sidecar = json.loads(Path(f"{ckpt}.hnsw.faiss.json").read_text())
    assert sidecar["params"]["tuned"] == {"recall": 1.0, "target_recall": 1.0, "k": 5, "queries": 12}
    out = {}
    for name, extra in (("exact", []), ("ann", ["--index", "hnsw"])):
        assert main(["decode", "--checkpoint", str(ckpt), "--histories", str(histories), "--k", "5",
                     "--out", str(tmp_path / f"{name}.jsonl"), *extra]) == 0
        out[name] = [json.loads(line)["items"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert [set(row) for row in out["ann"]] == [set(row) for row in out["exact"]]
    # What `genret serve --index hnsw` loads (with the options it gives every family).
    from genret.serving import load_retriever

    served = load_retriever(ckpt, "cpu", index="hnsw", kernel="torch")
    assert served.search == "ann" and served.ann.params["tuned"]["recall"] == 1.0
    with pytest.raises(SystemExit, match="--index ivfpq: no index beside .*genret build-index"):
        main(["decode", "--checkpoint", str(ckpt), "--histories", str(histories), "--index", "ivfpq"])
    spec = importlib.util.spec_from_file_location("decoding_conftest", Path(__file__).parents[1] / "decoding" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dualgr = module.write_tiny_checkpoint(tmp_path / "dualgr.ckpt")
    for command in (["serve", "--checkpoint", str(dualgr), "--index", "hnsw"],
                    ["build-index", "--checkpoint", str(dualgr)]):
        with pytest.raises(SystemExit, match="holds a 'dualgr' model; only RetrievalFormer"):
            main(command)


def test_ann_agrees_with_exact_on_a_small_catalogue():
    pytest.importorskip("faiss")
    from genret.decoding.ann import ANNIndex

    rng = np.random.default_rng(0)
    items = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = rng.standard_normal((50, 32)).astype(np.float32)
    exact = np.argsort(-(queries @ items.T), axis=1)[:, :10]
    _, flat = ANNIndex.build(items, "flat").search(queries, 10)
    assert (flat == exact).all()
    _, hnsw = ANNIndex.build(items, "hnsw").search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw, exact)])
    assert recall >= 0.95
    _, ivf = ANNIndex.build(items, "ivfpq", nlist=16, nprobe=16).search(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ivf, exact)]) >= 0.3  # PQ is lossy
    # Exact re-ranking of 4k PQ candidates, with an HNSW coarse quantiser (the 10M-item setting).
    refined = ANNIndex.build(items, "ivfpq", nlist=16, nprobe=16, coarse="hnsw", kmeans_iters=10, refine=4)
    _, ivf = refined.search(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ivf, exact)]) >= 0.9
    with pytest.raises(ValueError, match="unknown ANN index kind"):
        ANNIndex.build(items, "lsh")


def test_ann_tuning_picks_the_smallest_breadth_that_reaches_the_target(tmp_path):
    pytest.importorskip("faiss")
    from genret.decoding.ann import ANNIndex

    rng = np.random.default_rng(1)
    items = rng.standard_normal((4000, 32)).astype(np.float32)  # no structure: hard for a sparse graph
    queries = rng.standard_normal((64, 32)).astype(np.float32)
    exact = np.argsort(-(queries @ items.T), axis=1)[:, :20]

    def recall(index):
        found = index.search(queries, 20)[1]
        return np.mean([len(set(a) & set(b)) / 20 for a, b in zip(found, exact)])

    hnsw = ANNIndex.build(items, "hnsw", hnsw_m=4, ef_construction=16, ef_search=20)
    before = recall(hnsw)
    report = hnsw.tune(items, queries, k=20, target_recall=0.9)
    assert before < 0.9 <= report["recall"] == recall(hnsw)
    ladder = report["ladder"]
    assert [v for v, _ in ladder] == [20 * 2 ** i for i in range(len(ladder))] and len(ladder) > 1
    assert all(r < 0.9 for _, r in ladder[:-1]) and hnsw.index.hnsw.efSearch == report["value"] == ladder[-1][0]
    path = hnsw.save(tmp_path / "i.faiss")
    again = ANNIndex.load(path)
    assert again.index.hnsw.efSearch == report["value"] and again.params["tuned"]["recall"] == report["recall"]
    ivf = ANNIndex.build(items, "ivfpq", nlist=32, nprobe=1, refine=4)
    report = ivf.tune(items, queries, k=20, target_recall=0.8)
    assert report["param"] == "nprobe" and report["recall"] >= 0.8 and recall(ivf) == report["recall"]
    assert all(r < 0.8 for _, r in report["ladder"][:-1])
    # A target out of reach keeps the largest breadth tried and says so.
    with pytest.warns(UserWarning, match="below the target 0.999"):
        report = ANNIndex.build(items, "hnsw", hnsw_m=4, ef_construction=16).tune(items, queries, k=20,
                                                                                 target_recall=0.999, max_breadth=64)
    assert report["value"] == 64 and report["recall"] < 0.999
    with pytest.raises(ValueError, match="tune needs the 4000 indexed item vectors"):
        hnsw.tune(items[:10], queries)
    assert ANNIndex.build(items, "flat").tune(items, queries)["recall"] == 1.0


def test_benchmark_looc_cli(tiny_ml, tmp_path, capsys):
    import json

    from genret.cli import main

    config = Path(__file__).resolve().parents[2] / "configs"
    # An ID-only family says it cannot score cold items instead of failing.
    out = tmp_path / "sasrec"
    assert main(["benchmark", "--model", "sasrec", "--data", str(tiny_ml), "--config", str(config / "sasrec_ml1m.yaml"),
                 "--out", str(out), "--protocol", "looc"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cold"]["supported"] is False and "cannot score cold items" in metrics["cold"]["reason"]
    # RetrievalFormer writes cold / warm blocks with the test keys and the content baseline.
    out = tmp_path / "rf"
    assert main(["benchmark", "--model", "retrievalformer", "--data", str(tiny_ml), "--config",
                 str(config / "retrievalformer_ml1m.yaml"), "--out", str(out), "--protocol", "looc", "--ks", "5,20",
                 "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--data.batch_size", "16",
                 "--data.cold_seed_users", "8", "--data.min_count", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["cold"]) == set(metrics["test"]) == set(metrics["warm"])
    assert set(metrics["baselines"]["content"]) == {"cold", "warm"} and "cold_val" not in metrics
    assert metrics["training"]["stopped_by"] == "max_epochs" and metrics["training"]["epochs"] == 1
    assert metrics["looc"]["cold_items"] > 0
    # With a cold validation set: "cold_val" with the same keys as "cold", for the model and the baseline.
    out = tmp_path / "rf_cold_val"
    assert main(["benchmark", "--model", "retrievalformer", "--data", str(tiny_ml), "--config",
                 str(config / "retrievalformer_ml1m.yaml"), "--out", str(out), "--protocol", "looc", "--ks", "5,20",
                 "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--data.batch_size", "16",
                 "--data.cold_seed_users", "8", "--data.cold_valid_users", "8", "--data.min_count", "1"]) == 0
    with_val = json.loads((out / "metrics.json").read_text())
    content = with_val["baselines"]["content"]
    assert set(with_val["cold_val"]) == set(with_val["cold"]) and "recall@20" in with_val["cold_val"]
    assert set(content) == {"cold", "warm", "cold_val"} and set(content["cold_val"]) == set(content["cold"])
    assert with_val["cold_val"]["n_users"] == with_val["looc"]["cold_valid_users"] == content["cold_val"]["n_users"] > 0
    assert with_val["cold"]["n_users"] == metrics["cold"]["n_users"]  # the same cold test users
    # The paired difference to the baseline on each cold set, as the target ("above the baseline") needs.
    for name in ("cold", "cold_val"):
        paired = with_val["vs_content"][name]["hr@20"]
        assert paired["n_users"] == with_val[name]["n_users"]
        assert paired["diff"] == pytest.approx(with_val[name]["hr@20"] - content[name]["hr@20"])
        assert paired["ci95"][0] <= paired["diff"] <= paired["ci95"][1]


@pytest.mark.parametrize("name", ["retrievalformer_ml1m.yaml", "retrievalformer_amazon.yaml",
                                  "retrievalformer_ml1m_looc.yaml", "retrievalformer_amazon_looc.yaml",
                                  "retrievalformer_content_ml1m_looc.yaml",
                                  "retrievalformer_content_amazon_looc.yaml"])
def test_shipped_configs_build(name, tmp_path):
    from genret.families import family_for_config
    from genret.training.run import build

    config = Path(__file__).resolve().parents[2] / "configs" / name
    family = family_for_config(config)
    assert family.name == "retrievalformer"
    module, dm, _ = build(family, config, tmp_path)
    assert module.loss_name in ("full_softmax", "sampled_softmax") and dm.targets == "every_position"
    assert dm.protocol == ("looc" if "looc" in name else "loo")
    if dm.protocol == "looc":  # warm and cold items described alike: features only, no item id
        import yaml

        features = yaml.safe_load(config.read_text())["data"]["item_features"]
        assert (features == "content" or "item_id" not in features) and module.config.id_dropout == 0.0


def test_benchmark_evaluates_a_retrievalformer_checkpoint(tiny_ml, tmp_path):
    import json

    from genret.cli import main

    config = str(Path(__file__).resolve().parents[2] / "configs" / "retrievalformer_ml1m.yaml")
    common = ["benchmark", "--model", "retrievalformer", "--data", str(tiny_ml), "--config", config, "--ks", "5,20",
              "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--data.batch_size", "16"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--checkpoint", str(tmp_path / "a" / "model.ckpt")]) == 0
    a, b = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in "ab")
    assert a["test"] == b["test"] and b["train_seconds"] == 0.0


def test_looc_cold_validation_items_never_reach_retrievalformer_training(tiny_ml):
    from genret.training.retrievalformer_datamodule import RetrievalFormerDataModule

    dm = RetrievalFormerDataModule(data=str(tiny_ml), load_kwargs={"low_ratings_as_negatives": False}, max_len=8,
                                   protocol="looc", cold_seed_users=10, cold_valid_users=10, min_count=1)
    dm.setup()
    split = dm.cold_split
    assert len(split.valid_cold_items) and np.array_equal(split.cold_items, np.union1d(split.test_cold_items,
                                                                                         split.valid_cold_items))
    # Neither kind is a training target or negative, nor in the feature vocabularies' fit.
    assert not dm.train_item_mask[split.cold_items].any()
    assert dm.train_item_mask.sum() == dm.n_items - len(split.cold_items)
    assert not np.isin(dm.train_items, split.cold_items).any()
    cv = dm.eval_sets["cold_valid"]
    assert len(cv) and set(cv.targets.tolist()) <= set(split.valid_cold_items.tolist())
    assert not set(cv.users.tolist()) & set(dm.eval_sets["valid"].users.tolist())
    assert not set(cv.users.tolist()) & set(dm.eval_sets["test"].users.tolist())
    batch = dm.eval_batch("cold_valid", np.arange(len(cv)))  # its histories are the log's positives (checked in setup)
    assert batch["user_features"].shape[0] == len(cv)
    with pytest.raises(ValueError, match="data.cold_valid_users must be >= 0"):
        RetrievalFormerDataModule(data=str(tiny_ml), protocol="looc", cold_valid_users=-1)


def test_looc_training_never_uses_cold_items_as_negatives(tiny_ml):
    from genret.training.retrievalformer_datamodule import RetrievalFormerDataModule
    from genret.training.retrievalformer_module import RetrievalFormerModule

    dm = RetrievalFormerDataModule(data=str(tiny_ml), load_kwargs={"low_ratings_as_negatives": False}, max_len=8,
                                   protocol="looc", cold_seed_users=10, min_count=1)
    dm.setup()
    cold = dm.cold_split.cold_items
    assert not dm.train_item_mask[cold].any() and dm.train_item_mask.sum() == dm.n_items - len(cold)
    for loss in ("full_softmax", "sampled_softmax"):
        module = RetrievalFormerModule(loss=loss, logq_correction=loss == "sampled_softmax", uniform_negatives=64)
        module.build_from_data(dm)
        assert not np.isin(module.train_items.numpy(), cold).any()
        batch = dm.train_batch(np.arange(min(4, len(dm.train_users))))
        # A cold item's vector gets no gradient from the loss: it is neither a target nor a negative.
        loss_value, _ = module.loss(batch)
        tables = module.model.feature_tables_of()
        cold_only_rows = torch.from_numpy(cold)
        with torch.no_grad():
            assert torch.isfinite(loss_value)
        assert module.cold_mask[cold_only_rows].all() and tables[0].shape[0] == dm.n_items


def test_retrievalformer_sweep_reads_validation_only(tiny_ml, tmp_path, monkeypatch):
    """`--sweep` on RetrievalFormer under LOOC ranks the validation users and the validation cold users,
    never a test user, and reports the paired cold-validation differences a cold-start choice needs."""
    import json

    import genret.eval.retrievalformer_benchmark as rfb
    from genret.cli import main

    ranked_sets = []
    real = rfb.eval_retrievalformer

    def spy(model, dm, es, k):
        ranked_sets.append(next(name for name, s in dm.eval_sets.items() if s is es))
        return real(model, dm, es, k)

    monkeypatch.setattr(rfb, "eval_retrievalformer", spy)
    config = str(Path(__file__).resolve().parents[2] / "configs" / "retrievalformer_ml1m.yaml")
    out = tmp_path / "sweep"
    assert main(["benchmark", "--model", "retrievalformer", "--data", str(tiny_ml), "--config", config,
                 "--out", str(out), "--protocol", "looc", "--ks", "5,20", "--sweep", "model.config.normalize=false,true",
                 "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--data.batch_size", "16",
                 "--data.cold_seed_users", "8", "--data.cold_valid_users", "8", "--data.min_count", "1"]) == 0
    assert sorted(set(ranked_sets)) == ["cold_valid", "valid"] and len(ranked_sets) == 4
    sweep = json.loads((out / "metrics.json").read_text())["sweep"]
    assert sweep["key"] == "model.config.normalize" and sweep["reference"] == "false"
    rows = sweep["results"]
    assert "recall@20" in rows["true"]["cold_val"]["mean"] and "recall@20" in rows["true"]["val"]["mean"]
    assert set(rows["true"]["paired_cold_val"]) == {"hr@5", "hr@20"} and rows["false"]["paired_cold_val"] is None
    assert "test" not in rows["true"]
    # The floor a cold-start setting must clear, on the same validation cold users, in the record and the report.
    assert "recall@20" in sweep["content_cold_val"]
    assert sweep["content_cold_val"]["n_users"] == rows["true"]["cold_val"]["n_users"] > 0
    assert "content-only baseline on the same cold validation users" in (out / "report.md").read_text()
    # A validation-only run measures what a full run of the same settings measures on validation.
    full = rfb.run_retrievalformer("retrievalformer", config, tmp_path / "full", data=str(tiny_ml), ks=(5, 20),
                                   overrides=[
                                       "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
                                       "--data.batch_size", "16", "--data.protocol", "looc",
                                       "--data.cold_seed_users", "8", "--data.cold_valid_users", "8",
                                       "--data.min_count", "1", "--model.config.normalize", "true"])
    assert full["val"]["recall@20"] == rows["true"]["val"]["mean"]["recall@20"]
    assert full["cold_val"]["recall@20"] == rows["true"]["cold_val"]["mean"]["recall@20"]


def test_retrievalformer_resume_is_refused(tiny_ml, tmp_path):
    from genret.cli import main

    config = str(Path(__file__).resolve().parents[2] / "configs" / "retrievalformer_ml1m.yaml")
    with pytest.raises(SystemExit):
        main(["benchmark", "--model", "retrievalformer", "--data", str(tiny_ml), "--config", config,
              "--out", str(tmp_path / "x"), "--resume"])


def test_content_item_features_on_amazon_copies_with_and_without_optional_files(tmp_path):
    """`data.item_features: content` (configs/retrievalformer_amazon_looc.yaml) takes whatever content a
    copy has, never the item id, and names the problem when a copy has none."""
    import json

    from genret.training.retrievalformer_datamodule import RetrievalFormerDataModule

    def copy(name, titles, attributes):
        folder = tmp_path / name
        folder.mkdir()
        rng = np.random.default_rng(0)
        (folder / "sequential.txt").write_text("".join(
            " ".join(map(str, [u, *rng.choice(np.arange(1, 31), size=6, replace=False).tolist()])) + "\n"
            for u in range(1, 41)))
        if attributes:
            (folder / "item2attributes.json").write_text(json.dumps({str(i): [i % 5 + 1, 9] for i in range(1, 31)}))
        if titles:
            (folder / "titles.tsv").write_text("item_id\tasin\ttitle\n" + "".join(
                f"{i}\tA{i}\tbrand{i % 4} face cream\n" for i in range(1, 31)))
        return str(folder)

    found = {}
    for name, titles in (("full", True), ("no_titles", False)):
        dm = RetrievalFormerDataModule(data=copy(name, titles, True), item_features="content", min_count=1,
                                       batch_size=8)
        dm.setup()
        found[name] = dm.item_features
    assert "item_id" not in found["full"] and {"attributes", "title_words"} <= set(found["full"])
    assert found["no_titles"] == ["attributes"]
    dm = RetrievalFormerDataModule(data=copy("sequential_only", False, False), item_features="content")
    with pytest.raises(ValueError, match="no item feature besides the item id"):
        dm.setup()
    with pytest.raises(ValueError, match="data.item_features must be a list of feature names"):
        RetrievalFormerDataModule(data="synthetic", item_features="everything")
