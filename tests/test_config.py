"""VRNNConfig: presets reproduce PAPER.md's size table; bad values are refused by name."""

import pytest
import torch

import vrnn_fast.reference as reference
from vrnn_fast import ReferenceVRNN, VRNNConfig


def _mlp_sizes(cfg):
    blocks = ("phi_x", "phi_z", "enc", "prior", "dec")
    return {b: (getattr(cfg, f"{b}_dim"), getattr(cfg, f"{b}_layers")) for b in blocks}


def test_blizzard_presets_match_the_official_code():
    gmm = VRNNConfig.preset("blizzard-vrnn-gmm")
    assert (gmm.x_dim, gmm.z_dim, gmm.h_dim, gmm.batch_size, gmm.lr) == (200, 200, 4000, 128, 3e-4)
    assert (gmm.model, gmm.output, gmm.n_mix) == ("vrnn", "gmm", 20)
    assert set(_mlp_sizes(gmm).values()) == {(500, 4)}
    gauss = _mlp_sizes(VRNNConfig.preset("blizzard-vrnn-gauss"))
    assert gauss == {"phi_x": (600, 4), "phi_z": (500, 4), "enc": (500, 4), "prior": (500, 4), "dec": (600, 4)}
    assert VRNNConfig.preset("blizzard-vrnn-i-gauss").model == "vrnn-i"
    for name, width in (("blizzard-rnn-gmm", 700), ("blizzard-rnn-gauss", 800)):
        cfg = VRNNConfig.preset(name)
        assert cfg.model == "rnn"
        assert (cfg.phi_x_dim, cfg.dec_dim, cfg.phi_x_layers, cfg.dec_layers) == (width, width, 4, 4)


def test_timit_accent_and_iamondb_presets():
    for name in ("timit-vrnn-gauss", "timit-vrnn-gmm", "timit-vrnn-i-gauss"):
        cfg = VRNNConfig.preset(name)
        assert (cfg.h_dim, cfg.z_dim, cfg.batch_size, cfg.lr) == (2000, 200, 64, 1e-3)
        assert set(_mlp_sizes(cfg).values()) == {(600, 4)}
    assert VRNNConfig.preset("accent-vrnn-gauss").batch_size == 128
    iam = VRNNConfig.preset("iamondb-vrnn-gmm")
    assert (iam.x_dim, iam.z_dim, iam.h_dim, iam.batch_size, iam.lr, iam.output, iam.n_mix) == (
        3, 50, 1200, 20, 3e-4, "bigmm", 20)
    assert _mlp_sizes(iam) == {"phi_x": (250, 1), "phi_z": (150, 1), "enc": (150, 1), "prior": (150, 1),
                               "dec": (250, 1)}
    assert VRNNConfig.preset("iamondb-vrnn-gauss").n_mix == 1
    assert {"tiny", "iamondb-rnn-gauss", "timit-rnn-gmm"} <= set(VRNNConfig.presets())


def _n_params(cfg, monkeypatch):
    monkeypatch.setattr(reference.VRNNBase, "reset_parameters", lambda self: None)  # meta tensors can't be inited
    with torch.device("meta"):
        return sum(p.numel() for p in ReferenceVRNN(cfg).parameters())


@pytest.mark.parametrize("dataset", ["timit", "accent", "cpu-speech", "cpu-handwriting"])
@pytest.mark.parametrize("output", ["gauss", "gmm"])
def test_rnn_baselines_are_parameter_matched(dataset, output, monkeypatch):
    rnn = _n_params(VRNNConfig.preset(f"{dataset}-rnn-{output}"), monkeypatch)
    vrnn = _n_params(VRNNConfig.preset(f"{dataset}-vrnn-{output}"), monkeypatch)
    assert abs(rnn / vrnn - 1) < 0.01


@pytest.mark.parametrize("changes, word", [
    (dict(model="lstm"), "model"), (dict(output="laplace"), "output"), (dict(h_dim=0), "h_dim"),
    (dict(z_dim=2.5), "z_dim"), (dict(enc_layers=-1), "enc_layers"), (dict(sigma_floor=0.0), "sigma_floor"),
    (dict(output="bigmm", x_dim=200), "x_dim"), (dict(output="gmm", n_mix=1), "n_mix"),
    (dict(sigma_floor=float("inf")), "sigma_floor"), (dict(sigma_floor=1e30), "sigma_floor"),
    (dict(sigma_floor=float("nan")), "sigma_floor"), (dict(init_scale=float("inf")), "init_scale"),
    (dict(init_scale=2.0), "init_scale"), (dict(lr=1e300), "lr"), (dict(lr=True), "lr"),
    (dict(sigma_bias_init=float("-inf")), "sigma_bias_init"), (dict(sigma_floor="1e-4"), "sigma_floor"),
])
def test_invalid_values_are_named(changes, word):
    with pytest.raises(ValueError, match=word):
        VRNNConfig.preset("tiny", **changes)


def test_bounds_are_inclusive():
    cfg = VRNNConfig.preset("tiny", sigma_floor=1.0, init_scale=1.0, lr=10.0, sigma_bias_init=-3)
    assert (cfg.sigma_floor, cfg.init_scale, cfg.lr) == (1.0, 1.0, 10.0)


def test_unknown_preset_and_fields():
    with pytest.raises(ValueError, match="unknown preset 'timmit'"):
        VRNNConfig.preset("timmit")
    with pytest.raises(ValueError, match="hidden"):
        VRNNConfig.from_dict({**VRNNConfig().to_dict(), "hidden": 3})
    cfg = VRNNConfig.preset("iamondb-vrnn-gmm")
    assert VRNNConfig.from_dict(cfg.to_dict()) == cfg
