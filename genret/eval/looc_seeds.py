"""Leave-one-out-cold over training seeds: one model's cold and warm users' metrics, mean and sd over
seeds, and its paired difference to the content-only baseline with a 95% interval clustered by user.

`genret benchmark --protocol looc --seeds N` trains the model once per seed on one split (the cold set
is drawn by `data.cold_seed`, not by the training seed) and hands the runs here. metrics.json's
"cold" / "warm" / "cold_val" blocks and the content baseline's are then means over the seeds,
"vs_content" is the difference over seeds (per user averaged over seeds, then an interval over users:
genret.eval.metrics.paired_hit_difference_over_seeds), and "looc_seeds" keeps every seed's numbers.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from genret.eval.ablations import _mean_sd
from genret.eval.metrics import paired_hit_difference_over_seeds
from genret.eval.report import _ks_in, _render_table, format_interval

__all__ = ["summarize_looc_seeds", "format_looc_seeds"]

# metrics.json block -> the key a run result holds it under ("test" of a LOOC run = its warm users)
_BLOCKS = {"cold": "cold", "warm": "test", "cold_val": "cold_val"}


def summarize_looc_seeds(runs: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate one model's LOOC runs over seeds.

    Args:
        runs: seed -> result of `genret.eval.benchmark.run_generative` under `--protocol looc` ("cold",
            "test" (warm users), optional "cold_val", their "*_ranks", "baselines": {"content": ...} and
            the baseline's "content_cold_ranks" / "content_cold_val_ranks").

    Returns:
        {"seeds", "paired_method", "cold" / "warm" / "cold_val": {"mean", "sd", "n_users"} (the blocks
        every seed has), "content": {block: mean over seeds}, "vs_content": {"cold" / "cold_val":
        {"hr@K": paired_hit_difference_over_seeds(model, baseline)}}, "per_seed": {seed: {block: metrics,
        "vs_content": that run's own paired difference}}}.

    Raises:
        ValueError: no runs, a run without cold users' results, or runs that ranked different numbers
            of users (not one split).
    """
    seeds = sorted(runs)
    if not seeds:
        raise ValueError("no LOOC runs to summarise")
    per = [runs[s] for s in seeds]
    missing = [s for s, r in zip(seeds, per) if "cold" not in r and "cold_val" not in r]
    if missing:
        raise ValueError(f"seed(s) {missing} have no cold users' results: not leave-one-out-cold runs")
    out: dict[str, Any] = {"seeds": seeds,
                           "paired_method": "per-user paired hit differences to the content baseline averaged "
                                            "over seeds, then a normal 95% interval over users",
                           "content": {}, "vs_content": {}, "per_seed": {}}
    for block, key in _BLOCKS.items():
        if not all(key in r for r in per):
            continue
        sizes = {r[key].get("n_users") for r in per}
        if len(sizes) > 1:
            raise ValueError(f"the seeds ranked different numbers of {block} users ({sorted(sizes)}): every seed "
                             "must use the same LOOC split (data.cold_seed, cold_seed_users) and evaluation options")
        out[block] = _mean_sd([r[key] for r in per])
        content = [r.get("baselines", {}).get("content", {}).get(block) for r in per]
        if all(isinstance(c, Mapping) for c in content):
            out["content"][block] = _mean_sd(content)["mean"] | {"n_users": content[0].get("n_users")}
        ranks, base = f"{block}_ranks", f"content_{block}_ranks"
        if block != "warm" and all(ranks in r and base in r for r in per):
            out["vs_content"][block] = {
                f"hr@{k}": paired_hit_difference_over_seeds([np.asarray(r[ranks]) for r in per],
                                                            [np.asarray(r[base]) for r in per], k)
                for k in _ks_in([out[block]["mean"]], "hr")}
    for s, r in zip(seeds, per):
        own = {block: dict(r[key]) for block, key in _BLOCKS.items() if key in r}
        vs = r.get("extra", {}).get("vs_content")
        out["per_seed"][str(s)] = own | ({"vs_content": vs} if vs else {})
    return out


def format_looc_seeds(summary: Mapping[str, Any], k: int = 20) -> str:
    """One row per seed and a mean ± sd row: cold / warm Recall@k and the cold users' HR@k minus the
    content baseline's (points, 95%: the seed's own interval, the mean row's clustered over seeds)."""
    blocks = [b for b in ("cold", "warm", "cold_val") if b in summary]
    paired = [b for b in ("cold", "cold_val") if b in summary["vs_content"]]
    name = f"recall@{k}"
    header = ["seed", *(f"{b.replace('_', ' ')} Recall@{k}" for b in blocks),
              *(f"{b.replace('_', ' ')} HR@{k} - content (pts)" for b in paired)]

    def interval(d: Mapping[str, Any] | None) -> str:
        return format_interval(d) if d else "-"

    body = []
    for seed, run in summary["per_seed"].items():
        cells = [f"{run[b][name]:.4f}" if name in run.get(b, {}) else "-" for b in blocks]
        cells += [interval((run.get("vs_content") or {}).get(b, {}).get(f"hr@{k}")) for b in paired]
        body.append([seed, *cells])
    cells = []
    for b in blocks:
        mean, sd = summary[b]["mean"].get(name), summary[b]["sd"].get(name)
        cells.append("-" if mean is None else f"{mean:.4f}" + ("" if sd is None else f" ± {sd:.4f}"))
    cells += [interval(summary["vs_content"][b].get(f"hr@{k}")) for b in paired]
    body.append(["mean ± sd", *cells])
    content = [f"{b.replace('_', ' ')} {summary['content'][b][name]:.4f}" for b in blocks
               if name in summary["content"].get(b, {})]
    lines = [_render_table(header, body)]
    if content:
        lines.append(f"content-only baseline on the same users, Recall@{k}: " + ", ".join(content) + ".")
    lines.append(f"Mean row's interval: {summary['paired_method']}.")
    return "\n".join(lines)
