"""Model benchmarks: a training iteration and forward-only evaluation per provider.

GPU (``gpu`` marker), T = 40, the paper's sizes with each preset's batch (TIMIT B = 64, H = 2000;
Blizzard B = 128, H = 4000; IAM-OnDB B = 20, H = 1200), in float32, TF32 and bf16 autocast:
- ``reference``: ReferenceVRNN, the per-step loop every public port uses (the speedup baseline);
- ``fast-torch`` / ``fast-triton``: FastVRNN with plain PyTorch ops / the fused Triton kernels;
- ``fast-triton-graphed`` (training only): FastVRNN(triton), the whole step (clipping and a fused,
  capturable Adam included) replayed as one CUDA graph by ``vrnn_fast.graphs.graphed_train_step``;
- ``cudnn-lstm``: ``nn.LSTM`` alone over the same (B, T, H) and the VRNN's LSTM input width, a context
  row: what the recurrence costs when nothing else sits in it;
- ``reference-compiled``: ``torch.compile(ReferenceVRNN)``, last, because each case compiles the
  40-step unrolled graph afresh (its compile time is the record's ``first_call_s``).
A training iteration is zero_grad, forward (autocast for bf16), backward, global-norm clipping at 5 and
a fused Adam step; evaluation is the forward under no_grad. Every batch has a ragged mask (lengths T down
to T / 2). Training cases also count the kernel launches of one iteration with torch.profiler; floors are
on the ceilings of the GPU that ran (none for a GPU roofline.py has no row for).

CPU (``cpu_group``): first the ops and launches per time step of every provider at the paper presets'
structures (``op_counts.py``; the time recorded is the counting's); then the training iteration at
``tiny`` and ``cpu-speech-vrnn-gmm`` (B = 32), FastVRNN(torch) against ReferenceVRNN (alternating rounds) and, last,
``torch.compile(ReferenceVRNN)``, plus the 40-sample importance-sampled log-likelihood at ``tiny``
(``frames`` counts data frames, each evaluated under 40 samples). A first compile of the 40-step reference
takes many minutes on a small CPU, so the default CPU budget (conftest.CPU_BUDGET_S) skips the compiled
cases; ``--bench-budget-s 0`` runs them.
"""

from __future__ import annotations

import math
import statistics
import time

import harness
import op_counts
import pytest
import roofline
import torch
from torch import nn

from vrnn_fast import FastVRNN, ReferenceVRNN, VRNNConfig
from vrnn_fast.graphs import graphed_train_step
from vrnn_fast.train import reuse_freed_memory

T = 40
GPU_CONFIGS = ("timit-vrnn-gauss", "blizzard-vrnn-gmm", "iamondb-vrnn-gmm")
GPU_PROVIDERS = ("reference", "fast-torch", "fast-triton", "fast-triton-graphed", "cudnn-lstm")  # reference first
GPU_ROUNDS, GPU_WARMUP = 5, 2
GRAPH_WARMUP = 3  # eager calls of the graphed step before it captures (graphed_train_step's warmup)
CPU_PRESETS, CPU_BATCH = ("tiny", "cpu-speech-vrnn-gmm"), 32
CPU_ROUNDS, CPU_WARMUP, LOGLIK_SAMPLES = 7, 2, 40
CPU_CASE_S, CPU_MAX_ROUNDS = 6.0, 40  # a cheap case runs more rounds, up to about CPU_CASE_S of timed rounds

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
        if provider in ("fast-torch", "fast-triton", "fast-triton-graphed"):
            return FastVRNN(config, backend=provider.removeprefix("fast-").removesuffix("-graphed"))
        if provider == "cudnn-lstm":
            return nn.LSTM(lstm_input_size(config), config.h_dim, batch_first=True)
    raise ValueError(f"unknown provider {provider!r}")


def batch(config: VRNNConfig, size: int, device: torch.device, provider: str = "reference"):
    """Inputs for one provider: (x (B, T, D), mask (B, T), eps (B, T, Z)) for a VRNN, the mask ragged
    (lengths T, T - 1, ..., T / 2, T, ...); (inp (B, T, Fx + Fz),) for cudnn-lstm. Drawn on the CPU from a
    fixed seed, so every provider sees the same numbers."""
    gen = torch.Generator().manual_seed(0)
    if provider == "cudnn-lstm":
        return (torch.randn(size, T, lstm_input_size(config), generator=gen).to(device),)
    x = torch.randn(size, T, config.x_dim, generator=gen)
    if config.output == "bigmm":
        x[..., 0] = (x[..., 0] > 1.0).float()  # pen bits
    mask = torch.arange(T) < (T - torch.arange(size) % (T // 2))[:, None]
    eps = torch.randn(size, T, config.z_dim, generator=gen) if config.has_latent else None
    return x.to(device), mask.to(device), None if eps is None else eps.to(device)


def loss_fn(model: nn.Module, provider: str, inputs) -> torch.Tensor:
    if provider == "cudnn-lstm":
        return model(inputs[0])[0].float().square().mean()
    x, mask, eps = inputs
    return model(x, mask, noise=eps).loss


def train_step(model: nn.Module, provider: str, inputs, precision: str, device: torch.device):
    """One training iteration as a closure: zero_grad, forward, backward, clip to norm 5, Adam (for
    fast-triton-graphed: the same step as one CUDA graph, Adam capturable)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if provider == "fast-triton-graphed":
        opt = torch.optim.Adam(params, lr=1e-4, fused=True, capturable=True)
        step = graphed_train_step(model, opt, *inputs, max_norm=5.0, warmup=GRAPH_WARMUP,
                                  autocast_dtype=torch.bfloat16 if precision == "bf16" else None)
        return lambda: step(*inputs)
    opt = torch.optim.Adam(params, lr=1e-4, fused=True)  # as the trainer (vrnn_fast.train) on CPUs and GPUs

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


def floor_s(config: VRNNConfig, provider: str, size: int, precision: str, mode: str,
            device: roofline.Device | None) -> float | None:
    """The roofline floor of one call on ``device``'s ceilings (None without ceilings)."""
    if device is None:
        return None
    kind = "train" if mode == "train" else "forward"
    if provider == "cudnn-lstm":
        return roofline.lstm_cost(lstm_input_size(config), config.h_dim, size, T, precision, kind, device).floor_s
    return roofline.iteration_cost(config, size, T, precision, kind, device).floor_s


# Seconds one compile case is expected to take, per device type, raised to the longest compile seen in this
# session. GPU: a guess. CPU: the tiny preset's training step (T = 40) took 14 min with a cold inductor cache
# and 5.5 min with a warm one on the 2-core CPU (shared with other work).
_compile_estimate_s = {"cuda": 120.0, "cpu": 330.0}


def _skip_unless_compile_fits(time_left, device_type: str) -> None:
    if time_left() < _compile_estimate_s[device_type]:
        pytest.skip(f"time budget: {time_left():.0f} s left, a compile takes about "
                    f"{_compile_estimate_s[device_type]:.0f} s here (--bench-budget-s 0: no limit)")


def _note_compile(record: dict, device_type: str) -> None:
    _compile_estimate_s[device_type] = max(_compile_estimate_s[device_type], record["first_call_s"] + 10.0)


def _run_gpu_case(measure, ceilings, preset: str, mode: str, precision: str, provider: str) -> dict:
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
        warmup = GRAPH_WARMUP + 2 if provider == "fast-triton-graphed" else GPU_WARMUP  # + capture, + a replay
        record = measure(step, group="model", case=_case_name(preset, size), mode=mode, precision=precision,
                         provider=provider, reference="reference", device=device, frames=size * T,
                         rounds=GPU_ROUNDS, warmup=warmup,
                         floor_s=floor_s(config, provider, size, precision, mode, ceilings))
        if mode == "train":
            record["launches"] = harness.count_launches(step, device)
    return record


GPU_CASES = [(p, m, q, v) for p in GPU_CONFIGS for m in ("train", "eval") for q in harness.PRECISIONS
             for v in GPU_PROVIDERS if m == "train" or v != "fast-triton-graphed"]
# Compiling the unrolled 40-step graph takes long: the most telling cases first (training, TF32,
# every config), so that a time budget cuts the least useful ones.
COMPILED_CASES = [(p, m, q, "reference-compiled") for m in ("train", "eval") for q in ("tf32", "bf16", "float32")
                  for p in GPU_CONFIGS]


@_gpu
@pytest.mark.parametrize(("preset", "mode", "precision", "provider"), GPU_CASES)
def test_gpu_model(measure, ceilings, preset, mode, precision, provider):
    _run_gpu_case(measure, ceilings, preset, mode, precision, provider)


@_gpu
@pytest.mark.parametrize(("preset", "mode", "precision", "provider"), COMPILED_CASES)
def test_gpu_model_compiled(measure, ceilings, time_left, preset, mode, precision, provider):
    _skip_unless_compile_fits(time_left, "cuda")
    _note_compile(_run_gpu_case(measure, ceilings, preset, mode, precision, provider), "cuda")


@pytest.mark.cpu_group
def test_cpu_op_counts(benchmark, results):
    """Ops and launches per time step of every provider at the paper presets' structures (not a timing)."""
    benchmark.group = "cpu op counts (the time is the counting's)"

    counts = benchmark.pedantic(op_counts.count_all, rounds=1, iterations=1)
    results.op_counts.extend(counts)


def _cpu_step(name: str, mode: str, provider: str):
    """One CPU call of a case as a closure: a training iteration, or the 40-sample log-likelihood. The process keeps
    freed memory mapped, as the ``vrnn-fast`` commands do (``vrnn_fast.train.reuse_freed_memory``)."""
    reuse_freed_memory()
    device, config = torch.device("cpu"), VRNNConfig.preset(name)
    if provider == "reference-compiled":
        torch._dynamo.reset()
    model = build(provider, config, device)
    inputs = batch(config, CPU_BATCH, device)
    if mode == "train":
        return train_step(model, provider, inputs, "float32", device)

    def step():
        model.log_likelihood(inputs[0], inputs[1], n_samples=LOGLIK_SAMPLES)

    return step


def _run_cpu_case(measure, name: str, mode: str, provider: str) -> dict:
    return measure(_cpu_step(name, mode, provider), group="cpu", case=_case_name(name, CPU_BATCH), mode=mode,
                   precision="float32", provider=provider, reference="reference", device=torch.device("cpu"),
                   frames=CPU_BATCH * T, rounds=CPU_ROUNDS, warmup=CPU_WARMUP)


CPU_PAIR = ("reference", "fast-torch")
CPU_CASES = [(name, "train") for name in CPU_PRESETS] + [("tiny", "loglik")]


@pytest.mark.cpu_group
@pytest.mark.parametrize(("name", "mode"), CPU_CASES)
def test_cpu_model(benchmark, request, results, name, mode):
    """ReferenceVRNN and FastVRNN(torch) timed in alternating rounds (one call of each per round), so that a change
    in a shared machine's speed during the case weighs on both sides of their ratio alike. At least CPU_ROUNDS
    rounds, more where a round is quick (about CPU_CASE_S of them, at most CPU_MAX_ROUNDS): at tiny, 7 rounds gave
    ratios from 2.9x to 3.7x in back-to-back runs on a shared 2-core CPU."""
    benchmark.group = f"cpu {_case_name(name, CPU_BATCH)} {mode} float32 (a round: {' then '.join(CPU_PAIR)})"
    steps, first_call_s, round_s = {}, {}, 0.0  # round_s: one warm call of each provider
    for provider in CPU_PAIR:
        steps[provider] = _cpu_step(name, mode, provider)
        for _ in range(CPU_WARMUP):
            start = time.perf_counter()
            steps[provider]()
            first_call_s.setdefault(provider, time.perf_counter() - start)
        round_s += time.perf_counter() - start
    rounds = min(CPU_MAX_ROUNDS, max(CPU_ROUNDS, math.ceil(CPU_CASE_S / round_s)))
    times = {provider: [] for provider in CPU_PAIR}

    def one_round():
        for provider, step in steps.items():
            start = time.perf_counter()
            step()
            times[provider].append(time.perf_counter() - start)

    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    for provider in CPU_PAIR:
        results.add(dict(name=f"{request.node.nodeid}[{provider}]", group="cpu", case=_case_name(name, CPU_BATCH),
                         mode=mode, precision="float32", provider=provider, reference="reference", device="cpu",
                         frames=CPU_BATCH * T, floor_s=None, rounds=rounds, calls_per_round=1,
                         first_call_s=first_call_s[provider], median_s=statistics.median(times[provider]),
                         min_s=min(times[provider]), peak_mem_mib=None, peak_over_resident_mib=None))


@pytest.mark.cpu_group
@pytest.mark.parametrize("name", CPU_PRESETS)
def test_cpu_model_compiled(measure, time_left, name):
    _skip_unless_compile_fits(time_left, "cpu")
    _note_compile(_run_cpu_case(measure, name, "train", "reference-compiled"), "cpu")
