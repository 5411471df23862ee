"""Evaluation: leave-one-out ranking metrics, benchmark runs, validation callbacks, reports."""

from genret.eval.metrics import DEFAULT_KS, paired_hit_difference, ranking_metrics, target_ranks
from genret.eval.report import (
    format_ablation_table,
    format_metrics_table,
    published_reference,
    write_metrics,
    write_report,
)

__all__ = [
    "DEFAULT_KS",
    "format_ablation_table",
    "format_metrics_table",
    "paired_hit_difference",
    "published_reference",
    "ranking_metrics",
    "target_ranks",
    "write_metrics",
    "write_report",
]
