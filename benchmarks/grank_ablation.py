"""GRank's ablation (the paper's Table: pure generator, generator + auxiliary tokens, generator +
ranker only, full GRank) on one data set, several seeds, paired on the same test users.

Each variant is `genret benchmark --model grank` with loss weights switched off on top of the
recipe; a variant without the ranker serves its generator's order. The table shows test
Recall@10 / NDCG@10 / Recall@500 (mean over seeds), the candidate set's recall, and the paired
difference of Recall@10 against the full model (mean over seeds, with the 95% half-width of the
per-user difference, pooled).

    python benchmarks/grank_ablation.py --config configs/grank_ml1m.yaml --data ml-1m --out runs/grank_ablation \
        --seeds 0 1 2
    python benchmarks/grank_ablation.py ... --summarise-only   # re-read finished runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

VARIANTS = {
    "pure generator": ["--model.aux_weight", "0", "--model.ranker_weight", "0"],
    "generator + aux": ["--model.ranker_weight", "0"],
    "generator + ranker": ["--model.aux_weight", "0"],
    "full GRank": [],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--summarise-only", action="store_true")
    args, extra = p.parse_known_args(argv)
    runs = {}
    for name, overrides in VARIANTS.items():
        for seed in args.seeds:
            out = args.out / name.replace(" ", "_").replace("+", "plus") / f"seed{seed}"
            if not args.summarise_only and not (out / "metrics.json").is_file():
                cmd = [sys.executable, "-m", "genret", "benchmark", "--model", "grank", "--config", args.config,
                       "--data", args.data, "--out", str(out), "--seed_everything", str(seed), *overrides, *extra]
                print("+", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
            if (out / "metrics.json").is_file():
                runs.setdefault(name, []).append(json.loads((out / "metrics.json").read_text()))
    if "full GRank" not in runs:
        print("no finished full GRank run to compare with")
        return 1
    from genret.eval.metrics import paired_hit_difference

    print("| variant | Recall@10 | NDCG@10 | Recall@500 | candidates | d Recall@10 vs full (95%) | seeds |")
    print("|---|---|---|---|---|---|---|")
    for name, metrics in runs.items():
        mean = lambda key: np.mean([m["test"][key] for m in metrics])  # noqa: E731
        diffs = [paired_hit_difference(np.array(m["test_ranks"]["ranked"]), np.array(f["test_ranks"]["ranked"]), 10)
                 for m, f in zip(metrics, runs["full GRank"])]
        cand = np.mean([m["candidate_recall"]["test"] for m in metrics])
        print(f"| {name} | {mean('recall@10'):.4f} | {mean('ndcg@10'):.4f} | {mean('recall@500'):.4f} | {cand:.4f} | "
              f"{np.mean([d for d, _ in diffs]):+.4f} (±{np.mean([h for _, h in diffs]):.4f}) | {len(metrics)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
