"""NVML telemetry for GPU benchmark results (nvidia-ml-py, imported as ``pynvml``; optional).

``snapshot()`` reads the current state of the GPU that torch uses: clocks, power and temperature
right after a timed case tell whether it ran boosted, throttled or shared.
"""

from __future__ import annotations

import os

import torch

_initialised = False


def _nvml_index(cuda_index: int) -> int:
    """NVML numbers all GPUs; torch numbers the visible ones. Map through CUDA_VISIBLE_DEVICES when it
    lists integers (UUIDs or MIG names fall back to the torch index)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    if cuda_index < len(visible) and visible[cuda_index].strip().isdigit():
        return int(visible[cuda_index])
    return cuda_index


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def snapshot(cuda_index: int | None = None) -> dict:
    """State of one GPU: ``{"device", "driver", "sm_clock_mhz", "mem_clock_mhz", "power_w",
    "power_limit_w", "temperature_c", "memory_used_mib", "memory_total_mib"}``, or ``{"error": reason}``
    when NVML (or CUDA) is unavailable. Never raises: telemetry must not fail a benchmark."""
    if not torch.cuda.is_available():
        return {"error": "CUDA is not available"}
    try:
        import pynvml
    except ImportError:
        return {"error": "nvidia-ml-py is not installed (pip install nvidia-ml-py)"}
    global _initialised
    try:
        if not _initialised:  # once per process: nvmlInit costs milliseconds, a snapshot is taken per case
            pynvml.nvmlInit()
            _initialised = True
        index = torch.cuda.current_device() if cuda_index is None else cuda_index
        handle = pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(index))
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {
            "device": _text(pynvml.nvmlDeviceGetName(handle)),
            "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
            "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
            "memory_used_mib": memory.used / 2**20,
            "memory_total_mib": memory.total / 2**20,
        }
    except pynvml.NVMLError as err:
        return {"error": f"NVML failed: {err}"}
