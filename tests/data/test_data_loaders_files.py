"""Loaders on small hand-written files: formats, label rules, and errors that name file and line."""

import importlib.util
import json

import numpy as np
import pytest

from genret.data import (
    DataError,
    leave_one_out,
    load_amazon,
    load_dataset,
    load_kuairand,
    load_movielens,
    load_table,
)


def write(folder, name, text, encoding="utf-8"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def raw_items(log, user):
    return log.item_ids[log.item[log.user == log.user_index[user]]].tolist()


# ---------------------------------------------------------------------- MovieLens
def test_movielens_ratings_rule(tmp_path):
    folder = tmp_path / "ml"
    write(folder, "sequences.txt", "1 10 20 30 40 50\n2 10 60 70\n")
    # user 1: timestamps put 40 before 30 (reordered); 10 and 20 tie (sequence order breaks it).
    # Ratings <= 2 (20 and 50) become label 0. User 2 is not covered.
    write(folder, "ratings_users_1-2999.dat",
          "1::10::5::100\n1::20::2::100\n1::30::4::300\n1::40::3::200\n1::50::1::400\n")
    write(folder, "movies.dat", "10::Café (1990)::Drama|Crime\n20::B (1991)::Comedy\n", encoding="latin-1")
    write(folder, "users.dat", "1::F::25::3::12345\n2::M::1::10::9-876\n")
    log = load_movielens(folder)
    assert raw_items(log, 1) == [10, 20, 40, 30, 50]
    u1 = log.user == log.user_index[1]
    assert log.label[u1].tolist() == [1, 0, 1, 1, 0]
    assert log.side["rating"][u1].tolist() == [5, 2, 3, 4, 1]
    assert log.time[u1].tolist() == [0, 1, 2, 3, 4]
    u2 = log.user == log.user_index[2]
    assert raw_items(log, 2) == [10, 60, 70] and (log.label[u2] == 1).all() and (log.side["rating"][u2] == 0).all()
    assert log.item_titles[log.item_index[10]] == "Café (1990)"
    assert log.item_titles[log.item_index[60]] == ""
    assert log.item_features["genre"][log.item_index[10]] == 8  # Drama
    assert log.skipped["items_without_metadata"] == 5  # 30, 40, 50, 60, 70
    assert log.user_features.tolist() == [[1, 2, 1, 1], [2, 1, 2, 2]]
    assert log.user_feature_cardinalities == [3, 3, 3, 3]
    # positives only: user 1's validation / test targets are its last two positives (40, 30)
    test = leave_one_out(log).eval_set("test")
    assert log.item_ids[test.targets].tolist() == [30, 70]
    assert log.item_ids[test.negatives(0)].tolist() == [20]
    assert load_movielens(folder, low_ratings_as_negatives=False).label.min() == 1


def test_movielens_errors_name_file_and_line(tmp_path):
    folder = tmp_path / "ml"
    write(folder, "sequences.txt", "1 10 20\n\n2 x 30\n")
    with pytest.raises(DataError, match=r"sequences\.txt, line 3: .*'x' is not an integer"):
        load_movielens(folder)
    write(folder, "sequences.txt", "u1 10 20\n")
    with pytest.raises(DataError, match=r"line 1: .*'u1'"):
        load_movielens(folder)
    write(folder, "sequences.txt", "1 10 2.5\n")
    with pytest.raises(DataError, match=r"line 1: .*'2.5'"):
        load_movielens(folder)
    write(folder, "sequences.txt", "1 10 99999999999999999999\n")
    with pytest.raises(DataError, match=r"line 1: .*does not fit in int64"):
        load_movielens(folder)
    write(folder, "sequences.txt", "1 10 20\n2 30\n1 40\n")
    with pytest.raises(DataError, match=r"line 3: user 1 already appeared on line 1"):
        load_movielens(folder)
    write(folder, "sequences.txt", "1 10 20\n")
    write(folder, "ratings_users_1-2999.dat", "1::10::5::1\n1::20::5\n")
    with pytest.raises(DataError, match=r"ratings_users_1-2999\.dat, line 2: expected 4 fields"):
        load_movielens(folder)
    write(folder, "ratings_users_1-2999.dat", "1::10::5::1\n1::99::5::2\n")
    with pytest.raises(DataError, match=r"line 2: user 1 movie 99 is not in sequences\.txt"):
        load_movielens(folder)
    write(folder, "ratings_users_1-2999.dat", "1::10::5::1\n")
    with pytest.raises(DataError, match=r"movie 20 has no rating"):
        load_movielens(folder)
    (folder / "ratings_users_1-2999.dat").unlink()
    write(folder, "movies.dat", "10::Title\n")
    with pytest.raises(DataError, match=r"movies\.dat, line 1"):
        load_movielens(folder)


def test_movielens_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="sequences.txt"):
        load_movielens(tmp_path / "absent")
    (tmp_path / "ml").mkdir()
    with pytest.raises(DataError, match="has no sequences.txt"):
        load_movielens(tmp_path / "ml")
    write(tmp_path / "ml", "sequences.txt", "\n\n")
    with pytest.raises(DataError, match="no sequences"):
        load_movielens(tmp_path / "ml")
    write(tmp_path / "ml", "sequences.txt", "1\n2\n")
    with pytest.raises(DataError, match="no items"):
        load_movielens(tmp_path / "ml")


# ---------------------------------------------------------------------- Amazon (P5)
def test_amazon_with_optional_files(tmp_path):
    folder = tmp_path / "amazon-toys"
    write(folder, "sequential.txt", "1 1 2 3\r\n2 3 4 1 2\r\n3\r\n4 4 2\r\n")  # CRLF line ends
    write(folder, "titles.tsv", "item_id\tasin\ttitle\n1\tA1\tFirst\n2\tA2\t\n3\tA3\tThird, with comma\n")
    write(folder, "datamaps.json", json.dumps({"id2user": {"1": "R1"}, "id2item": {"4": "A4", "1": "XX"}}))
    write(folder, "item2attributes.json", json.dumps({"1": [50, 7], "2": [7], "4": [9, 50, 7]}))
    log = load_amazon(folder)
    assert log.name == "amazon-toys"
    assert (log.n_users, log.n_items, log.n_rows) == (3, 4, 9)  # user 3 has no items
    assert log.skipped["users_without_items"] == 1
    assert raw_items(log, 2) == [3, 4, 1, 2]
    assert log.item_titles == ["First", "", "Third, with comma", ""]
    assert log.item_features["asin"].tolist() == ["A1", "A2", "A3", "A4"]  # titles.tsv wins over datamaps
    # attribute ids 7, 9, 50 -> dense 1, 2, 3; padded with 0
    assert log.item_features["attributes"].tolist() == [[3, 1, 0], [1, 0, 0], [0, 0, 0], [2, 3, 1]]
    split = leave_one_out(log)
    assert split.n_skipped_users == 1  # user 4 has two positives; user 3 (no items) is not a user at all


def test_amazon_errors(tmp_path):
    folder = tmp_path / "amazon"
    write(folder, "sequential.txt", "1 1 2\n2 B00X 3\n")
    with pytest.raises(DataError, match=r"sequential\.txt, line 2: .*'B00X'"):
        load_amazon(folder)
    write(folder, "sequential.txt", "1 1 2\n")
    write(folder, "item2attributes.json", "{\"1\": [1,\n")
    with pytest.raises(DataError, match=r"item2attributes\.json, line \d+: not valid JSON"):
        load_amazon(folder)
    (folder / "item2attributes.json").unlink()
    write(folder, "titles.tsv", "1\tA1\tOne\nxx\tA2\tTwo\n")
    with pytest.raises(DataError, match=r"titles\.tsv, line 2: item_id 'xx'"):
        load_amazon(folder)
    with pytest.raises(DataError, match="sequential.txt"):
        load_amazon(tmp_path)


# ---------------------------------------------------------------------- KuaiRand
KUAI_HEADER = "user_id\tvideo_id\ttime_ms\tis_click\tplay_time_ms\tduration_ms\ttimestamp\n"


def test_kuairand_labels_time_and_side(tmp_path):
    folder = tmp_path / "kr"
    write(folder, "log_standard.tsv", KUAI_HEADER
          + "5\t100\t3000\t1\t10\t20\t2022-04-10 08:59:09\n"
          + "5\t101\t1000\t0\t1\t20\t2022-04-10 08:59:09\n"
          + "7\t100\t2000\t1\t30\t40\t2022-04-10 08:59:09\n")
    log = load_kuairand(folder / "log_standard.tsv")
    assert log.user_ids.tolist() == [5, 7] and log.item_ids.tolist() == [100, 101]
    assert log.time.tolist() == [1000, 3000, 2000]
    assert log.label.tolist() == [0, 1, 1]
    assert log.side["play_time_ms"].tolist() == [1, 10, 30]


def test_kuairand_original_csv_logs_are_concatenated(tmp_path):
    folder = tmp_path / "KuaiRand-Pure"
    header = KUAI_HEADER.replace("\t", ",")
    write(folder, "log_standard_4_08_to_4_21_pure.csv", header + "5,100,3000,1,10,20,x\n")
    write(folder, "log_standard_4_22_to_5_08_pure.csv", header + "5,101,1000,0,1,20,x\n")
    write(folder, "log_random_4_22_to_5_08_pure.csv", header + "5,999,1,1,1,1,x\n")
    log = load_dataset(folder)
    assert log.name == "KuaiRand-Pure"
    assert log.item_ids[log.item].tolist() == [101, 100] and log.label.tolist() == [0, 1]


def test_kuairand_errors(tmp_path):
    folder = tmp_path / "kr"
    write(folder, "log_standard.tsv", KUAI_HEADER + "5\t100\t3000\t1\t10\t20\tx\n5\tv9\t1\t1\t1\t1\tx\n")
    with pytest.raises(DataError, match=r"log_standard\.tsv, line 3: video_id 'v9' is not an integer"):
        load_kuairand(folder)
    write(folder, "log_standard.tsv", KUAI_HEADER + "5\t100\t3000\t2\t10\t20\tx\n")
    with pytest.raises(DataError, match=r"line 2: is_click must be 0 or 1"):
        load_kuairand(folder)
    write(folder, "log_standard.tsv", KUAI_HEADER + "5\t100\t3000\t1\t10\n")
    with pytest.raises(DataError, match=r"line 2: expected 7 fields"):
        load_kuairand(folder)
    write(folder, "log_standard.tsv", "user_id\tvideo_id\tis_click\n1\t2\t1\n")
    with pytest.raises(DataError, match="missing column.*time_ms"):
        load_kuairand(folder)
    write(folder, "log_standard.tsv", KUAI_HEADER)
    with pytest.raises(DataError, match="no rows"):
        load_kuairand(folder)


# ---------------------------------------------------------------------- generic tables
def test_table_csv_with_string_ids_labels_and_side(tmp_path):
    path = write(tmp_path, "clicks.csv",
                 'user_id,item_id,ts,clicked,dwell,note\n'
                 'u2,"i,1",20,1,3.5,hello\n'
                 'u1,i2,10,0,1.0,x\n'
                 'u2,i2,5,1,2.0,y\n')
    log = load_table(path, time_col="ts", label_col="clicked")
    assert log.name == "clicks"
    assert log.user_ids.tolist() == ["u1", "u2"] and log.item_ids.tolist() == ["i,1", "i2"]
    assert log.label.tolist() == [0, 1, 1]
    assert log.time.tolist() == [10, 5, 20]
    assert set(log.side) == {"dwell"}  # text column "note" is not a feature
    assert log.side["dwell"].tolist() == [1.0, 2.0, 3.5]


def test_table_tsv_and_sniffed_separator(tmp_path):
    tsv = write(tmp_path, "log.tsv", "user\titem\n1\t7\n1\t8\n")
    log = load_table(tsv, user_col="user", item_col="item")
    assert log.item_ids.dtype == np.int64 and log.item.tolist() == [0, 1]  # file order without time_col
    txt = write(tmp_path, "log.txt", "user_id;item_id;t\n3;4;0.5\n3;5;0.25\n")
    log = load_table(txt, time_col="t")
    assert log.item_ids[log.item].tolist() == [5, 4]  # fractional times ordered by rank


def test_table_errors(tmp_path):
    path = write(tmp_path, "t.csv", "user_id,item_id\n1,2\n3\n")
    with pytest.raises(DataError, match=r"t\.csv, line 3: expected 2 fields"):
        load_table(path)
    path = write(tmp_path, "t.csv", "user_id,item_id,ts\n1,2,5\n1,3,soon\n")
    with pytest.raises(DataError, match=r"line 3: ts 'soon' is not a number"):
        load_table(path, time_col="ts")
    with pytest.raises(DataError, match=r"no column 'rating'"):
        load_table(path, label_col="rating")
    with pytest.raises(DataError, match="header but no interactions"):
        load_table(write(tmp_path, "h.csv", "user_id,item_id\n"))
    with pytest.raises(DataError, match="empty"):
        load_table(write(tmp_path, "e.csv", ""))
    with pytest.raises(DataError, match="not a file"):
        load_table(tmp_path / "missing.csv")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None or importlib.util.find_spec("pandas") is not None,
                    reason="pandas/pyarrow installed: Parquet can be read")
def test_parquet_without_pandas_says_what_to_install(tmp_path):
    path = write(tmp_path, "t.parquet", "PAR1")
    with pytest.raises(DataError, match="pandas and pyarrow"):
        load_table(path)


# ---------------------------------------------------------------------- load_dataset
def test_load_dataset_detection_and_data_dir(tmp_path, monkeypatch):
    write(tmp_path / "mine", "sequential.txt", "1 1 2 3\n")
    write(tmp_path / "kr", "log_standard.tsv", KUAI_HEADER + "5\t100\t3000\t1\t10\t20\tx\n")
    write(tmp_path / "tab", "only.csv", "user_id,item_id\n1,2\n")
    assert load_dataset(tmp_path / "mine").n_rows == 3
    assert load_dataset(tmp_path / "mine" / "sequential.txt").n_rows == 3
    assert load_dataset(tmp_path / "kr").n_rows == 1
    assert load_dataset(tmp_path / "tab").name == "only"
    monkeypatch.setenv("GENRET_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path / "tab")
    assert load_dataset("mine").n_rows == 3
    with pytest.raises(DataError, match="not found; tried"):
        load_dataset("nothing-here")
    (tmp_path / "odd").mkdir()
    write(tmp_path / "odd", "readme.md", "hi")
    with pytest.raises(DataError, match="sequences.txt.*sequential.txt.*log_standard.tsv"):
        load_dataset(tmp_path / "odd")
