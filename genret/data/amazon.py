"""Amazon reviews in the P5 / TIGER format: sequential.txt (+ titles.tsv, datamaps.json, item2attributes.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from genret.data.interactions import DataError, InteractionLog, lookup
from genret.data.table import find_folder, parse_int, read_sequences


def load_amazon(path: str | os.PathLike) -> InteractionLog:
    """Load an Amazon category (Beauty, Sports, Toys, ...) in the P5 format.

    Files in the folder:
      * `sequential.txt` (required): `user_id item_id item_id ...`, P5 integer ids, oldest first.
        Every entry is a positive; `time` is its position in the user's line (no timestamps exist).
      * `titles.tsv` (optional): `item_id<TAB>asin<TAB>title`, with or without a header row.
      * `datamaps.json` (optional): `id2item` maps P5 item ids to ASINs (used where titles.tsv has none).
      * `item2attributes.json` (optional): P5 item id -> list of anonymised category / brand ids.

    Raw ids stay the P5 integers (`item_ids`, `user_ids` int64), because sequential.txt and the
    published splits use them. The ASIN of each item is kept as `item_features["asin"]` (object
    array of str, "" when unknown). Attributes become `item_features["attributes"]` (n_items, A) int64:
    each item's attribute ids re-numbered densely 1..n_attributes in sorted raw order, padded with 0.

    Args:
        path: the folder, or a file inside it.

    Returns:
        InteractionLog named after the folder (e.g. "amazon-beauty").

    Raises:
        DataError: missing sequential.txt, non-integer id (file and line), duplicate user line,
            malformed titles / JSON, an empty data set.
    """
    folder = find_folder(path, "sequential.txt", "load_amazon")
    seq_path = folder / "sequential.txt"
    user_raw, item_raw, position, _, n_empty = read_sequences(seq_path)
    user_ids = np.unique(user_raw)
    item_ids = np.unique(item_raw)
    log = InteractionLog.from_dense(
        folder.name, lookup(user_ids, user_raw)[0], lookup(item_ids, item_raw)[0], position,
        np.ones(len(item_raw), dtype=np.int8), user_ids, item_ids,
    )
    log.skipped["users_without_items"] = n_empty

    asins: dict[int, str] = {}
    if (folder / "titles.tsv").is_file():
        titles, asins = _read_titles(folder / "titles.tsv")
        log.item_titles = [titles.get(i, "") for i in item_ids.tolist()]
        log.skipped["items_without_title"] = sum(i not in titles for i in item_ids.tolist())
    if (folder / "datamaps.json").is_file():
        id2item = _read_json(folder / "datamaps.json").get("id2item", {})
        for key, asin in id2item.items():
            asins.setdefault(_json_key(key, folder / "datamaps.json"), str(asin))
    if asins:
        log.item_features["asin"] = np.array([asins.get(i, "") for i in item_ids.tolist()], dtype=object)
    if (folder / "item2attributes.json").is_file():
        log.item_features["attributes"] = _read_attributes(folder / "item2attributes.json", item_ids)
    return log.validate()


def _read_titles(path: Path) -> tuple[dict[int, str], dict[int, str]]:
    titles: dict[int, str] = {}
    asins: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if number == 1 and not fields[0].strip().lstrip("-").isdigit():
            continue  # header row
        if len(fields) < 2:
            raise DataError(f"{path.name}, line {number}: expected 'item_id<TAB>asin<TAB>title'")
        item = parse_int(fields[0].strip(), path, number, "item_id")
        asins[item] = fields[1].strip()
        titles[item] = fields[2].strip() if len(fields) > 2 else ""
    return titles, asins


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path.name}, line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path.name}: expected a JSON object at the top level")
    return data


def _json_key(key: str, path: Path) -> int:
    try:
        return int(key)
    except ValueError:
        raise DataError(f"{path.name}: key {key!r} is not an integer item id") from None


def _read_attributes(path: Path, item_ids: np.ndarray) -> np.ndarray:
    """(n_items, max attributes) int64 dense attribute ids (1..A), 0-padded."""
    data = _read_json(path)
    per_item: dict[int, list[int]] = {}
    for key, attrs in data.items():
        if not isinstance(attrs, list) or not all(isinstance(a, int) for a in attrs):
            raise DataError(f"{path.name}: item {key!r} must map to a list of integer attribute ids")
        per_item[_json_key(key, path)] = attrs
    lists = [per_item.get(i, []) for i in item_ids.tolist()]
    width = max((len(a) for a in lists), default=0)
    flat = np.fromiter((a for attrs in lists for a in attrs), dtype=np.int64)
    vocab = np.unique(flat)
    out = np.zeros((len(item_ids), width), dtype=np.int64)
    rows = np.repeat(np.arange(len(lists)), [len(a) for a in lists])
    cols = np.concatenate([np.arange(len(a)) for a in lists]) if lists else np.zeros(0, dtype=np.int64)
    out[rows, cols.astype(np.int64)] = lookup(vocab, flat)[0] + 1
    return out
