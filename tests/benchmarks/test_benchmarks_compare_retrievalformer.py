"""benchmarks/compare_retrievalformer.py: RetrievalFormer checkpoints re-scored on the same validation
users (cold validation users included under LOOC), paired against the first."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from genret.eval.retrievalformer_benchmark import run_retrievalformer

    tests = Path(__file__).resolve().parents[1]
    # The tiny MovieLens writer of the RetrievalFormer tests (a test module, not a package).
    spec = importlib.util.spec_from_file_location("rf_tests", tests / "training" / "test_retrievalformer.py")
    rf_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rf_tests)
    write_movielens = rf_tests.write_movielens
    root = tmp_path_factory.mktemp("compare_rf")
    data = write_movielens(root / "tiny-ml", n_users=120)
    config = tests.parent / "configs" / "retrievalformer_ml1m.yaml"
    overrides = ["--trainer.max_epochs", "1", "--data.batch_size", "16", "--data.protocol", "looc",
                 "--data.cold_seed_users", "8", "--data.cold_valid_users", "8", "--data.min_count", "1"]
    ckpts = []
    for seed in (0, 1):
        res = run_retrievalformer("retrievalformer", config, root / f"run{seed}", data=str(data), ks=(5, 10),
                                  overrides=overrides, seed=seed, stages=("valid",))
        ckpts.append(res["checkpoint"])
    return str(data), str(config), ckpts, overrides


def test_paired_against_the_first_checkpoint_warm_and_cold(load_benchmark, checkpoints, capsys):
    bench = load_benchmark("compare_retrievalformer")
    data, config, (a, b), overrides = checkpoints
    assert bench.main(["--data", data, "--config", config, "--ks", "5,10", a, a, b, "--", *overrides]) == 0
    out = capsys.readouterr().out
    blocks = out.split(a)
    # The reference checkpoint against itself: every difference is exactly zero, warm and cold.
    assert "val (" in blocks[2] and "cold val (" in blocks[2]
    assert blocks[2].count("(+0.00 +- 0.00 pts)") == 4
    assert b in out and out.count("cold val (") == 3
    with pytest.raises(SystemExit):
        bench.main(["--data", data, "--config", config, a])
