"""RetrievalFormer's content term (`model.config.content_weight`): the content baseline's score added
at ranking time, chosen on validation over one trained checkpoint, served by exact search."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.test_retrievalformer import write_movielens

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = ["--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--data.batch_size", "16",
        "--data.min_count", "1"]


@pytest.fixture
def tiny_ml(tmp_path) -> Path:
    return write_movielens(tmp_path / "tiny-ml")


def _looc_module(tiny_ml, content_weight):
    from genret.models.retrievalformer import RetrievalFormerConfig
    from genret.training.retrievalformer_datamodule import RetrievalFormerDataModule
    from genret.training.retrievalformer_module import RetrievalFormerModule

    dm = RetrievalFormerDataModule(data=str(tiny_ml), load_kwargs={"low_ratings_as_negatives": False}, max_len=8,
                                   protocol="looc", cold_seed_users=10, min_count=1, item_features="content")
    dm.setup()
    torch.manual_seed(0)
    module = RetrievalFormerModule(config=RetrievalFormerConfig(d_model=16, n_heads=2, fusion_heads=2,
                                                                normalize=True, content_weight=content_weight))
    module.build_from_data(dm)
    return module.model.eval(), dm


def test_content_term_is_the_content_baselines_score_added_to_the_model(tiny_ml):
    from genret.eval.retrievalformer_benchmark import content_vectors, eval_retrievalformer

    model, dm = _looc_module(tiny_ml, 1.0)
    # The rows are the content baseline's (IDF from the warm items only), bit for bit.
    baseline = content_vectors(dm)
    np.testing.assert_allclose(model.content_rows().toarray(), baseline.toarray(), rtol=1e-5, atol=1e-7)
    es = dm.eval_sets["cold"]
    offsets, items = es.history_offsets, es.history_items
    scores = model.content_scores(offsets, items).numpy()
    u = int(np.flatnonzero(np.diff(offsets) > 0)[0])
    hist = items[offsets[u]:offsets[u + 1]]
    expected = np.asarray(baseline[hist].mean(0) @ baseline.T).ravel()
    np.testing.assert_allclose(scores[u], expected, rtol=1e-5, atol=1e-6)
    assert not scores[np.diff(offsets) == 0].any()  # an empty history has no content score
    # Ranking adds beta x that score to x_u . y_i: with beta 0 the model alone, with a huge beta the
    # baseline's order (the first item is the best content match the history does not hold).
    with torch.no_grad():
        model.set_content_weight(0.0)
        alone = eval_retrievalformer(model, dm, es, 3)
        model.set_content_weight(1e6)
        mixed = eval_retrievalformer(model, dm, es, 3)
    masked = scores.copy()
    for u in range(len(es)):
        masked[u, items[offsets[u]:offsets[u + 1]]] = -np.inf
    some = np.diff(offsets) > 0
    np.testing.assert_allclose(masked[some, mixed[some, 0]], masked[some].max(1), rtol=1e-6)
    assert not np.array_equal(alone, mixed)
    for u in range(len(es)):  # history excluded as always
        assert not set(mixed[u].tolist()) & set(items[offsets[u]:offsets[u + 1]].tolist())


def test_content_weight_settings_are_checked(tiny_ml):
    from genret.models.retrievalformer import RetrievalFormer, RetrievalFormerConfig

    model, dm = _looc_module(tiny_ml, 0.0)
    assert not hasattr(model, "value_weight_0")  # the paper's model carries nothing extra
    with pytest.raises(ValueError, match="content rows need the per-value IDF weights"):
        model.content_rows()
    with pytest.raises(ValueError, match="trained without per-value IDF weights: give the data module's value_idf"):
        model.set_content_weight(1.0)
    with pytest.raises(ValueError, match="content_weight must be >= 0"):
        model.set_content_weight(-1.0)
    with pytest.raises(ValueError, match="content_weight must be >= 0"):
        RetrievalFormer(RetrievalFormerConfig(**{**model.config.__dict__, "content_weight": float("nan")}))
    # A model trained without the term turns it on with the data's IDF and then scores as one trained with it.
    model.set_content_weight(1.0, [torch.from_numpy(w) for w in dm.value_idf])
    trained_with, _ = _looc_module(tiny_ml, 1.0)
    np.testing.assert_allclose(model.content_rows().toarray(), trained_with.content_rows().toarray())


def test_content_weight_is_swept_on_one_checkpoint_validation_only(tiny_ml, tmp_path):
    from genret.cli import main

    config = str(CONFIGS / "retrievalformer_ml1m_looc.yaml")
    common = ["benchmark", "--model", "retrievalformer", "--data", str(tiny_ml), "--config", config, "--ks", "5,20",
              "--protocol", "looc", "--data.cold_seed_users", "8", "--data.cold_valid_users", "8", *TINY]
    assert main([*common, "--out", str(tmp_path / "train")]) == 0
    ckpt = str(tmp_path / "train" / "model.ckpt")
    out = tmp_path / "sweep"
    assert main([*common, "--out", str(out), "--checkpoint", ckpt,
                 "--sweep", "model.config.content_weight=0,1000"]) == 0
    sweep = json.loads((out / "metrics.json").read_text())["sweep"]
    rows = sweep["results"]
    assert set(rows) == {"0", "1000"} and rows["1000"]["train_seconds"] == [0.0]
    # Beta 0 is the trained model as it was; a huge beta ranks the cold validation users as the baseline.
    plain = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert rows["0"]["val"]["mean"]["hr@20"] == plain["val"]["hr@20"]
    assert rows["1000"]["cold_val"]["mean"]["recall@20"] == sweep["content_cold_val"]["recall@20"]
    assert set(rows["1000"]["paired_cold_val"]) == {"hr@5", "hr@20"}
    # Any other model key still needs training once per value.
    with pytest.raises(SystemExit):
        main([*common, "--out", str(tmp_path / "refused"), "--checkpoint", ckpt,
              "--sweep", "model.config.normalize=false,true"])


def test_retriever_serves_the_content_term_exactly_and_through_ann(tiny_ml, tmp_path):
    from genret.decoding.retrievalformer_retriever import RetrievalFormerRetriever
    from genret.eval.retrievalformer_benchmark import run_retrievalformer

    res = run_retrievalformer("retrievalformer", CONFIGS / "retrievalformer_ml1m.yaml", tmp_path / "run",
                              data=str(tiny_ml), ks=(5,), stages=("valid",),
                              overrides=[*TINY, "--model.config.content_weight", "1000"])
    r = RetrievalFormerRetriever.from_checkpoint(res["checkpoint"], device="cpu")
    assert r.model.config.content_weight == 1000.0 and hasattr(r.model, "value_weight_0")  # round trip
    history = [r.item_ids[:3].tolist()]
    got = r.retrieve(history, k=5)
    rows = r.model.content_rows()
    content = np.asarray(rows[[0, 1, 2]].mean(0) @ rows.T).ravel()
    content[[0, 1, 2]] = -np.inf
    with torch.no_grad():
        users = r.user_vectors(np.array([0, 3]), np.array([0, 1, 2]))
    expected = (users @ r.item_vectors().T).numpy().ravel() + 1000.0 * content
    np.testing.assert_allclose(got.scores[0], np.sort(expected)[::-1][:5], rtol=1e-5)
    pytest.importorskip("faiss")
    # ANN: the index's nearest by the item tower and the best content matches, ranked by the whole
    # score. With candidates covering the catalogue it is exact search; with fewer, every item it
    # returns carries its exact score.
    r.build_index("flat", save=False)
    whole = r.retrieve(history, k=15, search="ann")  # 4 x (15 + 3) candidates >= 40 items
    exact = r.retrieve(history, k=15)
    assert whole.items == exact.items
    np.testing.assert_allclose(whole.scores[0], exact.scores[0], rtol=1e-5)
    r.CONTENT_POOL = 1
    few = r.retrieve(history, k=3, search="ann")
    index = {raw: i for i, raw in enumerate(r.item_ids.tolist())}
    np.testing.assert_allclose(few.scores[0], expected[[index[i] for i in few.items[0]]], rtol=1e-5)
    assert np.isclose(few.scores[0][0], np.max(expected))  # the best item is the top content match here
    # A new item joins the content term too: a copy of item 0's features (no id) matches item 0 fully.
    from genret.data import load_dataset
    from genret.data.item_features import raw_item_features

    raw = raw_item_features(load_dataset(str(tiny_ml), low_ratings_as_negatives=False), r.encoder.names)
    r.add_items([99999], {name: [raw[name][0]] for name in r.encoder.names if name != "item_id"})
    same = np.asarray((rows[0] @ rows.T).todense()).ravel() > 1 - 1e-6  # item 0 and any exact twin
    ranked = r.retrieve([r.item_ids[:1].tolist()], k=len(r.item_ids) - 1).items[0]
    assert ranked.index(99999) < int(same.sum())  # among the full matches, above every other item
    r.model.set_content_weight(0.0)  # the item tower alone: the index's own order
    r.build_index("flat", save=False)
    assert r.retrieve(history, k=5, search="ann").items == r.retrieve(history, k=5).items



@pytest.mark.parametrize("family_data", ["ml1m", "amazon"])
def test_content_recipes_are_the_paper_recipes_plus_the_content_weight(family_data):
    """The content recipes rank with the paper's model as its LOOC recipe trains it: every key but
    the content weight (and the output folder) is the same."""
    import yaml

    plain = yaml.safe_load((CONFIGS / f"retrievalformer_{family_data}_looc.yaml").read_text())
    content = yaml.safe_load((CONFIGS / f"retrievalformer_content_{family_data}_looc.yaml").read_text())
    assert plain["model"]["config"].get("content_weight", 0.0) == 0.0
    assert content["model"]["config"].pop("content_weight") > 0
    for cfg in (plain, content):
        cfg["trainer"].pop("default_root_dir")
    assert content == plain


def test_amazon_content_recipe_runs_on_a_copy_without_titles(tmp_path):
    """The family's recipe runs unchanged where a category has no titles.tsv: both parts of the score
    then read the attribute ids alone."""
    from genret.eval.retrievalformer_benchmark import run_retrievalformer

    folder = tmp_path / "amazon-no-titles"
    folder.mkdir()
    rng = np.random.default_rng(0)
    (folder / "sequential.txt").write_text("".join(
        " ".join(map(str, [u, *rng.choice(np.arange(1, 41), size=7, replace=False).tolist()])) + "\n"
        for u in range(1, 81)))
    (folder / "item2attributes.json").write_text(json.dumps({str(i): [i % 6 + 1, 10 + i % 3] for i in range(1, 41)}))
    res = run_retrievalformer("retrievalformer", CONFIGS / "retrievalformer_content_amazon_looc.yaml", tmp_path / "run",
                              data=str(folder), ks=(5, 20),
                              overrides=[*TINY, "--data.cold_seed_users", "8", "--data.eval_batch_size", "64"])
    extra = res["extra"]
    assert list(extra["item_features"]) == ["attributes"]
    assert res["datamodule"].item_features == ["attributes"]
    assert extra["cold"]["n_users"] > 0 and set(extra["vs_content"]) == {"cold"}
