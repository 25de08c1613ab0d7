"""Ops and launches per time step of a training iteration, at the layer structures of the paper's presets.

What a GPU pays per step in launches, visible on any machine: ``vrnn_fast.op_count`` (aten ops, views
excluded, plus Triton launches; per step: the slope between T = 10 and T = 20, as ``per_step``) of the
forward and of the backward of the same call, counted separately, for ReferenceVRNN, FastVRNN(torch)
and FastVRNN(triton). Counts depend only on the layer structure, so every width is shrunk to 8 and n_mix to 2 (the
layer counts, x_dim, model and output are the preset's); B = 3 with a ragged mask, noise drawn inside as
in training.

``syncs`` counts the host synchronisations of one forward. On CPU tensors FastVRNN(torch) with a GMM output has
one more than on a GPU: ``fused_torch.linear_gmm_nll`` leaves the masked rows out through ``mask.nonzero()``
there (free on a CPU; never on a GPU or under torch.compile).

Each record also projects the preset's GPU iteration at its own batch and T = 40 on the H200 ceilings of
``roofline.py``: the bf16 floor beside the launch time of the loop (eager and inside a CUDA graph).

FastVRNN(triton) on CPU tensors needs the Triton interpreter, which the benchmark session keeps off:
:func:`count_all` counts it in a subprocess running this file with ``TRITON_INTERPRET=1``
(``python benchmarks/op_counts.py fast-triton`` prints its records as JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import roofline
import torch

from vrnn_fast import FastVRNN, ReferenceVRNN, VRNNConfig
from vrnn_fast.op_count import OpCount, count_ops

PRESETS = ("timit-vrnn-gmm", "timit-vrnn-gauss", "timit-rnn-gmm", "blizzard-vrnn-gmm", "iamondb-vrnn-gmm", "tiny",
           "cpu-speech-vrnn-gmm")
PROVIDERS = ("reference", "fast-torch", "fast-triton")
B, T_SHORT, T_LONG, T_PROJECTED = 3, 10, 20, 40
WIDTH, N_MIX = 8, 2
PROJECTION_DEVICE = roofline.H200


def structure(preset: str) -> VRNNConfig:
    """The preset with every width set to WIDTH and N_MIX components: same layers, x_dim, model and output."""
    return VRNNConfig.preset(preset, z_dim=WIDTH, h_dim=WIDTH, phi_x_dim=WIDTH, phi_z_dim=WIDTH, enc_dim=WIDTH,
                             prior_dim=WIDTH, dec_dim=WIDTH, n_mix=N_MIX)


def _model(provider: str, config: VRNNConfig) -> torch.nn.Module:
    if provider == "reference":
        return ReferenceVRNN(config)
    if provider in ("fast-torch", "fast-triton"):
        return FastVRNN(config, backend=provider.removeprefix("fast-"))
    raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")


def _inputs(config: VRNNConfig, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (B, T, D), mask (B, T)): lengths T, T - 1, T - 2."""
    x = torch.randn(B, steps, config.x_dim)
    if config.output == "bigmm":
        x[..., 0] = (x[..., 0] > 0).float()  # pen bits
    mask = torch.arange(steps) < (steps - torch.arange(B))[:, None]
    return x, mask


def _slope(short: OpCount, long: OpCount) -> dict:
    """Per-step counts between T_SHORT and T_LONG, as ``op_count.per_step`` reports them."""
    steps = T_LONG - T_SHORT
    return {"aten": (long.aten - short.aten) / steps, "triton": (long.triton - short.triton) / steps,
            "total": (long.total - short.total) / steps, "syncs": sum(long.syncs.values())}


def count(preset: str, provider: str) -> dict:
    """Per-step counts ({"aten", "triton", "total", "syncs"}) of the forward, the backward and both."""
    torch.manual_seed(0)
    model = _model(provider, structure(preset))
    fwd, bwd = [], []
    for steps in (T_SHORT, T_LONG):
        x, mask = _inputs(model.config, steps)
        out = []
        fwd.append(count_ops(lambda x=x, mask=mask, out=out: out.append(model(x, mask))))
        bwd.append(count_ops(out[0].loss.backward))
    forward, backward = _slope(*fwd), _slope(*bwd)
    train = {k: forward[k] + backward[k] for k in forward}
    config = VRNNConfig.preset(preset)
    floor = roofline.iteration_cost(config, config.batch_size, T_PROJECTED, "bf16", "train", PROJECTION_DEVICE)
    return {"preset": preset, "provider": provider, "forward": forward, "backward": backward, "train": train,
            "projection": {"device": PROJECTION_DEVICE.name, "batch": config.batch_size, "steps": T_PROJECTED,
                           "floor_bf16_s": floor.floor_s,
                           "launch_eager_s": roofline.launch_time_s(train["total"], T_PROJECTED),
                           "launch_graphed_s": roofline.launch_time_s(train["total"], T_PROJECTED, graphed=True)}}


def count_all(presets=PRESETS, providers=PROVIDERS) -> list[dict]:
    """Records for every preset and provider, in that order. fast-triton is counted in a subprocess under the
    Triton interpreter, started first so it runs beside the others (RuntimeError with its last lines if it
    fails)."""
    triton = None
    if "fast-triton" in providers:
        triton = subprocess.Popen([sys.executable, str(Path(__file__)), "fast-triton", *presets],
                                  env={**os.environ, "TRITON_INTERPRET": "1"}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    records = [count(p, v) for p in presets for v in providers if v != "fast-triton"]
    if triton is not None:
        stdout, stderr = triton.communicate()
        if triton.returncode != 0:
            raise RuntimeError("counting fast-triton failed:\n" + "\n".join(stderr.splitlines()[-5:]))
        records += json.loads(stdout)
    return sorted(records, key=lambda r: (presets.index(r["preset"]), providers.index(r["provider"])))


if __name__ == "__main__":
    provider, *names = sys.argv[1:] or ["fast-torch"]
    print(json.dumps([count(name, provider) for name in names or PRESETS]))
