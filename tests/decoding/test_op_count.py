"""OpCounter: counts launched ops and the ops that force a host sync on CUDA, per record_function region."""

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
