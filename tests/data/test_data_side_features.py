"""Side features: quantile buckets fitted on training positives, the derived time gap, errors."""

import numpy as np
import pytest

from genret.data import InteractionLog
from genret.data.side_features import SideFeatureBuckets, side_feature_values, time_gaps


def stamped_log():
    # user 0: times 10, 15, (negative at 16), 40; user 1: times 100, 103.
    users = np.array([0, 0, 0, 0, 1, 1])
    items = np.array([1, 2, 9, 3, 4, 5])
    labels = np.array([1, 1, 0, 1, 1, 1])
    times = np.array([10, 15, 16, 40, 100, 103])
    rating = np.array([5.0, 1.0, 2.0, 3.0, np.nan, 4.0], np.float32)
    return InteractionLog.from_raw("stamped", users, items, time=times, label=labels, side={"rating": rating})


def test_time_gap_is_per_user_and_skips_negatives():
    gaps = side_feature_values(stamped_log(), "time_gap")
    # First positive of each user is missing; the negative row gets no gap; 40 - 15 skips the negative.
    assert np.isnan(gaps[[0, 2, 4]]).all()
    assert gaps[[1, 3, 5]].tolist() == [5.0, 25.0, 3.0]
    assert time_gaps([10, 15, 40]) == [None, 5.0, 25.0]


def test_buckets_follow_training_quantiles_and_missing_is_zero():
    log = stamped_log()
    buckets = SideFeatureBuckets.fit(log, ["rating", "time_gap"], n_buckets=4)
    codes = buckets.transform(log)
    assert codes.shape == (6, 2)
    # Ratings of the positives: 5, 1, 3, (nan), 4 -> higher rating, higher (or equal) bucket; NaN -> 0.
    rating = codes[:, 0]
    assert rating[4] == 0 and rating[[0, 1, 3, 5]].min() >= 1
    assert rating[1] < rating[3] < rating[0] and rating[5] <= rating[0]
    assert codes[:, 1].tolist()[0] == 0 and codes.max() <= 4
    # Round trip through the checkpoint form gives the same buckets, and None means missing.
    again = SideFeatureBuckets.from_state_dict(buckets.state_dict())
    assert (again.transform(log) == codes).all()
    assert again.bucketise(0, [None, 5.0]).tolist() == [0, rating[0]]


def test_fit_uses_only_the_given_rows():
    log = stamped_log()
    low = SideFeatureBuckets.fit(log, ["rating"], n_buckets=2, rows=np.array([0, 1]))  # ratings 5 and 1
    assert low.boundaries[0].tolist() == [3.0]
    assert low.bucketise(0, np.array([2.0, 3.0, 4.0])).tolist() == [1, 2, 2]


def test_unknown_feature_names_the_ones_available():
    with pytest.raises(ValueError, match=r"'watch_ms' is not in data set 'stamped'.*\['rating', 'time_gap'\]"):
        SideFeatureBuckets.fit(stamped_log(), ["watch_ms"])
    with pytest.raises(ValueError, match="listed twice"):
        SideFeatureBuckets.fit(stamped_log(), ["rating", "rating"])
    with pytest.raises(ValueError, match="side_buckets must be >= 1"):
        SideFeatureBuckets.fit(stamped_log(), ["rating"], n_buckets=0)
