"""benchmarks/bench_decode.py: its naive baseline decodes what genret's path decodes, and its options run."""


import pytest
import torch

TINY = ["--device", "cpu", "--users", "2", "--beam", "8", "--history", "30", "--items", "500", "--codes", "32",
        "--d-model", "32", "--heads", "2", "--blocks", "1", "--repeats", "1"]


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_decode")


def test_naive_baseline_returns_the_reference_items(bench):
    # A speed-up over a baseline means something only if the baseline computes the same lists.
    from genret.decoding.beam_search import retrieve_indices

    args = bench.parse_args(TINY)
    model, index = bench.build(args)
    hist = bench.histories(args)
    naive_items, naive_scores = bench.naive_decode(model, index, hist, beam=8, k=8)
    items, scores = retrieve_indices(model, index, hist, 8, kernel="torch")
    assert torch.equal(naive_items, items)
    torch.testing.assert_close(naive_scores, scores, rtol=1e-4, atol=1e-4)


def test_bf16_run_prints_every_path_and_a_profile(bench, capsys):
    assert bench.main(TINY + ["--no-triton", "--no-kernel-bench", "--precision", "bf16", "--profile", "3"]) == 0
    out = capsys.readouterr().out
    assert "precision bf16" in out
    assert "naive (recompute" in out and "reference (kernel=torch)" in out
    assert "profile of one batch" in out and "self_cpu_time_total" in out


def test_count_ops_prints_one_json_line_last(bench, capsys):
    import json

    assert bench.main(TINY + ["--count-ops"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert {"host_syncs", "ops_per_level_step", "level_steps", "host_syncs_per_batch"} <= set(result)
    assert result["level_steps"] == 3  # 3 levels, both DBR branches in one batch
    assert result["ops_per_level_step"] > 0
    assert result["roofline"]["flops"] > 0 and result["roofline"]["bytes"] > 0


def test_bf16_weights_run_decodes_every_path_in_bf16(bench, capsys):
    # Serving in bf16 weights (no autocast): the model really is bf16, and every path still runs.
    args = bench.parse_args(TINY + ["--precision", "bf16-weights"])
    model, _ = bench.build(args)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert bench.main(TINY + ["--no-triton", "--no-kernel-bench", "--precision", "bf16-weights"]) == 0
    out = capsys.readouterr().out
    assert "precision bf16-weights" in out
    assert "naive (recompute" in out and "reference (kernel=torch)" in out
