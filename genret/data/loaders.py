"""One entry point for every data set: `load_dataset` picks the loader from a folder's contents."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from genret.data.amazon import load_amazon
from genret.data.interactions import DataError, InteractionLog
from genret.data.kuairand import load_kuairand
from genret.data.movielens import load_movielens
from genret.data.synthetic import make_synthetic
from genret.data.table import load_table

__all__ = ["load_dataset", "resolve_data_path", "load_movielens", "load_amazon", "load_kuairand", "load_table"]

# (file that marks the format, loader, what the error message calls it), checked in this order.
_FOLDER_FORMATS = (
    ("sequences.txt", load_movielens, "sequences.txt (+ movies.dat): MovieLens"),
    ("sequential.txt", load_amazon, "sequential.txt: Amazon in the P5 format"),
    ("log_standard.tsv", load_kuairand, "log_standard.tsv or log_standard*.csv: KuaiRand"),
)
_TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".parquet", ".pq")
_SYNTHETIC = re.compile(r"^synthetic(?::(\d+)x(\d+))?$")


def resolve_data_path(path: str | os.PathLike) -> Path:
    """`path` as given when it exists, else under $GENRET_DATA_DIR (for relative names like "ml-1m").

    Raises:
        DataError: listing every place that was tried.
    """
    given = Path(path).expanduser()
    tried = [given]
    if given.exists():
        return given
    data_dir = os.environ.get("GENRET_DATA_DIR")
    if data_dir and not given.is_absolute():
        candidate = Path(data_dir).expanduser() / given
        tried.append(candidate)
        if candidate.exists():
            return candidate
    if not data_dir:
        hint = " (set GENRET_DATA_DIR to the folder holding the data sets, or pass a folder's path)"
    else:
        names = sorted(p.name for p in Path(data_dir).expanduser().glob("*") if not p.name.startswith("."))
        hint = f" (names under GENRET_DATA_DIR: {', '.join(names[:20]) or 'none'})"
    raise DataError(f"data set {str(path)!r} not found; tried {', '.join(map(str, tried))}{hint}")


def check_data_argument(path: str | os.PathLike) -> None:
    """Raise DataError now, before anything trains, when `path` names no data set ("synthetic..." passes)."""
    if not _SYNTHETIC.match(str(path)):
        resolve_data_path(path)


def load_dataset(path: str | os.PathLike, **kwargs: Any) -> InteractionLog:
    """Load any supported data set, recognised by what `path` holds.

    * "synthetic" or "synthetic:<n_users>x<n_items>": `make_synthetic` (kwargs go to it).
    * a folder with sequences.txt: `load_movielens`; with sequential.txt: `load_amazon`;
      with log_standard.tsv: `load_kuairand` (kwargs go to the loader).
    * a file: those three by their file names, any other table via `load_table` (kwargs go to it,
      e.g. user_col, item_col, time_col, label_col, sep).

    Relative names that do not exist as given are looked up under $GENRET_DATA_DIR.

    Returns:
        InteractionLog.

    Raises:
        DataError: nothing found at the path, or a folder in no known format (the message lists
            the files it looked for).
    """
    match = _SYNTHETIC.match(str(path))
    if match:
        if match.group(1):
            kwargs = {"n_users": int(match.group(1)), "n_items": int(match.group(2)), **kwargs}
        return make_synthetic(**kwargs)
    resolved = resolve_data_path(path)
    if resolved.is_file():
        for marker, loader, _ in _FOLDER_FORMATS:
            if resolved.name == marker:
                return loader(resolved.parent, **kwargs)
        return load_table(resolved, **kwargs)
    for marker, loader, _ in _FOLDER_FORMATS:
        if (resolved / marker).is_file():
            return loader(resolved, **kwargs)
    if any(p.suffix in (".csv", ".tsv") for p in resolved.glob("log_standard*")):
        return load_kuairand(resolved, **kwargs)  # the original KuaiRand CSV logs
    tables = sorted(p for p in resolved.iterdir() if p.suffix.lower() in _TABLE_SUFFIXES)
    if len(tables) == 1:
        return load_table(tables[0], **kwargs)
    looked_for = "; ".join(description for _, _, description in _FOLDER_FORMATS)
    found = ", ".join(sorted(p.name for p in resolved.iterdir())[:10]) or "nothing"
    raise DataError(
        f"{resolved}: not a known data set format. Looked for {looked_for}; or a single table file "
        f"({', '.join(_TABLE_SUFFIXES)}); or pass 'synthetic[:<users>x<items>]'. Found: {found}"
    )
