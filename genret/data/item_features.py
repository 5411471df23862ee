"""Item features for feature-described items (RetrievalFormer, cold start).

Every feature is kept raw first: per item, a list of string values (a single-valued categorical
is a list of one; genres, categories and title words are lists of several). An
`ItemFeatureEncoder` then fits one vocabulary per feature on the items it is told to fit on (the
training items: under the leave-one-out-cold protocol a cold item's words, years or categories
never enter a vocabulary), and turns the raw lists into id tables (n_items, W) int64, 0 = none /
unknown. The encoder travels inside a checkpoint, so a new item's raw features get ids without
retraining.

Features found per data set (`raw_item_features`):
  * MovieLens-1M (movies.dat): "genres" (multi-valued), "year" (release year parsed from the
    title), "title_words" (lower-cased title words without the year).
  * Amazon (item2attributes.json, titles.tsv): "attributes" (the anonymised category and brand
    ids; S3Rec's file does not say which is which), "title_words".
  * Any data set: "item_id" (the raw id as a categorical: warm items only, a cold item maps to 0),
    and the columns of a generic item-feature table (`load_item_feature_table`, CSV/TSV/Parquet:
    an item id column plus feature columns, multi-valued cells separated by "|").
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genret.data.interactions import DataError, InteractionLog

log = logging.getLogger(__name__)

RawFeatures = dict[str, list[list[str]]]  # feature name -> per item, its raw values

_YEAR = re.compile(r"\((\d{4})\)\s*$")
_WORD = re.compile(r"[a-z0-9]+")
# Words too common to say anything about an item.
_STOP = frozenset("the a an of and in on to for with by at from is it s".split())


def title_words(title: str, drop_year: bool = True) -> list[str]:
    """Lower-cased alphanumeric words of a title, stop words and a trailing "(1995)" removed."""
    if drop_year:
        title = _YEAR.sub("", title)
    return [w for w in _WORD.findall(title.lower()) if w not in _STOP and len(w) > 1]


def title_year(title: str) -> list[str]:
    """The year of a MovieLens-style "Title (1995)" as a one-value list, or [] without one."""
    match = _YEAR.search(title or "")
    return [match.group(1)] if match else []


def raw_item_features(log_: InteractionLog, names: Sequence[str] | None = None,
                      table: str | os.PathLike | None = None) -> RawFeatures:
    """The raw item features a data set offers, per item in `log_.item_ids` order.

    Args:
        log_: the loaded data set (its `item_titles` and `item_features`).
        names: the features wanted; None = every one found. Raises ValueError naming the
            unknown ones and what exists.
        table: an optional generic item-feature table whose columns are added
            (`load_item_feature_table`).

    Returns:
        name -> list of n_items lists of strings (empty list = the item lacks the feature).
    """
    n = log_.n_items
    found: RawFeatures = {"item_id": [[str(i)] for i in log_.item_ids.tolist()]}
    titles = log_.item_titles
    if titles is not None and any(titles):
        found["title_words"] = [title_words(t or "") for t in titles]
        years = [title_year(t) for t in titles]
        if sum(bool(y) for y in years) > n // 2:  # MovieLens-style "Title (1995)"
            found["year"] = years
    for key, array in log_.item_features.items():
        if key == "asin":
            continue  # an id in another namespace, not a feature
        array = np.asarray(array)
        if key == "genre" and "genres" in log_.item_features:
            continue  # the first genre only; "genres" holds them all
        if key == "genres" and array.ndim == 2:  # multi-hot over MovieLens genres
            from genret.data.movielens import MOVIELENS_GENRES

            vocab = list(MOVIELENS_GENRES) + [f"genre{j}" for j in range(len(MOVIELENS_GENRES), array.shape[1])]
            found["genres"] = [[vocab[j] for j in np.flatnonzero(row)] for row in array]
        elif array.dtype == object and all(isinstance(v, list) for v in array):  # attach_item_feature_table's
            found[key] = [list(v) for v in array]
        elif array.ndim == 2:  # id lists, 0-padded (e.g. Amazon attributes)
            found[key] = [[str(v) for v in row if v != 0] for row in array.tolist()]
        elif array.ndim == 1:
            found[key] = [[str(v)] if str(v) not in ("", "0") else [] for v in array.tolist()]
    if table is not None:
        found.update(table_item_features(log_, table))
    if names is None:
        return found
    unknown = [name for name in names if name not in found]
    if unknown:
        raise ValueError(f"unknown item feature(s) {unknown} for {log_.name}; it has {sorted(found)} "
                         f"(add a table with data.item_feature_table for others)")
    return {name: found[name] for name in names}


def feature_report(raw: RawFeatures) -> dict[str, dict[str, Any]]:
    """Per feature: items that have it, distinct values, mean values per item (what the loaders found)."""
    out = {}
    for name, values in raw.items():
        lengths = np.array([len(v) for v in values])
        out[name] = {"items_with": int((lengths > 0).sum()), "distinct": len({x for v in values for x in v}),
                     "mean_values": float(lengths.mean()) if len(lengths) else 0.0}
    return out


def table_item_features(log_: InteractionLog, table: str | os.PathLike) -> RawFeatures:
    """A generic item-feature table's columns as raw features of `log_`'s items (an item missing from
    the table has no value; how many are missing is logged).

    Raises:
        FileNotFoundError / DataError: as load_item_feature_table, or no item of `log_` in the table.
    """
    ids, columns = load_item_feature_table(table)
    index = {raw: i for i, raw in enumerate(ids)}
    rows = [index.get(str(raw)) for raw in log_.item_ids.tolist()]
    missing = sum(r is None for r in rows)
    if missing == len(rows):
        raise DataError(f"{table}: none of the {len(rows)} items of {log_.name} is in the table (ids such as "
                        f"{log_.item_ids[:3].tolist()}); check the id column")
    log.info("%s: %d of %d items are missing from %s", log_.name, missing, len(rows), table)
    return {name: [values[r] if r is not None else [] for r in rows] for name, values in columns.items()}


def attach_item_feature_table(log_: InteractionLog, table: str | os.PathLike) -> list[str]:
    """Add a generic item-feature table's columns to `log_.item_features` (one list of string values
    per item), where everything that reads item content (content SIDs, DualGR's content term, the
    LOOC baseline) finds them through raw_item_features; returns the column names. A column named
    like a feature the data set has already is refused (say which one is meant by renaming it)."""
    columns = table_item_features(log_, table)
    clash = sorted(set(columns) & (set(log_.item_features) | {"item_id", "title_words", "year"}))
    if clash:
        raise DataError(f"{table}: column(s) {clash} name features {log_.name} has already; rename them")
    for name, values in columns.items():
        array = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            array[i] = v
        log_.item_features[name] = array
    return list(columns)


def load_item_feature_table(path: str | os.PathLike, id_column: str | None = None,
                            sep: str = "|") -> tuple[list[str], RawFeatures]:
    """A generic item-feature table: CSV / TSV / Parquet, one row per item.

    Args:
        path: the file (.csv, .tsv, .parquet).
        id_column: the item-id column (default: "item_id" if present, else the first column).
        sep: separator of multi-valued cells ("Drama|Comedy").

    Returns:
        raw item ids (as strings) and name -> per row, its values.

    Raises:
        FileNotFoundError naming the path; DataError for an empty table or a missing id column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"item feature table {path} does not exist; give a CSV/TSV/Parquet file with an "
                                f"item id column and one column per feature")
    if path.suffix == ".parquet":
        from genret.data.table import _read_parquet

        columns = {k: [str(x) for x in v.tolist()] for k, v in _read_parquet(path).items()}
        header = list(columns)
    else:
        from genret.data.table import read_delimited

        header, rows, _ = read_delimited(path, "\t" if path.suffix == ".tsv" else ",")
        columns = {h: [row[j] if j < len(row) else "" for row in rows] for j, h in enumerate(header)}
    if not header or not columns[header[0]]:
        raise DataError(f"{path}: the item feature table is empty")
    id_column = id_column or ("item_id" if "item_id" in columns else header[0])
    if id_column not in columns:
        raise DataError(f"{path}: no id column {id_column!r}; columns are {header}")
    ids = [v.strip() for v in columns.pop(id_column)]
    raw = {name: [[x.strip() for x in cell.split(sep) if x.strip()] for cell in values]
           for name, values in columns.items()}
    return ids, raw


class ItemFeatureEncoder:
    """Raw item features -> id tables, with one vocabulary per feature fitted on chosen items.

    Args:
        names: features, in order.
        min_count: a value seen on fewer fitting items is unknown (0); keeps rare title words out.
        max_values: per feature, at most this many values per item are kept (title words, tags).
    """

    def __init__(self, names: Sequence[str], min_count: int | dict[str, int] = 1, max_values: int = 16):
        self.names = list(names)
        self.min_count = min_count
        self.max_values = max_values
        self.vocab_: dict[str, dict[str, int]] | None = None

    def _min_count(self, name: str) -> int:
        if isinstance(self.min_count, dict):
            return int(self.min_count.get(name, 1))
        return 1 if name == "item_id" else int(self.min_count)

    def fit(self, raw: RawFeatures, fit_items: np.ndarray | None = None) -> "ItemFeatureEncoder":
        """Fit the vocabularies on the items `fit_items` (bool mask or indices; None = all)."""
        missing = [n for n in self.names if n not in raw]
        if missing:
            raise ValueError(f"raw features lack {missing}; they have {sorted(raw)}")
        self.vocab_ = {}
        for name in self.names:
            values = raw[name]
            rows = range(len(values)) if fit_items is None else np.flatnonzero(_mask(fit_items, len(values)))
            counts = Counter(x for r in rows for x in values[r][:self.max_values])
            keep = sorted(v for v, c in counts.items() if c >= self._min_count(name))
            self.vocab_[name] = {v: i + 1 for i, v in enumerate(keep)}
        return self

    @property
    def cardinalities(self) -> list[int]:
        return [len(self._vocab[n]) + 1 for n in self.names]

    @property
    def _vocab(self) -> dict[str, dict[str, int]]:
        if self.vocab_ is None:
            raise RuntimeError("ItemFeatureEncoder is not fitted; call fit() first")
        return self.vocab_

    def transform(self, raw: RawFeatures) -> list[np.ndarray]:
        """Per feature, an (n, W) int64 id table (0 = none / unknown); W = the widest item, at most max_values."""
        missing = [n for n in self.names if n not in raw]
        if missing:
            raise ValueError(f"item features {missing} are missing; the model needs {self.names}")
        tables = []
        for name in self.names:
            vocab = self._vocab[name]
            lists = [[vocab.get(str(x), 0) for x in v[:self.max_values]] for v in raw[name]]
            width = max(1, max((len(v) for v in lists), default=0))
            table = np.zeros((len(lists), width), np.int64)
            for i, ids in enumerate(lists):
                table[i, :len(ids)] = ids
            tables.append(table)
        return tables

    def state_dict(self) -> dict[str, Any]:
        return {"names": self.names, "min_count": self.min_count, "max_values": self.max_values,
                "vocab": self._vocab}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "ItemFeatureEncoder":
        enc = cls(state["names"], state["min_count"], state["max_values"])
        enc.vocab_ = {k: dict(v) for k, v in state["vocab"].items()}
        return enc


def _mask(items: np.ndarray, n: int) -> np.ndarray:
    items = np.asarray(items)
    if items.dtype == bool:
        return items
    mask = np.zeros(n, bool)
    mask[items] = True
    return mask


def _value_counts(table: np.ndarray, width: int) -> Any:
    """(n, width) scipy CSR: how often each value id occurs in each row of an id table (0 = none)."""
    from scipy import sparse

    n, w = table.shape
    rows = np.repeat(np.arange(n), w)
    cols = table.reshape(-1)
    keep = cols > 0
    return sparse.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n, int(width)))


def value_idf(table: np.ndarray, width: int, fit: np.ndarray) -> np.ndarray:
    """(width,) float64 smoothed inverse document frequency of each value id of one id table (n, W)
    among the rows `fit` (bool mask or indices): log((1 + N) / (1 + df)) + 1, as scikit-learn's
    TF-IDF; id 0 (none) gets 0. Under LOOC `fit` is the warm items, so no statistic sees a cold one."""
    fit_rows = _mask(fit, len(table))
    df = np.asarray((_value_counts(table, width)[fit_rows] > 0).sum(0)).ravel()  # documents holding each value
    idf = np.log((fit_rows.sum() + 1) / (df + 1)) + 1.0
    idf[0] = 0.0
    return idf


def tfidf_rows(tables: Sequence[np.ndarray], widths: Sequence[int], idfs: Sequence[np.ndarray]) -> Any:
    """L2-normalised rows (scipy CSR, (n, sum(widths))): each table's value counts weighted by its
    values' `idfs` (one (width,) vector per table), side by side. Rows without any value stay zero."""
    from scipy import sparse

    x = sparse.hstack([_value_counts(t, w) @ sparse.diags(np.asarray(idf, np.float64))
                       for t, w, idf in zip(tables, widths, idfs)]).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
    return sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ x


def tfidf_vectors(tables: Sequence[np.ndarray], widths: Sequence[int], fit: np.ndarray) -> Any:
    """L2-normalised TF-IDF rows (scipy CSR, (n, sum(widths))) over id tables (0 = none / unknown).

    Each table (n, W) of ids < its width becomes one block of value counts, weighted by the IDF of
    its values among the rows `fit` (bool mask or indices): under LOOC only warm items count, so a
    cold item's values move nothing. Rows without any known value stay zero.
    """
    return tfidf_rows(tables, widths, [value_idf(t, w, fit) for t, w in zip(tables, widths)])


def content_tfidf(log_: InteractionLog, names: Sequence[str] | None = None, fit_items: np.ndarray | None = None,
                  min_count: int = 2, max_values: int = 16, return_fit: bool = False,
                  every_item: bool = True) -> tuple[Any, ...]:
    """Items as TF-IDF rows over their content features (no interactions, no item id).

    Args:
        log_: the data set (every item gets a row, in dense order).
        names: the features (default: every one the data set has except "item_id": an id says
            nothing about a new item).
        fit_items: the items the vocabularies and IDF are fitted on (bool mask or indices; None =
            all). Items outside it are only transformed: their unseen values are unknown (0).
        min_count, max_values: as ItemFeatureEncoder's (a value on fewer fitting items is unknown).
        every_item: refuse items without a (known) value, which cannot be placed by content; False
            keeps their rows empty (a score that adds content similarity gives them none).

    Returns:
        (n_items, V) L2-normalised CSR rows, and the feature names used; with `return_fit` also the
        fitted ItemFeatureEncoder and the per-feature IDF vectors (what places a new item the same way).

    Raises:
        ValueError: "item_id" asked for, no content feature, or items without any feature value
            (named), or without any value known to the fitted vocabularies.
    """
    raw = raw_item_features(log_, names)
    if names is None:
        raw.pop("item_id", None)
    elif "item_id" in raw:
        raise ValueError("content vectors describe items by what they are; 'item_id' is not content (a new item's "
                         "id has no fitted value): drop it from the content features")
    if not raw:
        raise ValueError(f"{log_.name} has no item content features (titles, genres, categories, ...); add a "
                         "table with data.item_feature_table (an item id column and one column per feature) "
                         "or use interaction-based SIDs")
    empty = np.flatnonzero([not any(raw[f][i] for f in raw) for i in range(log_.n_items)])
    if len(empty) and every_item:
        raise ValueError(f"{len(empty)} item(s) of {log_.name} have no feature value in {sorted(raw)}, e.g. raw ids "
                         f"{log_.item_ids[empty[:5]].tolist()}: they cannot be placed by content; describe them "
                         f"(data.item_feature_table adds columns) or leave them out of the data")
    encoder = ItemFeatureEncoder(list(raw), min_count, max_values).fit(raw, fit_items)
    fit = np.ones(log_.n_items, bool) if fit_items is None else _mask(fit_items, log_.n_items)
    tables = encoder.transform(raw)
    idfs = [value_idf(t, w, fit) for t, w in zip(tables, encoder.cardinalities)]
    x = tfidf_rows(tables, encoder.cardinalities, idfs)
    unknown = np.flatnonzero(np.diff(x.indptr) == 0)
    if len(unknown) and every_item:
        raise ValueError(f"{len(unknown)} item(s) of {log_.name} have no feature value seen on at least {min_count} "
                         f"fitting items, e.g. raw ids {log_.item_ids[unknown[:5]].tolist()}: they cannot be placed "
                         f"by content (lower min_count or add features)")
    return (x, list(raw), encoder, idfs) if return_fit else (x, list(raw))
