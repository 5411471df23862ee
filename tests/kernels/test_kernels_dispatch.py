"""The kernel="auto" | "torch" | "triton" rule, with and without triton and the interpreter."""

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from genret.kernels import choose_kernel

pytestmark = pytest.mark.kernels

dispatch = importlib.import_module("genret.kernels.dispatch")
cpu = torch.zeros(2)


def test_auto_under_interpreter_picks_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dispatch, "INTERPRETED_AT_IMPORT", True)
    assert choose_kernel("auto", cpu) == "triton"
    assert choose_kernel("triton", cpu) == "triton"
    assert choose_kernel("torch", cpu) == "torch"


def test_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert choose_kernel("auto", cpu) == "torch"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        choose_kernel("triton", cpu, op="beam_step")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert choose_kernel("auto", cpu) == "torch"


def test_interpreter_switched_on_after_import_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dispatch, "INTERPRETED_AT_IMPORT", False)
    with pytest.raises(RuntimeError, match="after genret.kernels was imported"):
        choose_kernel("auto", cpu)


def test_without_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dispatch, "HAVE_TRITON", False)
    assert choose_kernel("auto", cpu) == "torch"
    with pytest.raises(RuntimeError, match="pip install triton"):
        choose_kernel("triton", cpu)


def test_unknown_choice():
    with pytest.raises(ValueError, match="not one of"):
        choose_kernel("cuda", cpu)


def test_next_power_of_2():
    assert [dispatch.next_power_of_2(n) for n in (0, 1, 2, 3, 16, 17, 1000)] == [1, 1, 2, 4, 16, 32, 1024]


def test_import_and_auto_work_when_triton_is_missing():
    # A fresh interpreter where `import triton` fails: genret.kernels imports, auto runs the
    # references, kernel="triton" says what to install.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        import genret.kernels as kernels
        assert not kernels.HAVE_TRITON
        logits = torch.randn(1, 2, 5)
        scores, parent, token = kernels.beam_step(logits, torch.zeros(1, 2), None, 3)
        expected = kernels.beam_step_reference(logits, torch.zeros(1, 2), None, 3)
        assert torch.equal(parent, expected[1]) and torch.equal(token, expected[2])
        q, kv = torch.randn(1, 2, 1, 4), torch.randn(3, 1, 4)
        lo = torch.zeros(1, 2, dtype=torch.long)
        out = kernels.decode_cross_attention(q, kv, kv, torch.tensor([0, 3]), lo, lo + 3)
        assert out.shape == q.shape
        try:
            kernels.beam_step(logits, torch.zeros(1, 2), None, 3, kernel="triton")
        except RuntimeError as error:
            assert "install" in str(error), error
        else:
            raise AssertionError("kernel='triton' without triton must raise")
        print("ok")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
