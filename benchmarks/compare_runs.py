"""Paired difference of finished benchmark runs against one reference run, on the same users.

Each argument is a run folder (or its run_result.json) written by `genret benchmark` (DualGR /
TIGER runs, sweeps included). For every run after the first, prints its HR@K and the paired
difference to the first run with a 95% interval (genret.eval.metrics.paired_hit_difference), per
stage both runs hold: validation always, test only when both read it, and under `--protocol looc`
the cold validation (and cold test) users. Runs must rank the same
users in the same order (same data, split and evaluation options), which is checked.

    python benchmarks/compare_runs.py runs/table2/seed_0 runs/recheck/cross_rope_false --ks 10,50,100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from genret.eval.report import format_paired_hits
from genret.eval.run_record import RECORD_NAME

STAGES = (("val", "val_ranks"), ("test", "test_ranks"), ("cold_val", "cold_val_ranks"), ("cold", "cold_ranks"))


def load(path: str) -> tuple[str, dict]:
    p = Path(path)
    record = p if p.is_file() else p / RECORD_NAME
    if not record.is_file():
        raise SystemExit(f"{path}: no {RECORD_NAME} there (is it a finished genret benchmark run?)")
    return str(p), json.loads(record.read_text())["result"]


def compare(reference: dict, other: dict, ks: list[int]) -> list[str]:
    lines = []
    for stage, key in STAGES:
        if key not in reference or key not in other:
            continue
        a, b = np.asarray(other[key]), np.asarray(reference[key])
        if a.shape != b.shape:
            raise SystemExit(f"{stage}: the runs ranked {len(a)} and {len(b)} users; compare runs on the same split")
        lines.append(f"  {stage}: " + format_paired_hits(a, b, ks))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="the reference run first, then the runs to compare with it")
    p.add_argument("--ks", default="10,50,100")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.error("give a reference run and at least one run to compare with it")
    ks = [int(k) for k in args.ks.split(",")]
    ref_name, reference = load(args.runs[0])
    print(f"reference {ref_name}: " + "; ".join(
        f"{stage} HR@{k} {reference[stage].get(f'hr@{k}', float('nan')):.4f}"
        for stage, key in STAGES if key in reference for k in ks))
    for path in args.runs[1:]:
        name, other = load(path)
        print(name)
        for line in compare(reference, other, ks):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
