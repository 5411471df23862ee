"""Lightning training end to end on small synthetic data: fit, checkpoint selection, resume, retrieve, DDP."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from genret.eval.ranked_lists import evaluate_retriever
from genret.training.run import build, fit
from genret.decoding.retriever import Retriever
from genret.eval.retrieval_validation import RetrievalValidation

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
    module, dm, trainer = build("dualgr", ROOT / "configs" / "quickstart.yaml", out, tiny_args)
    ckpt, seconds = fit(module, dm, trainer, out)
    assert ckpt.is_file() and seconds > 0
    assert (out / "logs" / "version_0" / "metrics.csv").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    # model.ckpt holds the best-validation-loss weights.
    best = trainer.checkpoint_callback.best_model_path
    assert best and Path(best).name != "last.ckpt"
    best_state = torch.load(best, weights_only=False)["state_dict"]
    saved_state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert all(torch.equal(best_state[k], saved_state[k]) for k in best_state)

    r = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    assert len(r.item_ids) == dm.n_items
    # Training recorded how often DBR's gate chose the short branch; the merge weighs the branches by it.
    weighted, total = saved_state["model.routing_stats"].tolist()
    assert total > 0 and r.short_weight == pytest.approx(weighted / total)
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
    assert main(["decode", "--checkpoint", str(ckpt), "--histories", str(lines), "--k", "7", "--kernel", "torch",
                 "--short-weight", "0.9", "--out", str(tmp_path / "short.jsonl")]) == 0
    short = json.loads((tmp_path / "short.jsonl").read_text().splitlines()[0])
    weighted = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch", short_weight=0.9)
    expect = weighted.retrieve(histories[:1], k=7)
    assert short["items"] == expect.items[0]
    with pytest.raises(SystemExit):
        main(["decode", "--checkpoint", str(ckpt), "--histories", str(lines), "--short-weight", "1.5"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1, 2\n")
    with pytest.raises(SystemExit, match="bad.jsonl:1: not valid JSON"):
        main(["decode", "--checkpoint", str(ckpt), "--histories", str(bad)])

    # Resume from the last checkpoint for one more epoch.
    module2, dm2, trainer2 = build("dualgr", ROOT / "configs" / "quickstart.yaml", tmp_path / "resumed",
                                            tiny_args + ["--trainer.max_epochs", "2"])
    trainer2.fit(module2, datamodule=dm2, ckpt_path=str(out / "checkpoints" / "last.ckpt"))
    assert trainer2.current_epoch == 2


# ---------------------------------------------------------------- checkpoint selection by decoded HR@K
WITH_RETRIEVAL = ["--trainer.callbacks+", "genret.eval.retrieval_validation.RetrievalValidation",
                  "--trainer.callbacks.users", "80", "--trainer.callbacks.kernel", "torch"]


def logged(out: Path, name: str) -> list[float]:
    import csv

    with open(out / "logs" / "version_0" / "metrics.csv") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def test_selection_by_validation_hr_matches_an_independent_evaluation(tmp_path):
    out = tmp_path / "run"
    args = TINY + ["--data.sid.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "3", *WITH_RETRIEVAL]
    module, dm, trainer = build("dualgr", ROOT / "configs" / "quickstart.yaml", out, args)
    selector = next(cb for cb in trainer.callbacks if isinstance(cb, RetrievalValidation))
    best_cb = trainer.checkpoint_callback
    assert (best_cb.monitor, best_cb.mode) == ("val/hr@10", "max")
    ckpt, _ = fit(module, dm, trainer, out)

    hrs = logged(out, "val/hr@10")
    assert len(hrs) == 3 and len(logged(out, "val/ndcg@10")) == 3
    assert float(best_cb.best_model_score) == pytest.approx(max(hrs))
    best_epoch = torch.load(best_cb.best_model_path, weights_only=False)["epoch"]
    assert hrs[best_epoch] == max(hrs)

    # The same users, decoded again from model.ckpt through the evaluation path, give the logged value.
    sample, user_feats, history_side = selector._sample
    assert len(sample) == 80 and len(set(sample.users.tolist())) == 80
    r = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    again = evaluate_retriever(r, sample, ks=(10,), user_feats=user_feats, history_side=history_side)
    assert again["hr@10"] == pytest.approx(max(hrs), abs=1e-6)

    # last.ckpt is the final epoch whatever the best one was.
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == trainer.global_step


def test_ema_weights_are_the_ones_validated_selected_and_saved(tmp_path):
    from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint

    out = tmp_path / "run"
    # EMA listed before RetrievalValidation: the run must still order it after.
    ema = ["--trainer.callbacks+", "pytorch_lightning.callbacks.EMAWeightAveraging",
           "--trainer.callbacks.decay", "0.9"]
    args = TINY + ["--data.sid.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "3",
                   *ema, *WITH_RETRIEVAL]
    module, dm, trainer = build("dualgr", ROOT / "configs" / "quickstart.yaml", out, args)
    kinds = [type(cb) for cb in trainer.callbacks]
    assert kinds.index(RetrievalValidation) < kinds.index(EMAWeightAveraging) < kinds.index(ModelCheckpoint)
    selector = next(cb for cb in trainer.callbacks if isinstance(cb, RetrievalValidation))
    ckpt, _ = fit(module, dm, trainer, out)

    best = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    averaged, raw = best["state_dict"], best["current_model_state"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)
    saved = torch.load(ckpt, weights_only=False)
    assert "current_model_state" not in saved
    assert all(torch.equal(averaged[k], saved["state_dict"][k]) for k in averaged)
    # The logged HR@10 of the kept epoch is the averaged weights' own, decoded again from model.ckpt.
    sample, user_feats, history_side = selector._sample
    r = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    again = evaluate_retriever(r, sample, ks=(10,), user_feats=user_feats, history_side=history_side)
    assert again["hr@10"] == pytest.approx(float(trainer.checkpoint_callback.best_model_score), abs=1e-6)


def test_without_the_callback_the_lowest_validation_loss_is_kept(tmp_path):
    out = tmp_path / "run"
    args = TINY + ["--data.sid.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "2"]
    module, dm, trainer = build("dualgr", ROOT / "configs" / "quickstart.yaml", out, args)
    assert (trainer.checkpoint_callback.monitor, trainer.checkpoint_callback.mode) == ("val/loss", "min")
    # The run's best + last pair (a config's own ModelCheckpoint would be replaced: see the DDP test).
    assert len(trainer.checkpoint_callbacks) == 2
    fit(module, dm, trainer, out)
    assert float(trainer.checkpoint_callback.best_model_score) == pytest.approx(min(logged(out, "val/loss")))
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1


def test_two_selectors_and_bad_arguments_are_refused(tmp_path):
    args = TINY + ["--data.sid.cache_dir", str(tmp_path / "cache"), *WITH_RETRIEVAL, *WITH_RETRIEVAL]
    with pytest.raises(ValueError, match="one callback that selects the epoch, found 2"):
        build("dualgr", ROOT / "configs" / "quickstart.yaml", tmp_path / "run", args)
    with pytest.raises(ValueError, match="k must be >= 1"):
        RetrievalValidation(k=0)
    with pytest.raises(ValueError, match="users must be >= 1 or None"):
        RetrievalValidation(users=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        RetrievalValidation(batch_size=0)
    with pytest.raises(ValueError, match="branch_merge must be 'sum' or 'max'"):
        RetrievalValidation(branch_merge="mean")


def test_length_chunks_must_be_positive():
    from genret.training.dualgr_module import DualGRModule

    with pytest.raises(ValueError, match="length_chunks must be >= 1"):
        DualGRModule(length_chunks=0)


def test_side_features_train_travel_in_the_checkpoint_and_feed_decoding(tmp_path, tiny_args):
    out = tmp_path / "side"
    args = tiny_args + ["--data.side_features", "[watch_frac, time_gap]", "--data.side_buckets", "6"]
    module, dm, trainer = build("dualgr", ROOT / "configs" / "quickstart.yaml", out, args)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.side.shape[-1] == 2 and batch.side.max() <= 6
    assert ((batch.side[..., 0] > 0) == (batch.items >= 0)).all()  # every positive has a watch fraction
    ckpt, _ = fit(module, dm, trainer, out)
    assert module.model.cfg.n_side_features == 2 and module.model.cfg.side_buckets == 6

    r = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    assert r.side_features == ["watch_frac", "time_gap"]
    history = [r.item_ids[0], r.item_ids[3], r.item_ids[5]]
    watched = r.retrieve([history], k=10, side={"watch_frac": [[0.9, 0.95, 1.0]], "time_gap": [[None, 1, 1]]})
    skipped = r.retrieve([history], k=10, side={"watch_frac": [[0.0, 0.01, 0.02]], "time_gap": [[None, 1, 1]]})
    assert watched.scores != skipped.scores  # the raw values reach the model through the buckets
    with pytest.warns(UserWarning, match="trained with side features"):
        r.retrieve([history], k=5)
    with pytest.raises(ValueError, match=r"missing \['time_gap'\]"):
        r.retrieve([history], k=5, side={"watch_frac": [[1, 1, 1]]})
    with pytest.raises(ValueError, match="has 2 values but history 0 has 3 items"):
        r.retrieve([history], k=5, side={"watch_frac": [[1, 1]], "time_gap": [[None, 1, 1]]})
    # Dropping an unknown item drops its side values with it.
    dropped = r.retrieve([history + [10**9]], k=10, unknown="drop",
                         side={"watch_frac": [[0.9, 0.95, 1.0, 0.5]], "time_gap": [[None, 1, 1, 1]]})
    assert dropped.items == watched.items

    # Evaluation passes each history action's buckets.
    es = dm.split.eval_set("test")
    with_side = evaluate_retriever(r, es, ks=(10,), max_users=40, history_side=dm.history_side(es))
    assert dm.history_side(es).shape == (len(es.history_items), 2)
    assert 0.0 <= with_side["hr@10"] <= 1.0

    # The batch CLI reads "side" per line; a name the model does not know is a clear error.
    from genret.cli import main

    lines = tmp_path / "side.jsonl"
    lines.write_text(json.dumps({"user": 1, "history": [int(i) for i in history],
                                 "side": {"watch_frac": [0.9, 0.95, 1.0], "time_gap": [None, 1, 1]}}) + "\n")
    assert main(["decode", "--checkpoint", str(ckpt), "--histories", str(lines), "--k", "10",
                 "--kernel", "torch", "--out", str(tmp_path / "side_out.jsonl")]) == 0
    row = json.loads((tmp_path / "side_out.jsonl").read_text())
    assert row["items"] == watched.items[0]
    lines.write_text(json.dumps({"history": [int(history[0])], "side": {"rating": [5]}}) + "\n")
    with pytest.raises(SystemExit, match=r"\['rating'\] are not ones this model was trained with"):
        main(["decode", "--checkpoint", str(ckpt), "--histories", str(lines), "--kernel", "torch"])


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
    """Lightning's DDP strategy over 2 CPU processes (gloo) through the real CLI (Lightning shards the
    length-ordered validation sampler; the loss runs in length chunks). Rank 0 alone writes
    model.ckpt; the config's own ModelCheckpoint is replaced by the run's best + last pair."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "genret.cli", "train", "--config", str(ROOT / "configs" / "quickstart.yaml"),
           *TINY, "--data.sid.cache_dir", str(tmp_path / "cache"), "--model.length_chunks", "3",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.default_root_dir", str(out), "--trainer.logger", "false",
           "--trainer.callbacks", "pytorch_lightning.callbacks.ModelCheckpoint",
           "--trainer.callbacks.dirpath", str(tmp_path / "ckpt"), "--trainer.callbacks.save_last", "true",
           "--trainer.callbacks+", "genret.eval.retrieval_validation.RetrievalValidation",
           "--trainer.callbacks.batch_size", "64", "--trainer.callbacks.kernel", "torch"]
    env = dict(os.environ, PL_TORCH_DISTRIBUTED_BACKEND="gloo", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "world_size: 2" in log or "MEMBER: 2/2" in log
    # The decoded validation is shared: 300 users in 5 batches of 64, 3 on rank 0 and 2 on rank 1.
    assert "rank 0 of 2: scoring 3 of 5 batches" in log and "rank 1 of 2: scoring 2 of 5 batches" in log
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "ckpt").exists()
    assert f"kept weights in {out / 'model.ckpt'}" in proc.stdout
    assert not list(out.glob(".model.ckpt*"))  # no temporary file left behind
    assert Retriever.from_checkpoint(out / "model.ckpt", device="cpu").item_ids.size == 400


def test_train_help_lists_config_keys(capsys):
    from genret.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--model.config.use_dbr" in out and "--data.sid.codebook_size" in out


def test_benchmark_ablations_print_table_2_and_skip_entp_without_negatives(tmp_path, tiny_args, capsys):
    from genret.cli import main

    out = tmp_path / "ablate"
    assert main(["benchmark", "--model", "dualgr", "--data", "synthetic:300x400", "--config",
                 str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), "--ablations", "--ks", "10,100",
                 "--max-eval-users", "50", "--kernel", "torch", *tiny_args, "--data.max_negatives", "0"]) == 0
    printed = capsys.readouterr().out
    assert "ENTP reduces to NTP" in printed
    table = printed[printed.index("| Method"):]
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:7]] == [
        "dualgr", "w/o DBR", "w/o S2D", "w/o ENTP", "tiger"]
    # The paired column: each variant against dualgr on the same users; the reused run differs by nothing.
    assert "HR@100 - dualgr (95% CI)" in table.splitlines()[0]
    assert table.splitlines()[5].split("|")[-2].strip() == "+0.00 ± 0.00 pts"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baselines"]["w/o ENTP"]["test"] == metrics["test"]
    assert metrics["baselines"]["tiger"]["test"] != metrics["test"]
    # Every row, popularity included, is measured on the same first 50 users.
    assert metrics["test"]["n_users"] == metrics["baselines"]["popularity"]["test"]["n_users"] == 50
    # Each trained variant has its own checkpoint; the skipped one has none.
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and (p / "model.ckpt").is_file()) == [
        "tiger", "wo_DBR", "wo_S2D"]

    # --checkpoint re-evaluates a trained model under the same split and protocol, without training.
    again = tmp_path / "again"
    common = ["--data", "synthetic:300x400", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--ks", "10,100",
              "--max-eval-users", "50", "--kernel", "torch", *tiny_args, "--data.max_negatives", "0"]
    assert main(["benchmark", "--model", "tiger", "--out", str(again), "--checkpoint",
                 str(out / "tiger" / "model.ckpt"), *common]) == 0
    rescored = json.loads((again / "metrics.json").read_text())
    assert rescored["test"] == metrics["baselines"]["tiger"]["test"] and rescored["train_seconds"] == 0
    assert rescored["evaluated_checkpoint"] == str(out / "tiger" / "model.ckpt")
    assert not (again / "checkpoints").exists()
    for bad in (["--model", "dualgr", "--ablations", "--checkpoint", str(out / "model.ckpt")],
                ["--model", "sasrec", "--checkpoint", str(out / "model.ckpt")],
                ["--model", "dualgr", "--checkpoint", str(tmp_path / "missing.ckpt")]):
        with pytest.raises(SystemExit):
            main(["benchmark", "--out", str(tmp_path / "bad"), *bad, *common])
    other = [a if a != "synthetic:300x400" else "synthetic:300x500" for a in common]
    with pytest.raises(ValueError, match="trained on another catalogue"):
        main(["benchmark", "--model", "dualgr", "--out", str(tmp_path / "other"), "--checkpoint",
              str(out / "model.ckpt"), *other])


@pytest.mark.parametrize("name", ["quickstart", "dualgr_ml1m", "dualgr_encoder_ml1m", "dualgr_amazon", "dualgr_kuairand",
                                  "dualgr_paper", "dualgr_ml1m_ablation", "dualgr_amazon_ablation", "dualgr_ml1m_looc",
                                  "dualgr_amazon_looc", "dualgr_content_amazon", "dualgr_content_amazon_looc"])
def test_shipped_configs_parse(tmp_path, name):
    """Every shipped DualGR YAML is valid for the CLI (keys, types); data is not loaded here."""
    module, dm, trainer = build("dualgr", ROOT / "configs" / f"{name}.yaml", tmp_path)
    assert module.config.d_model % module.config.n_heads == 0
    assert dm.max_history >= module.config.long_window
    assert trainer.max_epochs >= 1
    # The Amazon recipe keeps its epoch by decoded validation HR@10, the others by validation loss.
    amazon = name.replace("_content", "").startswith("dualgr_amazon")
    assert trainer.checkpoint_callback.monitor == ("val/hr@10" if amazon else "val/loss")
    # The two real-data recipes (and the Amazon reduced protocol) validate, keep and save an
    # exponential average of the weights.
    averaged = any(type(cb).__name__ == "EMAWeightAveraging" for cb in trainer.callbacks)
    assert averaged == (name.replace("_content", "") in ("dualgr_ml1m", "dualgr_encoder_ml1m", "dualgr_amazon",
                                                         "dualgr_amazon_ablation", "dualgr_ml1m_looc",
                                                         "dualgr_amazon_looc"))
    # The recipes named for the paper's model are its encoder-free decoder; additions carry their own name.
    if name in ("dualgr_ml1m", "dualgr_amazon", "dualgr_kuairand", "dualgr_paper"):
        assert module.config.encoder_blocks == 0


@pytest.mark.parametrize("base", ["dualgr_amazon", "dualgr_amazon_looc"])
def test_content_recipes_are_their_base_ranked_with_the_content_term(base):
    """An addition lives in its own recipe and changes only what it adds: the same training."""
    plain = yaml.safe_load((ROOT / "configs" / f"{base}.yaml").read_text())
    named = yaml.safe_load((ROOT / "configs" / f"{base.replace('dualgr_', 'dualgr_content_')}.yaml").read_text())
    assert named["model"]["config"].pop("content_weight") > 0 and "content_weight" not in plain["model"]["config"]
    for config in (plain, named):
        config["trainer"].pop("default_root_dir")
    assert named == plain


@pytest.mark.slow
def test_benchmark_builds_sids_from_a_trained_sasrec(tmp_path, tiny_args):
    from genret.cli import main

    config = yaml.safe_load((ROOT / "configs" / "sasrec_ml1m.yaml").read_text())
    config["data"].pop("load_kwargs")  # ML-1M loader options; the synthetic generator takes none
    sasrec = tmp_path / "sasrec.yaml"
    sasrec.write_text(yaml.safe_dump(config))
    out = tmp_path / "bench"
    argv = ["benchmark", "--model", "dualgr", "--data", "synthetic:300x400", "--config",
            str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), "--ks", "10", "--max-eval-users", "30",
            "--kernel", "torch", "--sid-embeddings-from", str(sasrec), "--sid-embeddings-epochs", "1", *tiny_args]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    stage = metrics["sid_embeddings"]
    assert stage["checkpoint"] == str(out / "sid_embeddings" / "model.ckpt") and stage["train_seconds"] > 0
    assert stage["max_epochs_override"] == 1 and "hr@10" in stage["test"]
    # The tokenizer read the SASRec checkpoint's item vectors, not the config's own source.
    assert "checkpoint" in json.dumps(metrics["sid_report"])
    assert metrics["total_seconds"] > metrics["train_seconds"] + stage["train_seconds"]
    assert metrics["training"]["stopped_by"] in ("max_epochs", "patience") and metrics["training"]["epochs"] >= 1

    # Refused before any training: a clash with the YAML key, a model without SIDs, a missing file.
    for bad in ([*argv, "--data.sid.embeddings", "collaborative"],
                [*argv[:2], "sasrec", *argv[3:]],
                [a if a != str(sasrec) else str(tmp_path / "missing.yaml") for a in argv]):
        with pytest.raises(SystemExit):
            main(bad)


def test_benchmark_ablations_over_seeds_write_means_sds_and_paired_intervals(tmp_path, tiny_args, capsys):
    from genret.cli import main

    out = tmp_path / "seeds"
    assert main(["benchmark", "--model", "dualgr", "--data", "synthetic:300x400", "--config",
                 str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), "--ablations", "--seeds", "2",
                 "--ks", "10,100", "--max_eval_users", "40", "--kernel", "torch", *tiny_args,
                 "--data.max_negatives", "0"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics["ablations"]
    assert metrics["seeds"] == summary["seeds"] == [0, 1]  # quickstart.yaml's seed_everything is 0
    assert list(summary["variants"]) == ["dualgr", "w/o DBR", "w/o S2D", "w/o ENTP", "tiger"]
    dualgr = summary["variants"]["dualgr"]
    per_seed = [dualgr["per_seed"][s]["test"]["hr@100"] for s in ("0", "1")]
    assert per_seed[0] != per_seed[1]  # the seeds trained different models on the same users
    assert dualgr["test"]["mean"]["hr@100"] == pytest.approx(sum(per_seed) / 2)
    assert metrics["test"]["hr@100"] == pytest.approx(dualgr["test"]["mean"]["hr@100"])
    tiger = summary["variants"]["tiger"]["paired_test"]["hr@100"]
    assert tiger["n_seeds"] == 2 and tiger["n_users"] == 40 and tiger["ci95"][0] <= tiger["diff"] <= tiger["ci95"][1]
    assert summary["variants"]["w/o ENTP"]["paired_test"]["hr@100"]["diff"] == 0
    for seed in (0, 1):
        assert (out / f"seed_{seed}" / "model.ckpt").is_file() and (out / f"seed_{seed}" / "tiger" / "model.ckpt").is_file()
    assert "mean ± sd over seeds [0, 1]" in printed
    report = (out / "report.md").read_text()
    assert "## Table 2 over seeds" in report and "unique-path fraction" in report

    with pytest.raises(SystemExit):  # a fixed seed would overrule every --seeds seed
        main(["benchmark", "--data", "synthetic:300x400", "--config", str(ROOT / "configs" / "quickstart.yaml"),
              "--out", str(tmp_path / "bad"), "--seeds", "2", "--seed_everything", "3", *tiny_args])


def test_seed_arguments_pass_a_named_seed_and_keep_the_runs_own_seed_implicit():
    from genret.commands.benchmark import seed_arguments, seed_list

    config = ROOT / "configs" / "quickstart.yaml"  # seed_everything: 0
    assert seed_list("1", config, []) == [0] and seed_arguments([0], config, []) == {0: None}
    # "5," names seed 5 alone: the run must be told (before, one listed seed trained the config's 0).
    assert seed_list("5,", config, []) == [5] and seed_arguments([5], config, []) == {5: 5}
    assert seed_arguments([0, 1], config, []) == {0: 0, 1: 1}
    assert seed_list("1", config, ["--seed_everything", "3"]) == [3]
    assert seed_arguments([3], config, ["--seed_everything", "3"]) == {3: None}  # the override sets it already


def test_benchmark_sweep_reports_validation_only(tmp_path, tiny_args, capsys):
    from genret.cli import main

    out = tmp_path / "sweep"
    assert main(["benchmark", "--model", "dualgr", "--data", "synthetic:300x400", "--config",
                 str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out),
                 "--sweep", "model.config.short_window=2,8", "--ks", "10,100", "--max_eval_users", "40",
                 "--kernel", "torch", *tiny_args, "--data.max_negatives", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    sweep = metrics["sweep"]
    assert sweep["key"] == "model.config.short_window" and list(sweep["results"]) == ["2", "8"]
    assert "test" not in metrics and metrics["stages"] == ["valid"]
    assert sweep["results"]["8"]["paired_val"]["hr@100"]["n_users"] == 40
    for value in ("2", "8"):
        ckpt = torch.load(out / f"short_window_{value}" / "model.ckpt", map_location="cpu", weights_only=False)
        assert ckpt["hyper_parameters"]["config"]["short_window"] == int(value)
    assert "validation only" in (out / "report.md").read_text()
    for bad in (["--sweep", "short_window=2,8"], ["--sweep", "model.config.short_window=2,2"],
                ["--sweep", "model.config.short_window=2,8", "--ablations"],
                ["--sweep", "model.config.short_window=2,8", "--model", "sasrec"],
                ["--seeds", "2", "--model", "popularity"], ["--seeds", "0,0"], ["--seeds", "0"]):
        with pytest.raises(SystemExit):
            main(["benchmark", "--data", "synthetic:300x400", "--config", str(ROOT / "configs" / "quickstart.yaml"),
                  "--out", str(tmp_path / "bad"), *bad, *tiny_args])


def test_benchmark_resume_reuses_finished_runs_and_trains_only_the_new_ones(tmp_path, tiny_args):
    from genret.cli import main

    out = tmp_path / "resume"
    argv = ["benchmark", "--model", "dualgr", "--data", "synthetic:300x400", "--config",
            str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), "--ks", "10,100", "--max_eval_users", "40",
            "--kernel", "torch", "--resume", *tiny_args]
    assert main([*argv, "--seeds", "0,1"]) == 0
    first = json.loads((out / "metrics.json").read_text())["seed_summary"]["variants"]["dualgr"]["per_seed"]
    # The synthetic log has exposure negatives: the users who have some get their own block.
    group = json.loads((out / "metrics.json").read_text())["seed_summary"]["variants"]["dualgr"]["groups"]
    assert 0 < group["users with negatives"]["test"]["n_users"] <= 40
    assert "users with negatives" in (out / "report.md").read_text()
    stamps = {s: (out / f"seed_{s}" / "model.ckpt").stat().st_mtime_ns for s in (0, 1)}
    record = json.loads((out / "seed_0" / "run_result.json").read_text())
    assert record["signature"]["seed"] == 0 and len(record["result"]["test_ranks"]) == 40

    assert main([*argv, "--seeds", "0,1,2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    per_seed = metrics["seed_summary"]["variants"]["dualgr"]["per_seed"]
    assert {s: (out / f"seed_{s}" / "model.ckpt").stat().st_mtime_ns for s in (0, 1)} == stamps  # not retrained
    assert (out / "seed_2" / "model.ckpt").is_file() and metrics["seeds"] == [0, 1, 2]
    assert per_seed["0"] == first["0"] and per_seed["1"] == first["1"]

    # Another setting (here the cut-offs) is another run: trained again, not read back.
    assert main([*argv[:argv.index("--ks")], "--ks", "10,50", *argv[argv.index("--ks") + 2:], "--seeds", "0,1"]) == 0
    assert (out / "seed_0" / "model.ckpt").stat().st_mtime_ns != stamps[0]


def test_continued_log_keeps_the_earlier_epochs_of_a_ragged_log(tmp_path):
    """A run killed while Lightning rewrote its CSV header leaves rows longer than the header; putting
    the earlier epochs back must keep their named values, not fail on the unnamed ones."""
    from types import SimpleNamespace

    from pytorch_lightning.loggers import CSVLogger

    from genret.training.run import _csv_log, _keep_earlier_epochs

    logger = CSVLogger(save_dir=tmp_path, name="logs", version=0)
    path = Path(logger.log_dir) / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("epoch,step,train/loss\n0,9,2.5\n1,19,2.1,0.07\n")
    found = _csv_log(SimpleNamespace(logger=logger))
    assert found is not None and found[0] == path
    path.write_text("epoch,step,train/loss,val/hr@10\n2,29,1.9,0.08\n")   # the continued run's file
    _keep_earlier_epochs(*found)
    with path.open(newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["epoch"] for r in got] == ["0", "1", "2"]
    assert [r["train/loss"] for r in got] == ["2.5", "2.1", "1.9"]
    assert got[2]["val/hr@10"] == "0.08" and got[0]["val/hr@10"] == ""


def test_benchmark_resume_continues_a_run_stopped_during_training(tmp_path, tiny_args, monkeypatch):
    from pytorch_lightning.callbacks import Callback

    import genret.training.run as run
    from genret.eval.benchmark import run_generative

    class Epochs(Callback):  # records the epochs a fit trains; stops it at the start of epoch `stop`
        def __init__(self, stop: int | None):
            self.seen, self.stop = [], stop

        def on_train_epoch_start(self, trainer, module):
            self.seen.append(trainer.current_epoch)
            if trainer.current_epoch == self.stop:
                raise RuntimeError("the machine went away")

    fits, stop, real_fit = [], [1], run.fit

    def fit(module, datamodule, trainer, out_dir, ckpt_path=None):
        fits.append((Epochs(stop[0]), ckpt_path))
        trainer.callbacks.insert(0, fits[-1][0])
        return real_fit(module, datamodule, trainer, out_dir, ckpt_path=ckpt_path)

    monkeypatch.setattr(run, "fit", fit)
    out, config = tmp_path / "run", ROOT / "configs" / "quickstart.yaml"
    kwargs = dict(data="synthetic:300x400", ks=(10,), max_eval_users=20, kernel="torch", resume=True,
                  overrides=[*tiny_args, "--trainer.max_epochs", "2"])
    with pytest.raises(RuntimeError, match="went away"):
        run_generative(config, out, seed=0, **kwargs)
    assert fits[-1][0].seen == [0, 1] and (out / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "run_result.json").exists()

    # Other settings do not continue it: they start from the first epoch (and stop again).
    with pytest.raises(RuntimeError, match="went away"):
        run_generative(config, out, seed=1, **kwargs)
    assert fits[-1][1] is None and fits[-1][0].seen == [0, 1]

    # The same settings with --resume continue from the last finished epoch and finish the run.
    stop[0] = None
    result = run_generative(config, out, seed=1, **kwargs)
    assert fits[-1][1] == str(out / "checkpoints" / "last.ckpt") and fits[-1][0].seen == [1]
    assert result["continued_from"] == fits[-1][1] and (out / "run_result.json").is_file()
    # The training log covers both parts of the run, each epoch once.
    epochs = [int(r["epoch"]) for r in csv.DictReader((out / "logs" / "version_0" / "metrics.csv").open())]
    assert sorted(set(epochs)) == [0, 1] and epochs == sorted(epochs)

    # Without --resume the run starts over.
    run_generative(config, out, seed=1, **(kwargs | {"resume": False}))
    assert fits[-1][1] is None and fits[-1][0].seen == [0, 1]

    # A new run stopped before its first checkpoint does not inherit the checkpoints of the run before it.
    stop[0] = 0
    with pytest.raises(RuntimeError, match="went away"):
        run_generative(config, out, seed=2, **kwargs)
    assert not (out / "checkpoints" / "last.ckpt").exists()
    stop[0] = None
    run_generative(config, out, seed=2, **kwargs)
    assert fits[-1][1] is None and fits[-1][0].seen == [0, 1]


def test_run_record_is_read_back_only_for_the_same_signature(tmp_path):
    import numpy as np

    import hashlib

    from genret.eval.run_record import earlier_signatures, read_run_record, run_signature, write_run_record

    config = tmp_path / "c.yaml"
    config.write_text("seed_everything: 0\n")
    kwargs = dict(config=config, variant="dualgr", data="ml-1m", overrides=["--trainer.max_epochs", "2"], seed=1,
                  ks=(100, 10), max_eval_users=None, stages=("valid", "test"), kernel="auto", branch_merge="sum",
                  short_weight=None, checkpoint=None)
    signature = run_signature(**kwargs)
    assert read_run_record(tmp_path, signature) is None  # nothing written yet
    write_run_record(tmp_path, signature, {"val": {"hr@10": 0.5}, "test_ranks": np.array([3, -1, 0])})
    back = read_run_record(tmp_path, run_signature(**kwargs))
    assert back["val"] == {"hr@10": 0.5} and back["test_ranks"].tolist() == [3, -1, 0]
    assert back["test_ranks"].dtype == np.int64
    assert read_run_record(tmp_path, run_signature(**(kwargs | {"seed": 2}))) is None
    config.write_text("# why seed 0\nseed_everything:   0   # a comment\n")  # comments and layout only
    assert read_run_record(tmp_path, run_signature(**kwargs))["val"] == {"hr@10": 0.5}
    config.write_text("seed_everything: 0\ntrainer: {max_epochs: 3}\n")  # the settings changed
    assert read_run_record(tmp_path, run_signature(**kwargs)) is None
    # A record from when the config counted by its bytes is read back while those bytes are unchanged.
    legacy = run_signature(**kwargs) | {"config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()}
    write_run_record(tmp_path, legacy, {"val": {"hr@10": 0.25}})
    assert read_run_record(tmp_path, run_signature(**kwargs)) is None
    signature = run_signature(**kwargs)
    assert read_run_record(tmp_path, signature, earlier_signatures(signature, config))["val"] == {"hr@10": 0.25}
    config.write_text("seed_everything: 0\ntrainer: {max_epochs: 3}  # edited\n")
    signature = run_signature(**kwargs)
    assert read_run_record(tmp_path, signature, earlier_signatures(signature, config)) is None
    (tmp_path / "run_result.json").write_text("{not json")
    assert read_run_record(tmp_path, signature) is None


def test_sweep_spec_takes_one_or_more_distinct_values():
    from genret.commands.benchmark import parse_sweep

    assert parse_sweep("model.use_item_id=false") == ("model.use_item_id", ["false"])
    assert parse_sweep("--model.config.short_window=4, 16,64") == ("model.config.short_window", ["4", "16", "64"])
    for bad in ("model.use_item_id=", "model.config.alpha=0.1,0.1", "short_window=4,16", "model.config.alpha"):
        with pytest.raises(ValueError):
            parse_sweep(bad)
