"""Measurement shared by the benchmark files: precision settings, timing, peak memory, launch counts.

Timing: every timed call ends with ``torch.cuda.synchronize()`` and the previous one ended with it,
so pytest-benchmark's host clock brackets exactly the GPU work plus the host time to launch it (the
launch overhead is part of what a per-step loop costs). Warm-up calls (compilation, autotuning,
cuBLAS heuristics, the optimiser's first step) run before peak memory is reset and before timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch

PRECISIONS = ("float32", "tf32", "bf16")
LAUNCH_APIS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
               "cudaLaunchCooperativeKernel", "cudaGraphLaunch")


def _check_precision(name: str) -> None:
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")


@contextmanager
def precision(name: str):
    """Matmul/cuDNN flags for a case: TF32 on for ``"tf32"`` only (restored on exit). bf16 runs with
    TF32 off and :func:`autocast` around the forward."""
    _check_precision(name)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(name: str, device: torch.device):
    """``torch.autocast(device, bfloat16)`` for ``"bf16"``, else a no-op context."""
    _check_precision(name)
    return torch.autocast(device.type, torch.bfloat16) if name == "bf16" else nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(benchmark, fn: Callable[[], object], device: torch.device, rounds: int, warmup: int,
              calls_per_round: int = 1) -> dict:
    """Warm up, then time ``rounds`` rounds of ``calls_per_round`` back-to-back calls of ``fn`` with
    ``benchmark.pedantic``. Returns per-call ``median_s``, ``min_s``, the first call's ``first_call_s``
    (compilation included), ``peak_mem_mib`` (all allocations, CUDA only) and ``peak_over_resident_mib``
    (above what was allocated before the timed rounds: activations and workspaces)."""
    if rounds < 1 or warmup < 1 or calls_per_round < 1:
        raise ValueError(f"rounds, warmup and calls_per_round must be >= 1, got {rounds}, {warmup}, "
                         f"{calls_per_round}")
    start = time.perf_counter()
    fn()
    sync(device)
    first_call_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    sync(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)

    def timed():
        for _ in range(calls_per_round):
            fn()
        sync(device)

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    out = {"rounds": rounds, "calls_per_round": calls_per_round, "first_call_s": first_call_s,
           "median_s": None, "min_s": None, "peak_mem_mib": None, "peak_over_resident_mib": None}
    if benchmark.stats is not None:  # None under --benchmark-disable
        out["median_s"] = benchmark.stats.stats.median / calls_per_round
        out["min_s"] = benchmark.stats.stats.min / calls_per_round
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        out["peak_mem_mib"] = peak / 2**20
        out["peak_over_resident_mib"] = (peak - resident) / 2**20
    return out


def tally_launches(events) -> dict:
    """Count profiler events: ``kernels`` (device kernels), ``memops`` (device memcpy/memset) and
    ``launch_calls`` (host launch API calls). ``events`` have ``.name`` and ``.device_type``."""
    kernels = memops = launch_calls = 0
    for event in events:
        if event.device_type == torch.autograd.DeviceType.CUDA:
            if event.name.startswith(("Memcpy", "Memset")):
                memops += 1
            else:
                kernels += 1
        elif event.name in LAUNCH_APIS:
            launch_calls += 1
    return {"kernels": kernels, "memops": memops, "launch_calls": launch_calls}


def count_launches(fn: Callable[[], object], device: torch.device) -> dict:
    """Kernel launches of one call of ``fn`` (already warmed up) under torch.profiler; CUDA only."""
    if device.type != "cuda":
        raise ValueError(f"launch counting needs a CUDA device, got {device}")
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    return tally_launches(prof.events())
