"""Evaluation shared across processes returns exactly what one process returns."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--data.max_history", "20", "--data.batch_size", "32", "--data.sid.codebook_size", "8",
        "--data.sid.n_iter", "5", "--model.config.d_model", "16", "--model.config.n_heads", "2",
        "--model.config.n_blocks", "1", "--model.config.d_ffn", "32", "--model.config.long_window", "20",
        "--model.config.short_window", "4", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]


def test_benchmark_on_two_gloo_processes_matches_one(tmp_path):
    common = ["benchmark", "--model", "dualgr", "--data", "synthetic:300x400", "--config",
              str(ROOT / "configs" / "quickstart.yaml"), "--ks", "10,50", "--kernel", "torch",
              "--eval_batch_size", "16", *TINY, "--data.sid.cache_dir", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "genret", *common, "--out", str(tmp_path / "one")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "genret", *common, "--out", str(tmp_path / "two"),
                          "--checkpoint", str(tmp_path / "one" / "model.ckpt")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    log = two.stdout + two.stderr
    # 300 users in batches of 16: 19 batches, 10 on rank 0 and 9 on rank 1, per split.
    assert "rank 0 of 2: scoring 10 of 19 batches" in log and "rank 1 of 2: scoring 9 of 19 batches" in log
    assert log.count("[genret] wrote") == 1  # rank 0 alone writes the results
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert a["val"] == b["val"] and a["test"] == b["test"]
