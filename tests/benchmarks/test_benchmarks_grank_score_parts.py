"""benchmarks/grank_score_parts.py: a trained GRank's score over another generator's candidates split
into its parts (the ranker's cross-attention, GRank's own generator score), each part's blend chosen
on validation."""

from pathlib import Path

import numpy as np
import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DATA = ["--data.data", "synthetic:200x150", "--data.load_kwargs", "{}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from genret.eval.grank_benchmark import run_grank
    from genret.training.run import build, fit

    root = tmp_path_factory.mktemp("score_parts")
    sasrec, sdm, trainer = build("sasrec", CONFIGS / "sasrec_ml1m.yaml", root / "sasrec",
                                 DATA + ["--trainer.max_epochs", "1", "--model.config.d_model", "16",
                                         "--model.config.d_ffn", "32", "--data.max_len", "8"])
    generator, _ = fit(sasrec, sdm, trainer, root / "sasrec")
    torch.manual_seed(0)
    tiny = DATA + ["--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--trainer.max_time", "null",
                   "--model.config.d_model", "16", "--model.config.d_ffn", "32", "--model.config.n_layers", "1",
                   "--model.config.ranker_hidden", "16", "--data.max_len", "8", "--data.long_len", "20",
                   "--model.k1", "30", "--model.val_k1", "30", "--model.hard_pool", "30", "--model.hard_negatives", "4",
                   "--model.aux_weight", "0", "--data.batch_size", "64", "--model.warmup_steps", "0",
                   "--model.generator", str(generator), "--model.hard_negatives_from", "generator"]
    res = run_grank("grank", CONFIGS / "grank_ml1m.yaml", root / "grank", ks=(5, 10), overrides=tiny)
    return str(res["checkpoint"]), str(generator), res["datamodule"]


def test_the_parts_add_up_to_the_served_score(load_benchmark, trained):
    from genret.decoding.grank_retriever import GRankRetriever

    bench = load_benchmark("grank_score_parts")
    ckpt, generator, dm = trained
    retriever = GRankRetriever.from_checkpoint(ckpt, device="cpu", k1=30, generator=generator)
    es = dm.eval_sets["valid"]
    parts = bench.score_parts(retriever, es, 30, batch_size=50)
    cand, gen, rank = retriever.candidate_scores(np.asarray(es.history_offsets), np.asarray(es.history_items), 30)
    np.testing.assert_array_equal(parts["cand"], cand)
    for blend in (0.0, 2.0):
        served = retriever.final_scores(gen, rank, blend)
        ok = cand >= 0
        np.testing.assert_allclose(bench.variant_score(parts, "full", blend)[ok], served[ok], rtol=1e-4, atol=1e-4)
    # Both parts carry signal of their own (neither is identically zero).
    assert not np.allclose(parts["s_ca"][cand >= 0], 0.0) and not np.allclose(parts["residual"][cand >= 0], 0.0)


def test_the_script_prints_every_variant_with_its_validation_blend(load_benchmark, trained, capsys):
    bench = load_benchmark("grank_score_parts")
    ckpt, generator, _ = trained
    assert bench.main(["--data", "synthetic:200x150", "--config", str(CONFIGS / "grank_ml1m.yaml"),
                       "--checkpoint", ckpt, "--generator", generator, "--k1", "30", "--ks", "5,10",
                       "--blends", "0,1", "--", "--data.load_kwargs", "{}"]) == 0
    out = capsys.readouterr().out
    for variant in bench.VARIANTS:
        assert out.count(f"  {variant} (blend ") == 2  # validation and test
    assert "validation (" in out and "test (" in out and out.count("generator alone") == 2
