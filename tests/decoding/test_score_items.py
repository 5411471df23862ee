"""DualGR scores given items (teacher-forced) exactly as its beam search scores them."""

import pytest
import torch

from genret.decoding.beam_search import retrieve_indices, score_indices
from genret.decoding.requests import RequestError, UnknownItemError
from genret.decoding.retriever import Retriever

from tests.decoding.test_beam_search import N_ITEMS, histories, make_model, teacher_forced_logprob

ROWS = [[3, 7, 1, 12, 5], [2], [9, 9, 30, 4, 17, 22, 8, 3, 11]]


@pytest.mark.parametrize("use_s2d", [True, False])
@pytest.mark.parametrize("use_dbr", [True, False])
@pytest.mark.parametrize("branch_merge", ["sum", "max"])
def test_scores_equal_exhaustive_beam_scores(use_s2d, use_dbr, branch_merge):
    """With beams wide enough to reach every item in both branches, the beams' merged score of each
    item is what score_indices gives it."""
    model, index, _ = make_model(use_s2d=use_s2d, use_dbr=use_dbr, last_action_query=True, cross_rope=True)
    hist = histories(ROWS)
    items, scores = retrieve_indices(model, index, hist, N_ITEMS, beam_width=64, branch_merge=branch_merge,
                                     kernel="torch")
    assert (items >= 0).all()  # every item reached
    forced = score_indices(model, hist, items, kernel="torch", branch_merge=branch_merge, chunk=7)  # chunks split the candidates
    torch.testing.assert_close(forced, scores, atol=1e-4, rtol=1e-4)


def test_one_branch_score_is_the_training_forward_log_prob():
    model, _, codes = make_model(use_dbr=False, use_s2d=True)
    hist = histories(ROWS[:1])
    cands = torch.tensor([[0, 13, 39, -1]])
    got = score_indices(model, hist, cands, kernel="torch")
    for j in range(3):
        want = teacher_forced_logprob(model, ROWS[0], int(cands[0, j]), codes)
        assert got[0, j].item() == pytest.approx(want.item(), abs=1e-4)
    assert got[0, 3].item() == float("-inf")  # padding


def test_score_indices_checks_its_candidates():
    model, _, _ = make_model()
    with pytest.raises(ValueError, match="candidates must be"):
        score_indices(model, histories(ROWS), torch.zeros(2, 3, dtype=torch.long))


def test_retriever_scores_raw_ids_and_names_bad_input(tiny_ckpt):
    r = Retriever.from_checkpoint(tiny_ckpt, device="cpu", kernel="torch")
    hist = [[100, 105, 107], [111]]
    got = r.score_items(hist, [[101, 139], []], user_features={"segment": [1, 2]})
    assert len(got[0]) == 2 and got[1] == []
    assert all(s < 0 for s in got[0])
    # the same items' scores do not depend on what else is scored with them, or on the batch
    again = r.score_items(hist, [[139], [120, 101]], batch_size=1, user_features={"segment": [1, 2]})
    assert again[0][0] == pytest.approx(got[0][1], abs=1e-5)
    with pytest.raises(UnknownItemError, match="item id 99 in items list 1"):
        r.score_items(hist, [[101], [99]])
    with pytest.raises(RequestError, match="one list of item ids per history"):
        r.score_items(hist, [[101]])
