"""GRank's ablation (the paper's table: pure generator, generator + auxiliary tokens, generator +
ranker only, full GRank) over seeds, paired on the same test users, with genret's two-stage recipes.

Per seed, two stage-1 runs train the generator (`--generator` YAML): as it is ("pure") and with the
auxiliary candidate tokens on (`--aux-args`, "aux"). The stage-2 ranker (`--ranker` YAML) is then
trained on each, frozen (`--model.init_from` its checkpoint). A stage-2 run records both its
generator's order and the ranked order, so the two stage-2 runs give the four arms:

    pure generator      = rank_pure's generator order     generator + ranker = rank_pure's ranked order
    generator + aux     = rank_aux's generator order      full GRank         = rank_aux's ranked order

(the ranked order is what validation chose: a blend with the generator's score, or the generator's
order alone when no blend beats it). The table gives the mean and sd over seeds of validation and test
Recall@10 / NDCG@10 and test Recall@50 / @500, each arm's paired Recall@K difference to the pure
generator and each ranked arm's to the generator it re-ranks, with 95% intervals clustered by user over seeds
(`genret.eval.metrics.paired_hit_difference_over_seeds`); OUT/ablation.json keeps it all.

    python benchmarks/grank_ablation.py --data ml-1m --generator configs/grank_ml1m_generator_lastpos.yaml \\
        --ranker configs/grank_ml1m_lastpos.yaml --out runs/grank_ablation_ml1m --seeds 0 1 2 \\
        --generator-args="--trainer.max_epochs 12"     # a reduced stage 1 for every arm
    python benchmarks/grank_ablation.py ... --summarise-only   # re-read finished runs

Runs that finished (their metrics.json is there) are not trained again, so two processes with
different `--seeds` (or arms, `--arms pure` / `--arms aux`) can share the two cores and one
`--summarise-only` reads them all.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

ARMS = {  # name -> (stage-2 run of which generator, which order)
    "pure generator": ("pure", "generator"),
    "generator + aux": ("aux", "generator"),
    "generator + ranker": ("pure", "ranked"),
    "full GRank": ("aux", "ranked"),
}
REFERENCE = "pure generator"


def stage_dirs(out: Path, generator: str, seed: int) -> tuple[Path, Path]:
    return out / f"gen_{generator}_s{seed}", out / f"rank_{generator}_s{seed}"


def run(cmd: list[str], log: Path) -> None:
    print("+", shlex.join(cmd), f"> {log}", flush=True)
    with open(log, "w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {shlex.join(cmd)} (its output: {log})")


def train(args, generator: str, seed: int) -> None:
    gen, rank = stage_dirs(args.out, generator, seed)
    base = [sys.executable, "-m", "genret", "benchmark", "--model", "grank", "--data", args.data,
            "--seed_everything", str(seed)]
    if not (gen / "model.ckpt").is_file():
        extra = shlex.split(args.generator_args) + (shlex.split(args.aux_args) if generator == "aux" else [])
        run(base + ["--config", args.generator, "--out", str(gen), *extra], gen.with_suffix(".log"))
    if not (rank / "metrics.json").is_file():
        run(base + ["--config", args.ranker, "--out", str(rank), "--model.init_from", str(gen / "model.ckpt"),
                    *shlex.split(args.ranker_args)], rank.with_suffix(".log"))


def arm_metrics(record: dict, order: str, stage: str) -> dict:
    return record[stage] if order == "ranked" else record["generator_only"][stage]


def summarise(out: Path, seeds: list[int], ks: list[int]) -> dict:
    from genret.eval.metrics import paired_hit_difference_over_seeds

    records = {}
    for generator in ("pure", "aux"):
        for seed in seeds:
            path = stage_dirs(out, generator, seed)[1] / "metrics.json"
            if path.is_file():
                records[generator, seed] = json.loads(path.read_text())
    done = [s for s in seeds if all((g, s) in records for g in ("pure", "aux"))]
    if not done:
        raise SystemExit(f"{out}: no seed has both stage-2 runs (rank_pure_sS, rank_aux_sS) finished")
    summary = {"seeds": done, "arms": {}}
    ranks = {name: [np.asarray(records[g, s]["test_ranks"][order]) for s in done] for name, (g, order) in ARMS.items()}
    for name, (g, order) in ARMS.items():
        per_seed = [records[g, s] for s in done]
        block = {"served": [r.get("blend") if r.get("ranker_served") else "generator order" for r in per_seed]
                 if order == "ranked" else None}
        for stage, keys in (("val", ("recall@10", "ndcg@10")), ("test", ("recall@10", "ndcg@10", "recall@50",
                                                                         "recall@500"))):
            for key in keys:
                values = [arm_metrics(r, order, stage).get(key) for r in per_seed]
                if None in values:
                    continue
                block[f"{stage}/{key}"] = {"mean": float(np.mean(values)),
                                           "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                                           "per_seed": [float(v) for v in values]}
        if name != REFERENCE:
            block["vs_pure"] = {str(k): paired_hit_difference_over_seeds(ranks[name], ranks[REFERENCE], k) for k in ks}
        if order == "ranked":  # the ranker's own gain: over the generator it re-ranks, in the same runs
            own = [np.asarray(records[g, s]["test_ranks"]["generator"]) for s in done]
            block["vs_own_generator"] = {str(k): paired_hit_difference_over_seeds(ranks[name], own, k) for k in ks}
        summary["arms"][name] = block
    return summary


def format_table(summary: dict, ks: list[int]) -> str:
    from genret.eval.report import format_interval

    head = ("| arm | val Recall@10 / NDCG@10 | test Recall@10 / NDCG@10 | test Recall@50 / @500 | "
            + " | ".join(f"paired Recall@{k} vs pure (points)" for k in ks)
            + f" | the ranker's gain over its generator, Recall@{ks[0]} | served |")
    lines = [head, "|" + "---|" * (6 + len(ks))]
    cell = lambda b, key: f"{b[key]['mean']:.4f} ± {b[key]['sd']:.4f}" if key in b else "-"  # noqa: E731
    for name, b in summary["arms"].items():
        diffs = [format_interval(b["vs_pure"][str(k)]) if "vs_pure" in b else "" for k in ks]
        diffs.append(format_interval(b["vs_own_generator"][str(ks[0])]) if "vs_own_generator" in b else "")
        served = ", ".join(f"blend {s:g}" if isinstance(s, (int, float)) else str(s) for s in b["served"] or [])
        lines.append(f"| {name} | {cell(b, 'val/recall@10')} / {cell(b, 'val/ndcg@10')} | "
                     f"{cell(b, 'test/recall@10')} / {cell(b, 'test/ndcg@10')} | "
                     f"{cell(b, 'test/recall@50')} / {cell(b, 'test/recall@500')} | " + " | ".join(diffs)
                     + f" | {served} |")
    return "\n".join(lines) + f"\n\nseeds {summary['seeds']}; intervals 95%, paired per user, clustered by user over seeds"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--generator", required=True, help="stage-1 YAML (GRank's generator alone)")
    p.add_argument("--ranker", required=True, help="stage-2 YAML (the ranker on a frozen generator, model.init_from)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=("pure", "aux"), default=["pure", "aux"],
                   help="which stage-1 generators to train (both are needed for the table)")
    p.add_argument("--generator-args", default="", help="extra overrides of every stage-1 run (a reduced protocol)")
    p.add_argument("--aux-args", default="--model.aux_weight 0.5 --model.aux_negatives 32",
                   help="what turns the auxiliary candidate tokens on in stage 1 (default: configs/grank_*.yaml's values)")
    p.add_argument("--ranker-args", default="", help="extra overrides of every stage-2 run")
    p.add_argument("--ks", default="10,50")
    p.add_argument("--summarise-only", action="store_true")
    args = p.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    if not args.summarise_only:
        args.out.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for generator in args.arms:
                train(args, generator, seed)
    summary = summarise(args.out, args.seeds, ks)
    from genret.io import write_json

    write_json(args.out / "ablation.json", summary)
    print(format_table(summary, ks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
