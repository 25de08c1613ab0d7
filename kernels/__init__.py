"""Triton kernels and their launchers (installed as ``vrnn_fast.kernels``); no autograd, no modules."""
