"""Evaluation: leave-one-out ranking metrics, baselines, exact embedding top-K, reports."""

from genret.eval.embedding_topk import exact_topk
from genret.eval.metrics import DEFAULT_KS, paired_hit_difference, ranking_metrics, target_ranks
from genret.eval.popularity import PopularityRecommender
from genret.eval.report import (
    format_ablation_table,
    format_metrics_table,
    published_reference,
    write_metrics,
    write_report,
)

__all__ = [
    "DEFAULT_KS",
    "PopularityRecommender",
    "exact_topk",
    "format_ablation_table",
    "format_metrics_table",
    "paired_hit_difference",
    "published_reference",
    "ranking_metrics",
    "target_ranks",
    "write_metrics",
    "write_report",
]
