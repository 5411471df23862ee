"""benchmarks/bench_kernels.py: every section runs at a tiny size and its Triton kernels agree with
their references (in the interpreter on a CPU)."""


import pytest


def test_every_kernel_section_runs_and_agrees_with_its_reference(capsys, load_benchmark):
    pytest.importorskip("triton")
    bench = load_benchmark("bench_kernels")
    assert bench.main(["--device", "cpu", "--users", "2", "--beams", "8", "--codes", "64", "--history", "50",
                       "--d-model", "32", "--heads", "2", "--repeats", "1", "--density", "0.2"]) == 0
    out = capsys.readouterr().out
    for section in ("decode cross-attention", "\nbeam step", "CSR beam step", "prefix self-attention"):
        assert section in out
    assert "equal to its reference in 100.00% of slots; the reference equals the dense beam step's in 100.00%" in out
    for line in out.splitlines():
        if "max |triton - reference|" in line:
            assert float(line.rsplit("=", 1)[1]) < 1e-4
