"""OpCounter: counts launched ops and the ops that force a host sync on CUDA, per record_function region."""

import pytest
import torch
from torch.profiler import record_function

from genret.decoding.op_count import OpCounter


def test_counts_syncs_and_ops_per_region():
    x = torch.arange(6.0)
    mask = x > 2
    with OpCounter() as counter:
        with record_function("loop"):
            y = x * 2 + 1  # two kernels, no sync
            y.reshape(2, 3).expand(2, 2, 3)  # views: no kernel
        with record_function("loop"):
            torch.where(mask, x, 0.0).sum()  # no sync
        x[mask]  # boolean indexing: nonzero inside
        int(x.max())  # .item()
        torch.repeat_interleave(torch.arange(2), torch.tensor([1, 2]))  # output size unknown
        torch.repeat_interleave(torch.arange(2), torch.tensor([1, 2]), output_size=3)  # known: no sync
        x.tolist()
    loop = counter.regions["loop"]
    assert loop.entries == 2 and loop.syncs == 0
    assert loop.ops == 4  # mul, add, where, sum
    assert counter.total.syncs == 4
    assert counter.per_entry("loop") == (2.0, 0.0)
    assert counter.per_entry("absent") == (0.0, 0.0)
    assert {site.split(" @ ")[0] for site in counter.sync_sites} == {"index", "_local_scalar_dense",
                                                                     "repeat_interleave", "Tensor.tolist"}


@pytest.mark.parametrize("use_s2d,rope,dbr", [(True, False, True), (False, True, True), (True, True, False)])
def test_the_decode_loop_forces_no_host_sync(use_s2d, rope, dbr):
    # Issue 26: between the first and the last kernel of the level-steps the host never waits.
    from genret.decoding.beam_search import Histories, retrieve_indices
    from genret.decoding.op_count import LEVEL_STEP
    from genret.models.dualgr import DualGR, DualGRConfig
    from genret.tokenizers import SIDIndex

    torch.manual_seed(0)
    K, L, N = 8, 3, 40
    model = DualGR(DualGRConfig(codebook_size=K, n_levels=L, d_model=16, n_heads=2, n_blocks=2, d_ffn=32,
                                dropout=0.0, max_history=12, long_window=12, short_window=3, use_s2d=use_s2d,
                                cross_rope=rope, use_dbr=dbr)).eval()
    codes = torch.randint(0, K, (N, L), generator=torch.Generator().manual_seed(1))
    model.set_item_codes(codes)
    index = SIDIndex.build(codes.numpy(), K)
    hist = Histories(torch.tensor([0, 5, 5, 17]), torch.randint(0, N, (17,)), torch.zeros(3, 0, dtype=torch.long))
    with OpCounter() as counter:
        retrieve_indices(model, index, hist, k=10, kernel="torch", short_weight=0.3)
    steps = counter.regions[LEVEL_STEP]
    assert steps.entries == L  # both DBR branches decode as one batch
    assert steps.syncs == 0, counter.sync_sites
    assert steps.ops > 0


def test_a_triton_launch_counts_as_one_op_and_its_insides_as_none():
    # A Triton launch is no ATen op: the counter wraps the launch so that it counts once, and the
    # interpreter's own tensor copies inside it (TRITON_INTERPRET=1 on a CPU) count not at all.
    pytest.importorskip("triton")
    from genret.kernels import beam_step_triton
    from genret.kernels.dispatch import interpreting

    if not (interpreting() or torch.cuda.is_available()):
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    device = "cpu" if interpreting() else "cuda"
    logits, scores = torch.randn(2, 3, 10, device=device), torch.zeros(2, 3, device=device)
    with OpCounter() as counter:
        beam_step_triton(logits, scores, None, 4)
    names = counter.total.op_names
    assert names["triton._beam_row_kernel"] == 1 and names["triton._beam_merge_kernel"] == 1
    assert "set_" not in names  # the interpreter's copies into numpy-backed storage
    # Leaving the counter restores the launch path: no count outside it.
    from triton.runtime.jit import KernelInterface
    assert KernelInterface.__getitem__.__name__ == "__getitem__"
