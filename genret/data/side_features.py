"""Per-action side features (rating, watch time, duration, time gap) as quantile buckets.

Models embed a side feature through a small table, so raw values are cut into buckets at the
quantiles of the training positives (fitted once; the same boundaries serve training, evaluation
and the decode API, which is why they travel in checkpoints). Bucket 0 means "missing".

Besides the per-row columns a loader provides (`InteractionLog.side`), one feature is derived:
"time_gap", the time since the user's previous positive (in the log's time unit; missing for a
user's first positive). On data sets whose `time` is a position rather than a timestamp
(ML-1M's sequences, Amazon's P5 lines) it is constant and carries no information.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

TIME_GAP = "time_gap"


def available_side_features(log_) -> list[str]:
    """Names `side_feature_values` accepts for this log."""
    return sorted(log_.side) + [TIME_GAP]


def side_feature_values(log_, name: str) -> np.ndarray:
    """(n_rows,) float64 raw values of one side feature; NaN = missing.

    Raises:
        ValueError naming the feature and the ones this data set has.
    """
    if name in log_.side:
        return np.asarray(log_.side[name], np.float64)
    if name == TIME_GAP:
        return _time_gaps(log_)
    raise ValueError(f"side feature {name!r} is not in data set {log_.name!r}; it has "
                     f"{available_side_features(log_)} (set data.side_features accordingly)")


def _time_gaps(log_) -> np.ndarray:
    """Time since the same user's previous positive row, for positive rows; NaN elsewhere."""
    gaps = np.full(log_.n_rows, np.nan)
    rows = np.flatnonzero(log_.label == 1)
    if len(rows) < 2:
        return gaps
    users, times = log_.user[rows], log_.time[rows].astype(np.float64)
    same_user = users[1:] == users[:-1]  # rows are sorted by (user, time)
    gaps[rows[1:][same_user]] = (times[1:] - times[:-1])[same_user]
    return gaps


def time_gaps(timestamps: Sequence[float]) -> list[float | None]:
    """The "time_gap" values of one history given its action timestamps (oldest first), for the
    decode API: None (missing) for the first action, then the differences."""
    return [None] + [float(b) - float(a) for a, b in zip(timestamps[:-1], timestamps[1:])]


@dataclass
class SideFeatureBuckets:
    """Quantile bucketisation of named side features.

    Attributes:
        names: feature names, in the order of the last axis of `transform`'s output.
        boundaries: per feature, the sorted distinct inner quantiles (at most n_buckets - 1).
        n_buckets: the most value buckets any feature may use; ids are 1..n_buckets, 0 = missing.
    """

    names: list[str] = field(default_factory=list)
    boundaries: list[np.ndarray] = field(default_factory=list)
    n_buckets: int = 16

    @classmethod
    def fit(cls, log_, names: Sequence[str], n_buckets: int = 16, rows: np.ndarray | None = None) -> "SideFeatureBuckets":
        """Boundaries at the quantiles of each feature over `rows` (default: the log's positives).

        Raises:
            ValueError for an unknown feature, n_buckets < 1, or a feature with no finite value.
        """
        if n_buckets < 1:
            raise ValueError(f"side_buckets must be >= 1, got {n_buckets}")
        if len(set(names)) != len(names):
            raise ValueError(f"side features are listed twice: {list(names)}")
        rows = np.flatnonzero(log_.label == 1) if rows is None else np.asarray(rows)
        cuts = np.linspace(0, 1, n_buckets + 1)[1:-1]
        boundaries = []
        for name in names:
            values = side_feature_values(log_, name)[rows]
            values = values[np.isfinite(values)]
            if not len(values) and name != TIME_GAP:
                raise ValueError(f"side feature {name!r} has no finite value in the rows it is fitted on")
            quantiles = np.quantile(values, cuts) if len(values) and len(cuts) else np.zeros(0)
            boundaries.append(np.unique(quantiles))
        return cls(list(names), boundaries, n_buckets)

    def __len__(self) -> int:
        return len(self.names)

    def bucketise(self, feature: int, values: Any) -> np.ndarray:
        """Raw values of feature number `feature` (None / NaN = missing) -> int64 bucket ids."""
        values = np.asarray([np.nan if v is None else v for v in values] if isinstance(values, list) else values,
                            np.float64)
        ids = np.searchsorted(self.boundaries[feature], values, side="right") + 1
        return np.where(np.isfinite(values), ids, 0).astype(np.int64)

    def transform(self, log_) -> np.ndarray:
        """(n_rows, len(names)) int64 bucket ids of every row of `log_`."""
        out = np.zeros((log_.n_rows, len(self.names)), np.int64)
        for f, name in enumerate(self.names):
            out[:, f] = self.bucketise(f, side_feature_values(log_, name))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "boundaries": [b.tolist() for b in self.boundaries],
                "n_buckets": self.n_buckets}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "SideFeatureBuckets":
        return cls(list(state["names"]), [np.asarray(b, np.float64) for b in state["boundaries"]],
                   int(state["n_buckets"]))
