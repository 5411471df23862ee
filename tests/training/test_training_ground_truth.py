"""DualGR's mechanisms checked against the synthetic generator's known truth."""

import numpy as np
import pytest
import torch

from genret import pipeline
from genret.training.datamodule import gather_batch
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

ARGS = [
    "--data.data", "synthetic:800x1200", "--data.max_history", "40", "--data.batch_size", "32",
    "--data.max_negatives", "40", "--data.sid.codebook_size", "16", "--data.sid.n_iter", "10",
    "--model.config.d_model", "32", "--model.config.n_heads", "2", "--model.config.n_blocks", "1",
    "--model.config.d_ffn", "64", "--model.config.long_window", "40", "--model.config.short_window", "6",
    "--model.config.alpha", "0.5", "--model.lr", "0.005", "--model.use_item_id", "false",
    "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--trainer.num_sanity_val_steps", "0",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same data and seed trained with ENTP and without it (plain NTP)."""
    out = {}
    for name, entp in (("entp", "true"), ("ntp", "false")):
        tmp = tmp_path_factory.mktemp(name)
        module, dm, trainer = pipeline.build(CONFIGS / "quickstart.yaml", tmp,
                                             ARGS + ["--model.config.use_entp", entp,
                                                     "--data.sid.cache_dir", str(tmp / "cache")])
        pipeline.train(module, dm, trainer, tmp)
        out[name] = (module.model.eval(), dm)
    return out


def level1_categories(dm) -> np.ndarray:
    """Majority synthetic category of each level-1 code (-1 when unused)."""
    cats = dm.log_all.truth["item_category"]
    K = dm.sid.codebook_size
    table = np.zeros((K, cats.max() + 1), np.int64)
    np.add.at(table, (dm.codes[:, 0], cats), 1)
    return np.where(table.sum(1) > 0, table.argmax(1), -1)


def disliked_level1_mass(model, dm) -> float:
    """Mean level-1 probability that each test user's next item is in a category the user skips."""
    es = dm.split.eval_set("test")
    disliked = dm.log_all.truth["user_disliked_categories"][es.users]  # (m, n) padded with -1
    code_cat = level1_categories(dm)
    offsets = es.history_offsets + np.arange(len(es) + 1)  # history + a placeholder target
    items = np.empty(offsets[-1], np.int64)
    owner = np.repeat(np.arange(len(es)), np.diff(es.history_offsets))
    items[np.arange(len(es.history_items)) + owner] = es.history_items
    items[offsets[1:] - 1] = es.targets
    from genret.training.datamodule import UserSequences

    seq = UserSequences.from_histories(offsets, items)
    batch = gather_batch(seq, np.arange(len(es)), dm.codes, dm.user_feats[es.users], dm.max_history, 0, True)
    model.cfg.use_dbr = False  # read the long branch: the gate would otherwise look at the target
    with torch.no_grad():
        logits = model(batch)["pos_logits"][0]
    model.cfg.use_dbr = True
    last = batch.loss_mask.float().argmax(1)
    p1 = logits[torch.arange(len(es)), last].softmax(-1).numpy()  # (m, K)
    is_disliked = (code_cat[None, :, None] == disliked[:, None, :]).any(-1) & (code_cat[None, :] >= 0)
    return float((p1 * is_disliked).sum(1).mean())


def test_exposure_negatives_lower_probability_of_skipped_categories(trained):
    with_entp = disliked_level1_mass(*trained["entp"])
    without = disliked_level1_mass(*trained["ntp"])
    assert with_entp < 0.8 * without, (with_entp, without)


def test_gate_picks_short_branch_for_bursts_and_long_for_stable_interests(trained):
    model, dm = trained["entp"]
    train = dm.train_log
    positive = train.label == 1
    is_burst = train.truth["row_is_burst"][positive]
    seq = dm.train_sequences
    rows = np.arange(train.n_users)
    batch = gather_batch(seq, rows, dm.codes, dm.user_feats, 10_000, 0)
    T = batch.items.shape[1]
    valid = batch.items >= 0
    level1 = batch.codes[..., 0]
    short = model.dbr_choose_short(level1, valid, level1, torch.arange(T).expand(len(rows), T))
    # Flatten in CSR order (the batch keeps whole sequences since max_history is large).
    chose_short = short[valid].numpy()
    assert len(chose_short) == len(is_burst)
    has_history = (np.arange(T)[None, :] > 0) & valid.numpy()
    keep = has_history[valid.numpy()]
    burst_rate = chose_short[keep & is_burst].mean()
    stable_rate = chose_short[keep & ~is_burst].mean()
    assert burst_rate > 0.6 and stable_rate < 0.4 and burst_rate > stable_rate + 0.3, (burst_rate, stable_rate)
