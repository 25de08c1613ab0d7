"""benchmarks/roofline.py against independent counts: torch.utils.flop_counter on ReferenceVRNN, and
the parameters of the built model."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vrnn_fast import ReferenceVRNN, VRNNConfig
from vrnn_fast.reference import lstm_cell

_spec = importlib.util.spec_from_file_location("roofline", Path(__file__).parents[1] / "benchmarks" / "roofline.py")
roofline = sys.modules.setdefault("roofline", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(roofline)

_DEEP = dict(phi_x_layers=2, phi_z_layers=3, enc_layers=2, prior_layers=2, dec_layers=3)
CONFIGS = {
    "tiny": VRNNConfig.preset("tiny"),
    "tiny-gmm-deep": VRNNConfig.preset("tiny", output="gmm", **_DEEP),
    "tiny-vrnn-i": VRNNConfig.preset("tiny", model="vrnn-i", **_DEEP),
    "tiny-rnn": VRNNConfig.preset("tiny", model="rnn", **_DEEP),
    "tiny-handwriting": VRNNConfig.preset("tiny-handwriting", **_DEEP),
    "tiny-bernoulli": VRNNConfig.preset("tiny-bernoulli", **_DEEP),
}
B, T = 3, 5


def _inputs(config):
    x = torch.randn(B, T, config.x_dim)
    if config.output == "bigmm":
        x[..., 0] = (x[..., 0] > 0).float()
    if config.output == "bernoulli":
        x = (x > 0).float()
    return x


@pytest.mark.parametrize("name", CONFIGS)
def test_param_count_matches_model(name):
    config = CONFIGS[name]
    assert roofline.n_params(config) == sum(p.numel() for p in ReferenceVRNN(config).parameters())


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_flops_match_flop_counter(name):
    config = CONFIGS[name]
    model = ReferenceVRNN(config)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(_inputs(config))
    assert roofline.iteration_cost(config, B, T, "float32", "forward").flops == counter.get_total_flops()


@pytest.mark.parametrize("name", CONFIGS)
def test_train_flops_match_flop_counter(name):
    """Forward plus backward: the counter sees exactly the input gradients autograd computes."""
    config = CONFIGS[name]
    model = ReferenceVRNN(config)
    with FlopCounterMode(display=False) as counter:
        model(_inputs(config)).loss.backward()
    assert roofline.iteration_cost(config, B, T, "bf16", "train").flops == counter.get_total_flops()


def test_loglik_is_forward_on_tiled_batch():
    config = CONFIGS["tiny"]
    model = ReferenceVRNN(config)
    with FlopCounterMode(display=False) as counter:
        model.log_likelihood(_inputs(config), n_samples=4)
    assert roofline.iteration_cost(config, 4 * B, T, "float32", "forward").flops == counter.get_total_flops()


@pytest.mark.parametrize("mode", roofline.MODES)
def test_lstm_flops_match_flop_counter(mode):
    """A step-by-step LSTM with nn.LSTM's parameters (the fused CPU op is invisible to the counter)."""
    lstm = torch.nn.LSTM(7, 5, batch_first=True)
    x = torch.randn(B, T, 7)
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(mode == "train"):
        h = c = torch.zeros(B, 5)
        outs = []
        for t in range(T):
            gates = F.linear(x[:, t], lstm.weight_ih_l0, lstm.bias_ih_l0) + F.linear(h, lstm.weight_hh_l0)
            h, c = lstm_cell(gates, c)
            outs.append(h)
        loss = torch.stack(outs, 1).square().mean()
        if mode == "train":
            loss.backward()
    assert roofline.lstm_cost(7, 5, B, T, "tf32", mode).flops == counter.get_total_flops()


def test_step_cost_is_the_recurrent_share():
    config = VRNNConfig.preset("timit-vrnn-gauss")
    step = roofline.step_cost(config, 64, "bf16")
    fwd = roofline.iteration_cost(config, 64, 40, "bf16", "forward")
    assert 0 < 40 * step.flops < fwd.flops
    h, z, e, fz = config.h_dim, config.z_dim, config.enc_dim, config.phi_z_dim
    rec_weights = h * e + 3 * e * e + 2 * e * z + z * fz + 3 * fz * fz + fz * 4 * h + h * 4 * h
    assert step.flops == 2 * 64 * rec_weights
    assert step.bytes == 2 * (rec_weights + 4 * 64 * h)


def test_bytes_and_floor():
    config = VRNNConfig.preset("blizzard-vrnn-gmm")
    fp32 = roofline.iteration_cost(config, 128, 40, "float32", "train")
    tf32 = roofline.iteration_cost(config, 128, 40, "tf32", "train")
    bf16 = roofline.iteration_cost(config, 128, 40, "bf16", "train")
    assert fp32.flops == tf32.flops == bf16.flops and fp32.bytes == tf32.bytes > bf16.bytes
    assert fp32.floor_s == pytest.approx(max(fp32.flops / 60e12, fp32.bytes / 3.0e12))
    assert bf16.floor_s == pytest.approx(max(bf16.flops / 800e12, bf16.bytes / 3.0e12))
    assert fp32.floor_s > tf32.floor_s > bf16.floor_s
    assert roofline.memory_floor_s(3.0e9) == pytest.approx(1e-3)


@pytest.mark.parametrize(("args", "match"), [
    (("tiny", 0, 40, "float32", "train"), "batch"),
    (("tiny", 4, 40, "fp16", "train"), "precision"),
    (("tiny", 4, 40, "float32", "backward"), "mode"),
    (("not-a-config", 4, 40, "float32", "train"), "config"),
])
def test_bad_arguments(args, match):
    config = VRNNConfig.preset(args[0]) if args[0] in VRNNConfig.presets() else args[0]
    with pytest.raises(ValueError, match=match):
        roofline.iteration_cost(config, *args[1:])


@pytest.mark.parametrize(("name", "device"), [
    ("NVIDIA H200", "H200"),
    ("NVIDIA H200 141GB HBM3e", "H200"),
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 SXM5 80GB", "H100"),
    ("NVIDIA H100 PCIe", None),  # other ceilings: no row
    ("NVIDIA H100 NVL", None),
    ("NVIDIA H200 NVL", None),
    ("NVIDIA GH200 480GB", None),
    ("NVIDIA A100-SXM4-80GB", None),
    ("", None),
])
def test_ceilings_by_device_name(name, device):
    found = roofline.device_for(name)
    assert found is (None if device is None else getattr(roofline, device))


def test_h200_row_is_the_data_sheet():
    h200 = roofline.H200
    assert (h200.bandwidth, h200.flops["bf16"], h200.flops["tf32"], h200.flops["float32"]) == (4.8e12, 989e12,
                                                                                               494.5e12, 67e12)
    config = VRNNConfig.preset("timit-vrnn-gmm")
    on_h100 = roofline.iteration_cost(config, 64, 40, "bf16", "train", roofline.H100)
    on_h200 = roofline.iteration_cost(config, 64, 40, "bf16", "train", h200)
    assert on_h200.flops == on_h100.flops and on_h200.floor_s < on_h100.floor_s
    assert on_h200.floor_s == pytest.approx(max(on_h200.flops / 989e12, on_h200.bytes / 4.8e12))


def test_launch_time():
    assert roofline.launch_time_s(100, 40) == pytest.approx(100 * 40 * roofline.EAGER_LAUNCH_S)
    assert roofline.launch_time_s(100, 40, graphed=True) == pytest.approx(100 * 40 * roofline.GRAPHED_LAUNCH_S)
    assert roofline.GRAPHED_LAUNCH_S < roofline.EAGER_LAUNCH_S


def test_script_prints_the_device_and_the_launch_projection(capsys):
    roofline.main(["tiny", "--device", "h200", "--launches-per-step", "50"])
    out = capsys.readouterr().out
    assert "H200 SXM" in out and "50 launches per step: 10.000 ms eager" in out and "6.000 ms in a CUDA graph" in out
