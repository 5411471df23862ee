"""Count the ops a piece of code launches and the host synchronisations it forces, on any device.

Issue 26 asks for a decode loop with no host synchronisation and few launched ops per level-step.
Both are properties of the op stream, not of the GPU, so they are counted on a CPU too:

* **ops**: every ATen op that reaches the dispatcher (seen by a `TorchDispatchMode`, i.e. after
  PyTorch's composite ops are decomposed), except views (`reshape` of a contiguous tensor,
  `expand`, `select`, ...: metadata only, no kernel), allocations without a fill (`empty`) and
  Python numbers wrapped as 0-dim host tensors (`scalar_tensor`).
  On a GPU each counted op is (at least) one kernel launch or copy; fused or compiled code shows
  up as fewer ops.
* **host syncs**: the ops that, on CUDA, make the host wait for the device, because the host
  needs a value or a shape only the device knows:
  - `aten._local_scalar_dense`: `.item()`, `int(t)`, `float(t)`, `bool(t)`, `if t:`;
  - ops whose output shape depends on values: `nonzero`, `masked_select`, indexing or assigning
    with a boolean mask (`aten.index` / `index_put_` with a bool index: they run `nonzero`),
    `repeat_interleave` without `output_size`, `unique` / `unique_consecutive`, `bincount`;
  - ops that return a Python bool: `equal`, `is_nonzero`;
  - copies between the host and the device (`_to_copy` / `copy_` across devices; on a CPU run
    there are none, so an upload such as `torch.tensor(python_list, device=...)` in the loop is
    only seen on CUDA; `x[i] = True` wraps True as a CPU scalar, which is no upload);
  - `.tolist()` and `.numpy()` of a CPU tensor, which read memory without any ATen op and so are
    caught one level up, by a `TorchFunctionMode` (on CUDA they copy to the host first, counted above).
  On CUDA `torch.cuda.set_sync_debug_mode("warn")` is the device's own check; this list is what
  makes the count measurable on a CPU, where nothing ever waits.

* **Triton kernels**: a Triton launch (`kernel[grid](...)`) is no ATen op, so the dispatch mode
  alone would not see it (and under TRITON_INTERPRET=1 it would see the interpreter's own tensor
  copies instead). While counting, `triton.runtime.jit.KernelInterface.__getitem__` is wrapped:
  each launch counts as one op named `triton.<kernel>` and nothing run inside it is counted, so
  the Triton path's count is its real launch count on CUDA and in the interpreter alike.

Regions: counts are kept per `torch.profiler.record_function` name (the decode loop marks each
level-step `genret.decode.level_step`), so a caller can tell the loop from the set-up around it.
The record_function markers themselves are not counted.

    with OpCounter() as counter:
        retrieve_indices(...)
    counter.total.ops, counter.regions["genret.decode.level_step"].syncs, counter.sync_sites
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter", "RegionCount", "LEVEL_STEP"]

# The record_function name of one beam-search level of one DBR branch (genret.decoding.beam_search).
LEVEL_STEP = "genret.decode.level_step"

aten = torch.ops.aten

# Ops that always force a device -> host wait on CUDA.
_ALWAYS_SYNC = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
    aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default, aten._unique.default,
    aten.bincount.default, aten.equal.default, aten.is_nonzero.default,
}
# Allocations whose contents are not written, and Python numbers wrapped as 0-dim CPU tensors
# (`torch.where(m, x, 0.0)`: scalar_tensor on the host, passed to the kernel by value): no kernel.
_NO_KERNEL = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
              aten.new_empty.default, aten.new_empty_strided.default, aten.lift_fresh.default,
              aten.scalar_tensor.default,
              aten._unsafe_view.default}  # a view that autograd treats as a new tensor: still no kernel
_PROFILER_ENTER = torch.ops.profiler._record_function_enter_new.default
_PROFILER_EXIT = torch.ops.profiler._record_function_exit._RecordFunction


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _forces_sync(func, args, kwargs, out) -> bool:
    if func in _ALWAYS_SYNC:
        return True
    packet = func.overloadpacket
    if packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_) and len(args) > 1:
        return _has_bool_index(args[1])
    if packet is aten.repeat_interleave and func is aten.repeat_interleave.Tensor:
        return kwargs.get("output_size", args[1] if len(args) > 1 else None) is None
    if packet is aten.repeat_interleave and func is aten.repeat_interleave.self_Tensor:
        return (kwargs.get("output_size", args[3] if len(args) > 3 else None)) is None
    if packet in (aten._to_copy, aten.copy_, aten.copy):
        source = args[1] if packet is not aten._to_copy else args[0]
        target = out if packet is aten._to_copy else args[0]
        return (isinstance(source, torch.Tensor) and isinstance(target, torch.Tensor)
                and source.device.type != target.device.type)
    return False


def _count_triton_launches(counter: "OpCounter"):
    """Make every Triton launch count as one op of `counter` until the returned undo is called."""
    try:
        from triton.runtime.jit import KernelInterface
    except Exception:  # no triton (or a broken install): nothing can launch
        return lambda: None
    original = KernelInterface.__getitem__

    def counted_getitem(kernel, grid):
        launch = original(kernel, grid)
        name = getattr(getattr(kernel, "fn", kernel), "__name__", "kernel")

        def counted_launch(*args, **kwargs):
            counter._record_launch(f"triton.{name}")
            counter._inside_kernel += 1
            try:
                return launch(*args, **kwargs)
            finally:
                counter._inside_kernel -= 1

        return counted_launch

    KernelInterface.__getitem__ = counted_getitem

    def undo():
        KernelInterface.__getitem__ = original

    return undo


@dataclass
class RegionCount:
    """ops: kernels launched; syncs: host synchronisations; entries: times the region was entered."""

    ops: int = 0
    syncs: int = 0
    entries: int = 0
    op_names: Counter = field(default_factory=Counter)


class _HostReads(TorchFunctionMode):
    """`.tolist()` / `.numpy()` of a CPU tensor: a host read without any ATen op."""

    def __init__(self, counter: "OpCounter"):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (func in (torch.Tensor.tolist, torch.Tensor.numpy) and args and not args[0].is_cuda
                and not self.counter._inside_kernel):
            self.counter._record_sync(f"Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


class OpCounter(TorchDispatchMode):
    """Counts ops and host syncs (module docstring) in total and per record_function region.

    Attributes:
        total: RegionCount of everything run inside the `with` block.
        regions: {record_function name: RegionCount}; an op inside nested regions counts for each.
        sync_sites: Counter of the sync-forcing op names (for finding them).
    """

    def __init__(self):
        super().__init__()
        self.total = RegionCount()
        self.regions: dict[str, RegionCount] = {}
        self.sync_sites: Counter = Counter()
        self._stack: list[str] = []
        self._host_reads = _HostReads(self)
        self._inside_kernel = 0  # > 0 while a Triton launch runs (the interpreter's ops are not counted)
        self._unwrap_triton = lambda: None

    def __enter__(self):
        self._unwrap_triton = _count_triton_launches(self)
        self._host_reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._host_reads.__exit__(*exc)
        self._unwrap_triton()
        return out

    def _record_launch(self, name: str) -> None:
        for count in self._counts():
            count.ops += 1
            count.op_names[name] += 1

    def _counts(self):
        yield self.total
        for name in set(self._stack):
            yield self.regions[name]

    def _record_sync(self, name: str) -> None:
        where = self._stack[-1] if self._stack else "-"
        self.sync_sites[f"{name} @ {where}"] += 1
        for count in self._counts():
            count.syncs += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _PROFILER_ENTER:
            name = args[0]
            self._stack.append(name)
            self.regions.setdefault(name, RegionCount()).entries += 1
            return func(*args, **kwargs)
        if func is _PROFILER_EXIT:
            if self._stack:
                self._stack.pop()
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if self._inside_kernel:
            return out
        if _forces_sync(func, args, kwargs, out):
            self._record_sync(str(func.overloadpacket.__name__))
        if not func.is_view and func not in _NO_KERNEL:
            for count in self._counts():
                count.ops += 1
                count.op_names[func.overloadpacket.__name__] += 1
        return out

    def per_entry(self, region: str) -> tuple[float, float]:
        """(ops, syncs) per entry of a region (0, 0 when it never ran)."""
        count = self.regions.get(region)
        if count is None or not count.entries:
            return 0.0, 0.0
        return count.ops / count.entries, count.syncs / count.entries
