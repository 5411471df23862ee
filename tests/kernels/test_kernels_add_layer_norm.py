"""add_layer_norm: the reference is `x + y` then LayerNorm, and the Triton kernel equals it (both
outputs, fp32 and bf16, widths that are not powers of two).

On CPU the Triton kernel runs in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1)."""

import pytest
import torch
import torch.nn.functional as F

from genret.kernels import add_layer_norm, add_layer_norm_reference, add_layer_norm_triton
from genret.kernels.dispatch import HAVE_TRITON, interpreting

pytestmark = pytest.mark.kernels

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"


def make_inputs(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x, y = (3 * torch.randn(*shape, generator=g) + 1).to(dtype), torch.randn(*shape, generator=g).to(dtype)
    weight, bias = (1 + torch.randn(d, generator=g)).to(dtype), torch.randn(d, generator=g).to(dtype)
    return [t.to(DEVICE) for t in (x, y, weight, bias)]


def test_reference_is_the_sum_and_its_layer_norm():
    x, y, weight, bias = make_inputs((2, 3, 16), seed=0)
    s, h = add_layer_norm_reference(x, y, weight, bias, eps=1e-6)
    assert torch.equal(s, x + y)
    mean, var = s.mean(-1, keepdim=True), s.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(h, (s - mean) / torch.sqrt(var + 1e-6) * weight + bias, atol=1e-5, rtol=1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("shape,y_dtype", [
    ((4, 5, 16), torch.float32), ((7, 48), torch.float32), ((1, 1, 130), torch.float32), ((3, 0, 8), torch.float32),
    ((5, 24), torch.bfloat16),  # under autocast: an fp32 stream plus a bf16 sub-layer output sums in fp32
])
def test_triton_equals_reference_fp32(shape, y_dtype):
    x, y, weight, bias = make_inputs(shape, seed=shape[-1])
    y = y.to(y_dtype)
    s, h = add_layer_norm_triton(x, y, weight, bias)
    s_ref, h_ref = add_layer_norm_reference(x, y, weight, bias)
    assert s.shape == h.shape == x.shape and s.dtype == h.dtype == torch.float32
    torch.testing.assert_close(s, s_ref, atol=0, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.triton
def test_triton_equals_reference_bf16():
    x, y, weight, bias = make_inputs((6, 96), seed=1, dtype=torch.bfloat16)
    s, h = add_layer_norm_triton(x, y, weight, bias)
    s_ref, h_ref = add_layer_norm_reference(x, y, weight, bias)
    assert s.dtype == h.dtype == torch.bfloat16
    # One rounding of the exact sum both ways, within one bf16 unit in the last place (the Triton
    # interpreter's float -> bf16 conversion need not round to nearest as PyTorch does).
    ulp = 2.0 ** (torch.floor(torch.log2(s_ref.float().abs().clamp(min=1e-30))) - 7)
    assert ((s.float() - s_ref.float()).abs() <= ulp).all()
    # h within bf16 rounding of the fp32 result of the same (rounded) sum.
    exact = F.layer_norm(s.float(), (96,), weight.float(), bias.float())
    torch.testing.assert_close(h.float(), exact, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(h.float(), h_ref.float(), atol=3e-2, rtol=2e-2)


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["transposed", "broadcast row", "strided rows"])
def test_triton_reads_inputs_in_any_layout(layout):
    x, y, weight, bias = make_inputs((4, 3, 32), seed=2)
    if layout == "transposed":
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "broadcast row":  # level 1's start token, expanded over the users (stride 0)
        x = x[:1].expand(4, 3, 32)
    else:
        x = torch.cat([x, x], -1)[..., :32]  # rows at stride 64
    s, h = add_layer_norm_triton(x, y, weight, bias)
    s_ref, h_ref = add_layer_norm_reference(x, y, weight, bias)
    assert s.is_contiguous() and h.is_contiguous()
    torch.testing.assert_close(s, s_ref, atol=0, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


def test_bad_shapes_name_the_problem():
    x, y, weight, bias = make_inputs((2, 8), seed=3)
    with pytest.raises(ValueError, match="one shape"):
        add_layer_norm(x, y[:, :4], weight, bias, kernel="torch")
    with pytest.raises(ValueError, match=r"weight and bias must be \(8,\)"):
        add_layer_norm(x, y, weight[:4], bias, kernel="torch")
    with pytest.raises(ValueError, match="floating point"):
        add_layer_norm(x, y.long(), weight, bias, kernel="torch")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRITON and torch.cuda.is_available() and not interpreting()),
                    reason="needs a CUDA GPU and TRITON_INTERPRET unset")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_serving_size(dtype):
    # Paper serving size: 64 query users (two branches x 32) x 256 beams, d 512.
    x, y, weight, bias = make_inputs((64, 256, 512), seed=5, dtype=dtype)
    s, h = add_layer_norm_triton(x, y, weight, bias)
    s_ref, h_ref = add_layer_norm_reference(x, y, weight, bias)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(s, s_ref, **tol)
    torch.testing.assert_close(h, h_ref, **tol)
