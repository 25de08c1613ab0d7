"""Per-kernel benchmarks: ``TRITON_OPS.f`` against ``TORCH_OPS.f`` on the same inputs (GPU only, float32).

Shapes are those the models call the ops with: the per-step ops (lstm_cell, reparameterize) on (B, .)
rows, the hoisted densities (gaussian_kl, gaussian_nll, gmm_nll, bigmm_nll) on (B, T, .) at T = 40.
Modes: ``forward`` (autograd on, as in training), ``backward`` (``torch.autograd.grad`` of a graph
built outside the timing, kept with retain_graph) and ``both``. Each round is ``CALLS`` back-to-back
calls; records are per call. The floor is the memory floor: tensor arguments and outputs read or
written once (forward), saved inputs + output gradients read and input gradients written (backward).
"""

from __future__ import annotations

import harness
import pytest
import roofline
import torch

from vrnn_fast.reference import TORCH_OPS

FLOOR = 1e-4  # the sigma floor of every preset
SIZES = {  # B, T, H, Z, D, K of the paper's configurations
    "timit": dict(B=64, T=40, H=2000, Z=200, D=200, K=20),
    "blizzard": dict(B=128, T=40, H=4000, Z=200, D=200, K=20),
    "iamondb": dict(B=64, T=40, K=20),
}
OPS = {
    "lstm_cell": ("timit", "blizzard"),
    "reparameterize": ("timit", "blizzard"),
    "gaussian_kl": ("timit", "blizzard"),
    "gaussian_nll": ("timit", "blizzard"),
    "gmm_nll": ("timit", "blizzard"),
    "bigmm_nll": ("iamondb",),
}
MODES = ("forward", "backward", "both")
ROUNDS, WARMUP, CALLS = 10, 3, 10


def make_inputs(op: str, size: str, device: torch.device) -> tuple[list, list[torch.Tensor], int]:
    """(arguments of ``op``, the differentiable ones, rows = frames one call covers). Fixed seed."""
    s = SIZES[size]
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, grad=True):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_(grad)

    if op == "lstm_cell":
        args = [randn(s["B"], 4 * s["H"]), randn(s["B"], s["H"])]
        return args, args, s["B"]
    if op == "reparameterize":
        mu, a = randn(s["B"], s["Z"]), randn(s["B"], s["Z"])
        return [mu, a, randn(s["B"], s["Z"], grad=False), FLOOR], [mu, a], s["B"]
    lead = (s["B"], s["T"])
    rows = s["B"] * s["T"]
    if op == "gaussian_kl":
        diff = [randn(*lead, s["Z"]) for _ in range(4)]
        return [*diff, FLOOR], diff, rows
    if op == "gaussian_nll":
        diff = [randn(*lead, s["D"]), randn(*lead, s["D"])]
        return [randn(*lead, s["D"], grad=False), *diff, FLOOR], diff, rows
    if op == "gmm_nll":
        diff = [randn(*lead, s["D"], s["K"]), randn(*lead, s["D"], s["K"]), randn(*lead, s["K"])]
        return [randn(*lead, s["D"], grad=False), *diff, FLOOR], diff, rows
    if op == "bigmm_nll":
        x = randn(*lead, 3, grad=False)
        x[..., 0] = (x[..., 0] > 1.0).float()  # pen bits
        diff = [randn(*lead, 2, s["K"]), randn(*lead, 2, s["K"]), randn(*lead, s["K"]), randn(*lead, s["K"]),
                randn(*lead)]
        return [x, *diff, FLOOR], diff, rows
    raise ValueError(f"unknown op {op!r}")


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


CASES = [(op, size, mode, provider) for op, sizes in OPS.items() for size in sizes for mode in MODES
         for provider in ("torch", "triton")]  # torch first: the speedups link to it


@pytest.mark.gpu
@pytest.mark.parametrize(("op", "size", "mode", "provider"), CASES)
def test_kernel(measure, ceilings, op, size, mode, provider):
    device = torch.device("cuda", torch.cuda.current_device())
    if provider == "triton":
        from vrnn_fast.triton_ops import TRITON_OPS  # imported here: being written, and triton loads slowly

        ops = TRITON_OPS
    else:
        ops = TORCH_OPS
    fn = getattr(ops, op)
    args, diff, rows = make_inputs(op, size, device)
    outs = _as_tuple(fn(*args))
    grads_out = [torch.randn_like(o) for o in outs]
    fwd_bytes = _nbytes(args) + _nbytes(outs)
    bwd_bytes = _nbytes(diff) + _nbytes(grads_out) + _nbytes(diff)  # read saved inputs, write their grads
    nbytes = {"forward": fwd_bytes, "backward": bwd_bytes, "both": fwd_bytes + bwd_bytes}[mode]

    if mode == "forward":
        def call():
            fn(*args)
    elif mode == "backward":
        def call():
            torch.autograd.grad(outs, diff, grads_out, retain_graph=True)
    else:
        def call():
            torch.autograd.grad(_as_tuple(fn(*args)), diff, grads_out)

    with harness.precision("float32"):
        measure(call, group="kernel", case=f"{op}/{size}", mode=mode, precision="float32", provider=provider,
                reference="torch", device=device, frames=rows, rounds=ROUNDS, warmup=WARMUP, calls_per_round=CALLS,
                floor_s=roofline.memory_floor_s(nbytes, ceilings) if ceilings else None, bytes=nbytes)
