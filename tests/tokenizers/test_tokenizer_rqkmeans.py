"""RQKMeans: shapes, parity with scikit-learn's Lloyd, determinism, persistence, errors, re-seeding, planted
structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from genret.tokenizers.artifacts import RQKMEANS_ARTIFACT_VERSION as ARTIFACT_VERSION
from genret.tokenizers import ArtifactError, ArtifactNotFoundError, NotFittedError, RQKMeans, SIDIndex
from genret.tokenizers.kmeans import random_init_indices


def blobs(n: int = 600, d: int = 8, n_blobs: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(n_blobs, d))
    return (centers[rng.integers(0, n_blobs, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return blobs()


@pytest.fixture(scope="module")
def fitted(X) -> RQKMeans:
    return RQKMeans(n_levels=3, codebook_size=16, n_iter=8, random_state=0, device="cpu").fit(X)


def test_fit_encode_decode_shapes_and_ranges(X, fitted):
    assert isinstance(fitted.codebooks_, torch.Tensor)
    assert fitted.codebooks_.shape == (3, 16, 8) and fitted.codebooks_.dtype == torch.float32
    codes = fitted.encode(X)
    assert codes.shape == (600, 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 16
    X_hat = fitted.decode(codes)
    assert X_hat.shape == X.shape and X_hat.dtype == np.float32
    # Each level explains more: inertia strictly falls, and the last one is the decode error.
    assert len(fitted.inertia_) == 3 and fitted.inertia_[0] > fitted.inertia_[1] > fitted.inertia_[2]
    err = float(((X.astype(np.float64) - X_hat) ** 2).sum())
    assert err == pytest.approx(fitted.inertia_[-1], rel=1e-4)
    # decode of level-1 codes alone is that level's centroid.
    assert np.array_equal(X_hat[:1] - fitted.decode(codes[:1]), np.zeros((1, 8), np.float32))


def test_encode_residual_norm_is_distance_to_reconstruction(X, fitted):
    codes, norms = fitted.encode(X, return_residual_norm=True)
    assert norms.shape == (600,) and norms.dtype == np.float32
    np.testing.assert_allclose(norms, np.linalg.norm(X - fitted.decode(codes), axis=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("K", [16, 300])  # 300: the padded two-stage argmin path
def test_level_one_matches_sklearn_lloyd_from_the_same_start(K):
    X = blobs(n=2000, d=12, n_blobs=40, seed=1)
    tok = RQKMeans(n_levels=1, codebook_size=K, n_iter=6, random_state=3, device="cpu").fit(X)
    init = X[random_init_indices(2000, K, 3, 0)]
    km = KMeans(K, init=init, n_init=1, max_iter=6, tol=0, algorithm="lloyd").fit(X)
    assert tok.inertia_[0] == pytest.approx(km.inertia_, rel=1e-4)
    agree = (tok.encode(X)[:, 0] == km.predict(X)).mean()
    assert agree > 0.99


def test_same_seed_same_codebooks_other_seed_differs(X):
    a = RQKMeans(n_levels=2, codebook_size=16, n_iter=5, random_state=7, device="cpu").fit(X)
    b = RQKMeans(n_levels=2, codebook_size=16, n_iter=5, random_state=7, device="cpu").fit(X)
    c = RQKMeans(n_levels=2, codebook_size=16, n_iter=5, random_state=8, device="cpu").fit(X)
    assert torch.equal(a.codebooks_, b.codebooks_) and a.inertia_ == b.inertia_
    assert not torch.equal(a.codebooks_, c.codebooks_)


def test_kmeans_parallel_init_is_deterministic_and_fits(X):
    a = RQKMeans(n_levels=2, codebook_size=16, n_iter=3, random_state=1, init="kmeans||", device="cpu").fit(X)
    b = RQKMeans(n_levels=2, codebook_size=16, n_iter=3, random_state=1, init="kmeans||", device="cpu").fit(X)
    assert torch.equal(a.codebooks_, b.codebooks_)
    assert np.unique(a.encode(X)[:, 0]).size == 16


def test_save_load_round_trip_bit_for_bit(tmp_path, X, fitted):
    path = tmp_path / "tok.pt"
    fitted.save(path)
    loaded = RQKMeans.load(path)
    assert torch.equal(loaded.codebooks_, fitted.codebooks_)
    assert loaded.codebooks_.dtype == torch.float32
    assert loaded.get_params() == fitted.get_params()
    assert loaded.inertia_ == fitted.inertia_ and loaded.n_features_in_ == 8
    assert np.array_equal(loaded.encode(X), fitted.encode(X))
    assert RQKMeans.load(path, device="cpu").device == "cpu"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_encode_streams_in_chunks_identically(X, fitted):
    small = RQKMeans.__new__(RQKMeans)
    small.__dict__.update(fitted.__dict__)
    small.chunk_size, small._device_codebooks = 37, None  # 17 chunks, shared among worker threads
    codes, norms = small.encode(X, return_residual_norm=True)
    assert np.array_equal(codes, fitted.encode(X))
    bad = X.copy()
    bad[[5, 400], 0] = np.nan  # in two different chunks
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of 600 rows \(first rows: \[5, 400\]\)"):
        small.encode(bad)


def test_fit_is_the_same_with_one_thread_or_many(X):
    many = RQKMeans(n_levels=2, codebook_size=16, n_iter=4, random_state=2, chunk_size=50, device="cpu").fit(X)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = RQKMeans(n_levels=2, codebook_size=16, n_iter=4, random_state=2, chunk_size=50, device="cpu").fit(X)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert torch.equal(one.codebooks_, many.codebooks_)


def test_inputs_torch_float64_and_readonly_memmap(tmp_path, X, fitted):
    codes = fitted.encode(X)
    assert np.array_equal(fitted.encode(torch.from_numpy(X)), codes)
    assert np.array_equal(fitted.encode(X.astype(np.float64)), codes)
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert np.array_equal(fitted.encode(mm), codes)
    tok = RQKMeans(n_levels=1, codebook_size=8, n_iter=2, device="cpu").fit(mm)
    assert tok.n_fit_samples_ == 600


def test_fit_on_a_sample_encodes_everything(X):
    tok = RQKMeans(n_levels=2, codebook_size=16, n_iter=3, sample_size=200, device="cpu").fit(X)
    assert tok.n_fit_samples_ == 200
    assert tok.encode(X).shape == (600, 2)
    with pytest.raises(ValueError, match=r"codebook_size=16 is larger than the 10 points.*sample_size"):
        RQKMeans(n_levels=1, codebook_size=16, sample_size=10, device="cpu").fit(X)


# ---------------------------------------------------------------------- errors
def test_non_finite_rows_are_counted(X, fitted):
    bad = X.copy()
    bad[[3, 10, 11], 2] = np.nan
    bad[50, 0] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf in 4 of 600 rows.*\[3, 10, 11, 50\]"):
        RQKMeans(n_levels=1, codebook_size=4, device="cpu").fit(bad)
    with pytest.raises(ValueError, match=r"NaN or inf in 4 of 600 rows"):
        fitted.encode(bad)


def test_wrong_dimensionality(X, fitted):
    with pytest.raises(ValueError, match="2-D"):
        RQKMeans(n_levels=1, codebook_size=4).fit(X[:, 0])
    with pytest.raises(ValueError, match="2-D"):
        fitted.encode(X[0])
    with pytest.raises(ValueError, match="5 features per row but the tokenizer was fitted on 8"):
        fitted.encode(X[:, :5])
    with pytest.raises(ValueError, match="real numbers"):
        RQKMeans(n_levels=1, codebook_size=2).fit(np.array([["a", "b"], ["c", "d"]]))


def test_codebook_larger_than_data_suggests_smaller(X):
    message = r"codebook_size=8192 is larger than the 600 points.*smaller codebook, e\.g\. codebook_size=32"
    with pytest.raises(ValueError, match=message):
        RQKMeans(n_levels=1, codebook_size=8192).fit(X)


def test_parameters_validated_in_fit_not_init(X):
    tok = RQKMeans(n_levels=0)  # no error yet (scikit-learn convention)
    with pytest.raises(ValueError, match="n_levels must be an integer >= 1"):
        tok.fit(X)
    with pytest.raises(ValueError, match="init must be one of"):
        RQKMeans(init="k-means++").fit(X)
    with pytest.raises(ValueError, match="chunk_size"):
        RQKMeans(chunk_size=0).fit(X)


def test_use_before_fit_raises_not_fitted(X):
    tok = RQKMeans()
    for call in (lambda: tok.encode(X), lambda: tok.decode(np.zeros((1, 3), np.int64)), lambda: tok.save("x.pt")):
        with pytest.raises(NotFittedError, match=r"not fitted yet: call fit\(X\)"):
            call()
    assert issubclass(NotFittedError, RuntimeError)


def test_decode_rejects_bad_codes(fitted):
    with pytest.raises(ValueError, match=r"2 values outside \[0, 16\) in 1 rows"):
        fitted.decode(np.array([[0, 0, 0], [16, -1, 3]]))
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        fitted.decode(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="integers"):
        fitted.decode(np.zeros((2, 3), np.float32))


def test_load_missing_corrupt_other_version_other_kind(tmp_path, fitted):
    with pytest.raises(ArtifactNotFoundError, match="does not exist") as info:
        RQKMeans.load(tmp_path / "nope.pt")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, RuntimeError)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ArtifactError, match="not a readable RQKMeans file"):
        RQKMeans.load(corrupt)

    good = tmp_path / "good.pt"
    fitted.save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ArtifactError):
        RQKMeans.load(truncated)

    payload = torch.load(good, weights_only=True)
    payload["artifact_version"] = ARTIFACT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ArtifactError, match=f"artifact version {ARTIFACT_VERSION + 1}"):
        RQKMeans.load(tmp_path / "future.pt")

    SIDIndex.build(np.zeros((2, 1), np.int64), 4).save(tmp_path / "index.pt")
    with pytest.raises(ArtifactError, match="'SIDIndex', not a RQKMeans"):
        RQKMeans.load(tmp_path / "index.pt")


# ---------------------------------------------------------------------- empty clusters
def test_empty_clusters_are_reseeded_on_duplicated_points():
    rng = np.random.default_rng(0)
    # One point repeated 400 times plus 40 distinct ones: random init puts several centroids on
    # the repeated point, all but one of which end up empty.
    heavy = np.repeat(rng.normal(size=(1, 4)), 400, axis=0)
    X = np.concatenate([heavy, rng.normal(size=(40, 4)) * 5]).astype(np.float32)
    tok = RQKMeans(n_levels=1, codebook_size=24, n_iter=10, random_state=0, device="cpu")
    init_rows = random_init_indices(len(X), 24, 0, 0)
    assert (init_rows < 400).sum() >= 2  # the crafted start really has duplicate centroids
    tok.fit(X)
    assert tok.n_empty_reseeded_[0] > 0
    assert np.unique(tok.encode(X)[:, 0]).size == 24  # no cluster left empty


def test_fewer_distinct_points_than_codes_leaves_the_rest_empty_without_failing():
    X = np.repeat(np.eye(5, dtype=np.float32), 8, axis=0)  # 40 rows, 5 distinct points
    tok = RQKMeans(n_levels=1, codebook_size=8, n_iter=5, random_state=0, device="cpu").fit(X)
    codes = tok.encode(X)
    assert np.unique(codes).size == 5
    assert tok.inertia_[0] == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------- planted structure
def test_recovers_a_planted_two_level_hierarchy():
    rng = np.random.default_rng(0)
    d, n_top, n_sub, per = 16, 8, 8, 25
    top_centers = rng.normal(size=(n_top, d)) * 20.0
    sub_offsets = rng.normal(size=(n_sub, d)) * 2.0  # shared by every top blob: a clean residual level
    top = np.repeat(np.arange(n_top), n_sub * per)
    sub = np.tile(np.repeat(np.arange(n_sub), per), n_top)
    X = (top_centers[top] + sub_offsets[sub] + rng.normal(size=(len(top), d)) * 0.1).astype(np.float32)
    tok = RQKMeans(n_levels=2, codebook_size=8, n_iter=10, random_state=0, init="kmeans||", device="cpu").fit(X)
    codes = tok.encode(X)
    for level, truth in ((0, top), (1, sub)):
        # Agreement up to a permutation: each true group maps to one code, and the map is one-to-one.
        pairs = np.unique(np.stack([truth, codes[:, level]], 1), axis=0)
        assert len(pairs) == 8 and np.unique(pairs[:, 1]).size == 8, f"level {level + 1} mixes groups"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fit_matches_cpu_encode(X):
    tok = RQKMeans(n_levels=2, codebook_size=16, n_iter=5, random_state=0, device="cuda").fit(X)
    assert tok.codebooks_.device.type == "cpu"  # fitted state lives on the CPU
    codes = tok.encode(X)
    cpu = RQKMeans.__new__(RQKMeans)
    cpu.__dict__.update(tok.__dict__)
    cpu.device, cpu._device_codebooks = "cpu", None
    assert (cpu.encode(X) == codes).mean() > 0.99  # equal up to float near-ties
    cpu_fit = RQKMeans(n_levels=2, codebook_size=16, n_iter=5, random_state=0, device="cpu").fit(X)
    assert tok.inertia_[0] == pytest.approx(cpu_fit.inertia_[0], rel=1e-3)
