"""The paper-scale path, exercised on a CPU: configs/dualgr_paper.yaml's codebooks (3 x 8192 codes) on a
synthetic catalogue larger than 8,192 items, at a tiny width (d_model 16, one block) so it runs in
seconds. Train a few steps, save, load through Retriever.from_checkpoint, decode with both kernel
paths (Triton under TRITON_INTERPRET=1, see tests/conftest.py), and check that the trained model's
beams score exactly the teacher-forced log-probabilities (the method of
tests/decoding/test_beam_search.py::test_beam_scores_equal_teacher_forced_log_probs).

Run with `pytest -m paper_scale`; the default run includes them (about 30 s here, 2 cores).
"""

from pathlib import Path

import pytest
import torch

from genret.decoding.beam_search import Histories, decode_branch
from genret.decoding.retriever import Retriever
from genret.models.dualgr import TrainBatch
from genret.training.run import build, fit

pytestmark = pytest.mark.paper_scale

ROOT = Path(__file__).resolve().parents[2]
N_ITEMS = 9000  # > 8192: the codebook must fit inside the catalogue
SMALL = [
    "--data.data", f"synthetic:150x{N_ITEMS}", "--data.max_history", "40", "--data.max_negatives", "8",
    "--data.batch_size", "16", "--data.num_workers", "0", "--data.sid.n_iter", "2",
    "--model.config.d_model", "16", "--model.config.n_heads", "2", "--model.config.n_blocks", "1",
    "--model.config.d_ffn", "32", "--model.config.long_window", "40", "--model.config.short_window", "8",
    "--model.config.in_bucket_cap", "16", "--model.warmup_steps", "2",
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1",
    "--trainer.precision", "32-true", "--trainer.devices", "1", "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_scale")
    module, dm, trainer = build("dualgr", ROOT / "configs" / "dualgr_paper.yaml", out,
                                SMALL + ["--data.sid.cache_dir", str(out / "cache")])
    ckpt, _ = fit(module, dm, trainer, out)
    return ckpt, dm


def teacher_forced(model, history: list[int], target: int, n_user_fields: int) -> torch.Tensor:
    """log p(SID(target) | history), long window, from the training forward pass."""
    L = model.cfg.n_levels
    codes = model.item_codes
    items = torch.tensor([history + [target]])
    batch = TrainBatch(items=items, codes=codes[items], user_feats=torch.zeros(1, n_user_fields, dtype=torch.long),
                       side=torch.zeros(1, len(history) + 1, model.cfg.n_side_features, dtype=torch.long),
                       neg_items=torch.zeros(1, 0, dtype=torch.long), neg_codes=torch.zeros(1, 0, L, dtype=torch.long),
                       neg_pos=torch.zeros(1, 0, dtype=torch.long), loss_mask=items >= 0)
    out = model(batch)
    t = len(history)
    return sum(out["pos_logits"][lv][0, t].log_softmax(-1)[codes[target, lv]] for lv in range(L))


def test_paper_codebooks_train_save_and_load(trained):
    ckpt, dm = trained
    assert dm.n_items == N_ITEMS and dm.sid_index.codebook_size == 8192
    r = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    cfg = r.model.cfg
    assert (cfg.codebook_size, cfg.n_levels, cfg.d_model, cfg.n_blocks) == (8192, 3, 16, 1)
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4  # the steps were taken
    # The report says how unique the SIDs are at this codebook size.
    assert 0 < dm.sid_report["overall"]["unique_path_fraction"] <= 1


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_trained_beams_equal_teacher_forced_log_probs(trained, kernel):
    if kernel == "triton":
        pytest.importorskip("triton")
    ckpt, dm = trained
    r = Retriever.from_checkpoint(ckpt, device="cpu", kernel=kernel)
    model, index = r.model.eval(), r.index
    model.cfg.use_dbr = False  # one branch, the long window: what the teacher-forced pass below computes
    users = dm.split.eval_set("test")
    rows = [list(map(int, users.history(u)))[-12:] for u in (0, 1)]  # tiny: interpreted sorts of 8192-wide rows
    offsets = torch.tensor([0, len(rows[0]), len(rows[0]) + len(rows[1])])
    n_fields = len(model.user_embeddings)
    hist = Histories(offsets, torch.tensor(rows[0] + rows[1]), torch.zeros(2, n_fields, dtype=torch.long), None)
    sids, scores = decode_branch(model, index, hist, window_width=model.cfg.long_window, beam_width=3,
                                 kernel=kernel)
    assert sids.shape == (2, 3, 3) and torch.isfinite(scores).all()
    for u in range(2):
        assert (scores[u, :-1] >= scores[u, 1:]).all()
        for w in range(3):
            ptr, items = index.items_of(sids[u, w][None])
            assert ptr[-1] >= 1  # every decoded SID exists
            expected = teacher_forced(model, rows[u], int(items[0]), n_fields)
            torch.testing.assert_close(scores[u, w], expected, atol=2e-4, rtol=2e-4)
    if kernel == "triton":  # and both paths agree beam for beam
        ref_sids, ref_scores = decode_branch(model, index, hist, window_width=model.cfg.long_window, beam_width=3,
                                             kernel="torch")
        assert torch.equal(ref_sids, sids)
        torch.testing.assert_close(ref_scores, scores, atol=1e-4, rtol=1e-4)
