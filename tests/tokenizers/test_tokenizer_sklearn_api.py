"""RQKMeans as a scikit-learn estimator: scikit-learn's own checks, parameters, clone, transform."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from genret.tokenizers import NotFittedError, RQKMeans

# The checks fit on tiny data sets (a few to ~150 rows), so the codebooks must be tiny too.
SMALL = dict(n_levels=2, codebook_size=2, n_iter=3, device="cpu")

# Checks that cannot pass, and why. Everything else scikit-learn runs must pass.
EXPECTED_FAILED_CHECKS = {
    "check_n_features_in_after_fitting": (
        "the message for a wrong feature count is genret's ('X has 1 features per row but the tokenizer "
        "was fitted on 8'), which tests/tokenizers/test_tokenizer_rqkmeans.py pins, not scikit-learn's wording"
    ),
    "check_fit2d_1sample": (
        "one row cannot fill a codebook of 2 codes; the ValueError names the codebook size and suggests "
        "codebook_size=1 instead of using scikit-learn's 'n_samples=1' wording"
    ),
}


@parametrize_with_checks([RQKMeans(**SMALL)], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def blobs(n=200, d=6, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(scale=3, size=(8, d))[rng.integers(0, 8, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_is_a_scikit_learn_transformer_with_random_state():
    tok = RQKMeans(n_levels=3, codebook_size=8192, n_iter=20, random_state=0)
    assert isinstance(tok, BaseEstimator) and isinstance(tok, TransformerMixin)
    params = tok.get_params(deep=True)
    assert params == {"n_levels": 3, "codebook_size": 8192, "n_iter": 20, "random_state": 0, "device": None,
                      "sample_size": None, "chunk_size": None, "init": "random", "verbose": False}
    assert tok.set_params(codebook_size=16, random_state=4) is tok
    assert tok.codebook_size == 16 and tok.random_state == 4
    with pytest.raises(ValueError, match="Invalid parameter 'seed'"):
        tok.set_params(seed=1)


def test_clone_copies_parameters_not_fitted_state():
    X = blobs()
    tok = RQKMeans(n_levels=2, codebook_size=8, n_iter=3, random_state=5, device="cpu").fit(X)
    copy = clone(tok)
    assert copy.get_params() == tok.get_params() and copy is not tok
    assert not hasattr(copy, "codebooks_")
    assert repr(copy) == "RQKMeans(codebook_size=8, device='cpu', n_iter=3, n_levels=2, random_state=5)"
    assert torch.equal(copy.fit(X).codebooks_, tok.codebooks_)  # same parameters, same fit


def test_transform_is_encode_and_fit_transform_matches():
    X = blobs()
    tok = RQKMeans(n_levels=2, codebook_size=8, n_iter=3, random_state=1, device="cpu")
    codes = tok.fit_transform(X)
    assert codes.dtype == np.int64 and codes.shape == (200, 2)
    assert np.array_equal(codes, tok.transform(X)) and np.array_equal(codes, tok.encode(X))
    assert np.array_equal(tok.transform(X.tolist()), codes)  # array-likes are accepted too


def test_works_inside_a_pipeline():
    X = blobs()
    pipe = make_pipeline(StandardScaler(), RQKMeans(n_levels=2, codebook_size=8, n_iter=3, device="cpu"))
    codes = pipe.fit_transform(X)
    assert codes.shape == (200, 2) and codes.max() < 8


def test_not_fitted_error_is_also_scikit_learns():
    with pytest.raises(SklearnNotFittedError, match="not fitted yet"):
        RQKMeans().transform(blobs())
    assert issubclass(NotFittedError, RuntimeError)


def test_random_state_must_be_a_non_negative_integer():
    for bad in (None, -1, 1.5, np.random.RandomState(0)):
        with pytest.raises(ValueError, match="random_state must be an integer >= 0"):
            RQKMeans(n_levels=1, codebook_size=2, random_state=bad).fit(blobs())


def test_scikit_learn_version_has_the_check_api():
    # parametrize_with_checks(expected_failed_checks=...) and __sklearn_tags__ need scikit-learn 1.6.
    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    assert (major, minor) >= (1, 6)
