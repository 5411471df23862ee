"""CPUFastDropout: nn.Dropout's contract (rate, expectation, gradient, eval) from 64-bit draws."""

import pytest
import torch

from genret.models.layers import CPUFastDropout, cpu_drop_mask
from genret.models.dualgr import DualGR, DualGRConfig


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drop_rate_matches_p_in_every_16_bit_lane(p):
    torch.manual_seed(0)
    drop, p_realised = cpu_drop_mask(torch.Size([400_000]), p)
    assert abs(p_realised - p) <= 2**-17
    # Each int64 feeds four consecutive elements; a biased word (e.g. a sign bit that is never
    # set) would show as one lane with a different rate. 100k draws a lane: std <= 0.0016.
    lanes = drop.view(-1, 4).float().mean(0)
    assert torch.all((lanes - p).abs() < 0.008), lanes


def test_mask_has_the_requested_shape_for_sizes_not_divisible_by_four():
    drop, _ = cpu_drop_mask(torch.Size([3, 5, 7]), 0.3)
    assert drop.shape == (3, 5, 7) and drop.dtype == torch.bool


def test_output_keeps_the_expectation_and_zeroes_exactly_the_dropped():
    torch.manual_seed(1)
    x = torch.full((200_000,), 2.0)
    y = CPUFastDropout(0.2).train()(x)
    kept = y != 0
    assert abs(y.mean().item() - 2.0) < 0.02
    assert torch.allclose(y[kept], torch.full_like(y[kept], 2.0 / (1 - 0.2)), atol=1e-3)
    assert abs((~kept).float().mean().item() - 0.2) < 0.005


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    y = CPUFastDropout(0.3).train()(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.all(x.grad[~kept] == 0)
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / (1 - 0.3)), atol=1e-4)


def test_eval_mode_and_zero_p_return_the_input_untouched():
    x = torch.randn(8, 8)
    assert CPUFastDropout(0.5).eval()(x) is x
    assert CPUFastDropout(0.0).train()(x) is x


def test_seeded_masks_repeat_and_different_seeds_differ():
    d = CPUFastDropout(0.5).train()
    x = torch.ones(1000)
    torch.manual_seed(7)
    a = d(x)
    torch.manual_seed(7)
    b = d(x)
    torch.manual_seed(8)
    c = d(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_off_cpu_tensors_use_torch_dropout():
    # The meta device stands in for an accelerator: the CPU mask path must not run there.
    y = CPUFastDropout(0.5).train()(torch.empty(4, 4, device="meta"))
    assert y.device.type == "meta" and y.shape == (4, 4)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_invalid_probability_is_refused(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        CPUFastDropout(p)


def test_dualgr_config_refuses_dropout_of_one():
    with pytest.raises(ValueError, match="dropout must lie in"):
        DualGR(DualGRConfig(codebook_size=8, n_levels=3, dropout=1.0))
