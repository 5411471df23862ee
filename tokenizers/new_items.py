"""Give an item that arrives after training its SID, from what a DualGR checkpoint carries.

The catalogue's SIDs came from item vectors through a fitted RQ-KMeans (genret.tokenizers.semantic_ids).
A new item needs a vector in the same space, the same codebooks, and the rule that says where an
added item may go (`data.cold_sids`):

- "shared": the tokenizer's greedy SID as it is (it may be a catalogue item's; the new item is then
  listed after the items already on it);
- "spread": a taken SID moves to the nearest free last code under the same prefix;
- "paths": every code continues a prefix some catalogue SID has, so the decoder reaches the item
  along paths it was trained on (genret.tokenizers.catalogue_paths).

`NewItemEncoder` bundles the three (and what turns an item's features into a vector of the
catalogue's space: for SIDs made from item content the fitted ContentVectorizer; for SIDs made from
interactions, with `data.sid.content_neighbours`, the ContentNeighbours placer), is saved in every
DualGR checkpoint, and is what `Retriever.add_items(features=...)` and `genret add-items` use: one code path with the LOOC benchmark's cold items, so a served model
places a new item exactly where the benchmark measured cold items.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from genret.tokenizers.catalogue_paths import encode_on_paths
from genret.tokenizers.content_neighbours import ContentNeighbours
from genret.tokenizers.content_vectors import ContentVectorizer
from genret.tokenizers.rq_kmeans import RQKMeans
from genret.tokenizers.unique_codes import spread_added_items

__all__ = ["COLD_SID_RULES", "NewItemEncoder", "described_items"]

COLD_SID_RULES = ("shared", "spread", "paths")


class NewItemEncoder:
    """Item vectors or raw features -> SIDs for items added to a trained catalogue.

    Args:
        tokenizer: the fitted RQ-KMeans the catalogue's SIDs came from.
        rule: one of COLD_SID_RULES.
        content: what places an item by its features in the tokenizer's space: the fitted
            ContentVectorizer when the SIDs came from item content, ContentNeighbours when they came
            from interactions and the model was given one, else None (a new item then needs a vector
            made the way the catalogue's were, or its codes).
        source: where the catalogue's item vectors came from (the SID report's words).
    """

    def __init__(self, tokenizer: RQKMeans, rule: str = "shared",
                 content: ContentVectorizer | ContentNeighbours | None = None, source: str = ""):
        if rule not in COLD_SID_RULES:
            raise ValueError(f"the rule for added items must be one of {COLD_SID_RULES}, got {rule!r}")
        self.tokenizer, self.rule, self.content, self.source = tokenizer, rule, content, source

    @property
    def feature_names(self) -> list[str]:
        """The content features a new item is described by (empty when no placer by content is held)."""
        return self.content.names if self.content is not None else []

    def codes(self, vectors: np.ndarray, existing: np.ndarray) -> np.ndarray:
        """(m, d) vectors in the tokenizer's space -> (m, L) int64 SIDs by the rule; `existing`
        (N, L) are the catalogue's SIDs, which never change.

        Raises:
            ValueError: vectors of another width than the tokenizer's, or not finite.
        """
        vectors = np.asarray(vectors, np.float32)
        width = int(self.tokenizer.n_features_in_)
        if vectors.ndim != 2 or vectors.shape[1] != width:
            raise ValueError(f"item vectors must have shape (m, {width}), the width the tokenizer was fitted on "
                             f"({self.source or 'the catalogue vectors'}); got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("item vectors hold NaN or infinite values")
        if self.rule == "paths":
            return encode_on_paths(self.tokenizer, vectors, existing)
        codes = np.asarray(self.tokenizer.encode(vectors), np.int64)
        if self.rule == "spread":
            codes = spread_added_items(self.tokenizer, vectors, codes, existing)
        return codes

    def vectors(self, features: Sequence[Mapping[str, Any]] | Mapping[str, Sequence]) -> np.ndarray:
        """New items described by their features (`described_items`: per item a mapping feature
        name -> value(s), or columns) -> (m, d) vectors.

        Raises:
            ValueError: the model has no placer by content, an unknown feature name, or an item
                with no value the fitted vocabularies know.
        """
        if self.content is None:
            raise ValueError(f"this model's SIDs came from {self.source or 'item vectors'}, and it holds nothing that "
                             f"places an item by its content (data.sid.embeddings: content, or "
                             f"data.sid.content_neighbours for SIDs made from interactions): a new item needs its "
                             f"vector made the same way (vectors=) or its SID (codes=)")
        raw = described_items(features, self.content.names)
        return self.content.transform(raw)

    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.state_dict(), "rule": self.rule, "source": self.source,
                "content": None if self.content is None else self.content.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "NewItemEncoder":
        content = state.get("content")
        tokenizer = RQKMeans.from_state_dict(state["tokenizer"])
        tokenizer.device = None  # the machine that serves may lack the device it was fitted on: pick one here
        if content is not None:
            placer = ContentNeighbours if content.get("kind") == "neighbours" else ContentVectorizer
            content = placer.from_state_dict(content)
        return cls(tokenizer, state["rule"], content, state.get("source", ""))


def described_items(features: Sequence[Mapping[str, Any]] | Mapping[str, Sequence], names: Sequence[str]
                    ) -> dict[str, list[list[str]]]:
    """New items as a user describes them -> raw features (name -> one list of string values per item).

    `features`: per item a mapping feature name -> value(s), or one mapping feature name -> one entry
    per item (RetrievalFormer's columns). Values are a string or a list of strings, as the data
    loaders give them (genres, category and brand ids, title words); a "title" key stands for the
    features a data set derives from titles ("title_words", and "year" from a trailing "(1995)")
    unless they are given. Features in `names` an item lacks count as empty.

    Raises:
        ValueError: a feature name outside `names`, columns of different lengths, an item that is
            not a mapping.
    """
    from genret.data.item_features import title_words, title_year

    if isinstance(features, Mapping):  # columns -> one mapping per item
        lengths = {len(column) for column in features.values()}
        if len(lengths) > 1:
            raise ValueError(f"feature columns of different lengths {sorted(lengths)}; give one entry per item")
        n = lengths.pop() if lengths else 0
        features = [{name: column[i] for name, column in features.items()} for i in range(n)]
    raw: dict[str, list[list[str]]] = {name: [] for name in names}
    for i, item in enumerate(features):
        if not isinstance(item, Mapping):
            raise ValueError(f"item {i}: features must be a mapping of feature name -> value(s), got "
                             f"{type(item).__name__}")
        unknown = sorted(set(item) - set(names) - {"title"})
        if unknown:
            raise ValueError(f"item {i}: unknown feature(s) {unknown}; this model describes items by {list(names)}"
                             + (' (or "title")' if {"title_words", "year"} & set(names) else ""))
        title = item.get("title")
        derived = {"title_words": title_words(title), "year": title_year(title)} if isinstance(title, str) else {}
        for name in names:
            value = item.get(name, derived.get(name, []))
            values = [value] if isinstance(value, (str, int)) else list(value or [])
            raw[name].append([str(v) for v in values])
    return raw
