"""`genret tokenize` and `genret embed` end to end on small files in tmp_path."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import genret.data
from genret.cli import main as genret_main
from genret.commands import embed as embed_command
from genret.tokenizers import RQKMeans, SIDIndex, spread_last_level
from genret.tokenizers import text_embeddings


@pytest.fixture
def embeddings_file(tmp_path):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(20, 8)) * 4)[rng.integers(0, 20, 400)] + rng.normal(size=(400, 8))
    path = tmp_path / "items.npy"
    np.save(path, X.astype(np.float32))
    return path, X.astype(np.float32)


def test_tokenize_end_to_end(tmp_path, embeddings_file, capsys):
    path, X = embeddings_file
    out = tmp_path / "tok"
    argv = ["tokenize", "--embeddings", str(path), "--out", str(out), "--n_levels", "2", "--codebook_size", "16",
            "--n_iter", "5", "--device", "cpu", "--no_progress", "--keep_collisions"]
    assert genret_main(argv) == 0
    printed = capsys.readouterr().out
    assert "unique-path fraction" in printed and "16/16" in printed

    codes = np.load(out / "codes.npy")
    assert codes.shape == (400, 2) and codes.dtype == np.int64
    tok = RQKMeans.load(out / "tokenizer.pt")
    assert np.array_equal(tok.encode(X), codes)
    index = SIDIndex.load(out / "sid_index.pt")
    assert index.n_items == 400 and index.n_levels == 2 and np.array_equal(index.codes.numpy(), codes)
    # Inside a shared SID the items closest to its reconstruction come first.
    _, norms = tok.encode(X, return_residual_norm=True)
    for leaf in range(index.n_leaves):
        items = index.leaf_items[index.leaf_item_ptr[leaf] : index.leaf_item_ptr[leaf + 1]].numpy()
        assert np.all(np.diff(norms[items]) >= 0)
    report = json.loads((out / "report.json").read_text())
    assert report["n_items"] == 400 and len(report["levels"]) == 2
    assert report["params"]["codebook_size"] == 16
    assert 0 < report["overall"]["unique_path_fraction"] <= 1


def test_tokenize_spreads_collisions_by_default(tmp_path, embeddings_file):
    path, X = embeddings_file
    # The older spellings (--levels, hyphens) still work.
    base = ["tokenize", "--embeddings", str(path), "--levels", "2", "--codebook-size", "16",
            "--n-iter", "5", "--device", "cpu", "--no-progress"]
    assert genret_main(base + ["--out", str(tmp_path / "spread")]) == 0
    assert genret_main(base + ["--out", str(tmp_path / "greedy"), "--keep-collisions"]) == 0
    spread, greedy = (np.load(tmp_path / name / "codes.npy") for name in ("spread", "greedy"))
    tok = RQKMeans.load(tmp_path / "spread" / "tokenizer.pt")
    assert np.array_equal(spread, spread_last_level(tok, X, greedy)[0])
    assert len(np.unique(spread, axis=0)) > len(np.unique(greedy, axis=0))
    index = SIDIndex.load(tmp_path / "spread" / "sid_index.pt")
    assert np.array_equal(index.codes.numpy(), spread)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"plain text, not numpy", "not a readable .npy"),
        (np.arange(10.0), "expected 2-D"),
        (np.zeros((5, 3)), "codebook_size=16 is larger than the 5 points"),
    ],
)
def test_tokenize_reports_bad_input(tmp_path, capsys, content, message):
    path = tmp_path / "x.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    code = genret_main(["tokenize", "--embeddings", str(path), "--out", str(tmp_path / "o"), "--codebook-size", "16",
                        "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "tokenizer.pt").exists()


class FakeTextModel:
    """Stands in for SentenceTransformer: a deterministic vector per text, remembering what it saw."""

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy, normalize_embeddings):
        self.seen += list(texts)
        seeds = [sum(map(ord, t)) for t in texts]
        return np.stack([np.random.default_rng(s).normal(size=384) for s in seeds])


def test_embed_titles_path_with_stub_data_and_model(tmp_path, monkeypatch, capsys):
    model = FakeTextModel()
    monkeypatch.setattr(text_embeddings, "load_text_model", lambda device=None: model)
    stub = SimpleNamespace(name="stub", item_titles=["red lipstick", "", "shampoo"], item_embeddings=None)
    monkeypatch.setattr(genret.data, "load_dataset", lambda path: stub)
    out = tmp_path / "x.npy"
    assert genret_main(["embed", "--data", "anything", "--out", str(out), "--no-progress"]) == 0
    X = np.load(out)
    assert X.shape == (3, 384) and X.dtype == np.float32
    assert model.seen == ["red lipstick", "item 1", "shampoo"]  # the empty title's documented fallback
    assert "3 items x 384 (titles, 1 empty titles" in capsys.readouterr().out


def test_embed_writes_item_embeddings_of_synthetic_data(tmp_path):
    out = tmp_path / "syn.npy"
    assert genret_main(["embed", "--data", "synthetic:50x200", "--out", str(out), "--no-progress"]) == 0
    assert np.array_equal(np.load(out), genret.data.load_dataset("synthetic:50x200").item_embeddings)


def test_embed_errors(tmp_path, monkeypatch, capsys):
    assert genret_main(["embed", "--data", "synthetic:50x200", "--out", str(tmp_path / "x.txt")]) == 2
    assert "must end in .npy" in capsys.readouterr().err
    stub = SimpleNamespace(name="bare", item_titles=None, item_embeddings=None)
    monkeypatch.setattr(genret.data, "load_dataset", lambda path: stub)
    assert embed_command.main(["--data", "x", "--out", str(tmp_path / "x.npy")]) == 2
    assert "neither item titles nor item embeddings" in capsys.readouterr().err
