"""KuaiRand standard log loader: exposures with and without clicks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from genret.data.interactions import DataError, InteractionLog
from genret.data.table import find_folder, read_delimited, strings_to_floats, strings_to_ints

LOG_FILE = "log_standard.tsv"
REQUIRED_COLUMNS = ("user_id", "video_id", "time_ms", "is_click")
SIDE_COLUMNS = ("play_time_ms", "duration_ms")


def load_kuairand(path: str | os.PathLike) -> InteractionLog:
    """Load a KuaiRand standard log: `log_standard.tsv` (the shared subset), or the original
    `log_standard*.csv` files of KuaiRand-Pure / 1K / 27K (all of them in the folder, concatenated).

    Every row is an exposure: `is_click = 1` rows are positives (label 1), `is_click = 0` rows are
    exposures without a click (label 0). `time` is `time_ms`; rows with equal times keep file order.
    Side features (float32): `play_time_ms`, `duration_ms` (those present). Raw ids are the
    int64 `user_id` / `video_id`. There are no titles or user features.

    Args:
        path: the folder holding the log, or one log file (tab- or comma-separated, header row).

    Returns:
        InteractionLog named after the folder (e.g. "kuairand-subset").

    Raises:
        DataError: missing file or column, wrong field count or non-integer value (with line
            number), is_click other than 0/1, an empty log.
    """
    files = log_files(path)
    parts = [_read_log(file) for file in files]
    user, item, time, label = (np.concatenate([p[k] for p in parts]) for k in range(4))
    side_names = set.intersection(*(set(p[4]) for p in parts))
    side = {k: np.concatenate([p[4][k] for p in parts]) for k in SIDE_COLUMNS if k in side_names}
    log = InteractionLog.from_raw(files[0].parent.name, user, item, time=time, label=label, side=side)
    return log.validate()


def log_files(path: str | os.PathLike) -> list[Path]:
    """The log file(s) for `path`: the file itself, else log_standard.tsv, else every log_standard*.csv/.tsv."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        if (path / LOG_FILE).is_file():
            return [path / LOG_FILE]
        found = sorted(p for p in path.glob("log_standard*") if p.suffix in (".csv", ".tsv"))
        if found:
            return found
    find_folder(path, LOG_FILE, "load_kuairand")  # raises, naming what is missing
    raise DataError(f"load_kuairand: no log in {path}")


def _read_log(file: Path):
    with file.open("r", encoding="utf-8", errors="replace") as f:
        sep = "\t" if "\t" in f.readline() else ","
    header, rows, line_numbers = read_delimited(file, sep)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{file.name}: missing column(s) {', '.join(missing)}; the header has {', '.join(header)}")
    if not rows:
        raise DataError(f"{file.name}: the log has a header but no rows")
    columns = list(zip(*rows))

    def ints(name: str) -> np.ndarray:
        return strings_to_ints(columns[header.index(name)], line_numbers, file, name)

    is_click = ints("is_click")
    bad = np.flatnonzero((is_click != 0) & (is_click != 1))
    if len(bad):
        raise DataError(f"{file.name}, line {line_numbers[bad[0]]}: is_click must be 0 or 1, found {is_click[bad[0]]}")
    side = {
        name: strings_to_floats(columns[header.index(name)], line_numbers, file, name).astype(np.float32)
        for name in SIDE_COLUMNS
        if name in header
    }
    return ints("user_id"), ints("video_id"), ints("time_ms"), is_click.astype(np.int8), side
