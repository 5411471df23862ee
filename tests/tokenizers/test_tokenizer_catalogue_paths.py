"""encode_on_paths: SIDs of added items stay on the catalogue's code paths (cold start)."""

import numpy as np
import pytest

from genret.tokenizers import RQKMeans
from genret.tokenizers.catalogue_paths import encode_on_paths


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 8)).astype(np.float32)
    return RQKMeans(n_levels=3, codebook_size=8, n_iter=5, random_state=0, device="cpu").fit(X), X


def test_every_prefix_is_a_catalogue_prefix_and_on_path_items_keep_the_greedy_sid(fitted):
    tok, X = fitted
    catalogue = tok.encode(X[:150])  # a small catalogue: many (s1, s2, s3) paths are missing
    added = X[150:]
    greedy = tok.encode(added)
    codes = encode_on_paths(tok, added, catalogue)
    assert codes.shape == greedy.shape and codes.dtype == np.int64
    for level in range(1, 4):
        known = {tuple(r) for r in catalogue[:, :level].tolist()}
        assert all(tuple(r) in known for r in codes[:, :level].tolist()), f"level {level} left the catalogue"
    full = {tuple(r) for r in catalogue.tolist()}
    on_path = np.array([tuple(r) in full for r in greedy.tolist()])
    off_path = ~on_path
    assert on_path.any() and off_path.any()  # the check below is not vacuous
    assert np.array_equal(codes[on_path], greedy[on_path])
    assert not np.array_equal(codes[off_path], greedy[off_path])
    # The catalogue itself encodes to its own SIDs (each greedy SID is on a path).
    assert np.array_equal(encode_on_paths(tok, X[:150], catalogue), catalogue)


def test_the_nearest_allowed_code_is_chosen():
    class Book:  # two levels of 1-d centroids
        codebooks_ = [np.array([[0.0], [10.0]]), np.array([[-1.0], [0.0], [1.0]])]

    catalogue = np.array([[0, 0], [1, 2]])
    # 9.2: level 1 -> 10 (code 1); residual -0.8; only code 2 continues prefix (1,) -> (1, 2).
    # 0.9: level 1 -> 0; residual 0.9 is nearest code 2, but only code 0 continues (0,) -> (0, 0).
    assert encode_on_paths(Book(), np.array([[9.2], [0.9]]), catalogue).tolist() == [[1, 2], [0, 0]]


def test_bad_input_is_named(fitted):
    tok, X = fitted
    with pytest.raises(ValueError, match=r"non-empty \(N, 3\) array of catalogue SIDs"):
        encode_on_paths(tok, X[:2], np.zeros((0, 3), np.int64))
    with pytest.raises(ValueError, match=r"X must have shape \(m, 8\)"):
        encode_on_paths(tok, X[:2, :4], tok.encode(X[:5]))
