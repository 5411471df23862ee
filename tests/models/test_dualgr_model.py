"""DualGR's shapes, masks, gate and loss on hand-made batches (no data set needed)."""

import dataclasses

import pytest
import torch

from genret.models.dualgr import DualGR, DualGRConfig, TrainBatch

K, L, N_ITEMS = 16, 3, 60


def make_config(**kw) -> DualGRConfig:
    base = dict(codebook_size=K, n_levels=L, n_items=N_ITEMS, user_feature_cardinalities=[3], d_model=32,
                n_heads=4, n_blocks=2, d_ffn=64, dropout=0.0, max_history=24, long_window=24, short_window=4,
                in_bucket_cap=3)
    base.update(kw)
    return DualGRConfig(**base)


def make_batch(B=3, T=12, N=4, seed=0, item_codes=None) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(0, N_ITEMS, (B, T), generator=g)
    items[0, T - 3:] = -1  # a shorter sequence
    if item_codes is None:
        item_codes = torch.randint(0, K, (N_ITEMS, L), generator=torch.Generator().manual_seed(99))
    codes = item_codes[items.clamp(min=0)] * (items >= 0).unsqueeze(-1)
    neg_items = torch.randint(0, N_ITEMS, (B, N), generator=g)
    neg_items[1, 2:] = -1
    neg_codes = item_codes[neg_items.clamp(min=0)] * (neg_items >= 0).unsqueeze(-1)
    return TrainBatch(items=items, codes=codes, user_feats=torch.randint(0, 4, (B, 1), generator=g),
                      side=torch.zeros(B, T, 0, dtype=torch.long), neg_items=neg_items, neg_codes=neg_codes,
                      neg_pos=torch.randint(0, T - 3, (B, N), generator=g), loss_mask=items >= 0)


def test_forward_shapes_and_finite_loss():
    torch.manual_seed(0)
    model = DualGR(make_config())
    batch = make_batch()
    out = model(batch)
    assert len(out["pos_logits"]) == L
    for logits in out["pos_logits"]:
        assert logits.shape == (3, 12, K)
    assert out["neg_logits"].shape == (3, 4, K)
    loss = model.loss(batch, out)
    assert torch.isfinite(loss["loss"])
    loss["loss"].backward()
    assert model.heads[0].weight.grad is not None


@pytest.mark.parametrize("encoder_blocks", [0, 2])
def test_targets_never_see_their_own_or_later_actions(encoder_blocks):
    """Also with the action encoder: it is causal, so no context token carries a later action."""
    torch.manual_seed(0)
    model = DualGR(make_config(encoder_blocks=encoder_blocks, last_action_query=bool(encoder_blocks))).eval()
    batch = make_batch()
    t = 5
    changed = dataclasses.replace(batch)
    changed.items = batch.items.clone()
    changed.codes = batch.codes.clone()
    changed.items[:, t:] = (batch.items[:, t:] + 7) % N_ITEMS
    changed.codes[:, t + 1:] = (batch.codes[:, t + 1:] + 3) % K  # keep the target's own SID (teacher forcing)
    changed.codes[:, t, 0] = batch.codes[:, t, 0]
    a, b = model(batch), model(changed)
    for level in range(L):
        torch.testing.assert_close(a["pos_logits"][level][1:, :t], b["pos_logits"][level][1:, :t])
    # The level-1 prediction of target t depends only on actions before t.
    torch.testing.assert_close(a["pos_logits"][0][1:, t], b["pos_logits"][0][1:, t])


def test_entp_equals_ntp_without_negatives():
    torch.manual_seed(0)
    batch = make_batch()
    no_neg = dataclasses.replace(batch, neg_items=torch.full_like(batch.neg_items, -1))
    entp = DualGR(make_config(use_entp=True)).eval()
    ntp = DualGR(make_config(use_entp=False)).eval()
    ntp.load_state_dict(entp.state_dict())
    torch.testing.assert_close(entp.loss(no_neg)["loss"], ntp.loss(batch)["loss"])
    # and with negatives present, ENTP differs from NTP
    assert not torch.allclose(entp.loss(batch)["loss"], ntp.loss(batch)["loss"])


def test_entp_negative_term_matches_equation_10():
    torch.manual_seed(0)
    cfg = make_config(alpha=0.3)
    model = DualGR(cfg).eval()
    batch = make_batch()
    out = model(batch)
    loss = model.loss(batch, out)
    valid = batch.items >= 0
    pos = sum(
        -(logits.log_softmax(-1).gather(-1, batch.codes[..., lv:lv + 1]).squeeze(-1).exp()
          .clamp(cfg.eps, 1 - cfg.eps).log() * valid).sum()
        for lv, logits in enumerate(out["pos_logits"]))
    neg_valid = batch.neg_items >= 0
    p1 = out["neg_logits"].softmax(-1).gather(-1, batch.neg_codes[..., :1]).squeeze(-1).clamp(cfg.eps, 1 - cfg.eps)
    neg = (-cfg.alpha * torch.log(1 - p1) * neg_valid).sum()
    expected = (pos + neg) / (valid.sum() + neg_valid.sum())
    torch.testing.assert_close(loss["loss"], expected)


def test_no_gradient_through_the_hard_gate():
    model = DualGR(make_config())
    batch = make_batch()
    gate = model.dbr_choose_short(batch.codes[..., 0], batch.items >= 0, batch.codes[..., 0],
                                  torch.arange(12).expand(3, 12))
    assert gate.dtype == torch.bool and not gate.requires_grad
    # The gate reads E_vocab^(1) but the loss's gradient on it comes only from the embedding's use as input.
    out = model(batch)
    assert not out["choose_short"].requires_grad


def test_gate_prefers_short_window_on_a_burst():
    model = DualGR(make_config(short_window=3, long_window=24))
    with torch.no_grad():
        model.sid_embeddings[0].weight.copy_(torch.eye(K, 32)[:K])  # orthogonal level-1 codes
    T = 12
    level1 = torch.tensor([[1] * 9 + [7] * 3])  # long-term interest 1, a burst of 7 at the end
    valid = torch.ones(1, T, dtype=torch.bool)
    pos = torch.tensor([[T, T]])
    choose = model.dbr_choose_short(level1, valid, torch.tensor([[7, 1]]), pos)
    assert choose.tolist() == [[True, False]]


def test_in_bucket_mask_keeps_only_same_bucket_recent_actions():
    model = DualGR(make_config(in_bucket_cap=2))
    level1 = torch.tensor([[3, 5, 3, 3, 5, 3, 1]])
    valid = torch.tensor([[True] * 6 + [False]])
    mask = model.in_bucket_mask(level1, valid, torch.tensor([[3, 5, 1]]), torch.tensor([[6, 6, 7]]))
    assert mask.shape == (1, 3, 8)
    assert mask[..., 0].all()  # the user token is always visible
    actions = mask[0, :, 1:]
    assert actions[0].nonzero().flatten().tolist() == [3, 5]  # the two most recent s1=3 before t=6
    assert actions[1].nonzero().flatten().tolist() == [1, 4]
    assert actions[2].nonzero().flatten().tolist() == []  # the padded s1=1 action is never visible
    # only same-s1 actions, anywhere in a random batch
    batch = make_batch()
    T = batch.items.shape[1]
    m = model.in_bucket_mask(batch.codes[..., 0], batch.items >= 0, batch.codes[..., 0], torch.arange(T).expand(3, T))
    same = batch.codes[..., 0].unsqueeze(1) == batch.codes[..., 0].unsqueeze(2)
    assert not (m[..., 1:] & ~same).any()


def test_window_mask_widths():
    model = DualGR(make_config(short_window=2, long_window=5))
    valid = torch.ones(1, 8, dtype=torch.bool)
    mask = model.window_mask(torch.tensor([[6, 6]]), torch.tensor([[True, False]]), 9, valid)
    assert mask[0, 0, 1:].nonzero().flatten().tolist() == [4, 5]
    assert mask[0, 1, 1:].nonzero().flatten().tolist() == [1, 2, 3, 4, 5]


def test_config_validation_errors():
    with pytest.raises(ValueError, match="divisible"):
        DualGR(make_config(d_model=30))
    with pytest.raises(ValueError, match="short_window"):
        DualGR(make_config(short_window=40))
    with pytest.raises(ValueError, match="encoder_blocks"):
        DualGR(make_config(encoder_blocks=-1))
    with pytest.raises(ValueError, match="context_dropout"):
        DualGR(make_config(context_dropout=1.0))


def test_sid_table_moves_with_the_model_but_is_no_buffer():
    model = DualGR(make_config())
    codes = torch.randint(0, K, (N_ITEMS, L))
    model.set_item_codes(codes)
    # Not a buffer, so weight averaging (which averages buffers) never blends the integer codes.
    assert all(b is not model.item_codes for b in model.buffers())
    model.double()
    assert model.item_codes.dtype == torch.long and torch.equal(model.item_codes, codes)
    model.to("meta")
    assert model.item_codes.device.type == "meta" and model.bos.device.type == "meta"


def test_routing_prior_averages_the_recorded_counts_and_travels_in_the_state_dict():
    model = DualGR(make_config())
    assert model.short_weight == 0.5  # nothing recorded: the branches weigh the same
    model.record_routing(torch.tensor(2), torch.tensor(10))
    assert model.short_weight == pytest.approx(0.2)  # a ratio of averages: one step is not pulled towards zero
    model.record_routing(torch.tensor(12), torch.tensor(30))  # batches count by their targets
    m = DualGR.ROUTING_MOMENTUM
    assert model.short_weight == pytest.approx((2 * (1 - m) + 12) / (10 * (1 - m) + 30))
    model.record_routing(torch.tensor(0), torch.tensor(0))  # a batch without split targets changes little
    assert model.short_weight == pytest.approx((2 * (1 - m) + 12) / (10 * (1 - m) + 30))
    for _ in range(2000):
        model.record_routing(torch.tensor(7), torch.tensor(10))
    assert model.short_weight == pytest.approx(0.7, abs=1e-4)  # float32 sums
    copy = DualGR(make_config())
    copy.load_state_dict(model.state_dict())  # the prior travels in the state dict (and checkpoints)
    assert copy.short_weight == model.short_weight
    legacy_state = {k: v for k, v in model.state_dict().items() if k != "routing_stats"}
    with pytest.raises(RuntimeError, match="routing_stats"):  # a state dict without the prior is refused
        copy.load_state_dict(legacy_state)
    for _ in range(2000):
        model.record_routing(torch.tensor(10), torch.tensor(10))
    assert model.short_weight == 0.99  # kept off 0 and 1: neither branch's list is ever dropped


def test_routing_counts_only_targets_whose_windows_differ():
    # short_window 4: a target with more than 4 actions before it is the first whose windows differ.
    batch = make_batch(T=12)  # rows of 12, 12 and 9 positives
    out = DualGR(make_config()).loss(batch, chunks=2)
    assert out["n_split"].item() == 7 + 7 + 4  # positions 5.. of each row
    forward = DualGR(make_config())(batch)
    assert out["n_short"].item() <= out["n_split"].item()
    # Where the windows hold the same actions the gate ties, and a tie goes to the long branch.
    assert not forward["choose_short"][:, :5].any()
    assert DualGR(make_config(short_window=24)).loss(batch)["n_split"].item() == 0  # one window: nothing to split


def test_action_encoder_makes_tokens_depend_on_earlier_actions():
    """Without the encoder an action's context token is its own embedding; with it, the token of
    the newest action changes when an earlier action does (causality: see the test above)."""
    torch.manual_seed(0)
    table = torch.randint(0, K, (N_ITEMS, L), generator=torch.Generator().manual_seed(99))
    a, b = torch.tensor([[3, 7, 11, 12]]), torch.tensor([[5, 7, 11, 12]])  # the first action differs
    for blocks in (0, 2):
        model = DualGR(make_config(encoder_blocks=blocks)).eval()
        ctx_a, ctx_b = (model.context(x, table[x], torch.zeros(1, 1, dtype=torch.long),
                                      torch.zeros(1, 4, 0, dtype=torch.long)) for x in (a, b))
        assert torch.allclose(ctx_a[:, -1], ctx_b[:, -1]) == (blocks == 0)


@pytest.mark.parametrize("rope", [False, True])
def test_cross_rope_makes_the_order_of_actions_matter(rope):
    """Without positions the context is a bag of actions: reordering the history changes nothing.
    With cross_rope a score depends on how long ago each action happened."""
    torch.manual_seed(0)
    model = DualGR(make_config(cross_rope=rope, use_dbr=False, use_s2d=False)).eval()
    table = torch.randint(0, K, (N_ITEMS, L), generator=torch.Generator().manual_seed(99))

    def last_target_logits(seq):
        items = torch.tensor([seq])
        batch = TrainBatch(items=items, codes=table[items], user_feats=torch.zeros(1, 1, dtype=torch.long),
                           side=torch.zeros(1, len(seq), 0, dtype=torch.long),
                           neg_items=torch.zeros(1, 0, dtype=torch.long),
                           neg_codes=torch.zeros(1, 0, L, dtype=torch.long),
                           neg_pos=torch.zeros(1, 0, dtype=torch.long), loss_mask=items >= 0)
        return model(batch)["pos_logits"][0][0, -1]

    history = [3, 7, 11, 12, 15]
    same = torch.allclose(last_target_logits(history + [2]), last_target_logits(history[::-1] + [2]), atol=1e-5)
    assert same != rope
    assert (model.rope_dims > 0) == rope


def skewed_batch(seed=0) -> TrainBatch:
    """Six users of lengths 12, 2, 7, 1, 12, 4 (left-aligned), negatives inside each user's span,
    some slots invalid at either end, as gather_batch leaves them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([12, 2, 7, 1, 12, 4])
    B, T, N = len(lengths), 12, 5
    item_codes = torch.randint(0, K, (N_ITEMS, L), generator=torch.Generator().manual_seed(99))
    items = torch.randint(0, N_ITEMS, (B, T), generator=g)
    items[torch.arange(T)[None, :] >= lengths[:, None]] = -1
    neg_items = torch.randint(0, N_ITEMS, (B, N), generator=g)
    neg_items[1, :] = -1
    neg_items[3, 1:] = -1
    neg_items[2, 0] = -1  # a leading invalid slot (a negative that fell before the window)
    neg_pos = (torch.rand(B, N, generator=g) * (lengths[:, None] + 1)).long()
    return TrainBatch(items=items, codes=item_codes[items.clamp(min=0)] * (items >= 0).unsqueeze(-1),
                      user_feats=torch.randint(0, 4, (B, 1), generator=g),
                      side=torch.zeros(B, T, 0, dtype=torch.long), neg_items=neg_items,
                      neg_codes=item_codes[neg_items.clamp(min=0)] * (neg_items >= 0).unsqueeze(-1),
                      neg_pos=neg_pos * (neg_items >= 0), loss_mask=items >= 0)


@pytest.mark.parametrize("overrides", [{}, {"encoder_blocks": 1, "last_action_query": True, "cross_rope": True},
                                       {"use_dbr": False, "use_s2d": False}])
def test_length_chunks_give_the_same_loss_and_gradient(overrides):
    from genret.models.dualgr import split_by_length

    torch.manual_seed(0)
    model = DualGR(make_config(**overrides))  # dropout 0: the passes are comparable
    batch = skewed_batch()
    whole = model.loss(batch)
    whole["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for chunks in (2, 3, 6, 10):
        model.zero_grad()
        part = model.loss(batch, chunks=chunks)
        for key in ("loss", "nll_levels", "neg_loss", "n_pos", "n_neg", "short_fraction"):
            torch.testing.assert_close(part[key], whole[key], rtol=1e-5, atol=1e-6, msg=f"{key}, {chunks} chunks")
        part["loss"].backward()
        for name, g in grads.items():
            torch.testing.assert_close(model.get_parameter(name).grad, g, rtol=1e-4, atol=1e-6,
                                       msg=f"grad of {name}, {chunks} chunks")
    pieces = split_by_length(batch, 3)
    assert [tuple(p.items.shape) for p in pieces] == [(2, 12), (2, 7), (2, 2)]  # longest first, trimmed
    assert [p.neg_items.shape[1] for p in pieces] == [5, 5, 1]
    assert sum(int((p.items >= 0).sum()) for p in pieces) == int((batch.items >= 0).sum())
