"""GRank's serving cost per user: the ranker scoring k1 candidates over a long history, against the
generator's own work measured in the same run (its user vector, a dot product with the same k1
candidates, and exact MIPS over the whole catalogue).

Shapes default to the shipped recipes: d=64, 2 generator layers over 64 items, a 1,000-item ranker
history, k1 = 1,000 candidates, a 12,101-item catalogue (Amazon Beauty's). Times are medians over
`--repeats` calls after warm-up, in milliseconds per user, for one user per call (latency) and for
a batch (throughput). Random weights: the cost does not depend on what the model learned.

    OMP_NUM_THREADS=1 python benchmarks/bench_ranker.py            # one CPU core
    python benchmarks/bench_ranker.py --device cuda --dtype fp16   # a GPU (the paper's FP16 ranker)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from genret.models.grank import GRank, GRankConfig


def timed(fn, device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--items", type=int, default=12101)
    p.add_argument("--k1", type=int, default=1000)
    p.add_argument("--history", type=int, default=1000)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="users per call for the throughput rows")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    model = GRank(GRankConfig(n_items=args.items, max_len=args.window, long_len=args.history,
                              d_model=args.d_model, n_heads=2, n_layers=2, d_ffn=2 * args.d_model,
                              dropout=0.0)).to(device=device, dtype=dtype).eval()
    table = model.item_vectors()
    print(f"device {device} ({torch.get_num_threads()} threads), {args.dtype}, d={args.d_model}, "
          f"catalogue {args.items:,}, k1 {args.k1}, ranker history {args.history}, generator window {args.window}")
    print("| users/call | ranker: k1 candidates (ms/user) | generator: user vector (ms/user) | "
          "dot product with k1 candidates (ms/user) | exact MIPS, whole catalogue + top-k1 (ms/user) |")
    print("|---|---|---|---|---|")
    for users in (1, args.batch):
        window = torch.randint(0, args.items, (users, args.window), device=device)
        long_items = torch.randint(0, args.items, (users, args.history), device=device)
        candidates = torch.randint(0, args.items, (users, args.k1), device=device)
        with torch.no_grad():
            user = model.user_vectors(window)
            rank = timed(lambda: model.rank_scores(candidates, long_items, user), device, args.repeats)
            gen = timed(lambda: model.user_vectors(window), device, args.repeats)
            dot = timed(lambda: model.generator_scores(candidates, user), device, args.repeats)
            mips = timed(lambda: (user @ table.T).topk(args.k1, dim=1), device, args.repeats)
        print(f"| {users} | {1000 * rank / users:.2f} | {1000 * gen / users:.2f} | {1000 * dot / users:.3f} | "
              f"{1000 * mips / users:.2f} |")


if __name__ == "__main__":
    main()
