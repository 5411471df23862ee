"""Interaction logs, loaders for the supported data sets, the synthetic generator and leave-one-out splits."""

from genret.data.interactions import DataError, InteractionLog
from genret.data.loaders import (
    load_amazon,
    load_dataset,
    load_kuairand,
    load_movielens,
    load_table,
    resolve_data_path,
)
from genret.data.split import EvalSet, LeaveOneOutSplit, leave_one_out
from genret.data.synthetic import make_synthetic

__all__ = [
    "DataError",
    "EvalSet",
    "InteractionLog",
    "LeaveOneOutSplit",
    "leave_one_out",
    "load_amazon",
    "load_dataset",
    "load_kuairand",
    "load_movielens",
    "load_table",
    "make_synthetic",
    "resolve_data_path",
]
