"""Paired differences between GRank benchmark runs, seed for seed on the same users (test, or validation).

A GRank run's `metrics.json` keeps each test and validation user's target rank in two lists:
"ranked" (the order it serves: the ranker's or a scorer's blend, as validation chose) and
"generator" (its candidate generator's order; with `--model.generator CKPT` that generator's own top
k1, e.g. SASRec's, so an external model's ranks come from a run that names it as the generator).
Side A and side B are each a list of RUN:LIST, the i-th of A paired with the i-th of B (the seeds);
prints Recall@K and NDCG@K of A minus B in points with 95% intervals clustered by user over the
pairs (`genret.eval.metrics.paired_difference_over_seeds`), and each pair's own difference. `--stage
val` compares on validation (to choose between settings; runs from before 2026-12-08 kept test ranks
only).

    # DualGR's score over GRank's generator alone, three seeds
    python benchmarks/grank_paired.py --a runs/scored_s0:ranked runs/scored_s1:ranked runs/scored_s2:ranked \\
        --b runs/scored_s0:generator runs/scored_s1:generator runs/scored_s2:generator
    # the same pipeline against SASRec (runs that list SASRec's top 200 as their generator)
    python benchmarks/grank_paired.py --a runs/scored_s1:ranked runs/scored_s2:ranked \\
        --b runs/sasrec_s1:generator runs/sasrec_s2:generator --ks 5,10,100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from genret.eval.metrics import paired_difference_over_seeds

LISTS = ("ranked", "generator")


def load_ranks(spec: str, stage: str = "test") -> np.ndarray:
    """The `stage` ("val" or "test") ranks named by RUN:LIST (a run folder or its metrics.json, and one of LISTS)."""
    run, sep, which = spec.rpartition(":")
    if not sep or which not in LISTS:
        raise SystemExit(f"{spec}: give RUN:LIST with LIST one of {', '.join(LISTS)} (e.g. runs/x:ranked)")
    path = Path(run)
    path = path if path.is_file() else path / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"{run}: no metrics.json there (is it a finished `genret benchmark --model grank` run?)")
    ranks = json.loads(path.read_text()).get(f"{stage}_ranks")
    if not isinstance(ranks, dict) or which not in ranks:
        raise SystemExit(f"{path}: no {stage}_ranks[{which!r}] (GRank runs keep them, validation's since "
                         "2026-12-08; other families' metrics.json do not)")
    return np.asarray(ranks[which], dtype=np.int64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", nargs="+", required=True, help="RUN:LIST per seed, the side whose gain is measured")
    p.add_argument("--b", nargs="+", required=True, help="RUN:LIST per seed, the reference, in the same seed order")
    p.add_argument("--ks", default="5,10,20,50,100", help="the cut-offs, for Recall and NDCG")
    p.add_argument("--stage", choices=("val", "test"), default="test",
                   help="which split's ranks: val to choose between settings, test to report the chosen one")
    args = p.parse_args(argv)
    if len(args.a) != len(args.b):
        p.error(f"--a has {len(args.a)} runs and --b {len(args.b)}: pair them seed for seed")
    a, b = [load_ranks(s, args.stage) for s in args.a], [load_ranks(s, args.stage) for s in args.b]
    for spec_a, spec_b, x, y in zip(args.a, args.b, a, b):
        if x.shape != y.shape:
            raise SystemExit(f"{spec_a} ranks {len(x)} {args.stage} users and {spec_b} {len(y)}: compare runs on the same split")
    ks = sorted({int(k) for k in args.ks.split(",")})
    print(f"A - B, {args.stage}, points, {len(a)} pair(s), {len(a[0]):,} users; 95% interval clustered by user")
    for metric, name in (("hr", "Recall"), ("ndcg", "NDCG")):
        for k in ks:
            d = paired_difference_over_seeds(a, b, k, metric=metric)
            per_pair = ", ".join(f"{100 * v:+.2f}" for v in d["per_seed"])
            print(f"{name}@{k}: {100 * d['diff']:+.2f} [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"
                  f" (per pair {per_pair})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
