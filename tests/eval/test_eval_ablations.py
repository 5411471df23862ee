"""Table 2 over seeds: paired intervals clustered by user, mean / sd per variant, the tables."""

import numpy as np
import pytest

from genret.eval.ablations import format_ablation_summary, format_group_summary, summarize_ablations
from genret.eval.metrics import (paired_difference_over_seeds, paired_hit_difference, paired_hit_difference_over_seeds,
                                 ranking_metrics)
from genret.eval.report import format_sweep_table


def test_one_seed_equals_the_single_paired_difference():
    rng = np.random.default_rng(0)
    a, b = rng.integers(-1, 20, 500), rng.integers(-1, 20, 500)
    out = paired_hit_difference_over_seeds([a], [b], 10)
    diff, half = paired_hit_difference(a, b, 10)
    assert out["diff"] == pytest.approx(diff) and out["half_width"] == pytest.approx(half)
    assert out["n_seeds"] == 1 and out["sd_over_seeds"] == 0.0
    assert out["ci95"] == pytest.approx([diff - half, diff + half])


def test_repeating_a_seed_does_not_narrow_the_interval():
    # Pooling S x m pairs as independent would shrink the interval by sqrt(S); clustering by user must not.
    rng = np.random.default_rng(1)
    a, b = rng.integers(-1, 20, 400), rng.integers(-1, 20, 400)
    once = paired_hit_difference_over_seeds([a], [b], 10)
    thrice = paired_hit_difference_over_seeds([a, a, a], [b, b, b], 10)
    assert thrice["half_width"] == pytest.approx(once["half_width"])
    assert thrice["per_seed"] == pytest.approx([once["diff"]] * 3) and thrice["sd_over_seeds"] == pytest.approx(0)


def test_independent_seed_noise_is_averaged_per_user():
    # A user hit by A in one seed of two and never by B contributes +0.5, not two separate pairs.
    a = [np.array([0, -1]), np.array([-1, -1])]
    b = [np.array([-1, -1]), np.array([-1, -1])]
    out = paired_hit_difference_over_seeds(a, b, 10)
    assert out["diff"] == pytest.approx(0.25) and out["per_seed"] == [0.5, 0.0]
    assert out["half_width"] == pytest.approx(1.96 * np.std([0.5, 0.0], ddof=1) / np.sqrt(2))
    with pytest.raises(ValueError, match="same number"):
        paired_hit_difference_over_seeds(a, b[:1], 10)
    with pytest.raises(ValueError, match="same m users"):
        paired_hit_difference_over_seeds([np.array([0, 1]), np.array([0])], [np.array([0, 1]), np.array([0])], 10)


def test_the_ndcg_difference_is_the_difference_of_ranking_metrics_ndcg():
    rng = np.random.default_rng(2)
    targets = np.arange(300)
    lists = [np.stack([rng.permutation(400)[:30] for _ in targets]) for _ in range(4)]
    for i, row in enumerate(lists[0]):  # two thirds of the targets listed, at various ranks
        if i % 3:
            row[i % 30] = targets[i]
    ranks = [np.array([list(row).index(t) if t in row else -1 for row, t in zip(x, targets)]) for x in lists]
    out = paired_difference_over_seeds([ranks[0], ranks[1]], [ranks[2], ranks[3]], 10, metric="ndcg")
    want = [ranking_metrics(lists[a], targets, (10,))["ndcg@10"] - ranking_metrics(lists[b], targets, (10,))["ndcg@10"]
            for a, b in ((0, 2), (1, 3))]
    assert out["per_seed"] == pytest.approx(want) and out["diff"] == pytest.approx(np.mean(want))
    assert out["per_seed"][0] > 0  # seed 0 of A lists two thirds of the targets
    assert paired_difference_over_seeds([ranks[0]], [ranks[2]], 10)["diff"] == pytest.approx(
        paired_hit_difference(ranks[0], ranks[2], 10)[0])  # "hr" is the default
    with pytest.raises(ValueError, match="metric must be one of"):
        paired_difference_over_seeds([ranks[0]], [ranks[2]], 10, metric="mrr")


def _run(rng, n=300, ks=(10, 100)):
    targets = rng.integers(0, 1000, n)
    ranked = np.stack([rng.permutation(1000)[:100] for _ in range(n)])
    ranked[: n // 3, 0] = targets[: n // 3]  # some hits
    from genret.eval.metrics import target_ranks
    return {"val": ranking_metrics(ranked, targets, ks), "test": ranking_metrics(ranked, targets, ks),
            "val_ranks": target_ranks(ranked, targets), "test_ranks": target_ranks(ranked, targets),
            "train_seconds": 1.0}


def test_summary_means_sds_and_paired_columns():
    rng = np.random.default_rng(2)
    runs = {s: {"dualgr": _run(rng), "w/o DBR": _run(rng)} for s in (0, 1, 2)}
    for s in runs:
        runs[s]["w/o ENTP"] = dict(runs[s]["dualgr"], note="identical to dualgr: no exposure negatives")
    summary = summarize_ablations(runs)
    assert summary["seeds"] == [0, 1, 2]
    v = summary["variants"]["w/o DBR"]
    hrs = [runs[s]["w/o DBR"]["test"]["hr@10"] for s in (0, 1, 2)]
    assert v["test"]["mean"]["hr@10"] == pytest.approx(np.mean(hrs))
    assert v["test"]["sd"]["hr@10"] == pytest.approx(np.std(hrs, ddof=1))
    assert set(v["paired_test"]) == {"hr@10", "hr@100"} and set(v["paired_val"]) == {"hr@10", "hr@100"}
    assert "paired_test" not in summary["variants"]["dualgr"]
    same = summary["variants"]["w/o ENTP"]["paired_test"]["hr@100"]
    assert same["diff"] == 0 and same["half_width"] == 0
    table = format_ablation_summary(summary)
    lines = table.splitlines()
    assert "HR@100 - dualgr (95% CI)" in lines[0] and "val HR@100" in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:5]] == ["dualgr", "w/o DBR", "w/o ENTP (*)"]
    assert "(*) w/o ENTP: identical to dualgr" in table
    with pytest.raises(ValueError, match="every seed must run the same variants"):
        summarize_ablations({0: {"dualgr": _run(rng)}, 1: {"dualgr": _run(rng), "x": _run(rng)}})


def test_one_seed_has_no_sd_and_a_sweep_table_reads_validation():
    rng = np.random.default_rng(3)

    def validation_only():
        run = _run(rng, ks=(10, 20, 100))
        return {k: v for k, v in run.items() if not k.startswith("test")}

    summary = summarize_ablations({0: {"4": validation_only(), "16": validation_only()}}, reference="4")
    assert summary["variants"]["16"]["val"]["sd"]["hr@10"] is None
    assert "test" not in summary["variants"]["16"] and "paired_test" not in summary["variants"]["16"]
    sweep = {"key": "model.config.short_window", "values": ["4", "16"], "seeds": [0], "reference": "4",
             "results": {k: {"val": v["val"], "paired_val": v.get("paired_val")}
                         for k, v in summary["variants"].items()}}
    table = format_sweep_table(sweep)
    assert "val HR@10" in table and "val HR@100 - 4 (95% CI)" in table and "validation only" in table
    assert "val HR@20" in table  # where the cold-start targets are read


def test_user_groups_get_their_own_hit_rates_and_paired_differences():
    rng = np.random.default_rng(3)
    runs = {s: {"dualgr": _run(rng), "w/o ENTP": _run(rng)} for s in (0, 1)}
    mask = np.zeros(300, dtype=bool)
    mask[::3] = True
    summary = summarize_ablations(runs, groups={"users with negatives": {"test": mask, "val": mask}})
    block = summary["variants"]["w/o ENTP"]["groups"]["users with negatives"]["test"]
    assert block["n_users"] == 100
    hits = [((runs[s]["w/o ENTP"]["test_ranks"][mask] >= 0) & (runs[s]["w/o ENTP"]["test_ranks"][mask] < 10)).mean()
            for s in (0, 1)]
    assert block["hr@10"] == pytest.approx(np.mean(hits))
    expected = paired_hit_difference_over_seeds([runs[s]["w/o ENTP"]["test_ranks"][mask] for s in (0, 1)],
                                                [runs[s]["dualgr"]["test_ranks"][mask] for s in (0, 1)], 10)
    assert block["paired"]["hr@10"] == expected
    assert "paired" not in summary["variants"]["dualgr"]["groups"]["users with negatives"]["test"]
    text = format_group_summary(summary)
    assert "users with negatives (100 users, test), w/o ENTP" in text and "HR@10 - dualgr" in text
    with pytest.raises(ValueError, match="mask has 5 entries"):
        summarize_ablations(runs, groups={"g": {"test": np.ones(5, dtype=bool)}})
