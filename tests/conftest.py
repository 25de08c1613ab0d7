"""Shared test setup.

- Without CUDA, ``TRITON_INTERPRET=1`` is set here, before any test module imports triton, so the Triton
  kernels run in the interpreter on the CPU (and ``FastVRNN(backend="triton")`` accepts CPU tensors).
- ``nan_outputs`` fixture (opt in with ``pytestmark = pytest.mark.usefixtures("nan_outputs")`` or as an
  argument): while a test runs, every floating-point tensor made by ``torch.empty`` / ``torch.empty_like``
  is filled with NaN, so a kernel output element that a launcher allocates and the kernel never writes
  makes the comparison fail. It patches the ``torch`` module attributes, so it covers every launcher that
  calls ``torch.empty(...)`` / ``torch.empty_like(...)`` through the module at call time.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def nan_outputs(monkeypatch):
    """Floating-point tensors from torch.empty / torch.empty_like start as NaN for the test's duration."""

    def poisoned(make):
        def wrapper(*args, **kwargs):
            out = make(*args, **kwargs)
            return out.fill_(float("nan")) if out.is_floating_point() else out

        return wrapper

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))
