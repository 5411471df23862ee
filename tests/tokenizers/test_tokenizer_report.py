"""codebook_report on a case small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genret.tokenizers import RQKMeans, codebook_report, format_report


def hand_made_tokenizer() -> RQKMeans:
    """L=2, K=2, d=1: level 1 centroids {0, 10}, level 2 centroids {-1, +1}."""
    tok = RQKMeans(n_levels=2, codebook_size=2, device="cpu")
    tok.codebooks_ = torch.tensor([[[0.0], [10.0]], [[-1.0], [1.0]]])
    tok.n_features_in_ = 1
    return tok


def test_report_numbers_by_hand():
    tok = hand_made_tokenizer()
    X = np.array([[1.0], [9.0], [11.0], [-1.0]], dtype=np.float32)
    assert tok.encode(X).tolist() == [[0, 1], [1, 0], [1, 1], [0, 0]]
    report = codebook_report(tok, X)
    level1, level2 = report["levels"]
    assert level1["codes_used"] == 2 and level1["utilisation"] == 1.0
    assert level1["entropy_bits"] == pytest.approx(1.0) and level1["entropy_normalised"] == pytest.approx(1.0)
    assert level1["largest_cluster"] == 2
    assert level1["recon_error"] == pytest.approx(1.0)  # residuals +-1 after level 1
    assert level2["recon_error"] == pytest.approx(0.0)
    assert report["total_variance"] == pytest.approx(26.0)  # mean 5: (16+16+36+36)/4
    assert level1["recon_error_relative"] == pytest.approx(1 / 26)
    expected = {"n_sids": 4, "unique_path_fraction": 1.0, "largest_collision": 1, "mean_items_per_sid": 1.0}
    assert report["overall"] == expected


def test_report_with_collisions_and_an_unused_code():
    tok = hand_made_tokenizer()
    X = np.array([[1.0], [1.0], [-1.0]], dtype=np.float32)  # SIDs (0,1), (0,1), (0,0)
    report = codebook_report(tok, X)
    level1, level2 = report["levels"]
    assert level1["codes_used"] == 1 and level1["utilisation"] == 0.5 and level1["entropy_bits"] == 0.0
    assert level1["largest_cluster"] == 3
    p = np.array([1 / 3, 2 / 3])
    assert level2["entropy_bits"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert report["overall"]["n_sids"] == 2
    assert report["overall"]["unique_path_fraction"] == pytest.approx(1 / 3)
    assert report["overall"]["largest_collision"] == 2
    assert report["overall"]["mean_items_per_sid"] == pytest.approx(1.5)


def test_report_uses_given_codes_and_checks_them():
    tok = hand_made_tokenizer()
    X = np.array([[1.0], [9.0]], dtype=np.float32)
    report = codebook_report(tok, X, codes=np.array([[1, 1], [1, 1]]))  # deliberately bad codes
    assert report["levels"][0]["recon_error"] == pytest.approx((81 + 1) / 2)
    assert report["overall"]["largest_collision"] == 2
    with pytest.raises(ValueError, match="codes has 1 rows but X has 2"):
        codebook_report(tok, X, codes=np.array([[0, 0]]))


def test_format_report_is_a_readable_table():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    tok = RQKMeans(n_levels=2, codebook_size=8, n_iter=3, device="cpu").fit(X)
    report = codebook_report(tok, X)
    text = format_report(report)
    lines = text.splitlines()
    assert "300 items" in lines[0] and "2 levels x 8 codes" in lines[0]
    assert any(line.split()[:2] == ["1", "8/8"] for line in lines)
    assert f"{report['overall']['unique_path_fraction']:.4f}" in text
    assert math.isfinite(report["levels"][1]["recon_error_relative"])
