"""GRank's network: the decomposed mask, and a ranker that learns a target-aware rule a dot product cannot."""

import torch
from torch import nn

from genret.models.grank import GRank, GRankConfig, info_nce


def tiny(n_items=50, **kw):
    torch.manual_seed(0)
    return GRank(GRankConfig(n_items=n_items, max_len=8, long_len=16, d_model=16, n_heads=2, n_layers=2,
                             dropout=0.0, ranker_hidden=32, **kw)).eval()


def test_decomposed_mask_history_never_sees_candidates_and_candidates_not_each_other():
    model = tiny()
    items = torch.tensor([[-1, -1, 3, 4, 5], [1, 2, 3, 4, 5]])
    plain, _ = model.encode(items)
    a = torch.tensor([[7, 8, 9], [7, 8, 9]])
    b = torch.tensor([[7, 20, 21], [7, 22, 23]])
    hidden_a, cand_a = model.encode(items, a)
    hidden_b, cand_b = model.encode(items, b)
    # The history and U are the same with any (or no) candidate tokens: they never attend to them.
    torch.testing.assert_close(hidden_a, plain)
    torch.testing.assert_close(hidden_b, plain)
    # A candidate's output depends on the history and itself only, not on its neighbours.
    torch.testing.assert_close(cand_a[:, 0], cand_b[:, 0])
    assert not torch.allclose(cand_a[:, 1], cand_b[:, 1])
    # ... and it does depend on the history.
    _, cand_other = model.encode(torch.tensor([[-1, -1, 30, 31, 32], [11, 12, 13, 14, 15]]), a)
    assert not torch.allclose(cand_other, cand_a)


def test_generate_and_rank_excludes_and_returns_k1_candidates():
    model = tiny()
    items = torch.tensor([[1, 2, 3]])
    exclude = torch.zeros(1, 50, dtype=torch.bool)
    exclude[0, [1, 2, 3]] = True
    cand, gen, rank = model.generate_and_rank(items, items, 10, exclude)
    assert cand.shape == (1, 10) and not set(cand[0].tolist()) & {1, 2, 3}
    assert (gen[0, :-1] >= gen[0, 1:]).all()  # generator order
    torch.testing.assert_close(rank, model.rank_scores(cand, items))
    residual = tiny(ranker_residual=True)
    _, gen, rank = residual.generate_and_rank(items, items, 10, exclude)
    torch.testing.assert_close(rank - gen, residual.ranker(residual.item_embedding(cand), residual.ranker_history(items),
                                                           items >= 0))
    torch.testing.assert_close(gen, residual.generator_scores(cand, residual.user_vectors(items)))
    # The residual is added without gradient: the ranker's loss never trains the user vector through it.
    users = residual.user_vectors(items).detach().requires_grad_()
    residual.rank_scores(cand, items, users).sum().backward()
    assert users.grad is None


def test_last_position_readout_is_the_newest_items_output_and_ignores_the_user_token():
    import pytest

    model = tiny(readout="last_position")
    items = torch.tensor([[-1, -1, 3, 4, 5], [1, 2, 3, 4, 5]])
    hidden, _ = model.encode(items)
    torch.testing.assert_close(model.user_vectors(items), hidden[:, -2])
    before = model.user_vectors(items)
    with torch.no_grad():
        model.user_token.add_(1.0)  # U comes after every item: the items never see it
    torch.testing.assert_close(model.user_vectors(items), before)
    assert torch.equal(tiny().user_vectors(items), tiny().encode(items)[0][:, -1])  # the paper's: U
    with pytest.raises(ValueError, match="readout must be one of"):
        tiny(readout="mean")


class DotProduct(nn.Module):
    """The baseline: a user vector from the mean of the history embeddings (through an MLP), scored by
    a dot product with the candidate's embedding."""

    def __init__(self, n_items, d):
        super().__init__()
        self.embedding = nn.Embedding(n_items, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))

    def forward(self, candidates, history):
        user = self.mlp(self.embedding(history).mean(1))
        return (self.embedding(candidates) * user[:, None]).sum(-1)


def matching_task(n, n_items=400, length=10, k=20, generator=None):
    """The right candidate is the one that matches one of the history's items; the other candidates
    match none. With 400 items in 16 dimensions no user vector can single out 10 arbitrary items by
    a dot product (the score matrix would need rank ~n_items), while attention can look for the match."""
    history = torch.randint(0, n_items, (n, length), generator=generator)
    pick = torch.randint(0, length, (n,), generator=generator)
    positive = history[torch.arange(n), pick]
    negatives = torch.randint(0, n_items, (n, k - 1), generator=generator)
    clash = (negatives[..., None] == history[:, None]).any(-1)
    while bool(clash.any()):
        negatives = torch.where(clash, (negatives + 1) % n_items, negatives)
        clash = (negatives[..., None] == history[:, None]).any(-1)
    return history, torch.cat([positive[:, None], negatives], dim=1)


def accuracy(score_fn, history, candidates):
    with torch.no_grad():
        return float((score_fn(candidates, history).argmax(1) == 0).float().mean())


def test_ranker_learns_a_target_aware_rule_a_dot_product_cannot():
    torch.manual_seed(0)
    n_items, d = 400, 16
    gen = torch.Generator().manual_seed(0)
    test_history, test_candidates = matching_task(1000, n_items, generator=torch.Generator().manual_seed(1))
    model = GRank(GRankConfig(n_items=n_items, max_len=10, long_len=10, d_model=d, n_heads=2, n_layers=1,
                              dropout=0.0, ranker_hidden=64))
    baseline = DotProduct(n_items, d)
    results = {}
    for name, net, score in (("ranker", model, lambda c, h: model.rank_scores(c, h)), ("dot", baseline, baseline)):
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(700):
            history, candidates = matching_task(128, n_items, generator=gen)
            loss = info_nce(score(candidates, history), torch.zeros(128, dtype=torch.long), 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        results[name] = accuracy(score, test_history, test_candidates)
    assert results["ranker"] > 0.85, results  # chance: 1 / 20
    assert results["dot"] < 0.5, results


def test_info_nce_is_cross_entropy_at_its_temperature_over_allowed_columns():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    allowed = torch.ones(6, 5, dtype=torch.bool)
    allowed[0, 3] = False
    for temperature in (1.0, 0.5):
        expected = torch.nn.functional.cross_entropy((logits / temperature).masked_fill(~allowed, float("-inf")), target)
        assert torch.allclose(info_nce(logits, target, temperature, allowed), expected)
    assert not torch.allclose(info_nce(logits, target, 0.5), info_nce(logits, target, 1.0))
