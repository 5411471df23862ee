"""Speed and quality of one RQ-KMeans level against scikit-learn's Lloyd k-means (and faiss), same run.

Same data, same K, same number of Lloyd iterations. Rows:
  sklearn random      KMeans(init="random", n_init=1, algorithm="lloyd", max_iter, tol=0): the baseline
  sklearn same-init   the same KMeans started from RQKMeans's own initial points (isolates the algorithm)
  RQKMeans            RQKMeans(n_levels=1, init="random")
  faiss.Kmeans        when faiss is importable (its own random init; inertia by exact assignment)
Ratios are against "sklearn random". With --repeats R every method runs R times, round-robin,
and its fastest time is reported (the machine may be shared); every run is seeded alike.

    python benchmarks/bench_kmeans.py            # N=200k, d=64, K=8192, 10 iterations (~2-3 min)
    python benchmarks/bench_kmeans.py --quick    # N=40k, d=32, K=256
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

from genret.tokenizers import RQKMeans
from genret.tokenizers.kmeans import random_init_indices


def make_data(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) float32: a mixture of n/25 Gaussian blobs of varying spread (structured, like item embeddings)."""
    rng = np.random.default_rng(seed)
    n_blobs = max(1, n // 25)
    centers = rng.normal(size=(n_blobs, d)).astype(np.float32)
    blob = rng.integers(0, n_blobs, size=n)
    spread = rng.uniform(0.2, 0.6, size=n_blobs).astype(np.float32)
    noise = rng.normal(size=(n, d)).astype(np.float32)
    return centers[blob] + spread[blob, None] * noise


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def exact_inertia(X: np.ndarray, centers: np.ndarray) -> float:
    """Sum of squared distances to the nearest center, by the same exact assignment for every method."""
    tok = RQKMeans(n_levels=1, codebook_size=centers.shape[0], device="cpu")
    tok.codebooks_ = torch.from_numpy(np.ascontiguousarray(centers, dtype=np.float32))[None]
    tok.n_features_in_ = X.shape[1]
    codes = tok.encode(X)[:, 0]
    diff = X.astype(np.float64) - centers[codes].astype(np.float64)
    return float((diff * diff).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=8192)
    parser.add_argument("--n-iter", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="runs per method; the fastest is reported")
    parser.add_argument("--quick", action="store_true", help="N=40k, d=32, K=256 (seconds)")
    parser.add_argument("--no-same-init", action="store_true", help="skip the sklearn same-init row")
    parser.add_argument("--no-faiss", action="store_true", help="skip faiss even when it is importable")
    parser.add_argument("--device", default="cpu", help="RQKMeans device (cpu for a fair CPU comparison)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.k = 40_000, 32, 256

    from sklearn import __version__ as sklearn_version
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info

    X = make_data(args.n, args.d, args.seed)
    threads = torch.get_num_threads()
    sklearn_threads = ", ".join(f"{p.get('internal_api', '?')} {p.get('num_threads')}" for p in threadpool_info())
    print(
        f"N={args.n:,} d={args.d} K={args.k:,} iterations={args.n_iter} seed={args.seed} | "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__} ({threads} threads), "
        f"sklearn {sklearn_version} ({sklearn_threads}) | load average {os.getloadavg()[0]:.1f}"
    )
    sys.stdout.flush()
    def sklearn_fit(init) -> KMeans:
        return KMeans(
            n_clusters=args.k, init=init, n_init=1, algorithm="lloyd", max_iter=args.n_iter, tol=0,
            random_state=args.seed,
        ).fit(X)

    def rq_fit() -> RQKMeans:
        return RQKMeans(
            n_levels=1, codebook_size=args.k, n_iter=args.n_iter, random_state=args.seed, device=args.device,
            init="random",
        ).fit(X)

    # name -> (fit function, inertia of the fitted model, note)
    methods = {
        "sklearn KMeans random": (lambda: sklearn_fit("random"), lambda m: float(m.inertia_),
                                  lambda m: f"n_iter_={m.n_iter_}"),
        "RQKMeans (genret)": (rq_fit, lambda m: float(m.inertia_[0]),
                              lambda m: f"device={args.device}, empty clusters re-seeded={m.n_empty_reseeded_[0]}"),
    }
    if not args.no_same_init:
        same_init = X[random_init_indices(args.n, args.k, args.seed, 0)]
        methods["sklearn KMeans same init"] = (lambda: sklearn_fit(same_init), lambda m: float(m.inertia_),
                                               lambda m: "init = RQKMeans's own points")
    try:
        import faiss
    except ImportError:
        faiss = None
        print("  faiss is not importable: skipped (pip install faiss-cpu)")
    if faiss is not None and not args.no_faiss:
        def faiss_fit():
            km = faiss.Kmeans(args.d, args.k, niter=args.n_iter, seed=args.seed, verbose=False,
                              max_points_per_centroid=max(256, -(-args.n // args.k)))  # no subsampling
            km.train(X)
            return km

        methods["faiss.Kmeans"] = (faiss_fit, lambda m: exact_inertia(X, m.centroids),
                                   lambda m: f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")

    # Repeats go round-robin over the methods, so a burst of load elsewhere hits all of them alike.
    times: dict[str, list[float]] = {name: [] for name in methods}
    fitted = {}
    for repeat in range(args.repeats):
        for name, (fit, _, _) in methods.items():
            seconds, fitted[name] = timed(fit, 1)
            times[name].append(seconds)
            print(f"  run {repeat + 1}/{args.repeats}: {name:<26} {seconds:8.2f} s", flush=True)
    rows = [(name, min(times[name]), inertia(fitted[name]), note(fitted[name]))
            for name, (_, inertia, note) in methods.items()]

    base_seconds, base_inertia = rows[0][1], rows[0][2]
    print(f"\nload average at the end {os.getloadavg()[0]:.1f} (other work on this machine slows every method)")
    print(f"{'method':<26} {'seconds':>9} {'inertia':>14} {'time / sklearn':>15} {'inertia / sklearn':>18}  notes")
    for name, seconds, inertia, note in rows:
        print(f"{name:<26} {seconds:>9.2f} {inertia:>14.6g} {seconds / base_seconds:>15.3f} "
              f"{inertia / base_inertia:>18.4f}  {note}")
    rq = rows[1]
    verdict_speed = "no slower" if rq[1] <= base_seconds else "SLOWER"
    verdict_quality = "within 2%" if rq[2] <= 1.02 * base_inertia else "MORE THAN 2% WORSE"
    print(f"\nRQKMeans vs sklearn: {verdict_speed} ({base_seconds / rq[1]:.2f}x speed-up), inertia {verdict_quality} "
          f"({100 * (rq[2] / base_inertia - 1):+.2f}%; the two random starts differ)")
    if "sklearn KMeans same init" in times:
        same = dict((r[0], r) for r in rows)["sklearn KMeans same init"]
        print(f"from the same start: RQKMeans inertia / sklearn = {rq[2] / same[2]:.6f}, "
              f"time / sklearn = {rq[1] / same[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
