"""FastVRNN's backend selection and its errors. (Its float64 parity with ReferenceVRNN on both backends, every model
kind and output, is in tests/test_recurrence.py.)"""

import os
import subprocess
import sys

import pytest
import torch

from vrnn_fast import FastVRNN, VRNNConfig, triton_ops
from vrnn_fast.fused_torch import FUSED_TORCH_OPS
from vrnn_fast.reference import TORCH_OPS

pytestmark = pytest.mark.usefixtures("nan_outputs")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU backend selection")
def test_auto_picks_torch_for_cpu_tensors():
    net = FastVRNN(VRNNConfig.preset("tiny"), backend="auto")
    assert net._ops(torch.zeros(1)) == (FUSED_TORCH_OPS, "torch")
    assert triton_ops.ops_for(torch.zeros(1)) is triton_ops.TRITON_OPS  # TRITON_INTERPRET=1 here: opted in


def test_triton_ops_has_the_members_of_torch_ops():
    assert vars(triton_ops.TRITON_OPS).keys() == vars(TORCH_OPS).keys()


_WITHOUT_INTERPRETER = """
import torch
from vrnn_fast import FastVRNN, VRNNConfig
net = FastVRNN(VRNNConfig.preset("tiny"), backend="triton")
try:
    net(torch.zeros(2, 3, 200))
except ValueError as err:
    print("ValueError:", err)
"""


def test_triton_backend_on_cpu_without_interpreter_raises():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _WITHOUT_INTERPRETER], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ValueError:" in run.stdout and "CUDA" in run.stdout and "TRITON_INTERPRET=1" in run.stdout, run.stdout
