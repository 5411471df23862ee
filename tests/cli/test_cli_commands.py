"""The `genret` console script: every subcommand is reachable and answers --help."""

import pytest

from genret.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "train"])  # train's help: tests/training
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: genret" in capsys.readouterr().out


def test_unknown_command_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["tokenise"])
    assert "unknown command 'tokenise'" in capsys.readouterr().err


def test_flags_take_underscores_and_the_old_hyphens():
    from genret.commands.arguments import Parser

    parser = Parser(prog="genret x")
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--max_eval_users", type=int, default=None)
    args, rest = parser.parse_known_args(["--eval-batch-size", "8", "--max_eval_users=5", "--trainer.max_epochs", "1"])
    assert (args.eval_batch_size, args.max_eval_users) == (8, 5)
    assert rest == ["--trainer.max_epochs", "1"]  # LightningCLI's keys pass through untouched
    args, _ = parser.parse_known_args(["--max-eval-users=7"])
    assert args.max_eval_users == 7


TINY = ["--data.data", "synthetic:200x300", "--data.max_history", "20", "--data.batch_size", "32",
        "--data.sid.codebook_size", "8", "--data.sid.n_iter", "5", "--model.config.d_model", "16",
        "--model.config.n_heads", "2", "--model.config.n_blocks", "1", "--model.config.d_ffn", "32",
        "--model.config.long_window", "20", "--model.config.short_window", "4", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


def test_train_fit_writes_model_and_last_then_validate_and_test_read_them(tmp_path, capsys):
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    out = tmp_path / "run"
    args = ["--config", str(config), *TINY, "--data.sid.cache_dir", str(tmp_path / "cache"),
            "--trainer.default_root_dir", str(out)]
    assert main(["train", *args]) == 0  # fit is the default subcommand
    printed = capsys.readouterr().out
    assert f"kept weights in {out / 'model.ckpt'}" in printed and str(out / "checkpoints" / "last.ckpt") in printed
    assert (out / "model.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert main(["train", "validate", *args]) == 0  # scores DIR/model.ckpt by default
    assert main(["train", "test", *args, "--ckpt_path", str(out / "checkpoints" / "last.ckpt")]) == 0
    with pytest.raises(SystemExit, match="does not exist"):
        main(["train", "validate", *args, "--ckpt_path", str(tmp_path / "missing.ckpt")])


def test_benchmark_popularity_runs_through_its_registry_entry(tmp_path):
    import json
    from pathlib import Path

    from genret.data import leave_one_out, load_dataset
    from genret.decoding.popularity import PopularityRecommender
    from genret.eval.metrics import ranking_metrics

    config = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    assert main(["benchmark", "--model", "popularity", "--data", "synthetic:200x300", "--config", str(config),
                 "--out", str(tmp_path / "pop"), "--ks", "10,20", "--data.sid.cache_dir", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "pop" / "metrics.json").read_text())
    split = leave_one_out(load_dataset("synthetic:200x300"))
    es = split.eval_set("test")
    expected = ranking_metrics(PopularityRecommender().fit(split.train).recommend(es, 20), es.targets, (10, 20))
    assert metrics["model"] == "popularity" and metrics["test"]["hr@10"] == expected["hr@10"]
    assert metrics["baselines"] == {}


def test_a_data_set_that_is_not_there_is_one_line_naming_where_it_looked(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    (tmp_path / "ml-1m").mkdir()
    monkeypatch.setenv("GENRET_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    # benchmark checks --data before anything trains (argparse's exit status 2)
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--model", "popularity", "--data", "ml1m", "--config", str(config),
              "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--data: data set 'ml1m' not found" in err and "names under GENRET_DATA_DIR: ml-1m" in err
    assert not (tmp_path / "out").exists()
    # train meets it inside Lightning's setup: the same one line, status 2, no traceback
    assert main(["train", "--config", str(config), *TINY, "--data.data", "ml1m",
                 "--trainer.default_root_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "genret train: error: data set 'ml1m' not found" in err and "Traceback" not in err
    monkeypatch.setenv("GENRET_TRACEBACK", "1")  # the traceback, for a bug report
    from genret.data.interactions import DataError

    with pytest.raises(DataError):
        main(["train", "--config", str(config), *TINY, "--data.data", "ml1m",
              "--trainer.default_root_dir", str(tmp_path / "run")])
