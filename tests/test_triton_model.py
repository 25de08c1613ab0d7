"""FastVRNN(backend="triton") against FastVRNN(backend="torch"): float64 forward and backward for every model kind
and output, under TRITON_INTERPRET=1 without a GPU (tests/conftest.py); plus backend selection and its errors."""

import os
import subprocess
import sys

import pytest
import torch
from vrnn_fast.kernels import densities as kd
from vrnn_fast.kernels import gaussian as kg
from vrnn_fast.kernels import lstm as kl

from vrnn_fast import FastVRNN, VRNNConfig, triton_ops
from vrnn_fast.reference import TORCH_OPS

pytestmark = pytest.mark.usefixtures("nan_outputs")

MODELS = ["vrnn", "vrnn-i", "rnn"]
OUTPUTS = ["gauss", "gmm", "bigmm"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def small_config(model, output):
    """Odd sizes: H=37, Z=13, D=20 (3 for handwriting), K=5."""
    return VRNNConfig(x_dim=3 if output == "bigmm" else 20, z_dim=13, h_dim=37, phi_x_dim=24, phi_x_layers=2,
                      phi_z_dim=19, phi_z_layers=1, enc_dim=29, enc_layers=2, prior_dim=23, prior_layers=1,
                      dec_dim=31, dec_layers=1, n_mix=5, model=model, output=output)


def make_batch(cfg, batch=4, steps=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, cfg.x_dim, generator=g, dtype=torch.float64)
    if cfg.output == "bigmm":
        x[..., 0] = (torch.rand(batch, steps, generator=g) < 0.3).double()
    mask = torch.arange(steps)[None] < torch.tensor([steps, steps - 2, 1, steps - 1])[:, None]  # ragged
    noise = torch.randn(batch, steps, cfg.z_dim, generator=g, dtype=torch.float64) if cfg.has_latent else None
    state = tuple(torch.randn(batch, cfg.h_dim, generator=g, dtype=torch.float64) * 0.5 for _ in range(2))
    return [t if t is None else t.to(DEVICE) for t in (x, mask, noise)], tuple(s.to(DEVICE) for s in state)


def _counting(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("model", MODELS)
def test_triton_backend_matches_torch_float64(model, output, monkeypatch):
    calls = {}
    density = {"gauss": "gaussian_nll", "gmm": "gmm_nll", "bigmm": "bigmm_nll"}[output]
    for module, name in [(kl, "lstm_fwd"), (kl, "lstm_bwd"), (kg, "reparam_fwd"), (kg, "reparam_bwd"),
                         (kg, "kl_fwd"), (kg, "kl_bwd"), (kd, f"{density}_fwd"), (kd, f"{density}_bwd")]:
        _counting(monkeypatch, module, name, calls)
    cfg = small_config(model, output)
    torch.manual_seed(0)
    fast_torch = FastVRNN(cfg, backend="torch").double().to(DEVICE)
    fast_triton = FastVRNN(cfg, backend="triton").double().to(DEVICE)
    fast_triton.load_state_dict(fast_torch.state_dict())
    (x, mask, noise), state = make_batch(cfg)
    outs = []
    for net in (fast_torch, fast_triton):
        xx = x.clone().requires_grad_()  # gradients flow to the data too
        out = net(xx, mask, noise, state=state)
        (out.loss + out.state[0].sum() + 0.5 * out.state[1].sum()).backward()
        grads = {name: p.grad for name, p in net.named_parameters()}
        outs.append((out, grads, xx.grad))
    (ref, ref_grads, ref_dx), (got, got_grads, got_dx) = outs
    tol = dict(rtol=1e-10, atol=1e-10)
    for name in ("loss", "kl", "nll", "elbo", "z_mean", "z_std"):
        a, b = getattr(got, name), getattr(ref, name)
        if b is None:
            assert a is None, name
        else:
            torch.testing.assert_close(a, b, **tol, msg=name)
    for a, b in zip(got.state, ref.state, strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert ref_grads.keys() == got_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(got_grads[name], g, **tol, msg=name)
    torch.testing.assert_close(got_dx, ref_dx, **tol)
    steps = x.shape[1]
    assert calls[f"{density}_fwd"] == calls[f"{density}_bwd"] == 1  # all steps at once
    assert calls["lstm_fwd"] == calls["lstm_bwd"] == steps  # the Triton kernels really ran, every step
    if cfg.has_latent:
        assert calls["reparam_fwd"] == calls["reparam_bwd"] == steps
        assert calls["kl_fwd"] == calls["kl_bwd"] == 1


def test_triton_log_likelihood_matches_torch():
    cfg = small_config("vrnn", "gauss")
    torch.manual_seed(1)
    fast_torch = FastVRNN(cfg, backend="torch").double().to(DEVICE)
    fast_triton = FastVRNN(cfg, backend="triton").double().to(DEVICE)
    fast_triton.load_state_dict(fast_torch.state_dict())
    (x, mask, _), _ = make_batch(cfg)
    noise = torch.randn(3, *x.shape[:2], cfg.z_dim, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(fast_triton.log_likelihood(x, mask, n_samples=3, noise=noise),
                               fast_torch.log_likelihood(x, mask, n_samples=3, noise=noise), rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU backend selection")
def test_auto_picks_torch_for_cpu_tensors():
    net = FastVRNN(small_config("vrnn", "gauss"), backend="auto")
    assert net._ops(torch.zeros(1)) is TORCH_OPS
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
