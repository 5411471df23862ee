"""benchmarks/grank_ablation.py: the four arms read from the two stage-2 runs of each seed, paired to the pure generator."""

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("grank_ablation")


def stage2(folder, generator_ranks, ranked_ranks, blend=0.5, ranker=True):
    """A stage-2 run's metrics.json as genret benchmark --model grank writes it (the keys the script reads)."""
    def metrics(ranks):
        hits = sum(0 <= r < 10 for r in ranks) / len(ranks)
        return {"recall@10": hits, "ndcg@10": hits / 2, "recall@50": hits, "recall@500": hits}

    folder.mkdir(parents=True)
    gen, ranked = metrics(generator_ranks), metrics(ranked_ranks)
    (folder / "metrics.json").write_text(json.dumps({
        "val": ranked, "test": ranked, "generator_only": {"val": gen, "test": gen},
        "blend": blend if ranker else None, "ranker_served": ranker,
        "test_ranks": {"generator": generator_ranks, "ranked": ranked_ranks}}))


def test_arms_come_from_the_right_run_and_order(bench, tmp_path, capsys):
    # 4 users. pure generator hits users 0,1; its ranker adds user 2; the aux generator hits only 0;
    # its ranker is switched off by validation (served in the generator's order).
    for seed in (0, 1):
        stage2(tmp_path / f"rank_pure_s{seed}", [0, 3, 40, -1], [0, 3, 5, -1])
        stage2(tmp_path / f"rank_aux_s{seed}", [0, 30, 40, -1], [0, 30, 40, -1], ranker=False)
    assert bench.main(["--data", "d", "--generator", "g.yaml", "--ranker", "r.yaml", "--out", str(tmp_path),
                       "--seeds", "0", "1", "--ks", "10", "--summarise-only"]) == 0
    summary = json.loads((tmp_path / "ablation.json").read_text())
    arms = summary["arms"]
    assert summary["seeds"] == [0, 1]
    assert arms["pure generator"]["test/recall@10"]["mean"] == pytest.approx(0.5)
    assert arms["generator + ranker"]["test/recall@10"]["mean"] == pytest.approx(0.75)
    assert arms["generator + aux"]["test/recall@10"]["mean"] == pytest.approx(0.25)
    assert arms["generator + ranker"]["vs_pure"]["10"]["diff"] == pytest.approx(0.25)
    assert arms["full GRank"]["vs_pure"]["10"]["diff"] == pytest.approx(-0.25)
    assert "vs_pure" not in arms["pure generator"]
    assert arms["generator + ranker"]["vs_own_generator"]["10"]["diff"] == pytest.approx(0.25)
    assert arms["full GRank"]["vs_own_generator"]["10"]["diff"] == pytest.approx(0.0)
    assert "vs_own_generator" not in arms["generator + aux"]
    assert arms["full GRank"]["served"] == ["generator order", "generator order"]
    assert arms["generator + ranker"]["served"] == [0.5, 0.5]
    out = capsys.readouterr().out
    assert "| generator + ranker | " in out and "+25.00" in out


def test_seeds_without_both_runs_are_left_out_and_none_is_an_error(bench, tmp_path):
    stage2(tmp_path / "rank_pure_s0", [0, -1], [0, -1])
    with pytest.raises(SystemExit, match="no seed has both stage-2 runs"):
        bench.summarise(tmp_path, [0], [10])
    stage2(tmp_path / "rank_aux_s0", [0, -1], [0, 1])
    stage2(tmp_path / "rank_pure_s1", [0, -1], [0, -1])
    assert bench.summarise(tmp_path, [0, 1], [10])["seeds"] == [0]
