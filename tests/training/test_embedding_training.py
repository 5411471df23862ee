"""KuaiFormer / SASRec training: shipped configs, batching, ranking, a tiny end-to-end run, export."""

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genret.data import leave_one_out, load_dataset
from genret.decoding.embedding_retriever import EmbeddingRetriever, rank_items
from genret.decoding.popularity import PopularityRecommender
from genret.eval.benchmark import run_embedding
from genret.eval.metrics import ranking_metrics
from genret.families import family_for_config
from genret.training.embedding_datamodule import KuaiFormerDataModule, gather_windows, item_feature_table
from genret.training.embedding_module import checkpoint_item_vectors, load_kuaiformer
from genret.training.run import build

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = ["sasrec_ml1m.yaml", "sasrec_amazon.yaml", "kuaiformer_ml1m.yaml", "kuaiformer_amazon.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name, tmp_path):
    module, dm, trainer = build(family_for_config(name), CONFIGS / name, tmp_path)
    config = module.config
    if name.startswith("sasrec"):
        # SASRec = KuaiFormer with one interest at the last position, no compression, full softmax.
        assert (config.n_interests, config.readout) == (1, "last_position")
        assert not config.compression and not config.item_mlp
        assert module.loss_name == "full_softmax" and dm.targets == "every_position"
    else:
        assert config.readout == "query_tokens" and config.n_interests > 1
        assert module.loss_name == "sampled_softmax" and module.logq_correction and module.label_smoothing > 0
        assert dm.targets == "cut_points"
    if name == "kuaiformer_ml1m.yaml":
        assert config.compression and dm.max_len == 256
        from dataclasses import replace
        assert replace(config, max_len=dm.max_len).sequence_tokens == 55


def test_gather_windows_is_right_aligned_and_padded():
    offsets = np.array([0, 3, 3, 8])
    values = np.arange(10, 18)
    windows, valid = gather_windows(offsets, values, np.array([0, 2, 2, 1]), np.array([3, 5, 2, 0]), 4, -1)
    assert windows.tolist() == [[-1, 10, 11, 12], [14, 15, 16, 17], [-1, -1, 13, 14], [-1, -1, -1, -1]]
    assert (valid == (windows >= 0)).all()
    side, _ = gather_windows(offsets, values[:, None] * np.array([[1, 2]]), np.array([0]), np.array([2]), 3, 0)
    assert side[0].tolist() == [[0, 0], [10, 20], [11, 22]]


def test_item_feature_tables():
    assert item_feature_table(np.array([3, 0, 2]), "genre").tolist() == [[3], [0], [2]]
    hot = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=np.int8)
    assert item_feature_table(hot, "genres").tolist() == [[2, 3], [0, 0], [1, 0]]
    with pytest.raises(ValueError, match="integer"):
        item_feature_table(np.zeros(3, np.float32), "x")


def test_rank_items_is_exact_max_over_interests_with_history_excluded():
    gen = torch.Generator().manual_seed(0)
    users = torch.randn(7, 3, 8, generator=gen)
    items = torch.randn(40, 8, generator=gen)
    offsets = np.array([0, 2, 2, 5, 6, 6, 9, 10])
    history = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 0])
    ranked = rank_items(users, items, 10, exclude=(offsets, history), device="cpu")
    scores = torch.einsum("mkd,nd->mkn", users, items).amax(1)
    for u in range(7):
        scores[u, history[offsets[u]:offsets[u + 1]]] = float("-inf")
    expected = scores.topk(10, dim=1).indices.numpy()
    assert np.array_equal(ranked, expected)


@pytest.fixture
def one_thread():
    """Tiny models run several times faster on one thread when the 2 CI cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_config(path: Path, model: dict, data: dict, epochs: int) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "check_val_every_n_epoch": epochs},
        "model": model,
        "data": {"data": "synthetic:300x400", **data},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _popularity_hr10(split) -> float:
    es = split.eval_set("test")
    ranked = PopularityRecommender().fit(split.train).recommend(es, 10)
    return ranking_metrics(ranked, es.targets, (10,))["hr@10"]


@pytest.mark.slow
def test_tiny_sasrec_beats_popularity_and_exports(tmp_path, one_thread):
    config = _write_config(
        tmp_path / "sasrec.yaml",
        {"config": {"d_model": 32, "n_heads": 1, "n_layers": 1, "d_ffn": 64, "dropout": 0.1, "n_interests": 1,
                    "readout": "last_position", "compression": False, "item_mlp": False},
         "loss": "full_softmax", "logq_correction": False, "lr": 0.005},
        {"max_len": 50, "targets": "every_position", "batch_size": 64}, epochs=10)
    out = tmp_path / "run"
    result = run_embedding("sasrec", str(config), out, ks=(10, 20))
    popularity = _popularity_hr10(leave_one_out(load_dataset("synthetic:300x400")))
    assert result["model"] == "sasrec" and result["dataset"] == "synthetic"
    assert result["test"]["n_users"] == 300
    assert result["test"]["hr@10"] > popularity + 0.05, (result["test"], popularity)
    assert result["extra"]["training"]["stopped_by"] in ("max_epochs", "patience")
    assert 1 <= result["extra"]["training"]["epochs"] <= 10
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "logs", "model.ckpt"]
    assert (out / "checkpoints" / "last.ckpt").is_file()

    from genret.commands.export_embeddings import main

    assert main(["--checkpoint", result["checkpoint"], "--out", str(tmp_path / "items.npy")]) == 0
    saved = np.load(tmp_path / "items.npy")
    assert saved.dtype == np.float32 and saved.shape == (400, 32)
    vectors, item_ids = checkpoint_item_vectors(result["checkpoint"])
    assert np.array_equal(saved, vectors) and len(item_ids) == 400
    model, entry = load_kuaiformer(result["checkpoint"])
    assert np.array_equal(saved, model.item_vectors().detach().numpy())
    assert entry["family"] == "kuaiformer"

    # `genret train test` scores the kept weights on the test users through the same exact ranking.
    from genret.cli import main as cli

    assert cli(["train", "test", "--config", str(config), "--ckpt_path", result["checkpoint"],
                "--trainer.default_root_dir", str(tmp_path / "test_run"), "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false"]) == 0

    # The family's retriever serves raw ids from the checkpoint.
    retriever = EmbeddingRetriever.from_checkpoint(result["checkpoint"], device="cpu")
    assert retriever.model_version.startswith("sha256:")
    got = retriever.retrieve([[retriever.item_ids[0], retriever.item_ids[3]], []], k=5)
    assert [len(row) for row in got.items] == [5, 5] and all(len(set(row)) == 5 for row in got.items)
    assert got.scores[0] == sorted(got.scores[0], reverse=True)
    assert not set(got.items[0]) & {retriever.item_ids[0], retriever.item_ids[3]}  # seen items left out
    # `genret decode` picks the family's retriever from the checkpoint (the beam options do not apply).
    import json

    lines = tmp_path / "users.jsonl"
    lines.write_text(json.dumps([int(retriever.item_ids[0]), int(retriever.item_ids[3])]) + "\n")
    assert cli(["decode", "--checkpoint", result["checkpoint"], "--histories", str(lines), "--k", "5",
                "--out", str(tmp_path / "out.jsonl")]) == 0
    assert json.loads((tmp_path / "out.jsonl").read_text())["items"] == got.items[0]

    # The checkpoint itself can feed the tokenizer: same vectors, and a foreign catalogue is refused.
    from genret.tokenizers.semantic_ids import SIDConfig, item_embeddings_for

    log_ = load_dataset("synthetic:300x400")
    cfg = SIDConfig(embeddings=result["checkpoint"])
    emb, source = item_embeddings_for(log_, log_, cfg, checkpoint_vectors=checkpoint_item_vectors)
    assert np.array_equal(emb, saved) and "checkpoint" in source
    other = load_dataset("synthetic:300x500")
    with pytest.raises(ValueError, match="not the one of 'synthetic'"):
        item_embeddings_for(other, other, cfg, checkpoint_vectors=checkpoint_item_vectors)
    with pytest.raises(ValueError, match="no checkpoint reader was given"):
        item_embeddings_for(log_, log_, cfg)


@pytest.mark.slow
def test_tiny_kuaiformer_trains_with_every_part_on(tmp_path, one_thread):
    config = _write_config(
        tmp_path / "kuaiformer.yaml",
        {"config": {"d_model": 32, "n_heads": 2, "n_layers": 1, "d_ffn": 64, "dropout": 0.1, "n_interests": 2,
                    "early_group_size": 8, "early_groups": 1, "middle_group_size": 4, "middle_groups": 2,
                    "feature_dim": 8},
         "loss": "sampled_softmax", "label_smoothing": 0.05, "lr": 0.005, "position_loss_weight": 1.0},
        {"max_len": 24, "targets": "cut_points", "cuts_per_user": 4, "batch_size": 64,
         "item_features": ["category", "subcategory"], "side_features": ["watch_frac"]}, epochs=6)
    result = run_embedding("kuaiformer", str(config), tmp_path / "run", ks=(10,))
    popularity = _popularity_hr10(leave_one_out(load_dataset("synthetic:300x400")))
    assert result["test"]["hr@10"] > popularity + 0.03, (result["test"], popularity)
    model, _ = load_kuaiformer(result["checkpoint"])
    assert model.config.sequence_tokens == 1 + 2 + 8 and model.config.side_cardinalities


def test_datamodule_errors_name_the_missing_feature():
    dm = KuaiFormerDataModule("synthetic:60x200", item_features=["colour"])
    with pytest.raises(ValueError, match="colour.*data.missing_item_features: skip"):
        dm.setup()
    with pytest.raises(ValueError, match="data.missing_item_features must be one of"):
        KuaiFormerDataModule("synthetic:60x200", item_features=["colour"], missing_item_features="ignore")


@pytest.mark.parametrize("name", ["sasrec_amazon.yaml", "kuaiformer_amazon.yaml"])
def test_amazon_recipes_run_unchanged_on_copies_without_the_optional_files(name, tmp_path, one_thread, amazon_copy):
    """The Amazon recipes train on a category's sequential.txt alone (no item2attributes.json, no
    titles.tsv): KuaiFormer's item MLP then reads the item ids only, with a warning, and metrics say
    which features it used; with the attributes it reads them."""
    small = ["--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--data.batch_size", "16",
             "--model.config.d_model", "16", "--model.config.d_ffn", "32"]
    family = family_for_config(name).name
    used = {}
    for attributes in (False, True):
        folder = amazon_copy(tmp_path / f"copy_{attributes}", titles=False, attributes=attributes)
        skipped = family == "kuaiformer" and not attributes
        with (pytest.warns(UserWarning, match=r"item feature\(s\) \['attributes'\] not in .*trained without them")
              if skipped else contextlib.nullcontext()):
            result = run_embedding(family, CONFIGS / name, tmp_path / f"run_{attributes}", data=str(folder),
                                   overrides=small, ks=(10,))
        assert result["test"]["n_users"] == 120 and 0.0 <= result["test"]["hr@10"] <= 1.0
        used[attributes] = result.get("extra", {}).get("item_features")
    if family == "kuaiformer":
        assert used == {False: {"used": [], "skipped": ["attributes"]}, True: {"used": ["attributes"], "skipped": []}}
    else:  # SASRec reads item ids only, whatever the copy holds
        assert used == {False: None, True: None}


def test_in_batch_loss_with_more_rows_than_candidates_uses_shared_rows():
    from genret.models.kuaiformer import KuaiFormer, KuaiFormerConfig
    from genret.training.embedding_module import KuaiFormerModule

    config = KuaiFormerConfig(n_items=6, d_model=4, n_heads=1, n_layers=1, compression=False, max_len=8)
    module = KuaiFormerModule(config, max_in_batch_candidates=3)
    torch.manual_seed(0)
    module.model = KuaiFormer(config)
    probabilities = torch.tensor([0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    module.register_buffer("item_log_prob", probabilities.log())
    users = torch.randn(5, 2, 4)
    targets = torch.tensor([0, 1, 0, 2, 5])
    torch.manual_seed(1)
    loss = module.softmax_loss(users, targets)
    torch.manual_seed(1)
    shared = targets[torch.randperm(5)[:3]]
    table = module.model.item_vectors().detach()
    expected = []
    for i in range(5):
        def corrected(item):
            return (users[i] @ table[item]).max() - torch.log(3 * probabilities[item])
        negatives = [corrected(j) for j in shared.tolist() if j != targets[i]]
        logits = torch.stack([corrected(int(targets[i]))] + negatives)
        expected.append(-(logits[0] - logits.logsumexp(0)))
    torch.testing.assert_close(loss, torch.stack(expected).mean())
