"""DualGR's content term (`model.config.content_weight`, genret.models.content_term): the content
baseline's score plus the weight times the beams' probability, over the whole catalogue; carried by
checkpoints and exports, extended by new items' features, swept over one checkpoint on validation."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genret.decoding.retriever import Retriever
from genret.models.dualgr import DualGRConfig

TESTS = Path(__file__).resolve().parents[1]
CONFIGS = TESTS.parent / "configs"


def _load(name: str, path: Path):
    """A helper module beside other tests (importlib import mode: load it by path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cold = _load("dualgr_cold_start_tests", TESTS / "training" / "test_dualgr_cold_start.py")  # looc_dm, write_movielens


@pytest.fixture
def tiny_ml(tmp_path) -> Path:
    return cold.ml.write_movielens(tmp_path / "tiny-ml")


def _checkpoint(dm, path: Path, content_weight: float) -> Path:
    """An untrained DualGR's checkpoint on `dm`, written by the module's own hook."""
    from genret.training.dualgr_module import DualGRModule

    torch.manual_seed(0)
    module = DualGRModule(DualGRConfig(d_model=32, n_heads=4, n_blocks=1, d_ffn=64, dropout=0.0, long_window=30,
                                       short_window=4, use_dbr=False, content_weight=content_weight),
                          use_item_id=False)
    module.build_from_data(dm)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()}}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def _histories(es, users):
    off = es.history_offsets
    return [es.history_items[off[u]:off[u + 1]] for u in users]


def test_rows_and_scores_are_the_content_baselines(tiny_ml):
    from genret.data.item_features import content_tfidf
    from genret.eval.retrievalformer_benchmark import content_ranked_lists

    dm = cold.looc_dm(tiny_ml)
    term = dm.content_term()
    full, n_warm = dm.cold_split.log, dm.n_items
    # The baseline's rows (IDF fitted on the warm items), for the trained catalogue.
    baseline, _ = content_tfidf(full, dm.sid.content_features, fit_items=np.arange(n_warm))
    assert term.n_items == n_warm
    np.testing.assert_allclose(term.rows.toarray(), baseline[:n_warm].toarray(), rtol=1e-6, atol=1e-7)
    # A cold item described by its features gets the baseline's row too.
    from genret.eval.benchmark import cold_item_features
    from genret.tokenizers.new_items import described_items

    rows = term.rows_for(described_items(cold_item_features(dm, term.names), term.names))
    np.testing.assert_allclose(rows.toarray(), baseline[n_warm:].toarray(), rtol=1e-6, atol=1e-7)
    es = dm.eval_sets["test"]
    scores = term.scores(es.history_offsets, es.history_items)
    for u, hist in zip(range(3), _histories(es, range(3))):
        expected = np.asarray(baseline[:n_warm][hist].mean(0) @ baseline[:n_warm].T).ravel()
        np.testing.assert_allclose(scores[u], expected, rtol=1e-5, atol=1e-6)
    # With no beam item (weight 0) the ranking is the baseline's list, history left out.
    none = torch.full((len(es), 1), -1)
    items, _ = term.rank(es.history_offsets, es.history_items, none, torch.full((len(es), 1), float("-inf")), 0.0, 5)
    expected = content_ranked_lists(baseline[:n_warm], es, 5)
    top_scores = np.take_along_axis(scores, items.numpy(), 1)
    np.testing.assert_allclose(top_scores, np.take_along_axis(scores, expected, 1), rtol=1e-6)
    for u, hist in enumerate(_histories(es, range(len(es)))):
        assert not set(items[u].tolist()) & set(hist.tolist())


def test_a_beam_item_gains_weight_times_its_probability(tiny_ml):
    dm = cold.looc_dm(tiny_ml)
    term = dm.content_term()
    es = dm.eval_sets["test"]
    off, hist = es.history_offsets[:2], es.history_items[:es.history_offsets[1]]
    content = term.scores(off, hist)[0]
    content[hist] = -np.inf
    # The content list's 6th item, listed by the beams with probability 0.5.
    sixth = int(np.argsort(-content, kind="stable")[5])
    items, log_p = torch.tensor([[sixth]]), torch.tensor([[np.log(0.5)]])
    low, low_scores = term.rank(off, hist, items, log_p, 1e-9, 5)
    assert sixth not in low[0].tolist()  # a tiny weight keeps the content order
    high, high_scores = term.rank(off, hist, items, log_p, 10.0, 5)
    assert high[0, 0].item() == sixth  # a large one puts the beam item first
    assert high_scores[0, 0].item() == pytest.approx(content[sixth] + 5.0, rel=1e-5)


def test_checkpoint_export_and_new_items_carry_the_term(tiny_ml, tmp_path):
    from genret.decoding.export import export_checkpoint
    from genret.eval.benchmark import cold_item_features

    dm = cold.looc_dm(tiny_ml)
    ckpt = _checkpoint(dm, tmp_path / "model.ckpt", content_weight=2.0)
    retriever = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    assert retriever.uses_content and retriever.content_weight == 2.0 and retriever.content_term.n_items == dm.n_items
    es = dm.eval_sets["test"]
    histories = [dm.log_all.item_ids[h].tolist() for h in _histories(es, range(4))]
    got = retriever.retrieve(histories, k=6)
    for row, history in zip(got.items, histories):
        assert len(row) == 6 and not set(row) & set(history)
    # Scores: content + 2 x the probability the beams (k + 20 = 26 items long) give the item.
    hist = _histories(es, [0])[0]
    content = retriever.content_term.scores(np.array([0, len(hist)]), hist)[0]
    beams = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch", content_weight=0.0)
    beam_items, beam_logp = beams.retrieve_indices(beams.encode_histories([histories[0]]), 26)
    bonus = dict(zip(beam_items[0].tolist(), (2.0 * beam_logp[0].exp()).tolist()))
    dense = [int(np.flatnonzero(dm.log_all.item_ids == raw)[0]) for raw in got.items[0]]
    np.testing.assert_allclose(got.scores[0], [content[i] + bonus.get(i, 0.0) for i in dense], rtol=1e-5, atol=1e-6)
    # Export round trip: the same lists and scores.
    export_checkpoint(ckpt, tmp_path / "export")
    again = Retriever.from_checkpoint(tmp_path / "export", device="cpu", kernel="torch").retrieve(histories, k=6)
    assert again.items == got.items
    np.testing.assert_allclose(np.array(again.scores), np.array(got.scores), rtol=1e-6)
    # New items need features (their content rows); with them a cold item can be found by content alone.
    raw_ids, codes = dm.cold_items()
    with pytest.raises(ValueError, match="describe the new items by features= as well"):
        retriever.add_items(raw_ids, codes)
    features = cold_item_features(dm, retriever.content_term.names)
    retriever.add_items(raw_ids, codes, features=features)
    assert retriever.content_term.n_items == len(retriever.item_ids) == dm.cold_split.log.n_items
    cold_users = dm.eval_sets["cold"]
    cold_histories = [dm.log_all.item_ids[h].tolist() for h in _histories(cold_users, range(len(cold_users)))]
    lists = retriever.retrieve(cold_histories, k=10).items
    assert any(set(row) & set(raw_ids.tolist()) for row in lists)
    # A retriever exported after the addition keeps the added rows.
    retriever.export(tmp_path / "grown")
    grown = Retriever.from_checkpoint(tmp_path / "grown", device="cpu", kernel="torch")
    assert grown.content_term.n_items == len(grown.item_ids) and grown.retrieve(cold_histories, k=10).items == lists


def test_content_term_settings_are_checked(tiny_ml, tmp_path):
    from genret.decoding.requests import RequestError

    with pytest.raises(ValueError, match="content_weight must be >= 0"):
        DualGRConfig(content_weight=-1.0).validate()
    with pytest.raises(ValueError, match="content_weight must be >= 0"):
        DualGRConfig(content_weight=float("nan")).validate()
    dm = cold.looc_dm(tiny_ml)
    plain = Retriever.from_checkpoint(_checkpoint(dm, tmp_path / "plain.ckpt", 0.0), device="cpu", kernel="torch")
    assert plain.content_term is None and not plain.uses_content
    with pytest.raises(ValueError, match="this model carries no content rows"):
        plain.set_content_term(1.0)
    with pytest.raises(ValueError, match="the content term has rows for 3 items"):
        plain.set_content_term(1.0, dm.content_term().__class__(dm.content_term().encoder, dm.content_term().idf,
                                                                 dm.content_term().rows[:3]))
    shared = dm.content_term()
    plain.set_content_term(1.0, shared)  # a model trained without it, ranked with the data's rows
    raw_ids, codes = dm.cold_items()
    from genret.eval.benchmark import cold_item_features

    plain.add_items(raw_ids, codes, features=cold_item_features(dm, shared.names))
    assert shared.n_items == dm.n_items and plain.content_term.n_items == len(plain.item_ids)  # never mutated
    assert plain.uses_content
    with pytest.raises(RequestError, match="exclude_seen=False: with the content term"):
        plain.retrieve([[dm.log_all.item_ids[0]]], k=3, exclude_seen=False)
    # Loaded with weight 0, a checkpoint's rows stay; items added without features drop them (with a warning).
    held = Retriever.from_checkpoint(_checkpoint(dm, tmp_path / "held.ckpt", 1.0), device="cpu", kernel="torch",
                                     content_weight=0.0)
    assert held.content_term is not None and not held.uses_content
    raw_ids, codes = dm.cold_items()
    with pytest.warns(UserWarning, match="the content term's rows are dropped"):
        held.add_items(raw_ids, codes)
    assert held.content_term is None


def test_content_weight_is_swept_on_one_checkpoint(tiny_ml, tmp_path):
    from genret.cli import main

    config = str(CONFIGS / "dualgr_ml1m_looc.yaml")
    common = ["benchmark", "--model", "dualgr", "--data", str(tiny_ml), "--config", config, "--ks", "5,20",
              "--protocol", "looc", "--trainer.max_epochs", "1", "--data.cold_seed_users", "8",
              "--data.cold_valid_users", "8", "--data.sid.codebook_size", "4", "--data.sid.embedding_dim", "8",
              "--data.sid.cache_dir", "null", "--data.side_features", "[]",
              "--kernel", "torch"]  # conftest's TRITON_INTERPRET: slow Triton
    assert main([*common, "--out", str(tmp_path / "train")]) == 0
    ckpt = str(tmp_path / "train" / "model.ckpt")
    out = tmp_path / "sweep"
    assert main([*common, "--out", str(out), "--checkpoint", ckpt,
                 "--sweep", "model.config.content_weight=0,0.000001"]) == 0
    sweep = json.loads((out / "metrics.json").read_text())["sweep"]
    rows = sweep["results"]
    assert set(rows) == {"0", "0.000001"}
    # Weight 0 is the trained model as it was; a vanishing one ranks as the content baseline.
    plain = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert rows["0"]["val"]["mean"]["hr@20"] == plain["val"]["hr@20"]
    assert rows["0.000001"]["cold_val"]["mean"]["recall@20"] == sweep["content_cold_val"]["recall@20"]
    # The prefix term's weight and depth sweep over the same checkpoint (with the content term on).
    out = tmp_path / "prefix"
    assert main([*common, "--out", str(out), "--checkpoint", ckpt, "--model.config.content_weight", "1",
                 "--sweep", "model.config.content_prefix_weight=0,1"]) == 0
    rows = json.loads((out / "metrics.json").read_text())["sweep"]["results"]
    assert set(rows) == {"0", "1"} and rows["0"]["cold_val"]["mean"] != rows["1"]["cold_val"]["mean"]


def test_add_items_cli_takes_features_beside_sids(tiny_ml, tmp_path):
    from genret.cli import main
    from genret.eval.benchmark import cold_item_features

    dm = cold.looc_dm(tiny_ml)
    ckpt = _checkpoint(dm, tmp_path / "model.ckpt", content_weight=2.0)
    raw_ids, codes = dm.cold_items()
    features = cold_item_features(dm, dm.content_term().names)
    lines = [{"id": int(r), "sid": c.tolist(), "features": f} for r, c, f in zip(raw_ids[:3], codes[:3], features[:3])]
    lines += [{"id": int(r), "features": f} for r, f in zip(raw_ids[3:], features[3:])]
    items = tmp_path / "new.jsonl"
    items.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert main(["add-items", "--checkpoint", str(ckpt), "--items", str(items), "--out", str(tmp_path / "v2")]) == 0
    served = Retriever.from_checkpoint(tmp_path / "v2", device="cpu", kernel="torch")
    assert served.uses_content and served.content_term.n_items == len(served.item_ids) == dm.cold_split.log.n_items
    assert np.array_equal(served.model.item_codes[dm.n_items:dm.n_items + 3].numpy(), codes[:3])
    # The same items added in memory rank the same way.
    in_memory = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    in_memory.add_items(raw_ids[:3], codes[:3], features=features[:3])
    in_memory.add_items(raw_ids[3:], features=features[3:])
    history = [dm.log_all.item_ids[:4].tolist()]
    assert served.retrieve(history, k=10) == in_memory.retrieve(history, k=10)
    # A SID alone gives the content term no row: refused, naming the fix; nothing is written.
    items.write_text(json.dumps({"id": -5, "sid": codes[0].tolist()}) + "\n")
    with pytest.raises(SystemExit, match="describe the new items by features= as well"):
        main(["add-items", "--checkpoint", str(ckpt), "--items", str(items), "--out", str(tmp_path / "v3")])
    assert not (tmp_path / "v3").exists()
    items.write_text(json.dumps({"id": -5, "sid": codes[0].tolist(), "vector": [0.0]}) + "\n")
    with pytest.raises(SystemExit, match='"features" may come beside "vector" or "sid"'):
        main(["add-items", "--checkpoint", str(ckpt), "--items", str(items), "--out", str(tmp_path / "v3")])


def test_amazon_content_recipe_runs_on_copies_of_the_family(tmp_path, amazon_copy):
    """configs/dualgr_content_amazon.yaml runs unchanged on Amazon copies with less content: attribute
    ids alone (no titles.tsv), some items without any attribute (they get no content score), and
    sequential.txt alone (it ranks by the beams alone, and metrics and the checkpoint say so)."""
    from genret.eval.benchmark import run_generative

    small = ["--trainer.max_epochs", "1", "--trainer.callbacks", "[]", "--data.batch_size", "32",
             "--data.sid.codebook_size", "4", "--data.sid.cache_dir", "null", "--model.config.d_model", "16",
             "--model.config.n_heads", "2", "--model.config.d_ffn", "32"]
    config = CONFIGS / "dualgr_content_amazon.yaml"
    runs = {}
    for name, attributes in (("no_titles", True), ("some_undescribed", True), ("sequential_only", False)):
        folder = amazon_copy(tmp_path / name, titles=False, attributes=attributes)
        if name == "some_undescribed":
            attrs = json.loads((folder / "item2attributes.json").read_text())
            attrs["3"] = attrs["7"] = []
            (folder / "item2attributes.json").write_text(json.dumps(attrs))
            with pytest.warns(UserWarning, match="content term: 2 of .* have no feature value"):
                runs[name] = run_generative(config, tmp_path / f"run_{name}", data=str(folder), overrides=small,
                                            ks=(5, 10), kernel="torch")
        else:
            runs[name] = run_generative(config, tmp_path / f"run_{name}", data=str(folder), overrides=small,
                                        ks=(5, 10), kernel="torch")
    for name in ("no_titles", "some_undescribed"):
        assert runs[name]["extra"]["content_term"] == {"weight": 10.0, "features": ["attributes"]}
        assert Retriever.from_checkpoint(runs[name]["checkpoint"], device="cpu", kernel="torch").uses_content
    off = runs["sequential_only"]
    assert off["extra"]["content_term"]["weight"] == 0.0 and off["extra"]["content_term"]["asked_weight"] == 10.0
    assert "no item content feature" in off["extra"]["content_term"]["note"] and off["test"]["n_users"] == 120
    served = Retriever.from_checkpoint(off["checkpoint"], device="cpu", kernel="torch")
    assert not served.uses_content and served.content_term is None


def test_a_new_item_with_unknown_content_gets_no_content_score(tiny_ml, tmp_path):
    """An added item none of whose feature values the fitted vocabularies know joins with an empty
    content row (and a warning): the beams can still list it, the content score never does."""
    dm = cold.looc_dm(tiny_ml)
    retriever = Retriever.from_checkpoint(_checkpoint(dm, tmp_path / "model.ckpt", 2.0), device="cpu", kernel="torch")
    raw_ids, codes = dm.cold_items()
    unknown = [{name: ["never-seen-value"] for name in retriever.content_term.names}]
    with pytest.warns(UserWarning, match="content term: 1 of the new items .* have no feature value"):
        retriever.add_items(raw_ids[:1], codes[:1], features=unknown)
    assert retriever.content_term.rows[-1].nnz == 0 and retriever.content_term.n_items == dm.n_items + 1
    with pytest.raises(ValueError, match="unknown feature\\(s\\) \\['no_such_feature'\\]; this model describes items by"):
        retriever.add_items(raw_ids[1:2], codes[1:2], features=[{"no_such_feature": ["x"]}])


def test_prefix_term_sums_each_listed_sid_once_over_its_prefix():
    """PrefixTerm: every item gains the listed probability of its SID prefix; two items on one SID
    carry that SID's probability once; items under an unlisted prefix gain nothing."""
    from genret.models.content_term import PrefixTerm
    from genret.tokenizers import SIDIndex

    # Items 0 and 1 share SID (0, 0, 0); 2 is (0, 1, 0); 3 is (1, 0, 0); 4 is (0, 2, 1), never listed.
    codes = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 2, 1]])
    index = SIDIndex.build(codes, 4)
    depth1 = PrefixTerm.from_index(index, 1, 1.0)
    users, items = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 3])
    probs = torch.tensor([0.4, 0.4, 0.1, 0.7])
    mass = depth1.mass(users, items, probs, 2)
    # User 0: prefix (0,) holds SID (0,0,0) once (0.4) and (0,1,0) (0.1); item 4 is under it too.
    np.testing.assert_allclose(mass.numpy(), [[0.5, 0.5, 0.5, 0.0, 0.5], [0.0, 0.0, 0.0, 0.7, 0.0]], rtol=1e-6)
    depth2 = PrefixTerm.from_index(index, 2, 1.0).mass(users, items, probs, 2)
    np.testing.assert_allclose(depth2.numpy(), [[0.4, 0.4, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.7, 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"content_prefix_depth must lie in \[1, 2\]"):
        PrefixTerm.from_index(index, 3, 1.0)


def test_prefix_weight_lifts_an_unlisted_item_under_a_listed_prefix(tiny_ml, tmp_path):
    dm = cold.looc_dm(tiny_ml)
    retriever = Retriever.from_checkpoint(_checkpoint(dm, tmp_path / "model.ckpt", 2.0), device="cpu", kernel="torch")
    es = dm.eval_sets["test"]
    hist = retriever.encode_histories([dm.log_all.item_ids[_histories(es, [0])[0]].tolist()])
    plain_items, plain_scores = retriever.retrieve_indices(hist, 10)
    retriever.set_content_term(2.0, prefix_weight=3.0, prefix_depth=1)
    items, scores = retriever.retrieve_indices(hist, 10)
    # Score = the plain blend + 3 x the beams' listed probability of the item's level-1 code.
    beams = Retriever.from_checkpoint(_checkpoint(dm, tmp_path / "beams.ckpt", 0.0), device="cpu", kernel="torch")
    beam_items, beam_logp = beams.retrieve_indices(hist, 10)
    index = retriever.index
    level1 = index.codes[:, 0]
    per_sid = {}
    for item, logp in zip(beam_items[0].tolist(), beam_logp[0].exp().tolist()):
        if item >= 0:
            per_sid[tuple(index.codes[item].tolist())] = logp
    region = {}
    for sid, p in per_sid.items():
        region[sid[0]] = region.get(sid[0], 0.0) + p
    bonus = dict(zip(beam_items[0].tolist(), (2.0 * beam_logp[0].exp()).tolist()))
    content = retriever.content_term.scores(hist.offsets.numpy(), hist.items.numpy())[0]
    expected = [content[i] + bonus.get(i, 0.0) + 3.0 * region.get(int(level1[i]), 0.0) for i in items[0].tolist()]
    np.testing.assert_allclose(scores[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(items, plain_items)
    listed = {i for i in beam_items[0].tolist() if i >= 0}
    assert any(i not in listed and region.get(int(level1[i]), 0.0) > 0 for i in items[0].tolist())
    # The settings are checked, and exports keep them.
    with pytest.raises(ValueError, match="content_prefix_weight > 0 acts inside the content term"):
        retriever.set_content_term(0.0, prefix_weight=1.0)
    with pytest.raises(ValueError, match=r"content_prefix_depth must lie in \[1, 2\]"):
        retriever.set_content_term(2.0, prefix_weight=1.0, prefix_depth=3)
    with pytest.raises(ValueError, match="content_prefix_weight must be >= 0"):
        DualGRConfig(content_weight=1.0, content_prefix_weight=-1.0).validate()
    with pytest.raises(ValueError, match=r"content_prefix_depth must lie in \[1, 2\]"):
        DualGRConfig(content_weight=1.0, content_prefix_weight=1.0, content_prefix_depth=0).validate()
    retriever.set_content_term(2.0, prefix_weight=3.0, prefix_depth=1)
    retriever.export(tmp_path / "export")
    again = Retriever.from_checkpoint(tmp_path / "export", device="cpu", kernel="torch")
    assert (again.content_prefix_weight, again.content_prefix_depth) == (3.0, 1)
    assert torch.equal(again.retrieve_indices(hist, 10)[0], items)
    # Loaded with content weight 0 (the beams' own order, as validation and evaluation first load
    # a model), the prefix term is off too; the checkpoint's settings come back when asked for.
    beams_only = Retriever.from_checkpoint(tmp_path / "export", device="cpu", kernel="torch", content_weight=0.0)
    assert not beams_only.uses_content and beams_only.content_prefix_weight == 0.0
    assert torch.equal(beams_only.retrieve_indices(hist, 10)[0], beam_items)
    beams_only.set_content_term(2.0, prefix_weight=3.0, prefix_depth=1)
    assert torch.equal(beams_only.retrieve_indices(hist, 10)[0], items)
    # Items added later get prefix ids too (the term is rebuilt over the grown index).
    from genret.eval.benchmark import cold_item_features

    raw_ids, codes = dm.cold_items()
    beams_only.add_items(raw_ids, codes, features=cold_item_features(dm, beams_only.content_term.names))
    grown = beams_only.retrieve_indices(hist, 10)[0]
    assert len(beams_only._prefix_term.item_prefix) == len(beams_only.item_ids) and grown.max() < len(beams_only.item_ids)


def test_the_looc_content_recipe_with_a_prefix_weight_trains_and_ranks(tiny_ml, tmp_path):
    """configs/dualgr_content_amazon_looc.yaml with a prefix weight in the model config trains and
    evaluates with both terms (its decoded-validation callback loads the model with content weight 0,
    as `from_checkpoint(content_weight=0.0)` above)."""
    from genret.cli import main

    out = tmp_path / "run"
    assert main(["benchmark", "--model", "dualgr", "--data", str(tiny_ml), "--config",
                 str(CONFIGS / "dualgr_content_amazon_looc.yaml"), "--protocol", "looc", "--ks", "5,20",
                 "--trainer.max_epochs", "1", "--trainer.callbacks", "[]", "--data.cold_seed_users", "8",
                 "--data.batch_size", "32",
                 "--data.sid.codebook_size", "4", "--data.sid.embedding_dim", "8", "--data.sid.cache_dir", "null",
                 "--model.config.d_model", "16", "--model.config.n_heads", "2", "--model.config.d_ffn", "32",
                 "--model.config.content_prefix_weight", "1", "--kernel", "torch", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["content_term"]["prefix_weight"] == 1.0 and metrics["content_term"]["prefix_depth"] == 1
    served = Retriever.from_checkpoint(out / "model.ckpt", device="cpu", kernel="torch")
    assert served.uses_content and served.content_prefix_weight == 1.0
