"""Beam search agrees with teacher forcing, respects the SID index, and merges branches correctly."""

import pytest
import torch

from genret.decoding.beam_search import (Histories, _encode_histories, _last_actions, _pack_context,
                                         _positions, _project_history, _sorted_by_bucket, _window, decode_branch,
                                         model_codes, retrieve_indices, sids_to_items)
from genret.models.dualgr import DualGR, DualGRConfig, TrainBatch
from genret.decoding.topk import distinct_topk
from genret.tokenizers import SIDIndex

K, L, N_ITEMS = 8, 3, 40


def make_model(**kw):
    torch.manual_seed(0)
    base = dict(codebook_size=K, n_levels=L, n_items=N_ITEMS, d_model=32, n_heads=4, n_blocks=2, d_ffn=64,
                dropout=0.0, max_history=30, long_window=30, short_window=4, in_bucket_cap=3)
    base.update(kw)
    model = DualGR(DualGRConfig(**base)).eval()
    codes = torch.randint(0, K, (N_ITEMS, L), generator=torch.Generator().manual_seed(1))
    codes[:, 0] = torch.arange(N_ITEMS) % 4  # only 4 level-1 codes are used: the mask matters
    model.set_item_codes(codes)
    return model, SIDIndex.build(codes.numpy(), K), codes


def histories(rows, side=None):
    lengths = [len(r) for r in rows]
    offsets = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.long)
    items = torch.tensor([i for r in rows for i in r], dtype=torch.long)
    return Histories(offsets, items, torch.zeros(len(rows), 0, dtype=torch.long), side)


def teacher_forced_logprob(model, history, target, codes, side=None):
    """log p(SID(target) | history) from the training forward pass (long branch)."""
    items = torch.tensor([history + [target]])
    S = model.cfg.n_side_features
    side = torch.zeros(len(history), S, dtype=torch.long) if side is None else side
    side = torch.cat([side, torch.zeros(1, S, dtype=torch.long)])[None]  # the target's own side is never seen
    batch = TrainBatch(items=items, codes=codes[items], user_feats=torch.zeros(1, 0, dtype=torch.long),
                       side=side,
                       neg_items=torch.zeros(1, 0, dtype=torch.long), neg_codes=torch.zeros(1, 0, L, dtype=torch.long),
                       neg_pos=torch.zeros(1, 0, dtype=torch.long), loss_mask=items >= 0)
    out = model(batch)
    t = len(history)
    return sum(out["pos_logits"][lv][0, t].log_softmax(-1)[codes[target, lv]] for lv in range(L))


@pytest.mark.parametrize("use_s2d,n_side,rope,last,enc,window", [
    (True, 0, False, False, 0, 30), (False, 0, False, False, 0, 30), (True, 2, False, False, 0, 30),
    (False, 2, False, False, 0, 30), (True, 0, True, False, 0, 30), (False, 2, True, False, 0, 30),
    (True, 2, True, True, 0, 30), (False, 0, False, True, 0, 30),
    # The action encoder: its tokens are computed over the whole history, also for a narrow window.
    (True, 2, True, True, 1, 30), (False, 0, False, False, 2, 30), (True, 0, True, False, 2, 4),
    (False, 2, False, True, 1, 4)])
@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_beam_scores_equal_teacher_forced_log_probs(use_s2d, n_side, rope, last, enc, window, kernel):
    if kernel == "triton":
        pytest.importorskip("triton")
    model, index, codes = make_model(use_dbr=False, use_s2d=use_s2d, n_side_features=n_side, side_buckets=5,
                                     cross_rope=rope, last_action_query=last, encoder_blocks=enc,
                                     long_window=window, short_window=min(4, window))
    history = [3, 7, 11, 12, 15, 19, 20, 23, 27, 3]
    side = torch.randint(0, 6, (len(history), n_side), generator=torch.Generator().manual_seed(2)) if n_side else None
    sids, scores = decode_branch(model, index, histories([history], side), window_width=window, beam_width=64,
                                 kernel=kernel)
    # With a beam this wide every existing SID is enumerated; each score must be the teacher-forced one.
    found = 0
    for target in (0, 5, 13, 22):
        match = (sids[0] == codes[target]).all(-1).nonzero().flatten()
        assert len(match) == 1
        expected = teacher_forced_logprob(model, history, target, codes, side)
        torch.testing.assert_close(scores[0, match[0]], expected, atol=1e-4, rtol=1e-4)
        found += 1
    assert found == 4
    if n_side:  # the side features matter: decoding without them gives other scores
        _, blind = decode_branch(model, index, histories([history]), window_width=30, beam_width=64, kernel="torch")
        assert not torch.allclose(blind, scores)


def test_last_action_query_starts_from_the_newest_action():
    model, index, _ = make_model(use_dbr=False, last_action_query=True)
    plain, _, _ = make_model(use_dbr=False)
    with torch.no_grad():
        model.last_action.weight.normal_(0, 0.5)  # make the start token depend visibly on it
    a, b = [3, 7, 11, 12], [3, 7, 12, 11]  # the same bag of actions, another newest one
    for m, order_matters in ((model, True), (plain, False)):  # no cross_rope: only the start token sees order
        _, scores_a = decode_branch(m, index, histories([a]), window_width=30, beam_width=8, kernel="torch")
        _, scores_b = decode_branch(m, index, histories([b]), window_width=30, beam_width=8, kernel="torch")
        assert torch.allclose(scores_a, scores_b) != order_matters
    # A short window ends at the same newest action, so both DBR branches start from the same token;
    # the S2D bucket-sorted layout finds that action too.
    hist = histories([[1, 2, 3, 9, 10, 4], [], [6]])
    full, side = _window(model, hist, 30)
    ctx = model.context(full, model_codes(model, full), hist.user_feats, side)
    kv = _project_history(model, ctx)
    starts = []
    for width in (30, 2):
        items, take = _last_actions(full, width)
        starts.append(_pack_context(model, ctx, kv, take, items, _positions(items)).latest)
    ordered, _, order = _sorted_by_bucket(model, full, side)
    starts.append(_pack_context(model, ctx, kv, order, ordered, order).latest)
    torch.testing.assert_close(starts[0], starts[1])
    torch.testing.assert_close(starts[0], starts[2])


@pytest.mark.parametrize("use_s2d", [True, False])
def test_branches_sharing_one_encoding_decode_as_if_alone(use_s2d):
    model, index, _ = make_model(use_s2d=use_s2d, encoder_blocks=1, cross_rope=True, last_action_query=True)
    hist = histories([[1, 2, 3, 9, 10, 4, 17, 22], [], [6, 30]])
    shared = _encode_histories(model, hist)
    for width in (30, 4):
        alone = decode_branch(model, index, hist, width, 16, "torch")
        together = decode_branch(model, index, hist, width, 16, "torch", shared)
        for a, b in zip(alone, together):
            torch.testing.assert_close(a, b)


def test_side_features_must_have_one_row_per_history_action():
    model, index, _ = make_model(n_side_features=1, side_buckets=4)
    with pytest.raises(ValueError, match="side features must have shape"):
        decode_branch(model, index, histories([[1, 2, 3]], torch.ones(2, 1, dtype=torch.long)), 30, 8, "torch")


def test_every_decoded_sid_exists_and_scores_descend():
    model, index, codes = make_model()
    hist = histories([[1, 2, 3], [], [5] * 12])
    sids, scores = decode_branch(model, index, hist, window_width=30, beam_width=16, kernel="torch")
    existing = {tuple(c) for c in codes.tolist()}
    for u in range(3):
        alive = torch.isfinite(scores[u])
        assert alive.any()
        for sid in sids[u][alive].tolist():
            assert tuple(sid) in existing
        s = scores[u][alive]
        assert (s[:-1] >= s[1:]).all()


def test_retrieve_returns_k_distinct_items_even_for_empty_history():
    model, index, _ = make_model()
    items, scores = retrieve_indices(model, index, histories([[], [4, 8, 9]]), k=10, kernel="torch")
    assert items.shape == (2, 10)
    for row in items.tolist():
        assert -1 not in row and len(set(row)) == 10
    # "max" lists the same candidates, only scored differently where the branches overlap.
    by_max, max_scores = retrieve_indices(model, index, histories([[], [4, 8, 9]]), k=10, kernel="torch",
                                          branch_merge="max")
    assert (scores >= max_scores - 1e-6).all() and items.shape == by_max.shape
    with pytest.raises(ValueError, match="branch_merge must be one of"):
        retrieve_indices(model, index, histories([[1]]), k=5, kernel="torch", branch_merge="mean")


def test_branches_merge_as_a_mixture_weighted_by_the_routing_prior():
    model, index, codes = make_model()
    hist = histories([[1, 2, 3, 9, 10, 11, 13, 17], [4, 5]])
    # A beam of 64 enumerates all 40 items, so each branch's probability of every item is known.
    p = []
    for width in (model.cfg.long_window, model.cfg.short_window):
        sids, scores = decode_branch(model, index, hist, width, beam_width=64, kernel="torch")
        items, item_scores = sids_to_items(index, sids, scores, N_ITEMS)
        assert (items >= 0).all()
        p.append(torch.zeros(2, N_ITEMS).scatter(1, items, item_scores.exp()))
    for w in (0.2, 0.5, 0.9):
        items, scores = retrieve_indices(model, index, hist, k=N_ITEMS, beam_width=64, kernel="torch", short_weight=w)
        mixture = (1 - w) * p[0] + w * p[1]
        torch.testing.assert_close(scores.exp(), mixture.gather(1, items), rtol=1e-4, atol=1e-6)
        assert (scores[:, :-1] >= scores[:, 1:]).all()
    # Unset, the weight is the prior the model recorded in training.
    model.routing_stats.copy_(torch.tensor([0.8, 1.0]))
    default = retrieve_indices(model, index, hist, k=10, kernel="torch")
    explicit = retrieve_indices(model, index, hist, k=10, kernel="torch", short_weight=0.8)
    assert torch.equal(default[0], explicit[0]) and torch.equal(default[1], explicit[1])
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="must lie in"):
            retrieve_indices(model, index, hist, k=5, kernel="torch", short_weight=bad)


def test_distinct_topk_keeps_best_score_per_item():
    items = torch.tensor([[5, 3, 5, 7, -1, 3]])
    scores = torch.tensor([[-1.0, -0.5, -0.2, -3.0, float("-inf"), -2.0]])
    top, s = distinct_topk(items, scores, 4)
    assert top.tolist() == [[5, 3, 7, -1]]
    torch.testing.assert_close(s[0, :3], torch.tensor([-0.2, -0.5, -3.0]))


def test_distinct_topk_sum_adds_the_probabilities_of_an_item_listed_twice():
    log = torch.log
    # Item 4 in both branches at p = 0.3 each (0.6 in all) beats item 9 at 0.5 in one branch.
    items = torch.tensor([[9, 4, 2, -1], [1, 2, 3, 4]])
    more = torch.tensor([[4, 8, 2, 9], [5, 6, 7, 8]])
    scores = log(torch.tensor([[0.5, 0.3, 0.01, 0.0], [0.4, 0.3, 0.2, 0.1]]))
    more_scores = log(torch.tensor([[0.3, 0.2, 0.02, 0.05], [0.04, 0.03, 0.02, 0.01]]))
    both, both_s = torch.cat([items, more], 1), torch.cat([scores, more_scores], 1)
    top, s = distinct_topk(both, both_s, 5, combine="sum")
    assert top[0].tolist() == [4, 9, 8, 2, -1]
    torch.testing.assert_close(s[0, :4].exp(), torch.tensor([0.6, 0.55, 0.2, 0.03]))
    assert s[0, 4] == float("-inf")
    # No item in common: the same list and scores as "max".
    assert torch.equal(distinct_topk(both[1:], both_s[1:], 8, "sum")[0], distinct_topk(both[1:], both_s[1:], 8, "max")[0])
    torch.testing.assert_close(distinct_topk(both[1:], both_s[1:], 8, "sum")[1], distinct_topk(both[1:], both_s[1:], 8)[1])
    top_max, _ = distinct_topk(both, both_s, 5, combine="max")
    assert top_max[0].tolist() == [9, 4, 8, 2, -1]
    with pytest.raises(ValueError, match="combine must be one of"):
        distinct_topk(both, both_s, 5, combine="mean")


def test_triton_path_returns_the_same_items_as_the_reference():
    pytest.importorskip("triton")
    model, index, _ = make_model()
    hist = histories([[1, 2, 3, 9, 10], [4], []])
    ref_items, ref_scores = retrieve_indices(model, index, hist, k=6, kernel="torch")
    tri_items, tri_scores = retrieve_indices(model, index, hist, k=6, kernel="triton")
    assert torch.equal(ref_items, tri_items)
    torch.testing.assert_close(ref_scores, tri_scores, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("branch_merge", ["sum", "max"])
def test_items_sharing_a_sid_tie_and_come_in_the_index_order(branch_merge):
    # The documented tie rule (genret.tokenizers.unique_codes): where items must share a SID they
    # get its score and are listed in the SID index's order: ascending residual norm, then item index.
    model, _, codes = make_model()
    codes = codes.clone()
    codes[[6, 9, 21]] = codes[5].clone()  # four items on one SID
    model.set_item_codes(codes)
    norm = torch.ones(N_ITEMS)
    norm[[5, 6, 9, 21]] = torch.tensor([0.3, 0.1, 0.3, 0.2])  # order 6, 21, then 5 and 9 by index
    index = SIDIndex.build(codes.numpy(), K, residual_norm=norm)
    items, scores = retrieve_indices(model, index, histories([[1, 2, 3, 10]]), k=N_ITEMS, beam_width=64,
                                     kernel="torch", branch_merge=branch_merge)
    listed = items[0].tolist()
    positions = [listed.index(i) for i in (6, 21, 5, 9)]
    assert positions == sorted(positions) and positions[-1] - positions[0] == 3  # one block, in index order
    assert torch.equal(scores[0, positions], scores[0, positions[0]].expand(4))


def test_dualgr_retriever_adds_a_cold_item_by_its_sid():
    from genret.decoding.retriever import Retriever

    model, index, codes = make_model(n_items=0)  # pure SIDs: no item-id rows
    retriever = Retriever(model, index, list(range(100, 100 + N_ITEMS)), kernel="torch")
    # The new item shares no SID with anyone: only the added index entry can produce it.
    new_sid = torch.tensor([[7, 7, 7]])
    assert not (codes == new_sid).all(1).any()
    retriever.add_items([999], new_sid)
    assert retriever.index.n_items == N_ITEMS + 1
    assert torch.equal(retriever.index.codes[:N_ITEMS], codes)  # existing SIDs unchanged
    everything = retriever.retrieve([[100, 101]], k=N_ITEMS + 1).items[0]
    assert 999 in everything
    assert retriever.retrieve([[999]], k=5).items  # a cold item can also sit in a history
    with_ids, index2, _ = make_model()
    with pytest.raises(ValueError, match="use_item_id: false"):
        Retriever(with_ids, index2, list(range(N_ITEMS)), kernel="torch").add_items([999], new_sid)
