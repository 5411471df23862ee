"""Lightning training end to end on small synthetic data: fit, checkpoint, resume, retrieve, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genret import pipeline
from genret.decoding.retriever import Retriever

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--data.data", "synthetic:300x400", "--data.max_history", "20", "--data.batch_size", "32",
    "--data.sid.codebook_size", "8", "--data.sid.n_iter", "5",
    "--model.config.d_model", "16", "--model.config.n_heads", "2", "--model.config.n_blocks", "1",
    "--model.config.d_ffn", "32", "--model.config.long_window", "20", "--model.config.short_window", "4",
    "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]


@pytest.fixture
def tiny_args(tmp_path):
    return TINY + ["--data.sid.cache_dir", str(tmp_path / "cache")]


def test_fit_checkpoint_retrieve_and_resume(tmp_path, tiny_args):
    out = tmp_path / "run"
    module, dm, trainer = pipeline.build(ROOT / "configs" / "quickstart.yaml", out, tiny_args)
    ckpt, seconds = pipeline.train(module, dm, trainer, out)
    assert ckpt.is_file() and seconds > 0
    assert (out / "logs" / "version_0" / "metrics.csv").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()

    r = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    assert len(r.item_ids) == dm.n_items
    histories = [[r.item_ids[0], r.item_ids[3]], []]
    res = r.retrieve(histories, k=15)
    assert [len(items) for items in res.items] == [15, 15]
    assert all(len(set(items)) == 15 for items in res.items)
    assert all(s[i] >= s[i + 1] for s in res.scores for i in range(14))
    with pytest.raises(ValueError, match="not in the catalogue"):
        r.retrieve([[10**9]], k=5)
    with pytest.warns(UserWarning, match="dropped 1 unknown"):
        assert len(r.retrieve([[10**9, r.item_ids[1]]], k=5, unknown="drop").items[0]) == 5

    # The batch CLI over the same checkpoint: JSON lines in, JSON lines out.
    from genret.cli import main

    lines = tmp_path / "histories.jsonl"
    lines.write_text(json.dumps([int(r.item_ids[0]), int(r.item_ids[3])]) + "\n"
                     + json.dumps({"user": "u7", "history": []}) + "\n")
    assert main(["decode", "--checkpoint", str(ckpt), "--histories", str(lines), "--k", "7",
                 "--kernel", "torch", "--out", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["user"] for row in rows] == [0, "u7"] and all(len(row["items"]) == 7 for row in rows)
    assert rows[0]["items"] == r.retrieve(histories[:1], k=7).items[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1, 2\n")
    with pytest.raises(SystemExit, match="bad.jsonl:1: not valid JSON"):
        main(["decode", "--checkpoint", str(ckpt), "--histories", str(bad)])

    # Resume from the last checkpoint for one more epoch.
    module2, dm2, trainer2 = pipeline.build(ROOT / "configs" / "quickstart.yaml", tmp_path / "resumed",
                                            tiny_args + ["--trainer.max_epochs", "2"])
    trainer2.fit(module2, datamodule=dm2, ckpt_path=str(out / "checkpoints" / "last.ckpt"))
    assert trainer2.current_epoch == 2


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Retriever.from_checkpoint(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        Retriever.from_checkpoint(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(RuntimeError, match="not a genret checkpoint"):
        Retriever.from_checkpoint(foreign)


def test_ddp_two_cpu_processes_gloo(tmp_path):
    """Lightning's DDP strategy over 2 CPU processes (gloo) through the real CLI."""
    cmd = [sys.executable, "-m", "genret.cli", "train", "--config", str(ROOT / "configs" / "quickstart.yaml"),
           *TINY, "--data.sid.cache_dir", str(tmp_path / "cache"),
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
           "--trainer.callbacks", "pytorch_lightning.callbacks.ModelCheckpoint",
           "--trainer.callbacks.dirpath", str(tmp_path / "ckpt"), "--trainer.callbacks.save_last", "true"]
    env = dict(os.environ, PL_TORCH_DISTRIBUTED_BACKEND="gloo", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in (proc.stdout + proc.stderr) or "MEMBER: 2/2" in (proc.stdout + proc.stderr)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def test_train_help_lists_config_keys(capsys):
    from genret.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--model.config.use_dbr" in out and "--data.sid.codebook_size" in out
