"""MovieLens-1M loader: sequences.txt (+ movies.dat, users.dat, and the ratings file where present)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from genret.data.interactions import DataError, InteractionLog, lookup
from genret.data.table import check_field_counts, find_folder, parse_int, read_int_lines, read_sequences

# GroupLens' genre list, in its README's order; id = index + 1 (0 = unknown).
MOVIELENS_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
USER_FEATURE_NAMES = ["gender", "age", "occupation", "zip_prefix"]
RATINGS_FILE = "ratings_users_1-2999.dat"


def load_movielens(path: str | os.PathLike, low_ratings_as_negatives: bool = True) -> InteractionLog:
    """Load MovieLens-1M from a folder holding `sequences.txt` and, optionally, `movies.dat`, `users.dat`
    and `ratings_users_1-2999.dat` (or any `ratings*.dat` in the same `UserID::MovieID::Rating::Timestamp` form).

    Rows and labels:
      * `sequences.txt` (`user item item ...`, oldest first) gives every row; `time` is the row's
        position in the user's sequence (0, 1, ...), the order the standard leave-one-out uses.
      * For users the ratings file covers, its rating is stored in `side["rating"]` (0.0 for users
        it does not cover) and, with `low_ratings_as_negatives`, rows rated <= 2 get label 0
        (explicit negatives) while rows rated >= 3 stay label 1. Rows are ordered by timestamp, with
        the sequences.txt order breaking ties (on the shipped files this is exactly the
        sequences.txt order). An item is therefore never both a positive and a negative.
      * Users the ratings file does not cover: every sequence entry is a positive.
      * With `low_ratings_as_negatives=False` every row is a positive (the published ML-1M
        protocol, 1,000,209 positives) and ratings are still attached.
      The ratings file must agree with sequences.txt on each covered user's item set (DataError if not).

    Tables: items are the movies that occur in sequences.txt (raw ids: int64 MovieIDs); titles and
    genres come from movies.dat (Latin-1): `item_features["genre"]` is the first genre's id
    (1..18 in `MOVIELENS_GENRES` order, 0 unknown), `item_features["genres"]` (n_items, 18) int8 multi-hot.
    User features from users.dat: gender, age, occupation, zip_prefix (first zip character); each is
    a categorical id 1..k in sorted order of the raw values, 0 = unknown.

    Args:
        path: the folder, or a file inside it.
        low_ratings_as_negatives: turn ratings <= 2 into label-0 rows where ratings exist.

    Returns:
        InteractionLog named after the folder.

    Raises:
        DataError: missing sequences.txt, malformed or non-integer line (file and line number),
            duplicate users, ratings that disagree with sequences.txt, an empty data set.
    """
    folder = find_folder(path, "sequences.txt", "load_movielens")
    seq_path = folder / "sequences.txt"
    user_raw, item_raw, position, row_line, n_empty = read_sequences(seq_path)
    skipped = {"users_without_items": n_empty}
    user_ids = np.unique(user_raw)
    item_ids = np.unique(item_raw)
    user_dense = lookup(user_ids, user_raw)[0]
    item_dense = lookup(item_ids, item_raw)[0]

    label = np.ones(len(item_raw), dtype=np.int8)
    side = {}
    time = position
    ratings_path = _ratings_file(folder)
    if ratings_path is not None:
        rating, stamp, covered = _match_ratings(ratings_path, user_ids, item_ids, user_dense, item_dense, row_line, seq_path)
        side["rating"] = np.where(covered, rating, 0).astype(np.float32)
        if low_ratings_as_negatives:
            label[covered & (rating <= 2)] = 0
        # Timestamp order with the sequence position as tie-break; uncovered users keep their order.
        order = np.lexsort((position, np.where(covered, stamp, 0), user_dense))
        time = np.empty(len(order), dtype=np.int64)
        user_start = np.searchsorted(user_dense[order], np.arange(len(user_ids)))
        time[order] = np.arange(len(order)) - user_start[user_dense[order]]

    log = InteractionLog.from_dense(folder.name, user_dense, item_dense, time, label, user_ids, item_ids, side)
    log.skipped.update(skipped)
    if (folder / "movies.dat").is_file():
        _attach_movies(log, folder / "movies.dat")
    if (folder / "users.dat").is_file():
        _attach_users(log, folder / "users.dat")
    return log.validate()


def _ratings_file(folder: Path) -> Path | None:
    if (folder / RATINGS_FILE).is_file():
        return folder / RATINGS_FILE
    others = sorted(folder.glob("ratings*.dat"))
    return others[0] if others else None


def _match_ratings(ratings_path, user_ids, item_ids, user_dense, item_dense, row_line, seq_path):
    """Per sequence row: rating, timestamp and whether its user is covered by the ratings file."""
    values, counts, line_numbers = read_int_lines(ratings_path, sep=b"::")
    check_field_counts(counts, line_numbers, 4, ratings_path, "::")
    table = values.reshape(-1, 4)
    if not len(table):
        nothing = np.zeros(len(user_dense), dtype=np.int64)
        return nothing, nothing, np.zeros(len(user_dense), dtype=bool)
    r_user, r_item, r_rating, r_stamp = table.T
    r_u, user_found = lookup(user_ids, r_user)
    r_i, item_found = lookup(item_ids, r_item)
    unknown = ~(user_found & item_found)
    if unknown.any():
        k = np.flatnonzero(unknown)[0]
        raise DataError(f"{ratings_path.name}, line {line_numbers[k]}: user {r_user[k]} movie {r_item[k]} "
                        f"is not in sequences.txt; the ratings file must agree with it")
    n_items = len(item_ids)
    r_key = r_u * n_items + r_i
    sorter = np.argsort(r_key, kind="stable")
    sorted_key = r_key[sorter]
    dup = np.flatnonzero(sorted_key[1:] == sorted_key[:-1])
    if len(dup):
        k = sorter[dup[0] + 1]
        raise DataError(f"{ratings_path.name}, line {line_numbers[k]}: user {r_user[k]} rated movie "
                        f"{r_item[k]} twice")
    covered_user = np.zeros(len(user_ids), dtype=bool)
    covered_user[r_u] = True
    covered = covered_user[user_dense]
    key = user_dense * n_items + item_dense
    pos = np.searchsorted(sorted_key, key).clip(max=len(sorted_key) - 1)
    found = sorted_key[pos] == key
    missing = covered & ~found
    if missing.any():
        k = np.flatnonzero(missing)[0]
        raise DataError(f"{seq_path.name}, line {row_line[k]}: user {user_ids[user_dense[k]]} movie "
                        f"{item_ids[item_dense[k]]} has no rating in {ratings_path.name}, which covers this user")
    match = sorter[pos]
    return r_rating[match], r_stamp[match], covered


def _attach_movies(log: InteractionLog, path: Path) -> None:
    titles: dict[int, str] = {}
    genres: dict[int, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3:
            raise DataError(f"{path.name}, line {number}: expected 'MovieID::Title::Genres', found {len(fields)} fields")
        movie = parse_int(fields[0], path, number, "MovieID")
        titles[movie] = fields[1]
        genres[movie] = [g for g in fields[2].split("|") if g]
    vocab = {g: i + 1 for i, g in enumerate(MOVIELENS_GENRES)}
    extra = sorted({g for gs in genres.values() for g in gs} - set(vocab))
    vocab.update({g: len(vocab) + 1 + i for i, g in enumerate(extra)})  # genres GroupLens did not list
    multi_hot = np.zeros((log.n_items, len(vocab)), dtype=np.int8)
    first = np.zeros(log.n_items, dtype=np.int64)
    item_titles = []
    for i, movie in enumerate(log.item_ids.tolist()):
        item_titles.append(titles.get(movie, ""))
        ids = [vocab[g] for g in genres.get(movie, [])]
        if ids:
            first[i] = ids[0]
            multi_hot[i, np.asarray(ids) - 1] = 1
    log.item_titles = item_titles
    log.item_features["genre"] = first
    log.item_features["genres"] = multi_hot
    log.skipped["items_without_metadata"] = sum(movie not in titles for movie in log.item_ids.tolist())


def _attach_users(log: InteractionLog, path: Path) -> None:
    raw: dict[int, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 5:
            raise DataError(f"{path.name}, line {number}: expected 'UserID::Gender::Age::Occupation::Zip-code', "
                            f"found {len(fields)} fields")
        user = parse_int(fields[0], path, number, "UserID")
        raw[user] = [fields[1].strip(), fields[2].strip(), fields[3].strip(), fields[4].strip()[:1]]
    known = [u in raw for u in log.user_ids.tolist()]
    features = np.zeros((log.n_users, len(USER_FEATURE_NAMES)), dtype=np.int64)
    cardinalities = []
    for j in range(len(USER_FEATURE_NAMES)):
        column = [raw[u][j] if k else "" for u, k in zip(log.user_ids.tolist(), known)]
        vocab_values = sorted({v for v in column if v}, key=_numeric_first)
        vocab = {v: i + 1 for i, v in enumerate(vocab_values)}
        features[:, j] = [vocab.get(v, 0) for v in column]
        cardinalities.append(len(vocab) + 1)
    log.user_features = features
    log.user_feature_names = list(USER_FEATURE_NAMES)
    log.user_feature_cardinalities = cardinalities
    log.skipped["users_without_features"] = len(known) - sum(known)


def _numeric_first(value: str):
    return (0, int(value), "") if value.lstrip("-").isdigit() else (1, 0, value)
