"""benchmarks/compare_runs.py: paired differences of finished runs against a reference, per stage both read."""


import numpy as np
import pytest

from genret.eval.run_record import write_run_record


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("compare_runs")


def write(folder, val, test=None, cold_val=None):
    result = {"val": {}, "val_ranks": np.asarray(val)}
    if test is not None:
        result |= {"test": {}, "test_ranks": np.asarray(test)}
    if cold_val is not None:
        result |= {"cold_val": {}, "cold_val_ranks": np.asarray(cold_val)}
    write_run_record(folder, {"seed": 0}, result)
    return str(folder)


def test_paired_difference_per_stage_both_runs_read(bench, tmp_path, capsys):
    ref = write(tmp_path / "ref", val=[0, 5, -1, 20], test=[1, -1, 3, 0])
    better = write(tmp_path / "better", val=[0, 0, 3, 2])  # validation only (a sweep run)
    assert bench.main([ref, better, "--ks", "10"]) == 0
    out = capsys.readouterr().out
    # HR@10: reference 2 of 4 users, the other 4 of 4: +50 points; test is not compared (one side lacks it).
    assert "val: HR@10 1.0000 (+50.00" in out and "test:" not in out.split("better")[1]


def test_looc_runs_are_paired_on_their_cold_validation_users_too(bench, tmp_path, capsys):
    ref = write(tmp_path / "ref", val=[0, 5], cold_val=[3, -1, -1, 40])
    other = write(tmp_path / "other", val=[0, 5], cold_val=[-1, -1, -1, 40])
    assert bench.main([ref, other, "--ks", "10"]) == 0
    out = capsys.readouterr().out
    assert "val: HR@10 1.0000 (+0.00" in out and "cold_val: HR@10 0.0000 (-25.00" in out


def test_runs_on_other_users_and_missing_records_are_refused(bench, tmp_path):
    ref = write(tmp_path / "ref", val=[0, 5, -1])
    other = write(tmp_path / "other", val=[0, 5])
    with pytest.raises(SystemExit, match="ranked 2 and 3 users"):
        bench.main([ref, other])
    with pytest.raises(SystemExit, match="no run_result.json"):
        bench.main([ref, str(tmp_path / "nothing")])
