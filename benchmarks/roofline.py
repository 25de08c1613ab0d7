"""Roofline floors: FLOPs and minimum HBM traffic of a VRNN step and iteration, and the time they bound.

Glossary: B batch, T steps, D = x_dim, Z = z_dim, H = h_dim, S importance samples; P parameters.

Model of the work (stated so a floor can be checked, not tuned):
- FLOPs are the matmuls only (2 * rows * fan_in * fan_out per linear layer), the same quantity
  ``torch.utils.flop_counter`` reports; elementwise work is not counted. Backward = weight gradient +
  input gradient per layer (2x forward), minus the gradients no one needs: the first phi_x layer's
  input gradient (x is data), the input gradients of the layers fed by the zero initial state alone at
  t = 0, and the whole backward of the last step's LSTM (the final state does not reach the loss) and,
  for the RNN baselines, of the last step's phi_x (it feeds only that LSTM).
- Bytes are the minimum HBM traffic of a design that keeps nothing on chip between steps: the weights
  inside the recurrence (encoder, phi_z, the z and h parts of the LSTM) are streamed once per step,
  forward and again backward; the hoisted weights (phi_x, prior, decoder, the x parts) once per pass;
  the state (h, c) is read and written each step; x and eps are read once; the h sequence is written
  once and read once for the backward. Training adds fp32 gradients (written once), global-norm
  clipping plus Adam (32 bytes per parameter) and, under bf16 autocast, one fp32 -> bf16 cast of the
  weights (6 bytes per parameter).
- Floor = max(FLOPs / peak FLOP/s, bytes / bandwidth): neither the compute nor the traffic can take
  less time. Launch latency and the sequential dependency between steps are not counted.

Ceilings, one row per GPU kind, picked by :func:`device_for` from ``torch.cuda.get_device_name()`` (a GPU
without a row gets no floor):
- ``H100`` (SXM): 3.0 TB/s, the copy bandwidth measured on the part (the data sheet says 3.35); 800 TFLOP/s
  dense bf16 matmul (measured cuBLAS; 989 on the data sheet); TF32 at half of bf16, 400 TFLOP/s (the data
  sheet's ratio); plain fp32 on the CUDA cores, 60 TFLOP/s (67 on the data sheet). Only the bandwidth and
  bf16 figures were given as measured.
- ``H200`` (SXM): the data sheet's peaks: 4.8 TB/s HBM3e, 989 TFLOP/s dense bf16, 494.5 dense TF32, 67 fp32.
  Measured on the lent part: about 4.3 TB/s copy and 790 TFLOP/s bf16, so its floors are 10-20% below
  what the part reaches (the H100 row uses measured figures: the two rows are not on the same basis).

Launch projection (:func:`launch_time_s`): the launches of the sequential loop alone, per step times T, at
an assumed cost per launch (``EAGER_LAUNCH_S``, ``GRAPHED_LAUNCH_S``; not measured here). Floor and launch
time are both lower bounds of an iteration; the larger one says what bounds it.

Run as a script for a table: ``python benchmarks/roofline.py timit-vrnn-gauss --batch 64 --steps 40 --device h200
--launches-per-step 112``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from vrnn_fast import VRNNConfig

PRECISIONS = ("float32", "tf32", "bf16")
MODES = ("forward", "train")
ELEMENT_BYTES = {"float32": 4, "tf32": 4, "bf16": 2}
ADAM_CLIP_BYTES = 32  # per parameter: clip reads g (4); Adam reads p, g, m, v (16) and writes p, m, v (12)
CAST_BYTES = 6  # per parameter under bf16 autocast: read fp32 (4), write bf16 (2)
GRAD_BYTES = 4  # per parameter: fp32 gradient written once


@dataclass(frozen=True)
class Device:
    """Ceilings of one GPU: bandwidth in bytes/s and dense matmul throughput in FLOP/s per precision."""

    name: str
    bandwidth: float
    flops: dict

    def floor_s(self, flops: float, nbytes: float, precision: str) -> float:
        """max(flops / peak, bytes / bandwidth) in seconds."""
        if precision not in self.flops:
            raise ValueError(f"precision must be one of {tuple(self.flops)}, got {precision!r}")
        return max(flops / self.flops[precision], nbytes / self.bandwidth)


H100 = Device("H100 SXM", bandwidth=3.0e12, flops={"float32": 60e12, "tf32": 400e12, "bf16": 800e12})
H200 = Device("H200 SXM", bandwidth=4.8e12, flops={"float32": 67e12, "tf32": 494.5e12, "bf16": 989e12})
# torch.cuda.get_device_name() -> ceilings. "NVIDIA H100 80GB HBM3" is the SXM part; H100 PCIe / NVL, H200 NVL
# and GH200 have other ceilings and no row.
_NAMES = ((re.compile(r"\bH200\b(?!.*\bNVL\b)"), H200), (re.compile(r"\bH100\b.*\b(HBM3|SXM)"), H100))

# Assumed cost of one launch: eager, the host time of a PyTorch op (dispatcher, autograd, launch call), the low
# end of the 5-20 us it takes; inside a CUDA graph, the device's gap between two small dependent kernels.
EAGER_LAUNCH_S = 5e-6
GRAPHED_LAUNCH_S = 3e-6


def device_for(name: str) -> Device | None:
    """The ceilings for a CUDA device name (``torch.cuda.get_device_name()``), or None: no row for that GPU."""
    return next((device for pattern, device in _NAMES if pattern.search(name)), None)


def launch_time_s(launches_per_step: float, steps: int, graphed: bool = False) -> float:
    """Time the loop's launches take over ``steps`` steps: launches_per_step * steps * the cost of one launch
    (``GRAPHED_LAUNCH_S`` inside a CUDA graph, else ``EAGER_LAUNCH_S``)."""
    return launches_per_step * steps * (GRAPHED_LAUNCH_S if graphed else EAGER_LAUNCH_S)


@dataclass(frozen=True)
class Linear:
    """One matmul of the model. ``recurrent``: its weight is used inside the sequential loop.

    ``bias`` is the size of the bias it owns (0 where another part of the same layer owns it).
    """

    name: str
    fan_in: int
    fan_out: int
    recurrent: bool
    bias: int

    @property
    def weights(self) -> int:
        return self.fan_in * self.fan_out


@dataclass(frozen=True)
class Cost:
    """FLOPs and minimum HBM bytes of some work, and its floor on ``device``."""

    flops: float
    bytes: float
    precision: str
    device: Device = H100

    @property
    def floor_s(self) -> float:
        return self.device.floor_s(self.flops, self.bytes, self.precision)

    @property
    def intensity(self) -> float:
        """FLOPs per byte."""
        return self.flops / self.bytes


def _mlp(name: str, fan_in: int, width: int, depth: int, recurrent: bool) -> list[Linear]:
    return [Linear(f"{name}.{i}", fan_in if i == 0 else width, width, recurrent, width) for i in range(depth)]


def linears(config: VRNNConfig) -> list[Linear]:
    """Every matmul of one step, layers fed by a concatenation split by their inputs."""
    c = config
    out = _mlp("phi_x", c.x_dim, c.phi_x_dim, c.phi_x_layers, False)
    if not c.has_latent:
        dec_in = c.h_dim
        out.append(Linear("rnn.ih", c.phi_x_dim, 4 * c.h_dim, False, 4 * c.h_dim))
        out.append(Linear("rnn.hh", c.h_dim, 4 * c.h_dim, True, 0))
    else:
        out.append(Linear("enc.0.x", c.phi_x_dim, c.enc_dim, False, c.enc_dim))
        out.append(Linear("enc.0.h", c.h_dim, c.enc_dim, True, 0))
        out += _mlp("enc", c.enc_dim, c.enc_dim, c.enc_layers, True)[1:]
        out += [Linear(f"enc.{head}", c.enc_dim, c.z_dim, True, c.z_dim) for head in ("mu", "sigma")]
        if c.model == "vrnn":
            out += _mlp("prior", c.h_dim, c.prior_dim, c.prior_layers, False)
            out += [Linear(f"prior.{head}", c.prior_dim, c.z_dim, False, c.z_dim) for head in ("mu", "sigma")]
        out += _mlp("phi_z", c.z_dim, c.phi_z_dim, c.phi_z_layers, True)
        dec_in = c.phi_z_dim + c.h_dim
        out.append(Linear("rnn.ih.x", c.phi_x_dim, 4 * c.h_dim, False, 4 * c.h_dim))
        out.append(Linear("rnn.ih.z", c.phi_z_dim, 4 * c.h_dim, True, 0))
        out.append(Linear("rnn.hh", c.h_dim, 4 * c.h_dim, True, 0))
    out += _mlp("dec", dec_in, c.dec_dim, c.dec_layers, False)
    k, d = c.n_mix, c.x_dim
    heads = {"gauss": {"mu": d, "sigma": d}, "gmm": {"mu": d * k, "sigma": d * k, "coeff": k},
             "bigmm": {"mu": 2 * k, "sigma": 2 * k, "corr": k, "coeff": k, "pen": 1},
             "bernoulli": {"logits": d}}[c.output]
    out += [Linear(f"dec.{head}", c.dec_dim, size, False, size) for head, size in heads.items()]
    return out


def n_params(config: VRNNConfig) -> int:
    """Number of parameters P (weights and biases)."""
    return sum(layer.weights + layer.bias for layer in linears(config))


def _unneeded_grads(config: VRNNConfig, steps: int) -> int:
    """Matmul gradients autograd never needs, as a sum of weight counts (fan_in * fan_out) per row."""
    c = config
    h0_only = 4 * c.h_dim * c.h_dim  # input gradients at t = 0 of the layers fed by h_0 alone
    if c.model == "vrnn":
        h0_only += c.h_dim * c.prior_dim
    if not c.has_latent:
        h0_only += c.h_dim * c.dec_dim
    x_layer = steps * c.x_dim * c.phi_x_dim  # input gradient of the first phi_x layer
    last_lstm = 2 * sum(layer.weights for layer in linears(c) if layer.name.startswith("rnn."))  # both gradients
    if not c.has_latent:  # the last phi_x feeds only the last LSTM: weight gradients, hidden input gradients
        phi_x = [layer.weights for layer in linears(c) if layer.name.startswith("phi_x.")]
        last_lstm += 2 * sum(phi_x) - phi_x[0]
    return h0_only + x_layer + last_lstm


def step_cost(config: VRNNConfig, batch: int, precision: str, device: Device = H100) -> Cost:
    """Forward work of one step inside the sequential loop (the recurrent matmuls and their weights)."""
    _check(config, batch, 1, precision, "forward")
    e = ELEMENT_BYTES[precision]
    rec = [layer for layer in linears(config) if layer.recurrent]
    flops = 2 * batch * sum(layer.weights for layer in rec)
    nbytes = e * (sum(layer.weights for layer in rec) + 4 * batch * config.h_dim)
    return Cost(flops, nbytes, precision, device)


def iteration_cost(config: VRNNConfig, batch: int, steps: int, precision: str, mode: str,
                   device: Device = H100) -> Cost:
    """Work of one forward pass (``mode="forward"``) or one training iteration (``"train"``: forward,
    backward, clipping and Adam) over (B, T) = (batch, steps) from a zero state.

    For the S-sample log-likelihood use ``mode="forward"`` with ``batch = S * B``.
    """
    _check(config, batch, steps, precision, mode)
    c, e = config, ELEMENT_BYTES[precision]
    layers = linears(c)
    w_rec = sum(layer.weights for layer in layers if layer.recurrent)
    w_hoisted = sum(layer.weights for layer in layers if not layer.recurrent)
    fwd_flops = 2 * batch * steps * (w_rec + w_hoisted)
    state_io = 4 * batch * c.h_dim  # read h, c and write h, c
    data = batch * steps * (c.x_dim + (c.z_dim if c.has_latent else 0))  # x and eps
    fwd_bytes = e * (steps * (w_rec + state_io) + w_hoisted + data)
    if mode == "forward":
        return Cost(fwd_flops, fwd_bytes, precision, device)
    bwd_flops = 2 * fwd_flops - 2 * batch * _unneeded_grads(c, steps)
    h_seq = 2 * batch * steps * c.h_dim  # h sequence written forward, read backward
    bwd_bytes = e * (steps * (w_rec + state_io) + w_hoisted + h_seq)
    p = n_params(c)
    update = p * (GRAD_BYTES + ADAM_CLIP_BYTES + (CAST_BYTES if precision == "bf16" else 0))
    return Cost(fwd_flops + bwd_flops, fwd_bytes + bwd_bytes + update, precision, device)


def lstm_cost(input_size: int, h_dim: int, batch: int, steps: int, precision: str, mode: str,
              device: Device = H100) -> Cost:
    """A bare LSTM (the cuDNN context row) over (B, T) from a zero state, loss on every output h_t,
    with the same model of traffic as :func:`iteration_cost` (W_hh streamed once per step and pass)."""
    config = VRNNConfig(model="rnn", h_dim=h_dim, phi_x_dim=input_size)  # validates the sizes
    _check(config, batch, steps, precision, mode)
    e, w_ih, w_hh = ELEMENT_BYTES[precision], input_size * 4 * h_dim, h_dim * 4 * h_dim
    fwd_flops = 2 * batch * steps * (w_ih + w_hh)
    state_io, h_seq = 4 * batch * h_dim, batch * steps * h_dim
    fwd_bytes = e * (steps * (w_hh + state_io) + w_ih + batch * steps * input_size + h_seq)
    if mode == "forward":
        return Cost(fwd_flops, fwd_bytes, precision, device)
    bwd_flops = 2 * fwd_flops - 2 * batch * (steps * w_ih + w_hh)  # no input gradient for x, none for h_0
    bwd_bytes = e * (steps * (w_hh + state_io) + w_ih + 2 * h_seq)
    update = (w_ih + w_hh + 4 * h_dim) * (GRAD_BYTES + ADAM_CLIP_BYTES + (CAST_BYTES if precision == "bf16" else 0))
    return Cost(fwd_flops + bwd_flops, fwd_bytes + bwd_bytes + update, precision, device)


def memory_floor_s(nbytes: float, device: Device = H100) -> float:
    """Time to move ``nbytes`` through HBM: the floor of a memory-bound kernel."""
    return nbytes / device.bandwidth


def _check(config, batch, steps, precision, mode) -> None:
    if not isinstance(config, VRNNConfig):
        raise ValueError(f"config must be a VRNNConfig, got {type(config).__name__}")
    for name, value in (("batch", batch), ("steps", steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


DEVICES = {"h100": H100, "h200": H200}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=VRNNConfig.presets())
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", choices=DEVICES, default="h100", help="ceilings (default: h100)")
    parser.add_argument("--launches-per-step", type=float, default=None, metavar="N",
                        help="also project the launch time of a training iteration at N launches per step")
    args = parser.parse_args(argv)
    config, device = VRNNConfig.preset(args.preset), DEVICES[args.device]
    batch = args.batch or config.batch_size
    print(f"{args.preset}: P = {n_params(config):,} parameters, B = {batch}, T = {args.steps}, ceilings {device}")
    print(f"{'precision':9} {'work':14} {'GFLOP':>10} {'MB':>10} {'FLOP/B':>8} {'floor ms':>9}")
    for precision in PRECISIONS:
        rows = [("step forward", step_cost(config, batch, precision, device))]
        rows += [(f"iter {mode}", iteration_cost(config, batch, args.steps, precision, mode, device)) for mode in MODES]
        for what, cost in rows:
            print(f"{precision:9} {what:14} {cost.flops / 1e9:10.2f} {cost.bytes / 1e6:10.1f} "
                  f"{cost.intensity:8.1f} {cost.floor_s * 1e3:9.3f}")
    if args.launches_per_step is not None:
        n = args.launches_per_step
        print(f"launch time of the loop at {n:g} launches per step: {launch_time_s(n, args.steps) * 1e3:.3f} ms eager "
              f"({EAGER_LAUNCH_S * 1e6:g} us each), {launch_time_s(n, args.steps, graphed=True) * 1e3:.3f} ms "
              f"in a CUDA graph ({GRAPHED_LAUNCH_S * 1e6:g} us each)")


if __name__ == "__main__":
    main()
