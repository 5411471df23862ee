"""benchmarks/bench_ann.py: it measures every setting against exact search in one run and names the
fastest setting that reaches the target recall, or says that none did."""

import re

import pytest

pytest.importorskip("faiss")

TINY = ["--sizes", "3000", "--quick", "--dim", "16", "--k", "20", "--queries", "64", "--batch", "64",
        "--ef_search", "20,200", "--nprobe", "4", "--nlist", "32", "--threads", "1"]


def test_summary_names_the_fastest_setting_at_the_target(load_benchmark, capsys):
    bench = load_benchmark("bench_ann")
    assert bench.main(TINY + ["--target_recall", "0.9"]) == 0
    out = capsys.readouterr().out
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s+3000 (\S.*?)\s+([01]\.\d{4})\s", out, re.M)}
    assert {"hnsw M32 efC64 ef20", "hnsw M32 efC64 ef200"} <= set(rows)
    summary = out[out.index("fastest setting at recall@20 >= 0.9"):]
    named = re.search(r"3000 (.+): recall ([01]\.\d{4}), speed-up vs exact", summary)
    assert named and float(named.group(2)) >= 0.9 and rows[named.group(1)] == float(named.group(2))
    assert bench.main(TINY + ["--target_recall", "1.01"]) == 0
    assert "3000 none of the settings tried" in capsys.readouterr().out


def test_tuned_rows_are_measured_on_the_benchmark_queries(load_benchmark, capsys):
    bench = load_benchmark("bench_ann")
    assert bench.main(TINY + ["--kinds", "hnsw", "--tune_queries", "64", "--target_recall", "0.9"]) == 0
    tuned = re.search(r"3000 hnsw M32 efC64 ef(\d+) \(tuned, ([01]\.\d{4})\)\s+([01]\.\d{4})", capsys.readouterr().out)
    assert tuned and float(tuned.group(2)) >= 0.9  # the recall on the tuning queries; the row's is measured


def test_every_hnsw_graph_asked_for_is_built_and_measured(load_benchmark, capsys):
    bench = load_benchmark("bench_ann")
    assert bench.main(TINY + ["--kinds", "hnsw", "--hnsw_m", "8,16", "--ef_construction", "16,40"]) == 0
    out = capsys.readouterr().out
    graphs = set(re.findall(r"^\s+3000 hnsw (M\d+ efC\d+) ef\d+", out, re.M))
    assert graphs == {"M8 efC16", "M8 efC40", "M16 efC16", "M16 efC40"}
    with pytest.raises(SystemExit, match="--hnsw_m and --ef_construction must be positive"):
        bench.main(TINY + ["--hnsw_m", "0"])


def test_indexes_are_built_on_build_threads_and_searched_on_threads(load_benchmark, capsys, monkeypatch):
    bench = load_benchmark("bench_ann")
    faiss = pytest.importorskip("faiss")
    seen = {"build": set(), "search": set()}
    build = bench.ANNIndex.build.__func__
    search = bench.ANNIndex.search

    def spy_build(cls, items, kind, **kw):
        if kind != "flat":
            seen["build"].add(faiss.omp_get_max_threads())
        return build(cls, items, kind, **kw)

    def spy_search(self, queries, k):
        if self.kind != "flat":
            seen["search"].add(faiss.omp_get_max_threads())
        return search(self, queries, k)

    monkeypatch.setattr(bench.ANNIndex, "build", classmethod(spy_build))
    monkeypatch.setattr(bench.ANNIndex, "search", spy_search)
    assert bench.main(TINY + ["--build_threads", "2"]) == 0
    assert "1 faiss threads searching, 2 building" in capsys.readouterr().out
    assert seen == {"build": {2}, "search": {1}}
