"""benchmarks/bench_serve.py drives a real `genret serve` and prints both tables."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[2]


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_test_runs_on_a_tiny_checkpoint(tmp_path, capsys):
    tiny = load("decoding_tiny_checkpoints", ROOT / "tests" / "decoding" / "conftest.py")
    bench = load("bench_serve", ROOT / "benchmarks" / "bench_serve.py")
    ckpt = tiny.write_tiny_checkpoint(tmp_path / "tiny.ckpt")
    assert bench.main(["--checkpoint", str(ckpt), "--concurrency", "1,3", "--requests", "6", "--seconds", "20",
                       "--baseline-calls", "3", "--k", "5", "--history-length", "4", "--kernel", "torch"]) == 0
    out = capsys.readouterr().out
    assert "in-process Retriever.retrieve" in out and "| 1 | 1 | 3 |" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 | 6 | 0 |") or line.startswith("| 3 | 6 | 0 |")]
    assert len(rows) == 2 and all(row.endswith("% |") for row in rows), out
