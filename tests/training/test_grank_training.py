"""GRank end to end on synthetic data: shipped configs, a tiny run, checkpoint round trip, serving
rules (candidates only, never the history), bad input, a frozen generator under ranker training,
and the ranker's hard negatives from an external generator (hard_negatives_from: generator)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from genret.decoding.grank_retriever import GRankRetriever
from genret.decoding.requests import RequestError
from genret.families import family_for_config, load_retriever
from genret.training.run import build, fit

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = ["--data.data", "synthetic:200x150", "--data.load_kwargs", "{}", "--trainer.max_epochs", "1",
        "--trainer.check_val_every_n_epoch", "1", "--trainer.max_time", "null",
        "--model.config.d_model", "16", "--model.config.d_ffn", "32", "--model.config.n_layers", "1",
        "--model.config.ranker_hidden", "16", "--data.max_len", "8", "--data.long_len", "20",
        "--model.k1", "40", "--model.val_k1", "20", "--model.hard_pool", "20", "--model.hard_negatives", "4",
        "--model.ranker_negatives", "4", "--model.aux_negatives", "4", "--data.batch_size", "64",
        "--model.warmup_steps", "0"]


@pytest.mark.parametrize("name", ["grank_ml1m.yaml", "grank_amazon.yaml"])
def test_shipped_configs_load(name, tmp_path):
    assert family_for_config(name).name == "grank"
    module, dm, _ = build("grank", CONFIGS / name, tmp_path)
    assert module.k1 >= 1000 and dm.long_len == 1000  # the paper's serving shape
    assert module.ntp_weight > 0 and module.aux_weight > 0 and module.ranker_weight > 0
    assert dm.item_features == [] and dm.side_features == []  # ids only: runs on any Amazon category


@pytest.mark.parametrize("pipeline, stage1", [("grank_amazon_dualgr.yaml", "grank_amazon_generator.yaml"),
                                               ("grank_amazon_dualgr_lastpos.yaml",
                                                "grank_amazon_generator_lastpos.yaml")])
def test_the_dualgr_pipeline_recipe_names_the_amazon_dualgr_recipe_as_its_generator(pipeline, stage1, tmp_path,
                                                                                  monkeypatch):
    from genret.training.grank_generator import is_training_config, resolve_config

    module, dm, _ = build("grank", CONFIGS / pipeline, tmp_path)
    assert module.hard_negatives_from == "generator" and is_training_config(module.generator)
    assert resolve_config(module.generator, CONFIGS).resolve() == (CONFIGS / "dualgr_amazon.yaml").resolve()
    monkeypatch.chdir(tmp_path)  # elsewhere: found beside the GRank config
    assert resolve_config(module.generator, CONFIGS) == CONFIGS / "dualgr_amazon.yaml"
    assert module.k1 == module.hard_pool == module.val_k1 and module.beam_width > module.k1
    assert dm.item_features == [] and dm.side_features == []  # ids only: runs on any Amazon category
    # Stage 1, GRank's generator alone, is a GRank recipe of its own that the ranker starts from, frozen.
    init = resolve_config(module.init_from, CONFIGS, "model.init_from")
    assert init.name == stage1 and module.freeze_generator
    first, first_dm, _ = build("grank", init, tmp_path / "init")
    assert first.ranker_weight == 0 and first.aux_weight == 0 and first_dm.cuts_per_user == 1
    assert first.config == module.config  # the same network: its weights load into the ranker's run
    assert first_dm.item_features == [] and first_dm.side_features == []


@pytest.mark.parametrize("name", ["grank_amazon_generator_lastpos.yaml", "grank_ml1m_generator_lastpos.yaml"])
def test_last_position_generator_recipes_train_the_generator_alone_as_sasrec_reads_its_user(name, tmp_path):
    module, dm, _ = build("grank", CONFIGS / name, tmp_path)
    assert module.config.readout == "last_position" and module.ntp_weight == 0
    assert module.aux_weight == 0 and module.ranker_weight == 0 and dm.cuts_per_user == 1
    assert dm.item_features == [] and dm.side_features == []  # ids only


def test_the_ml1m_last_position_pipeline_trains_its_ranker_on_its_own_frozen_stage_1(tmp_path):
    from genret.training.grank_generator import resolve_config

    module, dm, _ = build("grank", CONFIGS / "grank_ml1m_lastpos.yaml", tmp_path)
    init = resolve_config(module.init_from, CONFIGS, "model.init_from")
    assert init.name == "grank_ml1m_generator_lastpos.yaml" and module.freeze_generator
    assert module.hard_negatives_from == "own" and module.ranker_weight > 0 and module.aux_weight == 0
    first, first_dm, _ = build("grank", init, tmp_path / "init")
    assert first.config == module.config and first_dm.max_len == dm.max_len  # its weights load here


def test_the_ml1m_dualgr_pipeline_is_the_last_position_recipe_served_over_dualgr_beams(tmp_path):
    import yaml

    from genret.training.grank_generator import is_training_config, resolve_config

    module, dm, _ = build("grank", CONFIGS / "grank_ml1m_dualgr_lastpos.yaml", tmp_path)
    assert is_training_config(module.generator)
    assert resolve_config(module.generator, CONFIGS).resolve() == (CONFIGS / "dualgr_ml1m.yaml").resolve()
    assert module.hard_negatives_from == "own" and module.beam_width > module.k1
    # Everything that trains the ranker is configs/grank_ml1m_lastpos.yaml's: the numbers measured by
    # serving that recipe's checkpoints over DualGR's beams are this recipe's.
    pipeline = yaml.safe_load((CONFIGS / "grank_ml1m_dualgr_lastpos.yaml").read_text())
    own = yaml.safe_load((CONFIGS / "grank_ml1m_lastpos.yaml").read_text())
    for cfg in (pipeline, own):
        cfg["trainer"].pop("default_root_dir")
        for key in ("generator", "beam_width", "k1"):
            cfg["model"].pop(key, None)
    assert pipeline == own


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("grank")
    torch.manual_seed(0)
    module, dm, trainer = build("grank", CONFIGS / "grank_ml1m.yaml", out, TINY)
    ckpt, _ = fit(module, dm, trainer, out)
    return module, dm, ckpt


@pytest.fixture(scope="module")
def sasrec_ckpt(tmp_path_factory):
    """A tiny SASRec checkpoint of the same synthetic data: an external generator."""
    out = tmp_path_factory.mktemp("sasrec")
    sasrec, sdm, trainer = build("sasrec", CONFIGS / "sasrec_ml1m.yaml", out,
                                 ["--data.data", "synthetic:200x150", "--data.load_kwargs", "{}",
                                  "--trainer.max_epochs", "1", "--model.config.d_model", "16",
                                  "--model.config.d_ffn", "32", "--data.max_len", "8"])
    ckpt, _ = fit(sasrec, sdm, trainer, out)
    return str(ckpt)


def _histories(dm, n=6):
    es = dm.eval_sets["test"]
    return [dm.log_all.item_ids[es.history_items[es.history_offsets[u]:es.history_offsets[u + 1]]].tolist()
            for u in range(n)]


def test_checkpoint_round_trip_and_decode_registry(trained):
    module, dm, ckpt = trained
    in_memory = GRankRetriever(module.model, dm.log_all.item_ids, k1=40)
    loaded = GRankRetriever.from_checkpoint(ckpt, device="cpu")
    assert loaded.k1 == 40 and isinstance(load_retriever(ckpt, device="cpu", beam_width=5), GRankRetriever)
    histories = _histories(dm)
    a, b = in_memory.retrieve(histories, k=10), loaded.retrieve(histories, k=10)
    assert a.items == b.items
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)


def test_ranked_items_come_from_the_candidates_and_never_from_the_history(trained):
    module, dm, _ = trained
    r = GRankRetriever(module.model, dm.log_all.item_ids, k1=40)
    histories = _histories(dm)
    result = r.retrieve(histories, k=20)
    index = {raw: i for i, raw in enumerate(r.item_ids.tolist())}
    dense = [np.array([index[x] for x in h]) for h in histories]
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in dense])])
    cand, _, _ = r.generate_and_rank(offsets, np.concatenate(dense))
    for u, (items, history) in enumerate(zip(result.items, histories)):
        assert len(set(items)) == 20 and not set(items) & set(history)
        assert {index[x] for x in items} <= set(cand[u].tolist())
        assert result.scores[u] == sorted(result.scores[u], reverse=True)
    # Another generator's candidates: history items are dropped, nothing else is added.
    foreign = np.stack([np.concatenate([dense[u][:3], np.arange(10)]) for u in range(len(dense))])
    ranked, scores = r.rerank(offsets, np.concatenate(dense), foreign)
    for u in range(len(dense)):
        kept = set(ranked[u][ranked[u] >= 0].tolist())
        assert kept == set(foreign[u].tolist()) - set(dense[u].tolist())
        assert np.isneginf(scores[u][ranked[u] < 0]).all()


def test_bad_input_gets_a_clear_error(trained):
    module, dm, _ = trained
    r = GRankRetriever(module.model, dm.log_all.item_ids, k1=40)
    history = _histories(dm, 1)
    with pytest.raises(ValueError, match="not in the catalogue"):
        r.retrieve([["no-such-item"]], k=5)
    # Request errors, which a server answers with 400 (not an internal error)
    with pytest.raises(RequestError, match="history 1 is empty"):
        r.retrieve(history + [[]], k=5)
    with pytest.raises(RequestError, match="k=41 exceeds the 40 candidates"):
        r.retrieve(history, k=41)
    with pytest.raises(ValueError, match="neither GRank nor its generator embeds side features"):
        r.retrieve(history, k=5, side={"rating": [[5] * len(history[0])]})


def test_frozen_generator_keeps_its_candidates_while_the_ranker_trains(trained, tmp_path):
    module, dm, ckpt = trained
    before = GRankRetriever.from_checkpoint(ckpt, device="cpu")
    histories = _histories(dm)
    index = {raw: i for i, raw in enumerate(before.item_ids.tolist())}
    dense = np.array([index[x] for h in histories for x in h])
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in histories])])
    cand_before, gen_before, _ = before.generate_and_rank(offsets, dense)
    torch.manual_seed(1)
    frozen, dm2, trainer = build("grank", CONFIGS / "grank_ml1m.yaml", tmp_path,
                                 TINY + ["--model.freeze_generator", "true", "--model.init_from", str(ckpt),
                                         "--model.lr", "0.01"])
    ckpt2, _ = fit(frozen, dm2, trainer, tmp_path)
    after = GRankRetriever.from_checkpoint(ckpt2, device="cpu")
    cand_after, gen_after, _ = after.generate_and_rank(offsets, dense)
    np.testing.assert_array_equal(cand_after, cand_before)
    np.testing.assert_allclose(gen_after, gen_before, rtol=1e-6)
    changed = [n for n, p in after.model.named_parameters()
               if not torch.equal(p, dict(before.model.named_parameters())[n])]
    assert changed and all(n.startswith("ranker.") for n in changed)


def test_starting_from_a_checkpoint_read_out_elsewhere_is_refused(trained, tmp_path):
    _, _, ckpt = trained  # trained with the paper's user token
    module, dm, trainer = build("grank", CONFIGS / "grank_ml1m.yaml", tmp_path,
                                TINY + ["--model.freeze_generator", "true", "--model.init_from", str(ckpt),
                                        "--model.config.readout", "last_position"])
    with pytest.raises(ValueError, match="readout 'user_token'.*set model.config.readout: user_token"):
        fit(module, dm, trainer, tmp_path)


def test_the_ranker_reorders_another_generators_candidates(trained, sasrec_ckpt, tmp_path):
    """SASRec top-K as the generator: the ranker's list is a re-ordering of SASRec's unseen top k1."""
    from genret.decoding.embedding_retriever import EmbeddingRetriever
    from genret.eval.grank_benchmark import run_grank

    module, dm, ckpt = trained
    r = GRankRetriever.from_checkpoint(ckpt, device="cpu", generator=str(sasrec_ckpt))
    assert isinstance(r.generator, EmbeddingRetriever)
    histories = _histories(dm)
    top = r.generator.retrieve(histories, k=150).items
    result = r.retrieve(histories, k=20)
    for u, history in enumerate(histories):
        unseen = [x for x in top[u] if x not in set(history)][:40]
        assert set(result.items[u]) <= set(unseen) and not set(result.items[u]) & set(history)
    res = run_grank("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "bench",
                    overrides=TINY + ["--model.generator", str(sasrec_ckpt)], ks=(5, 10))
    assert res["extra"]["generator"] == str(sasrec_ckpt)
    assert {"kuaiformer generator only", "grank + ranker", "grank generator only"} <= set(res["baselines"])
    assert res["test"]["recall@40"] == pytest.approx(res["extra"]["candidate_recall"]["test"])


def test_ablation_without_the_ranker_serves_the_generators_order(tmp_path):
    """The pure-generator / generator + auxiliary-tokens ablations (ranker_weight 0)."""
    module, dm, trainer = build("grank", CONFIGS / "grank_ml1m.yaml", tmp_path,
                                TINY + ["--model.ranker_weight", "0", "--model.aux_weight", "0"])
    ckpt, _ = fit(module, dm, trainer, tmp_path)
    r = GRankRetriever.from_checkpoint(ckpt, device="cpu")
    assert r.ranker is False
    histories = _histories(dm)
    index = {raw: i for i, raw in enumerate(r.item_ids.tolist())}
    dense = np.array([index[x] for h in histories for x in h])
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in histories])])
    cand, _, _ = r.generate_and_rank(offsets, dense)
    assert [[index[x] for x in items] for items in r.retrieve(histories, k=10).items] == cand[:, :10].tolist()


def test_benchmark_and_decode_commands_with_a_grank_model(tmp_path):
    import json

    from genret.cli import main

    out = tmp_path / "bench"
    overrides = [a for a in TINY if a not in ("--data.data", "synthetic:200x150")]
    assert main(["benchmark", "--model", "grank", "--data", "synthetic:200x150", "--config",
                 str(CONFIGS / "grank_ml1m.yaml"), "--out", str(out), "--ks", "5,10", *overrides]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"hr@10", "recall@10", "ndcg@10", "recall@40"} <= set(metrics["test"])
    assert set(metrics["baselines"]) == {"popularity", "grank generator only"}
    assert metrics["k1"] == 40 and 0 <= metrics["candidate_recall"]["test"] <= 1
    assert metrics["test"]["recall@40"] == pytest.approx(metrics["candidate_recall"]["test"])
    # One epoch, validated once: the limit ended it, and that one check is the best so far.
    assert metrics["training"] == {"stopped_by": "max_epochs", "limit": 1, "epochs": 1, "improving": True}
    assert "grank generator only" in (out / "report.md").read_text()
    assert "stopped by max_epochs after 1 epoch while validation was still improving" in (out / "report.md").read_text()
    histories = tmp_path / "h.jsonl"
    histories.write_text(json.dumps({"user": "u", "history": [1, 2, 3]}) + "\n")
    assert main(["decode", "--checkpoint", str(out / "model.ckpt"), "--histories", str(histories), "--k", "5",
                 "--out", str(tmp_path / "top.jsonl")]) == 0
    row = json.loads((tmp_path / "top.jsonl").read_text())
    assert row["user"] == "u" and len(row["items"]) == 5 and not {1, 2, 3} & set(row["items"])
    with pytest.raises(SystemExit, match="exceeds the 40 candidates"):
        main(["decode", "--checkpoint", str(out / "model.ckpt"), "--histories", str(histories), "--k", "41"])


def test_aux_log_q_lowers_each_auxiliary_candidates_score_by_its_log_q(trained):
    """aux_log_q: L_SA with every candidate's logit less its log Q (the popular negatives count less)."""
    module, dm, _ = trained
    prob = module.item_log_prob
    popular, rare = int(prob.argmax()), int(prob.argmin())
    candidates = torch.tensor([[rare, popular, rare]])  # the target first
    scores, column, allowed = torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool)
    plain = float(module.aux_loss(scores, candidates, column, allowed))
    assert plain == pytest.approx(np.log(3), rel=1e-5)
    module.aux_log_q = True
    try:
        corrected = float(module.aux_loss(scores, candidates, column, allowed))
        terms = module.losses({key: torch.as_tensor(v) for key, v in dm.train_batch(np.arange(8)).items()})
    finally:
        module.aux_log_q = False
    log_q = prob[candidates[0]] + np.log(module.aux_negatives)
    assert corrected == pytest.approx(float(-torch.log_softmax(-log_q, 0)[0]), rel=1e-5)
    assert corrected < plain and torch.isfinite(terms["aux"])


# ------------------------------------------------------------------ hard_negatives_from: generator
FROM_GENERATOR = ["--model.hard_negatives_from", "generator"]


def test_own_hard_negatives_keep_the_training_batches_as_they_were(trained):
    module, dm, _ = trained
    assert module.hard_negatives_from == "own" and module.generator_pool is None
    assert set(dm.train_batch(np.arange(4))) == {"items", "long", "targets"}
    assert "generator_pool" not in module.state_dict()


def test_hard_negatives_from_generator_needs_a_generator_checkpoint():
    from genret.training.grank_module import GRankModule

    with pytest.raises(ValueError, match="set model.generator"):
        GRankModule(hard_negatives_from="generator")
    with pytest.raises(ValueError, match="hard_negatives_from must be one of"):
        GRankModule(hard_negatives_from="dualgr", generator="x.ckpt")


def test_generator_hard_negatives_come_from_its_cached_last_cut_candidates(sasrec_ckpt, tmp_path):
    from genret.eval.grank_negatives import cache_generator_pool

    torch.manual_seed(0)
    module, dm, _ = build("grank", CONFIGS / "grank_ml1m.yaml", tmp_path,
                          TINY + FROM_GENERATOR + ["--model.generator", sasrec_ckpt, "--model.ranker_rows", "5"])
    dm.setup("fit")
    module.build_from_data(dm)
    pool = cache_generator_pool(module, dm)
    assert pool.shape == (len(dm.train_users), 20) and pool.dtype == torch.int64
    assert "generator_pool" not in module.state_dict()  # non-persistent: never in a checkpoint
    # By hand for a few users: SASRec's top items for the user's training positives but the last,
    # history excluded, in SASRec's order.
    sasrec = load_retriever(sasrec_ckpt, device="cpu")
    ids = dm.log_all.item_ids
    for row in (0, 7, len(dm.train_users) - 1):
        u = dm.train_users[row]
        history = dm.train_items[dm.train_offsets[u]:dm.train_offsets[u + 1] - 1]
        cached = pool[row].numpy()
        assert (cached >= 0).all() and not set(cached.tolist()) & set(history.tolist())
        top = [x for x in sasrec.retrieve([ids[history].tolist()], k=150).items[0]
               if x not in set(ids[history].tolist())][:20]
        assert ids[cached].tolist() == top
    # Validation re-ranks the generator's own top val_k1 for each validation user, with its scores.
    es = dm.eval_sets["valid"]
    assert module.generator_val_items.shape == (len(es), 20) and module.generator_val_scores.shape == (len(es), 20)
    for row in (0, len(es) - 1):
        history = ids[es.history_items[es.history_offsets[row]:es.history_offsets[row + 1]]].tolist()
        top = sasrec.retrieve([history], k=20)
        assert ids[module.generator_val_items[row].numpy()].tolist() == top.items[0]
        np.testing.assert_allclose(module.generator_val_scores[row].numpy(), top.scores[0], rtol=1e-5)
    # A training batch says which cached row each example reads and whether its cut is the last.
    batch = dm.train_batch(np.arange(16))
    rows, last = batch["user_rows"].numpy(), batch["last_cut"].numpy()
    users = dm.train_users[rows]
    last_targets = dm.train_items[dm.train_offsets[users + 1] - 1]
    assert last.any() and not last.all()
    np.testing.assert_array_equal(last, batch["targets"].numpy() == last_targets)  # synthetic: no repeats
    drawn = []
    original = module.generator_hard_negatives

    def record(user_rows, targets):
        picked = original(user_rows, targets)
        drawn.append((user_rows, targets, picked))
        return picked

    module.generator_hard_negatives = record
    terms = module.losses(batch)
    assert torch.isfinite(terms["ranker"]) and terms["ranker"] > 0
    (user_rows, targets, picked), = drawn
    assert len(user_rows) == 5  # ranker_rows among the last-cut examples
    for r, t, p in zip(user_rows.tolist(), targets.tolist(), picked.tolist()):
        assert r in set(rows[last].tolist())  # a last-cut example of this batch ...
        assert t == dm.train_items[dm.train_offsets[dm.train_users[r] + 1] - 1]  # ... with its own target
        assert set(p) <= set(pool[r].tolist()) and t not in p and min(p) >= 0
    # No last-cut example in the batch: the ranker term is 0 this step.
    batch["last_cut"][:] = False
    assert module.losses(batch)["ranker"] == 0


def test_generator_hard_negatives_skip_the_target_and_padding():
    from genret.training.grank_module import GRankModule

    module = GRankModule(hard_negatives_from="generator", generator="x.ckpt", hard_negatives=50)
    module.generator_pool = torch.tensor([[4, 9, -1, -1], [3, -1, -1, -1], [-1, -1, -1, -1]])
    picked = module.generator_hard_negatives(torch.tensor([0, 1, 2]), torch.tensor([9, 3, 1]))
    assert set(picked[0].tolist()) == {4} and set(picked[1].tolist()) == {-1} and set(picked[2].tolist()) == {-1}


def test_a_fit_with_generator_hard_negatives_serves_from_its_checkpoint(sasrec_ckpt, tmp_path):
    torch.manual_seed(0)
    module, dm, trainer = build("grank", CONFIGS / "grank_ml1m.yaml", tmp_path,
                                TINY + FROM_GENERATOR + ["--model.generator", sasrec_ckpt,
                                                         "--trainer.log_every_n_steps", "1"])
    ckpt, _ = fit(module, dm, trainer, tmp_path)
    assert module.generator_pool.shape == (len(dm.train_users), 20)
    # validation scored SASRec's cached candidates: its generator-only metrics are those of that list
    from genret.eval.metrics import ranking_metrics

    es = dm.eval_sets["valid"]
    expected = ranking_metrics(module.generator_val_items.cpu().numpy(), es.targets, [10])["hr@10"]
    assert trainer.callback_metrics["val/gen_hr@10"].item() == pytest.approx(expected)
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert checkpoint["genret"]["serving"]["hard_negatives_from"] == "generator"
    assert "generator_pool" not in checkpoint["state_dict"]
    logged = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text()
    assert "train/ranker_examples" in logged
    r = GRankRetriever.from_checkpoint(ckpt, device="cpu")
    assert r.generator is not None  # serves SASRec's candidates, as it trained on them
    histories = _histories(dm)
    result = r.retrieve(histories, k=10)
    assert all(len(items) == 10 and not set(items) & set(h) for items, h in zip(result.items, histories))


def test_generator_hard_negatives_without_the_callback_get_a_clear_error(sasrec_ckpt, tmp_path):
    """A Trainer built by hand without the family's callback must not train on an empty pool."""
    from genret.eval.grank_negatives import GeneratorHardNegatives

    module, dm, trainer = build("grank", CONFIGS / "grank_ml1m.yaml", tmp_path,
                                TINY + FROM_GENERATOR + ["--model.generator", sasrec_ckpt])
    assert any(isinstance(cb, GeneratorHardNegatives) for cb in trainer.callbacks)
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, GeneratorHardNegatives)]
    with pytest.raises(RuntimeError, match="GeneratorHardNegatives"):
        trainer.fit(module, datamodule=dm)


# ------------------------------------------------------------------ blend chosen on validation
class _TwoScoreRetriever:
    """Candidates 0..3 for every user; the generator prefers item 0, the ranker item 1, and only
    their sum (blend 1) puts item 2 first. The validation target is 2, the test target 3."""

    ranker, blends, blend = True, True, 0.0

    def candidate_scores(self, offsets, items, k1, side=None, user_features=None):
        users = len(offsets) - 1
        cand = np.tile(np.arange(4), (users, 1))
        gen = np.tile([3.0, -9.0, 2.0, -9.0], (users, 1))
        rank = np.tile([-9.0, 3.0, 2.0, -9.5], (users, 1))
        return cand, gen, rank

    def final_scores(self, gen, rank, blend=None):
        from genret.models.grank import blended_scores

        return blended_scores(gen, rank, self.blend if blend is None else blend)


def test_the_blend_is_chosen_on_validation_and_test_is_scored_once_with_it():
    from types import SimpleNamespace

    from genret.eval.grank_benchmark import evaluate_grank

    class Set(SimpleNamespace):  # 5 users of 2 history items each (item 7)
        def __len__(self):
            return len(self.targets)

    sets = {stage: Set(history_offsets=np.arange(6) * 2, history_items=np.full(10, 7), targets=np.full(5, target))
            for stage, target in (("valid", 2), ("test", 3))}
    out = evaluate_grank(_TwoScoreRetriever(), sets, 4, [1, 4], 2, [0.0, 1.0, 100.0], "ndcg@1")
    assert out["blend"] == 1.0
    assert set(out["val_by_blend"]) == {"0.0", "1.0", "100.0"}
    assert out["val_by_blend"]["1.0"]["hr@1"] == 1.0 and out["val_by_blend"]["0.0"]["hr@1"] == 0.0
    assert out["ranked"]["val"] == out["val_by_blend"]["1.0"]
    # test is read once, at blend 1: item 3 comes last (0-based rank 3) for every test user
    assert out["test_ranks"]["ranked"] == [3] * 5 and out["ranked"]["test"]["hr@1"] == 0.0
    # validation's ranks are those of the chosen blend's order (target 2 first at blend 1)
    assert out["val_ranks"]["ranked"] == [0] * 5 and out["val_ranks"]["generator"] == [2] * 5
    assert out["ranker"] is True
    # the generator's own order competes: with validation target 0 (the generator's first) no blend of
    # 0 and 1 matches it, so the ranker is left out and test is served in the generator's order
    sets["valid"].targets = np.full(5, 0)
    alone = evaluate_grank(_TwoScoreRetriever(), sets, 4, [1, 4], 2, [0.0, 1.0], "ndcg@1")
    assert alone["ranker"] is False and alone["blend"] is None
    assert alone["ranked"]["test"] == alone["generator_only"]["test"]
    assert alone["test_ranks"]["ranked"] == alone["test_ranks"]["generator"] == [3] * 5
    sets["valid"].targets = np.full(5, 2)
    # no choices: the retriever's own blend, no table
    plain = evaluate_grank(_TwoScoreRetriever(), sets, 4, [1], 2, None, "ndcg@1")
    assert plain["blend"] == 0.0 and "val_by_blend" not in plain and plain["ranked"]["val"]["hr@1"] == 0.0


def test_benchmark_writes_the_blend_chosen_on_validation_into_the_checkpoint(sasrec_ckpt, tmp_path):
    from genret.eval.grank_benchmark import run_grank

    res = run_grank("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "bench", ks=(5, 10),
                    overrides=TINY + ["--model.generator", str(sasrec_ckpt), "--model.blend_choices", "[0, 0.5, 4]"])
    table = res["extra"]["val_by_blend"]
    chosen = res["extra"]["blend"]
    assert set(table) == {"0.0", "0.5", "4.0"}
    if chosen is not None:
        assert table[str(chosen)]["ndcg@10"] == max(v["ndcg@10"] for v in table.values())
        assert res["val"] == table[str(chosen)]
    served = GRankRetriever.from_checkpoint(res["checkpoint"], device="cpu")
    if res["extra"]["ranker_served"]:
        assert served.blend == chosen and served.ranker
    else:  # the generator's order beat every blend on validation
        assert chosen is None and not served.ranker and res["val"] == res["extra"]["generator_only"]["val"]
    assert "blend" in res["extra"]["grank_own_generator"]


def test_a_trained_ranker_is_evaluated_over_another_generator_without_training(trained, sasrec_ckpt, tmp_path):
    import hashlib

    from genret.eval.grank_benchmark import run_grank

    _, dm, ckpt = trained
    before = hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    res = run_grank("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "eval", ks=(5, 10), checkpoint=ckpt,
                    overrides=TINY + ["--model.generator", str(sasrec_ckpt), "--model.blend_choices", "[0, 1]"])
    assert res["train_seconds"] == 0.0 and res["checkpoint"] == str(ckpt)
    # SASRec is a KuaiFormer setting: its rows are named for the family.
    assert res["extra"]["generator"] == str(sasrec_ckpt) and "kuaiformer generator only" in res["baselines"]
    assert set(res["extra"]["val_by_blend"]) == {"0.0", "1.0"}
    # The same ranker as the trained module's: its own generator's lists score as the module's do.
    own = GRankRetriever.from_checkpoint(ckpt, device="cpu", generator="grank")
    assert torch.equal(own.model.item_vectors(), trained[0].model.item_vectors())
    # The evaluated checkpoint is not rewritten (its serving settings are for its own generator).
    assert hashlib.sha256(Path(ckpt).read_bytes()).hexdigest() == before
    with pytest.raises(ValueError, match="another catalogue"):
        run_grank("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "other", ks=(5, 10), checkpoint=ckpt,
                  overrides=["--data.data", "synthetic:200x160", *TINY[2:]])


def test_a_generator_given_as_a_config_is_trained_first_then_reused(tmp_path, caplog):
    import logging

    import yaml

    from genret.eval.grank_benchmark import run_grank

    # A tiny SASRec recipe on the same synthetic data: the generator's own training YAML.
    settings = yaml.safe_load((CONFIGS / "sasrec_ml1m.yaml").read_text())
    settings["trainer"].update(max_epochs=1, check_val_every_n_epoch=1)
    settings["model"]["config"].update(d_model=16, d_ffn=32)
    settings["data"].update(data="synthetic:200x150", load_kwargs={}, max_len=8)
    generator_yaml = tmp_path / "sasrec_tiny.yaml"
    generator_yaml.write_text(yaml.safe_dump(settings))
    overrides = TINY + ["--model.generator", str(generator_yaml), "--model.hard_negatives_from", "generator"]
    out = tmp_path / "pipeline"
    res = run_grank("grank", CONFIGS / "grank_ml1m.yaml", out, ks=(5, 10), overrides=overrides)
    generator_ckpt = out / "generator" / "model.ckpt"
    assert generator_ckpt.is_file() and res["extra"]["generator"] == str(generator_ckpt.resolve())
    assert "kuaiformer generator only" in res["baselines"]
    # The GRank checkpoint serves with the trained generator, not the YAML.
    served = GRankRetriever.from_checkpoint(res["checkpoint"], device="cpu")
    assert served.generator is not None and len(served.retrieve(_histories(res["datamodule"], 2), k=5).items) == 2
    # A second run with the same generator config and data reuses it instead of training again.
    mtime = generator_ckpt.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="genret.training.grank_generator"):
        run_grank("grank", CONFIGS / "grank_ml1m.yaml", out, ks=(5, 10), overrides=overrides)
    assert "reusing" in caplog.text and generator_ckpt.stat().st_mtime_ns == mtime
    with pytest.raises(FileNotFoundError, match="names a config that does not exist"):
        run_grank("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "x", ks=(5, 10),
                  overrides=TINY + ["--model.generator", "no_such_generator.yaml"])
    with pytest.raises(ValueError, match="is a GRank config"):
        run_grank("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "y", ks=(5, 10),
                  overrides=TINY + ["--model.generator", str(CONFIGS / "grank_ml1m.yaml")])
    with pytest.raises(ValueError, match="is a training config"):
        GRankRetriever.from_checkpoint(res["checkpoint"], device="cpu", generator=str(generator_yaml))


def test_init_from_a_grank_config_trains_that_stage_first_then_the_ranker_on_it(tmp_path, caplog):
    import json
    import logging

    import yaml

    from genret.eval.grank_benchmark import run_grank
    from genret.training.checkpoint import load_checkpoint, model_state

    # Stage 1: GRank's generator alone (no auxiliary tokens, no ranker), as a YAML of its own.
    settings = yaml.safe_load((CONFIGS / "grank_ml1m.yaml").read_text())
    settings["trainer"].update(max_epochs=1, check_val_every_n_epoch=1, max_time=None)
    settings["model"]["config"].update(d_model=16, d_ffn=32, n_layers=1, ranker_hidden=16)
    settings["model"].update(aux_weight=0.0, ranker_weight=0.0, k1=40, val_k1=20, warmup_steps=0)
    settings["data"].update(data="synthetic:200x150", load_kwargs={}, max_len=8, long_len=20, batch_size=64)
    stage1 = tmp_path / "grank_generator_tiny.yaml"
    stage1.write_text(yaml.safe_dump(settings))
    overrides = TINY + ["--model.init_from", str(stage1), "--model.freeze_generator", "true", "--model.lr", "0.01"]
    out = tmp_path / "two_stages"
    torch.manual_seed(0)
    res = run_grank("grank", CONFIGS / "grank_ml1m.yaml", out, ks=(5, 10), overrides=overrides)
    init_ckpt = out / "init" / "model.ckpt"
    assert init_ckpt.is_file()
    first = model_state(load_checkpoint(init_ckpt, family="grank")[0])
    final = model_state(load_checkpoint(res["checkpoint"], family="grank")[0])
    # The generator (item table, transformer) is stage 1's; only the ranker trained on top of it.
    assert all(torch.equal(final[n], first[n]) for n in first if not n.startswith("ranker."))
    assert any(not torch.equal(final[n], first[n]) for n in first if n.startswith("ranker."))
    # Run again with the same stage-1 config and data: reused, not retrained.
    mtime = init_ckpt.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="genret.training.grank_generator"):
        run_grank("grank", CONFIGS / "grank_ml1m.yaml", out, ks=(5, 10), overrides=overrides)
    assert "init_from: reusing" in caplog.text and init_ckpt.stat().st_mtime_ns == mtime
    # The run's own seed goes to its first stage too: another seed trains stage 1 again, with that seed.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="genret.training.grank_generator"):
        run_grank("grank", CONFIGS / "grank_ml1m.yaml", out, ks=(5, 10), overrides=overrides + ["--seed_everything", "5"])
    assert "init_from: training" in caplog.text and init_ckpt.stat().st_mtime_ns != mtime
    assert json.loads((out / "init" / "generator_run.json").read_text())["seed"] == 5
    # Another family's config cannot be GRank's starting weights; a hand-built run must train it first.
    sasrec = yaml.safe_load((CONFIGS / "sasrec_ml1m.yaml").read_text())
    sasrec["data"].update(data="synthetic:200x150", load_kwargs={})
    (tmp_path / "sasrec_tiny.yaml").write_text(yaml.safe_dump(sasrec))
    with pytest.raises(ValueError, match="is a sasrec config; GRank starts from a GRank model"):
        run_grank("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "x", ks=(5, 10),
                  overrides=TINY + ["--model.init_from", str(tmp_path / "sasrec_tiny.yaml")])
    module, dm, trainer = build("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "y",
                                TINY + ["--model.init_from", str(stage1)])
    with pytest.raises(RuntimeError, match="is a training config"):
        fit(module, dm, trainer, tmp_path / "y")


def test_the_seed_override_is_read_from_the_command_line():
    from genret.training.run import seed_override

    assert seed_override(None) is None and seed_override(["--model.k1", "5"]) is None
    assert seed_override(["--seed_everything", "3", "--x", "1", "--seed_everything=7"]) == 7
    assert seed_override(["--seed_everything", "2"]) == 2
    assert seed_override(["--seed_everything", "true"]) is None  # Lightning's random seed: none to pass on


def test_validation_keeps_the_best_blend_of_each_epoch(trained):
    from genret.eval.grank_validation import GRankValidation
    from genret.eval.metrics import ranking_metrics

    module, dm, _ = trained
    module.blend_choices = [50.0, 1.0, 0.0]  # on this tiny model the ranker alone (0) does best: listed last
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    trainer = type("T", (), {"datamodule": dm, "sanity_checking": False, "current_epoch": 0})()
    callback = GRankValidation()
    es = dm.eval_sets["valid"]
    try:
        module.eval()
        with torch.no_grad():
            for rows in np.array_split(np.arange(len(es)), 3):
                out = module.validation_step(dm.eval_batch("valid", rows), 0)
                assert set(out["ranked"]) == {0.0, 1.0, 50.0}
                callback.on_validation_batch_end(trainer, module, out, None, 0)
            lists = {b: np.concatenate([o["ranked"][b].numpy() for o in callback._outputs]) for b in (0.0, 1.0, 50.0)}
            callback.on_validation_epoch_end(trainer, module)
    finally:
        module.blend_choices = None
        del module.log
    scores = {b: ranking_metrics(lists[b], es.targets, module.eval_ks)["ndcg@10"] for b in lists}
    best = max(scores.values())
    assert logged["val/ndcg@10"] == pytest.approx(best)
    assert len(set(scores.values())) > 1 and scores[logged["val/blend"]] == best


def test_bad_blend_choices_are_refused():
    from genret.training.grank_module import GRankModule

    for bad in ([], [-1.0]):
        with pytest.raises(ValueError, match="blend_choices"):
            GRankModule(blend_choices=bad)


# ------------------------------------------------------------------ a generator with side features
MISSING_SIDE = ".*without them every action uses"  # the generator's warning when it is asked without them


@pytest.fixture(scope="module")
def sasrec_side_ckpt(tmp_path_factory):
    """A tiny SASRec that embeds the synthetic data's per-action watch_frac (as DualGR embeds
    ML-1M's rating): its candidates depend on the side values it is given."""
    out = tmp_path_factory.mktemp("sasrec_side")
    sasrec, sdm, trainer = build("sasrec", CONFIGS / "sasrec_ml1m.yaml", out,
                                 ["--data.data", "synthetic:200x150", "--data.load_kwargs", "{}",
                                  "--data.side_features", "[watch_frac]", "--model.config.item_mlp", "true",
                                  "--trainer.max_epochs", "1",
                                  "--model.config.d_model", "16", "--model.config.d_ffn", "32", "--data.max_len", "8"])
    ckpt, _ = fit(sasrec, sdm, trainer, out)
    return str(ckpt)


def test_history_side_values_follow_the_histories_the_generator_is_asked_about(trained):
    _, dm, _ = trained
    watch = np.asarray(dm.log_all.side["watch_frac"], np.float64)
    es = dm.eval_sets["valid"]
    got = dm.history_side_values(["watch_frac"], "valid")["watch_frac"]
    assert np.array_equal(got, watch[es.history_rows], equal_nan=True) and len(got) == len(es.history_items)
    offsets, items = dm.last_cut_histories()
    last = dm.history_side_values(["watch_frac"], "last_cut")["watch_frac"]
    assert len(last) == len(items)
    train_watch = np.asarray(dm.train_log.side["watch_frac"], np.float64)
    for u in (0, len(offsets) - 2):  # a user's training positives but the last, in time order
        user = dm.train_users[u]
        rows = np.flatnonzero((dm.train_log.user == user) & (dm.train_log.label == 1))[:-1]
        assert np.array_equal(items[offsets[u]:offsets[u + 1]], dm.train_log.item[rows])
        assert np.array_equal(last[offsets[u]:offsets[u + 1]], train_watch[rows], equal_nan=True)
    assert dm.history_side_values([], "valid") is None


def test_a_generator_with_side_features_gets_them_from_the_benchmark_and_the_decode_api(
        trained, sasrec_side_ckpt, tmp_path):
    import warnings

    from genret.eval.grank_benchmark import run_grank

    module, dm, ckpt = trained
    r = GRankRetriever.from_checkpoint(ckpt, device="cpu", generator=sasrec_side_ckpt)
    assert r.side_features == ["watch_frac"]
    histories = _histories(dm)
    es = dm.eval_sets["test"]
    values = dm.history_side_values(["watch_frac"], "test")["watch_frac"]
    side = {"watch_frac": [values[es.history_offsets[u]:es.history_offsets[u + 1]].tolist() for u in range(6)]}
    top = r.generator.retrieve(histories, k=150, side=side).items
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=MISSING_SIDE)
        result = r.retrieve(histories, k=40, side=side)
    for u, history in enumerate(histories):
        assert set(result.items[u]) == set([x for x in top[u] if x not in set(history)][:40])
    with pytest.raises(ValueError, match="give one value per item"):
        r.retrieve(histories, k=5, side={"watch_frac": [[0.5]] * 6})
    with pytest.raises(ValueError, match="unexpected \\['rating'\\]"):
        r.retrieve(histories, k=5, side={"rating": side["watch_frac"]})
    with pytest.raises(ValueError, match="neither GRank nor its generator"):
        GRankRetriever.from_checkpoint(ckpt, device="cpu").retrieve(histories, k=5, side=side)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=MISSING_SIDE)
        res = run_grank("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "bench", ks=(5, 10),
                        overrides=TINY + ["--model.generator", sasrec_side_ckpt, "--model.hard_negatives_from",
                                          "generator", "--model.hard_negatives", "4"])
    assert res["extra"]["generator"] == sasrec_side_ckpt


def test_a_beam_decoder_is_asked_for_candidates_as_its_own_evaluation_asks_it():
    """A DualGR-like generator is asked for k1 + the history margin with the history left in (no
    re-decoding of heavy users with thousands of beams); an embedding retriever for its exact top
    k1 unseen items. The history never comes back either way."""
    from genret.decoding.grank_retriever import generator_candidates
    from genret.decoding.requests import HISTORY_MARGIN
    from genret.decoding.retriever import RetrievalResult

    class Spy:
        def __init__(self):
            self.calls = []

        def retrieve(self, histories, k, side=None, exclude_seen=True, user_features=None):
            self.calls.append((k, exclude_seen))
            lists = [[x for x in range(100) if not (exclude_seen and x in set(h))][:k] for h in histories]
            return RetrievalResult(lists, [[-float(i) for i in range(len(ranked))] for ranked in lists])

    class BeamSpy(Spy):
        retrieve_indices = None  # what marks a beam-search decoder

    item_ids = np.arange(100)
    offsets, items = np.array([0, 3, 33]), np.concatenate([[0, 1, 2], np.arange(30)])
    beam, exact = BeamSpy(), Spy()
    cand_b, _ = generator_candidates(beam, item_ids, offsets, items, 10)
    cand_e, _ = generator_candidates(exact, item_ids, offsets, items, 10)
    assert beam.calls == [(10 + HISTORY_MARGIN, False)] and exact.calls == [(10, True)]
    assert cand_b[0].tolist() == list(range(3, 13)) and cand_e.tolist() == [list(range(3, 13)), list(range(30, 40))]
    # the heavy user's history (30 items) fills more than the margin: fewer than k1 remain, -1 padded
    assert cand_b[1].tolist() == [-1] * 10


def test_a_generator_with_user_features_gets_them(trained, monkeypatch):
    """DualGR on ML-1M embeds the users' gender / age / occupation / zip: the benchmark's lists and
    retrieve(user_features=...) hand them on, in the generator's order, sliced with the batch."""
    from genret.decoding.retriever import RetrievalResult
    from genret.eval.grank_negatives import generator_inputs

    module, dm, _ = trained
    n_users = dm.log_all.n_users
    table = np.stack([np.arange(n_users) % 3, np.arange(n_users) % 5 + 1], 1)
    monkeypatch.setattr(dm.log_all, "user_features", table)
    monkeypatch.setattr(dm.log_all, "user_feature_names", ["gender", "age"])
    es = dm.eval_sets["valid"]
    got = dm.history_user_features(["age", "gender"], "valid")
    np.testing.assert_array_equal(got, table[es.users][:, [1, 0]])
    np.testing.assert_array_equal(dm.history_user_features(["gender"], "last_cut"), table[dm.train_users][:, [0]])
    assert dm.history_user_features([], "valid") is None
    with pytest.raises(ValueError, match="embeds user features \\['zip'\\]"):
        dm.history_user_features(["zip"], "valid")
    side, users = generator_inputs(dm, "test")([], ["age"])
    assert side is None and users.shape == (len(dm.eval_sets["test"]), 1)

    class Spy:  # a generator embedding two user features
        user_feature_names, side_features = ["age", "gender"], []
        item_ids = dm.log_all.item_ids

        def __init__(self):
            self.seen = []

        def retrieve(self, histories, k, side=None, exclude_seen=True, user_features=None):
            self.seen.append(np.asarray(user_features).tolist())
            return RetrievalResult([list(self.item_ids[:k]) for _ in histories], [[0.0] * k for _ in histories])

    spy = Spy()
    r = GRankRetriever(module.model, dm.log_all.item_ids, k1=40, generator=spy)
    assert r.user_feature_names == ["age", "gender"]
    histories = _histories(dm, 5)
    feats = [[1, 2], [3, 1], [2, 2], [4, 1], [5, 2]]
    r.retrieve(histories, k=5, user_features=feats, batch_size=2)
    assert spy.seen == [feats[0:2], feats[2:4], feats[4:5]]
    with pytest.raises(ValueError, match="neither GRank nor its generator embeds user features"):
        GRankRetriever(module.model, dm.log_all.item_ids, k1=40).retrieve(histories, k=5, user_features=feats)


@pytest.fixture(scope="module")
def dualgr_scorer_ckpt(trained, tmp_path_factory):
    """A random (untrained) DualGR over the trained GRank's catalogue: a scorer of its candidates."""
    from tests.decoding.conftest import write_tiny_checkpoint

    ids = trained[1].log_all.item_ids.tolist()
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # the tiny writer numbers its items this way
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("scorer") / "dualgr.ckpt", n_items=len(ids),
                                     first_id=ids[0], user_field=False))


def test_a_dualgr_scorer_rescores_grank_own_candidates(trained, dualgr_scorer_ckpt):
    """The candidates and the ranker's scores stay GRank's; the blended score is DualGR's
    log-probability of each candidate, and the served list is sorted by s_ca + blend x it."""
    from genret.decoding.retriever import Retriever

    module, dm, _ = trained
    ids = dm.log_all.item_ids
    scorer = Retriever.from_checkpoint(dualgr_scorer_ckpt, device="cpu", kernel="torch")
    plain = GRankRetriever(module.model, ids, k1=40)
    scored = GRankRetriever(module.model, ids, k1=40, blend=3.0, scorer=scorer)
    es = dm.eval_sets["test"]
    offsets, items = es.history_offsets[:7] - es.history_offsets[0], es.history_items[:es.history_offsets[6]]
    cand0, _, rank0 = plain.candidate_scores(offsets, items)
    cand1, dualgr, rank1 = scored.candidate_scores(offsets, items)
    np.testing.assert_array_equal(cand0, cand1)
    np.testing.assert_allclose(rank0, rank1, rtol=1e-6)
    histories = [ids[items[a:b]].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    want = scorer.score_items(histories, [ids[row[row >= 0]].tolist() for row in cand1])
    np.testing.assert_allclose(dualgr[:, :len(want[0])], np.asarray(want, np.float32), rtol=1e-5)
    got = scored.retrieve(histories, k=10)
    for u in range(len(histories)):
        final = rank1[u] + 3.0 * dualgr[u]
        np.testing.assert_array_equal(got.items[u], ids[cand1[u][np.argsort(-final, kind="stable")[:10]]])
    # without a ranker the scorer's score is blended into the generator's
    _, gen0, _ = plain.candidate_scores(offsets, items)
    no_ranker = GRankRetriever(module.model, ids, k1=40, blend=3.0, scorer=scorer, ranker=False)
    cand2, dualgr2, base = no_ranker.candidate_scores(offsets, items)
    np.testing.assert_array_equal(cand2, cand0)
    np.testing.assert_allclose(base, gen0, rtol=1e-6)
    np.testing.assert_allclose(no_ranker.final_scores(dualgr2, base), gen0 + 3.0 * dualgr2, rtol=1e-6)
    with pytest.raises(ValueError, match="one or the other"):
        GRankRetriever(module.model, ids, k1=40, scorer=scorer, generator=plain)


def test_the_benchmark_chooses_the_scorer_blend_on_validation_beside_the_plain_pipeline(
        trained, dualgr_scorer_ckpt, sasrec_ckpt, tmp_path, monkeypatch):
    from genret.eval.grank_benchmark import run_grank
    from genret.training.grank_module import GRankModule

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the scorer's kernels in PyTorch (conftest's interpreter: slow)
    _, _, ckpt = trained
    res = run_grank("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "eval", ks=(5, 10), checkpoint=ckpt,
                    overrides=TINY + ["--model.scorer", dualgr_scorer_ckpt, "--model.blend_choices", "[0, 1, 4]"])
    assert res["extra"]["scorer"] == dualgr_scorer_ckpt and set(res["extra"]["val_by_blend"]) == {"0.0", "1.0", "4.0"}
    # blend 0 is the ranker alone on the same candidates: the scorer changes nothing there
    plain = res["extra"]["grank_own_generator"]
    assert res["extra"]["val_by_blend"]["0.0"] == plain["val_by_blend"]["0.0"]
    assert res["extra"]["val_by_blend"]["4.0"] != plain["val_by_blend"]["4.0"]
    assert len(plain["test_ranks"]) == len(res["extra"]["test_ranks"]["ranked"])
    assert {"grank + ranker", "grank generator only"} <= set(res["baselines"])
    # the same GRank without its ranker (as the *_lastpos generators are trained): no "+ ranker" row
    alone = run_grank("grank", CONFIGS / "grank_ml1m.yaml", tmp_path / "eval_no_ranker", ks=(5, 10), checkpoint=ckpt,
                      overrides=TINY + ["--model.scorer", dualgr_scorer_ckpt, "--model.ranker_weight", "0"])
    assert "grank + ranker" not in alone["baselines"] and "grank generator only" in alone["baselines"]
    with pytest.raises(ValueError, match="set model.generator: grank"):
        GRankModule(generator=sasrec_ckpt, scorer=dualgr_scorer_ckpt)
    with pytest.raises(ValueError, match="is a kuaiformer checkpoint"):
        GRankRetriever.from_checkpoint(ckpt, device="cpu", scorer=sasrec_ckpt)
    with pytest.raises(FileNotFoundError, match="scorer checkpoint"):
        GRankRetriever.from_checkpoint(ckpt, device="cpu", scorer=str(tmp_path / "missing.ckpt"))


def test_the_scored_amazon_recipe_is_the_last_position_generator_with_the_amazon_dualgr_as_scorer(tmp_path):
    import yaml

    from genret.training.grank_generator import is_training_config, resolve_config

    module, dm, _ = build("grank", CONFIGS / "grank_amazon_dualgr_scored.yaml", tmp_path)
    assert is_training_config(module.scorer) and module.generator == "grank" and module.ranker_weight == 0
    assert resolve_config(module.scorer, CONFIGS, "model.scorer").resolve() == (CONFIGS / "dualgr_amazon.yaml").resolve()
    assert module.blend in module.blend_choices and 0 in module.blend_choices  # blend 0: the generator alone
    assert dm.item_features == [] and dm.side_features == []  # ids only: runs on any Amazon category
    # Its generator trains exactly as the last-position generator recipe's (the numbers measured by
    # scoring that recipe's checkpoints are this recipe's).
    scored = yaml.safe_load((CONFIGS / "grank_amazon_dualgr_scored.yaml").read_text())
    alone = yaml.safe_load((CONFIGS / "grank_amazon_generator_lastpos.yaml").read_text())
    for cfg in (scored, alone):
        cfg["trainer"].pop("default_root_dir")
        for key in ("scorer", "k1", "blend", "blend_choices"):
            cfg["model"].pop(key, None)
    assert scored == alone
