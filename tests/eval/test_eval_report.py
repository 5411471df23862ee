import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genret.eval import (
    format_ablation_table,
    format_metrics_table,
    published_reference,
    write_metrics,
    write_report,
)
from genret.eval.report import code_version

VAL = {"hr@10": 0.30, "ndcg@10": 0.17, "recall@10": 0.30, "hr@50": 0.55, "ndcg@50": 0.22, "n_users": 100}
TEST = {"hr@10": 0.29, "ndcg@10": 0.17, "recall@10": 0.29, "hr@50": 0.54, "ndcg@50": 0.21, "n_users": 100}
POPULARITY = {"hr@10": 0.05, "ndcg@10": 0.02, "hr@50": 0.15, "ndcg@50": 0.04, "n_users": 100}

FAKE_LIGHTNING_CSV = """epoch,step,train_loss_step,train_loss_epoch,val_loss,val/hr@10,val/ndcg@10,lr-AdamW
0,0,5.1,,,,,0.001
0,9,4.2,,,,,0.001
0,9,,4.6,,,,
0,9,,,4.0,0.10,0.05,
1,19,3.6,,,,,0.0009
1,19,,3.8,,,,
1,19,,,3.5,0.20,0.09,
"""


def test_write_metrics_schema_and_atomicity(tmp_path):
    path = tmp_path / "run" / "metrics.json"
    written = write_metrics(
        path,
        model="dualgr",
        dataset="ml-1m",
        metrics_val=VAL,
        metrics_test=TEST,
        train_seconds=12.5,
        device="cpu",
        extra={"baselines": {"popularity": POPULARITY}},
    )
    on_disk = json.loads(path.read_text())
    assert on_disk == written
    for key in ("model", "dataset", "commit", "device", "train_seconds", "val", "test", "genret_version", "packages",
                "created"):
        assert key in on_disk
    assert on_disk["test"]["hr@10"] == 0.29 and on_disk["val"]["n_users"] == 100
    assert on_disk["baselines"]["popularity"]["hr@50"] == 0.15
    assert on_disk["commit"] == code_version()
    import torch

    assert on_disk["packages"]["torch"] == torch.__version__ and on_disk["packages"]["python"].count(".") == 2
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp files left
    with pytest.raises(ValueError, match="standard"):
        write_metrics(path, model="m", dataset="d", metrics_val={}, metrics_test={}, train_seconds=0,
                      device="cpu", extra={"test": {}})
    assert json.loads(path.read_text()) == written  # a failed write leaves the old file intact


def test_published_reference_loose_names():
    assert published_reference("ml-1m")["models"]["SASRec"] == {"hr@10": 0.2853, "ndcg@10": 0.1603}
    assert published_reference("MovieLens-1M")["models"]["HSTU-large"]["ndcg@10"] == 0.1893
    assert published_reference("movielens")["dataset"] == "ml-1m"
    assert published_reference("/data/ml-1m/")["dataset"] == "ml-1m"
    beauty = published_reference("Amazon-Beauty")
    assert beauty["models"]["TIGER"] == {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384}
    assert published_reference("beauty")["models"]["SASRec (tuned)"]["recall@10"] == 0.074
    assert published_reference("movielens-20m") is None
    assert published_reference("kuairand-subset") is None
    beauty["models"].clear()  # a copy: the constants stay intact
    assert published_reference("beauty")["models"]


def test_tables():
    table = format_metrics_table({"dualgr": {"test": TEST}, "popularity": POPULARITY})
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "model"
    assert "HR@10" in lines[0] and "NDCG@50" in lines[0] and "HR@100" not in lines[0]
    assert "0.2900" in lines[2] and "0.0500" in lines[3]
    truncated = format_metrics_table({"gen": {"hr@10": 0.1, "ndcg@10": 0.05, "truncated@10": True}}, ks=(10,))
    assert "0.1000*" in truncated and "shorter than K" in truncated

    rows = {
        "w/o DBR": {"hr@100": 0.05134, "hr@500": 0.08892, "ndcg@10": 0.01},
        "DualGR": {"hr@100": 0.06827, "hr@500": 0.10319, "hr@1000": 0.19529, "hr@5": 0.001},
    }
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in format_ablation_table(rows).splitlines()]
    assert cells[0] == ["Method", "HR@100", "HR@500", "HR@1000", "NDCG@10"]
    assert cells[2] == ["w/o DBR", "5.134%", "8.892%", "-", "1.000%"]
    assert cells[3] == ["DualGR", "6.827%", "10.319%", "19.529%", "-"]

    # With per-user test ranks: each method's HR@100 minus the reference's on the same users.
    ranks = {"w/o DBR": np.array([5, 150, -1, 99]), "DualGR": np.array([5, 50, 7, 300])}
    cells = [[c.strip() for c in line.strip("|").split("|")]
             for line in format_ablation_table(rows, ranks=ranks, reference="DualGR").splitlines()]
    assert cells[0][-1] == "HR@100 - DualGR (95% CI)"
    half = 100 * 1.96 * np.std([0, -1, -1, 1], ddof=1) / 2
    assert cells[2][-1] == f"-25.00 ± {half:.2f} pts"
    assert cells[3][-1] == "-"


def test_write_report_with_plots(tmp_path):
    csv_path = tmp_path / "lightning" / "metrics.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(FAKE_LIGHTNING_CSV)
    metrics = write_metrics(tmp_path / "metrics.json", model="dualgr", dataset="ml-1m", metrics_val=VAL,
                            metrics_test=TEST, train_seconds=3.0, device="cpu",
                            extra={"baselines": {"popularity": POPULARITY}})
    out = tmp_path / "report"
    report = write_report(out, metrics, train_log_csv=csv_path)
    assert report == out / "report.md"
    assert sorted(p.name for p in out.iterdir()) == ["metrics_vs_k.png", "report.md", "training_curves.png"]
    for png in ("metrics_vs_k.png", "training_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.read_text()
    assert "![HR@K and NDCG@K](metrics_vs_k.png)" in text and "(training_curves.png)" in text
    assert "popularity" in text and "0.2900" in text
    # Published numbers beside ours: 0.29 beats SASRec's 0.2853 but not HSTU's 0.3097.
    sasrec = next(line for line in text.splitlines() if line.startswith("| SASRec") and "hr@10" in line)
    hstu = next(line for line in text.splitlines() if line.startswith("| HSTU ") and "hr@10" in line)
    assert sasrec.rstrip(" |").endswith("met") and "not met" not in sasrec
    assert "not met" in hstu
    assert "meets 2 of 6" in text  # hr@10 and ndcg@10 (0.17 >= 0.1603) versus SASRec only


def test_write_report_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    report = write_report(tmp_path, {"model": "pop", "dataset": "kuairand", "test": POPULARITY}, reference={})
    text = report.read_text()
    assert "matplotlib is not installed" in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_malformed_training_log_names_file_and_line(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,step,train_loss\n0,0,1.5\n0,1,oops\n")
    with pytest.raises(ValueError, match=r"metrics.csv:3"):
        write_report(tmp_path / "r", {"model": "m", "test": TEST}, train_log_csv=csv_path)


def test_missing_training_log_is_noted_not_fatal(tmp_path):
    report = write_report(tmp_path, {"model": "m", "dataset": "beauty", "test": TEST},
                          train_log_csv=tmp_path / "logs" / "version_0" / "metrics.csv")
    text = report.read_text()
    assert "does not exist" in text
    assert "TIGER" in text and "recall@5" in text and "n/a" in text  # TEST has no @5 metrics
    assert (tmp_path / "metrics_vs_k.png").is_file() and not (tmp_path / "training_curves.png").exists()


def test_code_version_is_the_checkout_head_marked_dirty_when_tracked_files_differ():
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    except OSError:  # no git on this machine
        head = None
    if head is None or head.returncode != 0:
        assert code_version() == "unknown"
        return
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True).stdout.strip()
    assert code_version() == head.stdout.strip() + ("-dirty" if dirty else "")


def test_training_plot_keeps_series_of_different_scales_apart(tmp_path):
    """HR@K / NDCG@K (fractions) drawn beside NLLs (nats), or NLLs beside a count, would be a flat line."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from genret.eval.report import _plot_training

    series = {"train/loss": [(0, 0.0, 5.0)], "val/loss": [(9, 0.0, 4.0)], "val/nll_s1": [(9, 0.0, 3.0)],
              "val/hr@10": [(9, 0.0, 0.1)], "val/ndcg@10": [(9, 0.0, 0.05)], "train/targets": [(0, 0.0, 900.0)],
              "train/nll_s1": [(0, 0.0, 3.5)], "train/nll_s2": [(0, 0.0, 2.5)], "train/short_fraction": [(0, 0.0, 0.4)]}
    panels = _plot_training(Figure, series, tmp_path / "curves.png")
    # A count of targets and a fraction get a panel each rather than squashing the NLLs.
    assert panels == ["loss", "validation metrics", "validation retrieval", "training NLL by level",
                      "train/targets", "train/short_fraction"]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # Without retrieval metrics the panel is left out.
    del series["val/hr@10"], series["val/ndcg@10"]
    assert "validation retrieval" not in _plot_training(Figure, series, tmp_path / "curves2.png")


def test_looc_report_shows_cold_and_warm_users_and_compares_no_published_numbers(tmp_path):
    """Under leave-one-out-cold the test users are the warm ones: the report says so, gives the cold /
    warm table with the content baseline and the paired difference, and does not hold a warm-only
    test against published leave-one-out numbers."""
    def block(r20, n):
        return {"recall@10": r20 / 2, "recall@20": r20, "recall@100": 3 * r20, "ndcg@20": r20 / 3,
                "hr@10": r20 / 2, "hr@20": r20, "ndcg@10": r20 / 4, "n_users": n}
    metrics = {"model": "retrievalformer", "dataset": "amazon-beauty", "test": block(0.12, 900),
               "warm": block(0.12, 900), "cold": block(0.078, 300), "looc": {"cold_items": 40},
               "baselines": {"content": {"cold": block(0.069, 300), "warm": block(0.085, 900)}},
               "vs_content": {"cold": {"hr@20": {"diff": 0.0095, "ci95": [0.0028, 0.0162], "n_users": 300},
                                       "hr@50": {"diff": 0.01, "ci95": [0.0, 0.02], "n_users": 300}}}}
    text = write_report(tmp_path, metrics).read_text()
    assert "## Test metrics (warm users)" in text and "## Cold start (leave-one-out-cold)" in text
    cold = text.split("## Cold start (leave-one-out-cold)")[1].split("## ")[0].splitlines()
    row = next(line for line in cold if line.startswith("| retrievalformer | "))
    assert row.split(" | ")[1:3] == ["0.0390", "0.0780"]  # cold Recall@10, @20
    content = next(line for line in cold if line.startswith("| content | "))
    assert content.split(" | ")[1:3] == ["0.0345", "0.0690"]
    assert "cold users, model minus content baseline (points, paired, 95%): HR@20 +0.95 [+0.28, +1.62]." in text
    assert "Not compared: published numbers are leave-one-out over all users" in text and "| met" not in text
    # The content baseline's warm users make its row of the (warm) test table.
    assert "| content" in text.split("## Cold start")[0] and "0.0850" in text.split("## Cold start")[0]
    # A leave-one-out report is as before: the published numbers are compared.
    plain = {k: v for k, v in metrics.items() if k not in ("looc", "cold", "warm", "vs_content", "baselines")}
    assert "## Cold start" not in write_report(tmp_path / "loo", plain).read_text()
