"""Paired differences between trained RetrievalFormer checkpoints on the same validation users.

RetrievalFormer sweeps keep summary metrics only; this re-scores each checkpoint on the split a
config (plus overrides) builds, validation only (test is never ranked), and prints HR@K of every
checkpoint and its paired difference to the first one with a 95% interval
(genret.eval.metrics.paired_hit_difference), for the warm validation users and, under LOOC with
`--data.cold_valid_users N`, the cold validation users.

    python benchmarks/compare_retrievalformer.py --data amazon-beauty \
        --config configs/retrievalformer_amazon_looc.yaml --ks 10,20,100 \
        runs/a/model.ckpt runs/b/model.ckpt -- --data.cold_valid_users 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np

from genret.eval.metrics import hits_at
from genret.eval.report import format_paired_hits
from genret.eval.retrievalformer_benchmark import run_retrievalformer

STAGES = (("val", "val_ranks"), ("cold val", "cold_val_ranks"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--ks", default="10,20,100")
    parser.add_argument("checkpoints", nargs="+", help="the first one is the reference")
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1:]  # after "--": config overrides
    if len(args.checkpoints) < 2:
        parser.error("give a reference checkpoint and at least one to compare with it")
    ks = [int(k) for k in args.ks.split(",")]
    results = []
    for ckpt in args.checkpoints:
        with tempfile.TemporaryDirectory() as out:
            res = run_retrievalformer("retrievalformer", args.config, out, data=args.data, overrides=overrides,
                                      ks=ks, checkpoint=ckpt, stages=("valid",))
        results.append(res)
    reference = results[0]
    for ckpt, res in zip(args.checkpoints, results):
        print(ckpt)
        for stage, key in STAGES:
            if key not in res:
                continue
            ranks, ref = np.asarray(res[key]), np.asarray(reference[key])
            if ranks.shape != ref.shape:
                raise SystemExit(f"{ckpt}: {stage} ranks {ranks.shape} vs the reference's {ref.shape}: "
                                 "not the same users")
            line = ("; ".join(f"HR@{k} {hits_at(ranks, k).mean():.4f}" for k in ks) if res is reference
                    else format_paired_hits(ranks, ref, ks))
            print(f"  {stage} ({len(ranks)} users): {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
