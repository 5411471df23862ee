"""Serving: any family's retriever behind an HTTP server (`genret serve`).

`load_retriever` is the one way the server gets a model. The server relies on this interface
only (DualGR's `genret.decoding.Retriever` has it; other families' retrievers are to offer it):

    retrieve(histories, k, *, exclude_seen=True, unknown="error", side=None, user_features=None,
             batch_size=...) -> RetrievalResult(items, scores)
        histories: a list of raw item-id lists, oldest first; items[u] / scores[u]: raw ids, best
        first, and their scores. Raises genret.decoding.requests.RequestError (a bad argument,
        HTTP 400) or its subclass UnknownItemError (an id not in the catalogue, HTTP 422).
    item_ids: (n_items,) raw ids of the catalogue.
    model_version: a string naming what was loaded (for a Retriever: "sha256:" and the first 16
        hex digits of the SHA-256 of the checkpoint file, or of an export's config.json, weights
        and catalogue files).

The HTTP app itself (`genret.serving.app`) needs the `serve` extra: pip install 'genret[serve]'.
"""

from __future__ import annotations

import os
from typing import Any


def load_retriever(path: str | os.PathLike, device: str | None = None, **kwargs: Any):
    """The retriever stored at `path` (a `.ckpt` or a `genret export` directory) on `device`, of
    whichever family the artifact records (genret.families)."""
    from genret.families import load_retriever as load_family_retriever

    return load_family_retriever(path, device=device, **kwargs)


__all__ = ["load_retriever"]
