"""Reading delimited text: fast integer parsing with line-numbered errors, and the generic table loader."""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np

from genret.data.interactions import DataError, InteractionLog

_INT64_EDGES = (np.iinfo(np.int64).min, np.iinfo(np.int64).max)
_SEPARATORS = re.compile(r"[\x00-\x20]+")


# ---------------------------------------------------------------------- helpers shared by the loaders
def find_folder(path: str | os.PathLike, required: str, loader: str) -> Path:
    """The data folder for `path` (a folder, or a file inside it) that must contain `required`."""
    path = Path(path)
    if path.is_file():
        folder = path.parent
    elif path.is_dir():
        folder = path
    else:
        raise DataError(f"{loader}: {path} does not exist; expected a folder containing {required}")
    if not (folder / required).is_file():
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise DataError(f"{loader}: {folder} has no {required} (found: {', '.join(present) or 'nothing'})")
    return folder


def read_int_lines(path: Path, sep: bytes | None = None, what: str = "value") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a text file whose lines are integers separated by whitespace (or by `sep`).

    Blank lines are skipped. The fast path parses the whole file in C; when it disagrees with the
    token count, a line-by-line pass finds the first bad token and raises DataError with its line.

    Returns:
        values: (total tokens,) int64, in file order.
        counts: (L,) int64 tokens per non-blank line.
        line_numbers: (L,) int64 1-based line numbers of those lines.
    """
    data = path.read_bytes()
    if sep:
        data = data.replace(sep, b" ")
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    space = buf <= 32  # ASCII whitespace and control bytes separate tokens, as numpy's parser does
    token_start = ~space
    token_start[1:] &= space[:-1]
    newline_at = np.flatnonzero(buf == 10)
    token_line = np.searchsorted(newline_at, np.flatnonzero(token_start))  # 0-based line of each token
    n_lines = len(newline_at) + 1
    counts_all = np.bincount(token_line, minlength=n_lines)
    keep = counts_all > 0
    counts = counts_all[keep].astype(np.int64)
    line_numbers = np.flatnonzero(keep).astype(np.int64) + 1
    values = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (and stops) on an unparsable token
        try:
            values = np.fromstring(data.decode("latin-1"), dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            values = None
    # Saturated values mean an overflow; a count mismatch means a bad token somewhere.
    if values is None or len(values) != counts.sum() or np.isin(values, _INT64_EDGES).any():
        values = _slow_int_lines(path, data, what)
    return values, counts, line_numbers


def check_unique_ids(ids: np.ndarray, line_numbers: np.ndarray, path: Path, what: str) -> None:
    """Raise DataError naming both lines when an id occurs on two lines."""
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = ids[first[counts > 1][0]]
        lines = line_numbers[ids == dup]
        raise DataError(f"{path.name}, line {lines[1]}: {what} {dup} already appeared on line {lines[0]}")


def read_sequences(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Read a `user_id item_id item_id ...` file (one line per user, integer ids, oldest first).

    Returns:
        user_raw (n,) int64, item_raw (n,) int64, position (n,) int64 index inside the user's line,
        row_line (n,) int64 1-based line of each row, and the number of lines with a user but no items.
    """
    values, counts, line_numbers = read_int_lines(path, what="id")
    if not len(counts):
        raise DataError(f"{path}: no sequences; expected lines 'user_id item_id item_id ...'")
    line_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    users = values[line_start]
    check_unique_ids(users, line_numbers, path, "user")
    lengths = counts - 1
    is_item = np.ones(len(values), dtype=bool)
    is_item[line_start] = False
    item_raw = values[is_item]
    if not len(item_raw):
        raise DataError(f"{path}: every line has a user but no items")
    position = np.arange(len(item_raw), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.repeat(users, lengths), item_raw, position, np.repeat(line_numbers, lengths),
            int(np.count_nonzero(lengths == 0)))


def _slow_int_lines(path: Path, data: bytes, what: str) -> np.ndarray:
    # Same token rule as the fast path's count (bytes <= 32 separate), so counts stay aligned.
    out = []
    for number, line in enumerate(data.decode("latin-1").split("\n"), start=1):
        for token in _SEPARATORS.split(line):
            if not token:
                continue
            out.append(parse_int(token, path, number, what))
    return np.asarray(out, dtype=np.int64)


def parse_int(token: str, path: Path, line_number: int, what: str = "value") -> int:
    """int(token) or a DataError naming the file, line and token."""
    try:
        value = int(token)
    except ValueError:
        raise DataError(f"{path.name}, line {line_number}: {what} {token!r} is not an integer") from None
    if not _INT64_EDGES[0] < value < _INT64_EDGES[1]:
        raise DataError(f"{path.name}, line {line_number}: {what} {token!r} does not fit in int64")
    return value


def check_field_counts(counts: np.ndarray, line_numbers: np.ndarray, expected: int, path: Path, sep: str) -> None:
    """Raise DataError at the first line that does not have `expected` fields."""
    bad = np.flatnonzero(counts != expected)
    if len(bad):
        i = bad[0]
        raise DataError(f"{path.name}, line {line_numbers[i]}: expected {expected} fields separated by "
                        f"{sep!r}, found {counts[i]}")


def strings_to_ints(values: list[str] | np.ndarray, line_numbers: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Convert a column of strings to int64, or raise DataError at the first bad entry's line."""
    try:
        return np.asarray(values, dtype=str).astype(np.int64)
    except (ValueError, OverflowError):
        for value, line in zip(values, line_numbers):
            parse_int(value.strip(), path, int(line), what)
        raise DataError(f"{path.name}: column '{what}' is not all integers") from None


def strings_to_floats(values: list[str] | np.ndarray, line_numbers: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Convert a column of strings to float64, or raise DataError at the first bad entry's line."""
    try:
        return np.asarray(values, dtype=str).astype(np.float64)
    except ValueError:
        for value, line in zip(values, line_numbers):
            try:
                float(value)
            except ValueError:
                raise DataError(f"{path.name}, line {line}: {what} {value!r} is not a number") from None
        raise DataError(f"{path.name}: column '{what}' is not all numbers") from None


def ids_from_strings(values: list[str] | np.ndarray) -> np.ndarray:
    """Raw ids: int64 when every entry is an integer, else an object array of str."""
    array = np.asarray(values, dtype=str)
    try:
        return array.astype(np.int64)
    except (ValueError, OverflowError):
        return array.astype(object)


def read_delimited(path: Path, sep: str | None, encoding: str = "utf-8") -> tuple[list[str], list[list[str]], np.ndarray]:
    """Read a text table with a header row.

    Args:
        sep: one-character delimiter (quoted fields honoured, as in CSV), or None for runs of whitespace.

    Returns:
        header, rows (each a list of fields; every row has len(header) fields), 1-based line numbers.
    """
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name}: not valid {encoding} text ({e})") from None
    if sep is None:
        records = ((i, line.split()) for i, line in enumerate(text.splitlines(), start=1))
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        records = ((reader.line_num, row) for row in reader)
    header = None
    rows: list[list[str]] = []
    lines: list[int] = []
    for line_number, row in records:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            header = [name.strip() for name in row]
            continue
        if len(row) != len(header):
            raise DataError(f"{path.name}, line {line_number}: expected {len(header)} fields "
                            f"({', '.join(header)}), found {len(row)}")
        rows.append(row)
        lines.append(line_number)
    if header is None:
        raise DataError(f"{path.name}: the file is empty; expected a header row and interactions")
    return header, rows, np.asarray(lines, dtype=np.int64)


# ---------------------------------------------------------------------- generic table loader
def load_table(
    path: str | os.PathLike,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = None,
    label_col: str | None = None,
    sep: str | None = None,
) -> InteractionLog:
    """Load a generic interaction table: CSV / TSV (header row required) or Parquet.

    Ids may be integers (kept as int64 raw ids) or any strings. Every other column that is fully
    numeric becomes a float32 side feature.

    Args:
        path: the table file. `.parquet` / `.pq` needs pandas or pyarrow.
        user_col: user id column.
        item_col: item id column.
        time_col: order key inside a user (integers; other numbers are replaced by their rank, which
            keeps the order). None: the file order.
        label_col: 1 / 0 (any value > 0 is a positive). None: every row is a positive.
        sep: delimiter; None picks it from the extension (.tsv/.tab: tab, .csv: comma) or, for other
            extensions, from the header line (tab, comma, semicolon, else whitespace).

    Returns:
        InteractionLog named after the file stem.

    Raises:
        DataError: missing file or column, malformed line (with its line number), empty table.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"load_table: {path} is not a file; expected a CSV, TSV or Parquet table")
    if path.suffix.lower() in (".parquet", ".pq"):
        columns = _read_parquet(path)
        header = list(columns)
        line_numbers = np.arange(len(next(iter(columns.values()), [])), dtype=np.int64) + 1  # row numbers
    else:
        sep = sep if sep is not None else _sniff_separator(path)
        header, rows, line_numbers = read_delimited(path, sep)
        columns = {name: [row[j] for row in rows] for j, name in enumerate(header)}
    for col in (user_col, item_col, time_col, label_col):
        if col is not None and col not in columns:
            raise DataError(f"{path.name}: no column {col!r}; the columns are {', '.join(map(str, header))}")
    n = len(columns[user_col])
    if n == 0:
        raise DataError(f"{path.name}: the table has a header but no interactions")

    def numeric(col: str) -> np.ndarray:
        values = columns[col]
        if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
            return values
        try:
            return strings_to_ints(values, line_numbers, path, col)
        except DataError:
            return strings_to_floats(values, line_numbers, path, col)

    time = None
    if time_col is not None:
        time = numeric(time_col)
        if time.dtype.kind == "f":
            if np.isnan(time).any():
                raise DataError(f"{path.name}: time column {time_col!r} has missing values")
            time = np.unique(time, return_inverse=True)[1].reshape(-1) if (time != np.round(time)).any() else time
        time = time.astype(np.int64)
    label = None
    if label_col is not None:
        label = (numeric(label_col) > 0).astype(np.int8)
    side = {}
    for col in header:
        if col in (user_col, item_col, time_col, label_col):
            continue
        try:
            side[col] = numeric(col).astype(np.float32)
        except (DataError, ValueError, TypeError):
            continue  # text columns are not side features
    log = InteractionLog.from_raw(
        path.stem, _raw_ids(columns[user_col]), _raw_ids(columns[item_col]), time=time, label=label, side=side
    )
    return log.validate()


def _raw_ids(values) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return values.astype(np.int64)
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        if (values != np.round(values)).any() or np.isnan(values).any():
            raise DataError("ids must be integers or strings, not fractional numbers")
        return values.astype(np.int64)
    return ids_from_strings([str(v) for v in values])


def _sniff_separator(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    with path.open("r", encoding="utf-8", errors="replace") as f:
        first = f.readline()
    for candidate in ("\t", ",", ";"):
        if candidate in first:
            return candidate
    return None


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        table = pq.read_table(path)
        return {name: table.column(name).to_numpy() for name in table.column_names}
    try:
        import pandas as pd
    except ImportError:
        raise DataError(f"{path.name}: reading Parquet needs pandas and pyarrow (pip install pandas pyarrow)") from None
    try:
        frame = pd.read_parquet(path)
    except ImportError as e:
        raise DataError(f"{path.name}: reading Parquet needs pandas and pyarrow (pip install pandas pyarrow): {e}") from None
    return {str(name): frame[name].to_numpy() for name in frame.columns}
