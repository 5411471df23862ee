"""Table 2 over seeds: each ablation's mean and spread over training seeds, and its paired difference
to the full model on the same users (genret.eval.metrics.paired_hit_difference_over_seeds).

`genret benchmark --ablations --seeds N` trains every variant once per seed and hands the results
here; metrics.json keeps the summary under "ablations" and report.md shows it as a table.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from genret.eval.metrics import hits_at, paired_hit_difference_over_seeds

__all__ = ["summarize_ablations", "format_ablation_summary", "format_group_summary"]

_METRIC = re.compile(r"(hr|ndcg|recall)@(\d+)")


def _mean_sd(per_seed: list[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and sample sd (None for one seed) of every HR / NDCG / Recall@K the seeds share."""
    names = [n for n in per_seed[0] if _METRIC.fullmatch(str(n)) and all(n in m for m in per_seed)]
    mean, sd = {}, {}
    for name in names:
        values = np.array([float(m[name]) for m in per_seed])
        mean[name] = float(values.mean())
        sd[name] = float(values.std(ddof=1)) if len(values) > 1 else None
    return {"mean": mean, "sd": sd, "n_users": per_seed[0].get("n_users")}


def summarize_ablations(runs: Mapping[int, Mapping[str, Mapping[str, Any]]], reference: str = "dualgr",
                        groups: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Aggregate per-seed ablation runs.

    Args:
        runs: seed -> variant -> result of `genret.eval.benchmark.run_generative` ("val", "test",
            "val_ranks", "test_ranks", "train_seconds", optional "note"; a run that read validation
            only has no "test"). Every seed must hold the same variants, evaluated on the same users
            (the benchmark keeps the split fixed).
        reference: the variant the paired differences are taken against (the full model).
        groups: optional user subsets, name -> stage ("val" / "test") -> (m,) bool mask over the
            evaluated users (e.g. the users whose history holds exposure negatives, the only ones
            ENTP can act on). Each variant then also gets "groups": {name: {stage: {"n_users",
            "hr@K" (mean over seeds of the group's hit rate), "paired" (the paired difference to
            the reference on the group's users; absent for the reference)}}}.

    Returns:
        {"seeds": [...], "reference": name, "paired_method": text, "variants": {name: {"val", "test",
        "cold_val" ({"mean", "sd", "n_users"}; the stages every seed measured), "per_seed": {seed:
        {"val", "test", "cold_val"}},
        "train_seconds": [...],
        "paired_test" / "paired_val" / "paired_cold_val": {"hr@K": paired_hit_difference_over_seeds(...)}
        (absent for the reference), "note" (when a seed's run says one)}}}.
    """
    seeds = sorted(runs)
    if not seeds:
        raise ValueError("no runs to summarise")
    variants = list(runs[seeds[0]])
    for seed in seeds:
        if list(runs[seed]) != variants:
            raise ValueError(f"seed {seed} ran {list(runs[seed])}, seed {seeds[0]} ran {variants}; "
                             "every seed must run the same variants")
    if reference not in variants:
        raise ValueError(f"reference {reference!r} is not among the variants {variants}")
    out: dict[str, Any] = {"seeds": seeds, "reference": reference,
                           "paired_method": "per-user paired hit differences averaged over seeds, then a normal "
                                            "95% interval over users (users are the independent unit)",
                           "variants": {}}
    for name in variants:
        per = [runs[s][name] for s in seeds]
        # A sweep measures "val" only; "cold_val": the LOOC cold validation users (data.cold_valid_users).
        stages = [key for key in ("val", "test", "cold_val") if all(key in r for r in per)]
        if not {"val", "test"} & set(stages):
            raise ValueError(f"variant {name!r} has neither validation nor test metrics in every seed")
        entry: dict[str, Any] = {key: _mean_sd([r[key] for r in per]) for key in stages}
        entry["per_seed"] = {str(s): {key: dict(r[key]) for key in stages} for s, r in zip(seeds, per)}
        entry["train_seconds"] = [float(r.get("train_seconds", 0.0)) for r in per]
        notes = sorted({r["note"] for r in per if r.get("note")})
        if notes:
            entry["note"] = "; ".join(notes)
        if name != reference:
            for stage in stages:
                key = f"{stage}_ranks"
                if all(key in r for r in per) and all(key in runs[s][reference] for s in seeds):
                    ks = sorted(int(m.group(2)) for n in entry[stage]["mean"] if (m := _METRIC.fullmatch(n))
                                and m.group(1) == "hr")
                    entry[f"paired_{stage}"] = {
                        f"hr@{k}": paired_hit_difference_over_seeds([r[key] for r in per],
                                                                    [runs[s][reference][key] for s in seeds], k)
                        for k in ks}
        if groups:
            entry["groups"] = {group: _group_block(per, [runs[s][reference] for s in seeds], masks,
                                                   is_reference=name == reference)
                               for group, masks in groups.items()}
        out["variants"][name] = entry
    return out


def _group_block(per: list[Mapping[str, Any]], reference: list[Mapping[str, Any]],
                 masks: Mapping[str, np.ndarray], is_reference: bool) -> dict[str, Any]:
    """HR@K of one variant on a subset of the users, and its paired difference to the reference there."""
    block = {}
    for stage, mask in masks.items():
        key = f"{stage}_ranks"
        if not all(key in r for r in per):
            continue
        mask = np.asarray(mask, dtype=bool)
        if any(len(r[key]) != len(mask) for r in per):
            raise ValueError(f"the {stage} user mask has {len(mask)} entries, the runs ranked "
                             f"{len(per[0][key])} users")
        ks = sorted(int(m.group(2)) for n in per[0][stage] if (m := _METRIC.fullmatch(str(n))) and m.group(1) == "hr")
        ranks = [np.asarray(r[key])[mask] for r in per]
        row: dict[str, Any] = {"n_users": int(mask.sum())}
        for k in ks:
            row[f"hr@{k}"] = float(np.mean([hits_at(x, k).mean() for x in ranks])) if mask.any() else None
        if not is_reference and mask.sum() > 1:
            ref = [np.asarray(r[key])[mask] for r in reference]
            row["paired"] = {f"hr@{k}": paired_hit_difference_over_seeds(ranks, ref, k) for k in ks}
        block[stage] = row
    return block


def format_group_summary(summary: Mapping[str, Any], stage: str = "test") -> str:
    """One line per (user group, variant): HR@K on the group's users and the paired difference to
    the reference there (empty text when the summary has no groups)."""
    lines = []
    for name, v in summary["variants"].items():
        for group, block in v.get("groups", {}).items():
            row = block.get(stage)
            if row is None:
                continue
            cells = [f"HR@{k.split('@')[1]} {100 * row[k]:.3f}%" for k in row if k.startswith("hr@") and row[k] is not None]
            paired = row.get("paired", {})
            cells += [f"{k.upper()} - {summary['reference']} {100 * d['diff']:+.2f} ± {100 * d['half_width']:.2f} pts"
                      for k, d in paired.items()]
            lines.append(f"- {group} ({row['n_users']} users, {stage}), {name}: " + "; ".join(cells))
    return "\n".join(lines)


def _shown_ks(summary: Mapping[str, Any]) -> list[int]:
    ks = sorted({int(m.group(2)) for v in summary["variants"].values() for n in v["test"]["mean"]
                 if (m := _METRIC.fullmatch(n)) and m.group(1) == "hr"})
    return [k for k in ks if k in (100, 500, 1000)] or ks


def _mean_sd_cell(block: Mapping[str, Any], name: str) -> str:
    mean = block["mean"].get(name)
    if mean is None:
        return "-"
    sd = block["sd"].get(name)
    return f"{100 * mean:.3f}%" + ("" if sd is None else f" ± {100 * sd:.3f}")


def format_ablation_summary(summary: Mapping[str, Any], k: int | None = None) -> str:
    """Table 2 over seeds: Method | seeds | test HR@K (mean ± sd, percent) | NDCG@10 | paired
    difference to the reference at the first K shown (95% interval) | validation HR@K.

    Args:
        summary: the dict from `summarize_ablations`.
        k: the cut-off of the paired and validation columns (default: the first HR@K shown, 100 when
            present, like the paper's Table 2).

    Returns:
        The table as text (markdown pipe syntax), with a line saying how the interval is formed.
    """
    from genret.eval.report import _render_table

    shown = _shown_ks(summary)
    k = shown[0] if k is None and shown else k
    reference = summary["reference"]
    with_ndcg = any("ndcg@10" in v["test"]["mean"] for v in summary["variants"].values())
    header = (["Method", "seeds"] + [f"HR@{x}" for x in shown] + (["NDCG@10"] if with_ndcg else [])
              + [f"HR@{k} - {reference} (95% CI)", f"val HR@{k}", f"val HR@{k} - {reference}"])
    body = []
    for name, v in summary["variants"].items():
        row = [name + (" (*)" if v.get("note") else ""), str(len(v["train_seconds"]))]
        row += [_mean_sd_cell(v["test"], f"hr@{x}") for x in shown]
        row += [_mean_sd_cell(v["test"], "ndcg@10")] if with_ndcg else []
        for stage in ("test", "val"):
            if stage == "val":
                row.append(_mean_sd_cell(v["val"], f"hr@{k}"))
            paired = v.get(f"paired_{stage}", {}).get(f"hr@{k}")
            row.append("-" if paired is None else f"{100 * paired['diff']:+.2f} ± {100 * paired['half_width']:.2f} pts")
        body.append(row)
    lines = [_render_table(header, body),
             f"mean ± sd over seeds {summary['seeds']}; paired columns: {summary['paired_method']}."]
    notes = {name: v["note"] for name, v in summary["variants"].items() if v.get("note")}
    lines += [f"(*) {name}: {note}" for name, note in notes.items()]
    return "\n".join(lines)
