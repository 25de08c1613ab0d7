"""vrnn_fast: a fast, complete Variational RNN (Chung et al., NeurIPS 2015) for PyTorch."""

from .config import VRNNConfig
from .model import FastVRNN
from .reference import OnlineStep, ReferenceVRNN, VRNNOutput

__all__ = ["FastVRNN", "OnlineStep", "ReferenceVRNN", "VRNNConfig", "VRNNOutput"]
__version__ = "0.1.0"
