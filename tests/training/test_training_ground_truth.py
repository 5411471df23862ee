"""DualGR's mechanisms checked against the synthetic generator's known truth."""

import numpy as np
import pytest
import torch

from genret.eval.ranked_lists import evaluate_retriever
from genret.training.run import build, fit
from genret.training.sequence_datamodule import gather_batch
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

ARGS = [
    "--data.data", "synthetic:800x1200", "--data.max_history", "40", "--data.batch_size", "32",
    "--data.max_negatives", "40", "--data.sid.codebook_size", "16", "--data.sid.n_iter", "10",
    "--model.config.d_model", "32", "--model.config.n_heads", "2", "--model.config.n_blocks", "1",
    "--model.config.d_ffn", "64", "--model.config.long_window", "40", "--model.config.short_window", "6",
    "--model.config.alpha", "2.0", "--model.lr", "0.005", "--model.use_item_id", "false",
    "--trainer.max_epochs", "5", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--trainer.num_sanity_val_steps", "0",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same data and seed trained with ENTP and without it (plain NTP)."""
    # One thread: these matrices are too small to gain from two, and two threads slow down
    # tenfold whenever anything else shares the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_both(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _train_both(tmp_path_factory):
    out = {}
    for name, entp in (("entp", "true"), ("ntp", "false")):
        tmp = tmp_path_factory.mktemp(name)
        module, dm, trainer = build("dualgr", CONFIGS / "quickstart.yaml", tmp,
                                             ARGS + ["--model.config.use_entp", entp,
                                                     "--data.sid.cache_dir", str(tmp / "cache")])
        fit(module, dm, trainer, tmp)
        out[name] = (module.model.eval(), dm)
    return out


def skipped_category_probability(model, dm) -> float:
    """Mean level-1 probability the model gives, at the moment of each skip, to the code of an
    exposed-and-skipped item from one of the user's disliked categories (the categories the user
    repeatedly skips), over every such exposure in the training split."""
    train = dm.train_log
    from genret.data.synthetic import SOURCE_NAMES

    negative = train.label == 0
    from_disliked = train.truth["row_source"][negative] == SOURCE_NAMES.index("disliked")
    rows = np.arange(train.n_users)
    batch = gather_batch(dm.train_sequences, rows, dm.codes, dm.user_feats, 10_000, 10_000)
    use_entp, model.cfg.use_entp = model.cfg.use_entp, True  # the NTP model must score negatives too
    with torch.no_grad():
        out = model(batch)
    model.cfg.use_entp = use_entp
    valid = batch.neg_items >= 0
    assert int(valid.sum()) == len(from_disliked)  # every negative kept, in CSR order
    p1 = out["neg_logits"].softmax(-1).gather(-1, batch.neg_codes[..., :1]).squeeze(-1)[valid].numpy()
    return float(p1[from_disliked].mean())


def test_exposure_negatives_lower_probability_of_skipped_categories(trained):
    with_entp = skipped_category_probability(*trained["entp"])
    without = skipped_category_probability(*trained["ntp"])
    assert with_entp < 0.95 * without, (with_entp, without)


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
