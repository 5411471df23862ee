"""Unique-path fraction of each shipped SID recipe's data: greedy RQ-KMeans codes against the codes
training uses (genret.tokenizers.spread_last_level), with the largest collision of each.

    OMP_NUM_THREADS=1 python benchmarks/sid_unique_paths.py                 # every DualGR recipe whose data is here
    python benchmarks/sid_unique_paths.py --configs configs/quickstart.yaml --json out.json

Real data sets are looked up like training does (a folder, or a name under $GENRET_DATA_DIR; the
tests' ../shared/data beside a checkout when the variable is unset); a recipe whose data is absent
is listed as skipped. A recipe whose item vectors need an optional extra that is missing (titles:
genret[text]) is fitted on `--fallback` vectors instead (default collaborative), and says so.
configs/dualgr_paper.yaml (500,000 synthetic items, K = 8192) is left out unless `--paper` is given:
its fit takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["quickstart.yaml", "dualgr_ml1m.yaml", "dualgr_ml1m_ablation.yaml", "dualgr_amazon.yaml",
           "dualgr_kuairand.yaml"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=None, help="YAMLs (default: the shipped DualGR recipes)")
    p.add_argument("--paper", action="store_true", help="also configs/dualgr_paper.yaml (minutes)")
    p.add_argument("--fallback", default="collaborative", help="item vectors when the recipe's need a missing extra")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    return p.parse_args(argv)


def measure(config: Path, fallback: str) -> dict:
    """One recipe's row: greedy vs spread unique-path fraction, or why it was skipped."""
    import numpy as np

    from genret.data import leave_one_out, load_dataset
    from genret.tokenizers import SIDConfig, codebook_report, fit_semantic_ids, spread_last_level
    from genret.tokenizers.semantic_ids import item_embeddings_for

    data = yaml.safe_load(config.read_text())["data"]
    row = {"config": config.name, "data": data["data"]}
    try:
        log = load_dataset(data["data"], **(data.get("load_options") or {}))
    except (FileNotFoundError, ValueError) as err:
        return row | {"skipped": f"data absent: {err}".splitlines()[0][:160]}
    sid = SIDConfig(**(data.get("sid") or {}))
    sid.unique_sids = False
    if sid.embeddings == "titles":
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            row["note"] = f"recipe uses title embeddings (genret[text] missing): fitted on {fallback} vectors"
            sid.embeddings = fallback
    train = leave_one_out(log).train
    start = time.perf_counter()
    tok, greedy, _, greedy_report = fit_semantic_ids(log, train, sid, progress=False)
    vectors, source = item_embeddings_for(log, train, sid)
    spread, _ = spread_last_level(tok, vectors, greedy)
    report = codebook_report(tok, vectors, codes=spread)
    s1_moved = int((spread[:, 0] != greedy[:, 0]).sum())
    return row | {
        "items": int(len(greedy)), "codes": f"{sid.n_levels} x {sid.codebook_size}", "vectors": source,
        "greedy_unique_path_fraction": greedy_report["overall"]["unique_path_fraction"],
        "greedy_largest_collision": greedy_report["overall"]["largest_collision"],
        "unique_path_fraction": report["overall"]["unique_path_fraction"],
        "largest_collision": report["overall"]["largest_collision"],
        "items_with_new_s_l_minus_1": int((spread[:, -2] != greedy[:, -2]).sum()),
        "s1_changed": s1_moved,
        "last_level_recon_error_greedy": greedy_report["levels"][-1]["recon_error"],
        "last_level_recon_error": report["levels"][-1]["recon_error"],
        "seconds": time.perf_counter() - start,
        "max_items_per_s1": int(np.unique(spread[:, 0], return_counts=True)[1].max()),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GENRET_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    configs = [Path(c) for c in args.configs] if args.configs else [ROOT / "configs" / n for n in RECIPES]
    if args.paper:
        configs.append(ROOT / "configs" / "dualgr_paper.yaml")
    rows = [measure(c, args.fallback) for c in configs]
    print(f"{'recipe':<28} {'items':>7} {'codes':>9} {'greedy unique':>14} {'unique':>7} {'largest':>8}  note")
    for r in rows:
        if "skipped" in r:
            print(f"{r['config']:<28} {'-':>7} {'-':>9} {'-':>14} {'-':>7} {'-':>8}  skipped: {r['skipped']}")
            continue
        print(f"{r['config']:<28} {r['items']:>7} {r['codes']:>9} {r['greedy_unique_path_fraction']:>14.4f} "
              f"{r['unique_path_fraction']:>7.4f} {r['largest_collision']:>8}  {r.get('note', '')}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
