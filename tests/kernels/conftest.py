"""`@pytest.mark.triton`: the test launches a Triton kernel, so it is skipped where none can run
(triton missing, or CPU tensors without the interpreter: tests/conftest.py sets TRITON_INTERPRET=1)."""

import pytest
import torch

from genret.kernels.dispatch import HAVE_TRITON, interpreting


def pytest_configure(config):
    config.addinivalue_line("markers", "triton: runs a Triton kernel (compiled on CUDA, else the interpreter)")


def pytest_collection_modifyitems(config, items):
    on_gpu = torch.cuda.is_available() and not interpreting()
    if HAVE_TRITON and (on_gpu or interpreting()):
        return
    skip = pytest.mark.skip(reason="Triton kernels need triton plus a GPU or TRITON_INTERPRET=1")
    for item in items:
        if item.get_closest_marker("triton"):
            item.add_marker(skip)
