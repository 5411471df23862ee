"""benchmarks/grank_paired.py: paired differences between GRank runs' test rank lists, seed for seed."""

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("grank_paired")


def write(folder, ranked, generator):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"test": {}, "test_ranks": {"ranked": ranked, "generator": generator}}))
    return str(folder)


def test_paired_recall_and_ndcg_over_seed_pairs(bench, tmp_path, capsys):
    # seed 0: the ranked list finds user 1's target at rank 0 where the generator missed it;
    # seed 1: the same users, no change. Recall@10 per pair +50 and 0 points, +25 clustered by user.
    s0 = write(tmp_path / "s0", ranked=[0, 0], generator=[0, -1])
    s1 = write(tmp_path / "s1", ranked=[3, -1], generator=[3, -1])
    assert bench.main(["--a", f"{s0}:ranked", f"{s1}:ranked", "--b", f"{s0}:generator", f"{s1}:generator",
                       "--ks", "10"]) == 0
    out = capsys.readouterr().out
    assert "2 pair(s), 2 users" in out
    assert "Recall@10: +25.00" in out and "(per pair +50.00, +0.00)" in out
    assert "NDCG@10: +25.00" in out  # a hit at rank 0 has gain 1
    # a rank past the cut-off is a miss at that cut-off
    assert bench.main(["--a", f"{s1}:ranked", "--b", f"{s0}:generator", "--ks", "3"]) == 0
    assert "Recall@3: -50.00" in capsys.readouterr().out


def test_validation_ranks_compare_with_stage_val(bench, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"val_ranks": {"ranked": [0, 0], "generator": [0, -1]},
                                                  "test_ranks": {"ranked": [0, 0], "generator": [0, 0]}}))
    assert bench.main(["--a", f"{run}:ranked", "--b", f"{run}:generator", "--ks", "10", "--stage", "val"]) == 0
    out = capsys.readouterr().out
    assert "A - B, val," in out and "Recall@10: +50.00" in out
    assert bench.main(["--a", f"{run}:ranked", "--b", f"{run}:generator", "--ks", "10"]) == 0
    assert "Recall@10: +0.00" in capsys.readouterr().out  # test is the default
    old = write(tmp_path / "old", ranked=[0, 1], generator=[1, 0])  # a run from before val ranks were kept
    with pytest.raises(SystemExit, match="no val_ranks"):
        bench.main(["--a", f"{old}:ranked", "--b", f"{old}:generator", "--stage", "val"])


def test_bad_input_is_named(bench, tmp_path):
    run = write(tmp_path / "run", ranked=[0, 1], generator=[1, 0])
    other = write(tmp_path / "other", ranked=[0, 1, 2], generator=[0, 1, 2])
    with pytest.raises(SystemExit, match="LIST one of ranked, generator"):
        bench.main(["--a", f"{run}:rank", "--b", f"{run}:generator"])
    with pytest.raises(SystemExit, match="no metrics.json there"):
        bench.main(["--a", f"{tmp_path / 'missing'}:ranked", "--b", f"{run}:generator"])
    with pytest.raises(SystemExit, match="compare runs on the same split"):
        bench.main(["--a", f"{run}:ranked", "--b", f"{other}:generator"])
    (tmp_path / "sasrec").mkdir()
    (tmp_path / "sasrec" / "metrics.json").write_text(json.dumps({"test": {}}))
    with pytest.raises(SystemExit, match="no test_ranks"):
        bench.main(["--a", f"{run}:ranked", "--b", f"{tmp_path / 'sasrec'}:generator"])
    with pytest.raises(SystemExit):  # argparse: the two sides must pair up
        bench.main(["--a", f"{run}:ranked", f"{run}:ranked", "--b", f"{run}:generator"])
