"""ANN serving vs exact search: recall@K of faiss HNSW / IVF-PQ against exact inner-product top-K,
and per-query latency, at 100k, 1M and 10M synthetic items (RetrievalFormer's serving claim: the
paper reports up to 288x lower latency at 10M items, IVF-PQ vs brute force).

Items are a mixture of Gaussian blobs (structured like learned item embeddings; uniform random
vectors are the worst case for any ANN index), queries are drawn from the same mixture. Exact is
faiss IndexFlatIP (BLAS brute force), measured in the same run on the same queries. Latency is
per query for a batch of `--batch` queries (the paper's 1024) and for single queries (batch 1),
best of `--repeats` runs. Index build time is reported but not part of latency.

    python benchmarks/bench_ann.py                       # 100k, 1M, 10M (IVF-PQ only at 10M)
    python benchmarks/bench_ann.py --sizes 100000 --quick
    python benchmarks/bench_ann.py --sizes 1000000 --ef_search 256,512,1024,2048   # where HNSW reaches 0.95
    python benchmarks/bench_ann.py --sizes 10000000 --kinds hnsw --hnsw_max 10000000 --ef_search 512,1024,2048,4096 \
        --threads 1 --build_threads 2   # the graph on every core (~1.5 h here), searches timed on one
Bounded run time: HNSW is built up to --hnsw_max items (its build is the slow part on a CPU);
a size whose vectors would not fit in --max_gb of memory is skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from genret.decoding.ann import ANNIndex, import_faiss  # noqa: E402


def make_items(n: int, d: int, seed: int, chunk: int = 1_000_000) -> np.ndarray:
    """(n, d) float32 mixture of n/50 blobs, written chunk by chunk (10M x 64 is 2.6 GB)."""
    rng = np.random.default_rng(seed)
    n_blobs = max(1, n // 50)
    centers = rng.standard_normal((n_blobs, d), dtype=np.float32)
    spread = rng.uniform(0.3, 0.8, n_blobs).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        blob = rng.integers(0, n_blobs, m)
        out[s:s + m] = centers[blob] + spread[blob, None] * rng.standard_normal((m, d), dtype=np.float32)
    return out


def make_queries(items: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    base = items[rng.integers(0, len(items), n)]
    return (base + 0.5 * rng.standard_normal(base.shape, dtype=np.float32)).astype(np.float32)


def timed(search, queries: np.ndarray, k: int, batch: int, repeats: int) -> tuple[float, float, np.ndarray]:
    """(ms per query at `batch`, ms per single query, ids of the batched run)."""
    best_batch, ids = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        parts = [search(queries[s:s + batch], k)[1] for s in range(0, len(queries), batch)]
        best_batch = min(best_batch, (time.perf_counter() - t) * 1000 / len(queries))
        ids = np.concatenate(parts)
    singles = queries[:min(len(queries), 32)]
    best_single = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for q in singles:
            search(q[None], k)
        best_single = min(best_single, (time.perf_counter() - t) * 1000 / len(singles))
    return best_batch, best_single, ids


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(approx, exact)]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000,10000000")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=100, help="recall@K and the list length searched")
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--kinds", default="hnsw,ivfpq", help="ANN indexes measured against exact search")
    p.add_argument("--hnsw_max", type=int, default=1_000_000, help="largest catalogue HNSW is built for")
    p.add_argument("--ef_search", default="128,256,512,1024", help="HNSW efSearch values tried")
    p.add_argument("--hnsw_m", default="32", help="HNSW graph degree(s): every M x efConstruction pair is built")
    p.add_argument("--ef_construction", default="64", help="HNSW build beam width(s)")
    p.add_argument("--nprobe", default="32,128", help="IVF-PQ nprobe values tried")
    p.add_argument("--nlist", type=int, default=4096, help="IVF lists (the paper's 4096), at most 4 sqrt(n)")
    p.add_argument("--refine", type=int, default=0, help="IVF-PQ: re-rank refine*K candidates exactly (0 = off)")
    p.add_argument("--max_gb", type=float, default=8.0, help="skip sizes whose vectors need more memory")
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: faiss's)")
    p.add_argument("--build_threads", type=int, default=None,
                   help="faiss threads while an ANN index is built (default: --threads); searches keep "
                        "--threads, so a 10M graph can be built on every core and timed on one")
    p.add_argument("--tune_queries", type=int, default=0,
                   help="> 0: also tune each index (ANNIndex.tune) to --target_recall on this many other "
                        "queries and measure the tuned setting on the benchmark's queries")
    p.add_argument("--target_recall", type=float, default=0.95,
                   help="each size's summary names the fastest setting at or above this recall@K")
    p.add_argument("--quick", action="store_true", help="256 queries, one repeat")
    args = p.parse_args(argv)
    faiss = import_faiss()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    search_threads = faiss.omp_get_max_threads()
    build_threads = args.build_threads or search_threads
    if args.quick:
        args.queries, args.repeats = 256, 1
    hnsw_ms = [int(v) for v in args.hnsw_m.split(",")]
    ef_constructions = [int(v) for v in args.ef_construction.split(",")]
    if min(hnsw_ms + ef_constructions) < 1:
        raise SystemExit(f"--hnsw_m and --ef_construction must be positive integers, got {args.hnsw_m!r} and "
                         f"{args.ef_construction!r}")
    print(f"# bench_ann: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"faiss {faiss.__version__}, {search_threads} faiss threads searching, {build_threads} building, d={args.dim}, "
          f"K={args.k}, {args.queries} queries, batch {args.batch}")
    header = f"{'items':>10} {'index':<22} {'recall@' + str(args.k):>10} {'ms/query (batch)':>17} " \
             f"{'ms/query (single)':>18} {'speed-up (batch)':>17} {'build s':>8}"
    print(header)
    print("-" * len(header))
    best: dict[int, tuple[str, float, float] | None] = {}  # size -> fastest setting reaching the target
    for n in [int(s) for s in args.sizes.split(",")]:
        need = n * args.dim * 4 * 2.2 / 2**30  # vectors + the flat index's copy
        if need > args.max_gb:
            print(f"{n:>10} skipped: needs ~{need:.1f} GB (> --max_gb {args.max_gb})")
            continue
        t = time.perf_counter()
        items = make_items(n, args.dim, seed=n)
        queries = make_queries(items, args.queries, seed=n)
        flat = ANNIndex.build(items, "flat")
        build = time.perf_counter() - t
        exact_ms, exact_single, exact_ids = timed(flat.search, queries, args.k, args.batch, args.repeats)
        print(f"{n:>10} {'exact (flat IP)':<22} {1.0:>10.4f} {exact_ms:>17.3f} {exact_single:>18.3f} "
              f"{1.0:>16.1f}x {build:>8.1f}", flush=True)
        del flat
        wanted = args.kinds.split(",")
        # One build per HNSW graph (M, efConstruction) asked for, then IVF-PQ once; all against the exact run above.
        builds = [("hnsw", {"hnsw_m": m, "ef_construction": efc}) for m in hnsw_ms for efc in ef_constructions] \
            if "hnsw" in wanted and n <= args.hnsw_max else []
        builds += [("ivfpq", {})] if "ivfpq" in wanted else []
        for kind, graph in builds:
            faiss.omp_set_num_threads(build_threads)
            t = time.perf_counter()
            nlist = min(args.nlist, int(4 * np.sqrt(n)))
            big = n > args.hnsw_max  # past HNSW's range: an HNSW coarse quantiser and 10 k-means iterations
            ann = ANNIndex.build(items, kind, **graph, nlist=nlist,
                                 coarse="hnsw" if big else "flat", kmeans_iters=10 if big else None,
                                 train_size=160_000 if big else 200_000, refine=args.refine)
            build = time.perf_counter() - t
            faiss.omp_set_num_threads(search_threads)
            knobs = [int(v) for v in (args.ef_search if kind == "hnsw" else args.nprobe).split(",")]
            if args.tune_queries:  # tuned on queries the rows below do not use: does the choice carry over?
                tuned = ann.tune(items, make_queries(items, args.tune_queries, seed=n + 1), k=args.k,
                                 target_recall=args.target_recall)
                knobs.append(-tuned["value"])
            for knob in knobs:
                suffix = f" (tuned, {tuned['recall']:.4f})" if knob < 0 else ""
                knob = abs(knob)
                if kind == "hnsw":
                    ann.index.hnsw.efSearch = max(knob, args.k)
                    name = f"hnsw M{graph['hnsw_m']} efC{graph['ef_construction']} ef{max(knob, args.k)}{suffix}"
                else:
                    ivf = faiss.extract_index_ivf(ann.index)
                    ivf.nprobe = min(knob, ann.params["nlist"])
                    name = f"ivfpq {ann.params['nlist']}/{ivf.nprobe} m{ann.params['pq_m']}" + \
                        (" hnswq" if ann.params["coarse"] == "hnsw" else "") + \
                        (f" rf{args.refine}" if args.refine else "") + suffix
                ms, single, ids = timed(ann.search, queries, args.k, args.batch, args.repeats)
                r = recall(ids, exact_ids)
                print(f"{n:>10} {name:<22} {r:>10.4f} {ms:>17.3f} {single:>18.3f} "
                      f"{exact_ms / ms:>16.1f}x {build:>8.1f}", flush=True)
                if r >= args.target_recall and (n not in best or best[n] is None or exact_ms / ms > best[n][2]):
                    best[n] = (name, r, exact_ms / ms)
                best.setdefault(n, None)
            del ann
        del items
    print(f"\nfastest setting at recall@{args.k} >= {args.target_recall} of exact:")
    for n, hit in best.items():
        print(f"{n:>10} " + (f"{hit[0]}: recall {hit[1]:.4f}, speed-up vs exact {hit[2]:.1f}x" if hit
                             else "none of the settings tried"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
