"""Model benchmarks: a training iteration and forward-only evaluation per provider.

GPU (``gpu`` marker), T = 40, the paper's sizes with each preset's batch (TIMIT B = 64, H = 2000;
Blizzard B = 128, H = 4000; IAM-OnDB B = 20, H = 1200), in float32, TF32 and bf16 autocast:
- ``reference``: ReferenceVRNN, the per-step loop every public port uses (the speedup baseline);
- ``fast-torch`` / ``fast-triton``: FastVRNN with plain PyTorch ops / the fused Triton kernels;
- ``cudnn-lstm``: ``nn.LSTM`` alone over the same (B, T, H) and the VRNN's LSTM input width, a context
  row: what the recurrence costs when nothing else sits in it;
- ``reference-compiled``: ``torch.compile(ReferenceVRNN)``, last, because each case compiles the
  40-step unrolled graph afresh (its compile time is the record's ``first_call_s``).
A training iteration is zero_grad, forward (autocast for bf16), backward, global-norm clipping at 5 and
a fused Adam step; evaluation is the forward under no_grad. Training cases also count the kernel
launches of one iteration with torch.profiler.

CPU (``cpu_group``): the tiny preset and a medium config, FastVRNN(torch) against ReferenceVRNN, the
training iteration and the 40-sample importance-sampled log-likelihood (``frames`` counts data frames,
each evaluated under 40 samples).
"""

from __future__ import annotations

import harness
import pytest
import roofline
import torch
from torch import nn

from vrnn_fast import FastVRNN, ReferenceVRNN, VRNNConfig

T = 40
GPU_CONFIGS = ("timit-vrnn-gauss", "blizzard-vrnn-gmm", "iamondb-vrnn-gmm")
GPU_PROVIDERS = ("reference", "fast-torch", "fast-triton", "cudnn-lstm")  # reference first: speedups link to it
GPU_ROUNDS, GPU_WARMUP = 5, 2
CPU_CONFIGS = {
    "tiny": VRNNConfig.preset("tiny"),
    "medium": VRNNConfig.preset("timit-vrnn-gmm", h_dim=256, phi_x_dim=128, phi_z_dim=128, enc_dim=128,
                                prior_dim=128, dec_dim=128, phi_x_layers=2, phi_z_layers=2, enc_layers=2,
                                prior_layers=2, dec_layers=2, n_mix=5, batch_size=16),
}
CPU_ROUNDS, CPU_WARMUP, LOGLIK_SAMPLES = 3, 1, 40

_gpu = pytest.mark.gpu


def _case_name(preset: str, batch: int) -> str:
    return f"{preset} B={batch} T={T}"


def lstm_input_size(config: VRNNConfig) -> int:
    """Width of the VRNN's LSTM input: [phi_x(x), phi_z(z)] (phi_x(x) alone for the RNN baselines)."""
    return config.phi_x_dim + (config.phi_z_dim if config.has_latent else 0)


def build(provider: str, config: VRNNConfig, device: torch.device) -> nn.Module:
    """The module a provider times, its parameters created directly on ``device``."""
    with device:
        if provider == "reference":
            return ReferenceVRNN(config)
        if provider == "reference-compiled":
            return torch.compile(ReferenceVRNN(config))
        if provider in ("fast-torch", "fast-triton"):
            return FastVRNN(config, backend=provider.removeprefix("fast-"))
        if provider == "cudnn-lstm":
            return nn.LSTM(lstm_input_size(config), config.h_dim, batch_first=True)
    raise ValueError(f"unknown provider {provider!r}")


def batch(config: VRNNConfig, size: int, device: torch.device, provider: str = "reference"):
    """Inputs for one provider: (x (B, T, D), eps (B, T, Z)) for a VRNN, (inp (B, T, Fx + Fz),) for
    cudnn-lstm. Drawn on the CPU from a fixed seed, so every provider sees the same numbers."""
    gen = torch.Generator().manual_seed(0)
    if provider == "cudnn-lstm":
        return (torch.randn(size, T, lstm_input_size(config), generator=gen).to(device),)
    x = torch.randn(size, T, config.x_dim, generator=gen)
    if config.output == "bigmm":
        x[..., 0] = (x[..., 0] > 1.0).float()  # pen bits
    eps = torch.randn(size, T, config.z_dim, generator=gen) if config.has_latent else None
    return x.to(device), None if eps is None else eps.to(device)


def loss_fn(model: nn.Module, provider: str, inputs) -> torch.Tensor:
    if provider == "cudnn-lstm":
        return model(inputs[0])[0].float().square().mean()
    x, eps = inputs
    return model(x, noise=eps).loss


def train_step(model: nn.Module, provider: str, inputs, precision: str, device: torch.device):
    """One training iteration as a closure: zero_grad, forward, backward, clip to norm 5, Adam."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, fused=device.type == "cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with harness.autocast(precision, device):
            loss = loss_fn(model, provider, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    return step


def eval_step(model: nn.Module, provider: str, inputs, precision: str, device: torch.device):
    """Forward-only evaluation (the ELBO of the batch) as a closure."""

    @torch.no_grad()
    def step():
        with harness.autocast(precision, device):
            loss_fn(model, provider, inputs)

    return step


def floor_s(config: VRNNConfig, provider: str, size: int, precision: str, mode: str) -> float:
    kind = "train" if mode == "train" else "forward"
    if provider == "cudnn-lstm":
        return roofline.lstm_cost(lstm_input_size(config), config.h_dim, size, T, precision, kind).floor_s
    return roofline.iteration_cost(config, size, T, precision, kind).floor_s


# Seconds one compile case is expected to take: a guess (the tiny preset's training graph took 3 min
# on a 2-core CPU), raised to the longest compile seen in this session.
_compile_estimate_s = 120.0


def _run_gpu_case(measure, preset: str, mode: str, precision: str, provider: str) -> dict:
    device = torch.device("cuda", torch.cuda.current_device())
    config = VRNNConfig.preset(preset)
    size = config.batch_size
    if provider == "reference-compiled":
        torch._dynamo.reset()  # a fresh compile per case, never a cache hit or a recompile-limit fallback
    with harness.precision(precision):
        model = build(provider, config, device)
        inputs = batch(config, size, device, provider)
        make = train_step if mode == "train" else eval_step
        step = make(model, provider, inputs, precision, device)
        record = measure(step, group="model", case=_case_name(preset, size), mode=mode, precision=precision,
                         provider=provider, reference="reference", device=device, frames=size * T,
                         rounds=GPU_ROUNDS, warmup=GPU_WARMUP, floor_s=floor_s(config, provider, size, precision, mode))
        if mode == "train":
            record["launches"] = harness.count_launches(step, device)
    return record


GPU_CASES = [(p, m, q, v) for p in GPU_CONFIGS for m in ("train", "eval") for q in harness.PRECISIONS
             for v in GPU_PROVIDERS]
# Compiling the unrolled 40-step graph takes long: the most telling cases first (training, TF32,
# every config), so that a time budget cuts the least useful ones.
COMPILED_CASES = [(p, m, q, "reference-compiled") for m in ("train", "eval") for q in ("tf32", "bf16", "float32")
                  for p in GPU_CONFIGS]


@_gpu
@pytest.mark.parametrize(("preset", "mode", "precision", "provider"), GPU_CASES)
def test_gpu_model(measure, preset, mode, precision, provider):
    _run_gpu_case(measure, preset, mode, precision, provider)


@_gpu
@pytest.mark.parametrize(("preset", "mode", "precision", "provider"), COMPILED_CASES)
def test_gpu_model_compiled(measure, time_left, preset, mode, precision, provider):
    global _compile_estimate_s
    if time_left() < _compile_estimate_s:
        pytest.skip(f"time budget: {time_left():.0f} s left, a compile takes about {_compile_estimate_s:.0f} s")
    record = _run_gpu_case(measure, preset, mode, precision, provider)
    _compile_estimate_s = max(_compile_estimate_s, record["first_call_s"] + 10.0)


CPU_CASES = [(name, mode, provider) for name in CPU_CONFIGS for mode in ("train", "loglik")
             for provider in ("reference", "fast-torch")]


@pytest.mark.cpu_group
@pytest.mark.parametrize(("name", "mode", "provider"), CPU_CASES)
def test_cpu_model(measure, name, mode, provider):
    device, config = torch.device("cpu"), CPU_CONFIGS[name]
    size = config.batch_size
    model = build(provider, config, device)
    inputs = batch(config, size, device)
    if mode == "train":
        step = train_step(model, provider, inputs, "float32", device)
    else:
        def step():
            model.log_likelihood(inputs[0], n_samples=LOGLIK_SAMPLES)
    measure(step, group="cpu", case=_case_name(name, size), mode=mode, precision="float32", provider=provider,
            reference="reference", device=device, frames=size * T, rounds=CPU_ROUNDS, warmup=CPU_WARMUP)
