"""FastVRNN(torch) against ReferenceVRNN, and the shared API: likelihood, sampling, state, errors, training."""

import math

import pytest
import torch

from vrnn_fast import FastVRNN, ReferenceVRNN, VRNNConfig, fused_torch
from vrnn_fast import model as fast_model
from vrnn_fast.op_count import count_ops

MODELS = ["vrnn", "vrnn-i", "rnn"]
OUTPUTS = ["gauss", "gmm", "bigmm", "bernoulli"]


def small_config(model="vrnn", output="gauss", **changes):
    """Odd sizes: H=37, Z=13, D=20 (3 for handwriting), K=5, two-layer encoder and phi_x."""
    base = dict(x_dim=3 if output == "bigmm" else 20, z_dim=13, h_dim=37, phi_x_dim=24, phi_x_layers=2,
                phi_z_dim=19, phi_z_layers=1, enc_dim=29, enc_layers=2, prior_dim=23, prior_layers=1,
                dec_dim=31, dec_layers=2, n_mix=5, model=model, output=output)
    return VRNNConfig(**{**base, **changes})


def make_batch(cfg, batch=4, steps=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, cfg.x_dim, generator=g, dtype=dtype)
    if cfg.output == "bigmm":
        x[..., 0] = (torch.rand(batch, steps, generator=g) < 0.3).to(dtype)
    if cfg.output == "bernoulli":  # binary frames, and fractional ones (valid: x in [0, 1])
        x = torch.rand(batch, steps, cfg.x_dim, generator=g, dtype=dtype)
        x[:2] = (x[:2] < 0.3).to(dtype)
    lengths = torch.tensor([steps, steps - 3, 1, steps - 1][:batch])
    mask = torch.arange(steps)[None] < lengths[:, None]
    noise = torch.randn(batch, steps, cfg.z_dim, generator=g, dtype=dtype) if cfg.has_latent else None
    return x, mask, noise


def pair(cfg, seed=0):
    torch.manual_seed(seed)
    ref = ReferenceVRNN(cfg).double()
    fast = FastVRNN(cfg, backend="torch").double()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("model", MODELS)
def test_fast_matches_reference_float64(model, output, masked):
    cfg = small_config(model, output)
    ref, fast = pair(cfg)
    x, mask, noise = make_batch(cfg)
    mask = mask if masked else None
    out_ref = ref(x, mask, noise, return_log_weight=True)
    out_fast = fast(x, mask, noise, return_log_weight=True)
    for name in ("kl", "nll", "elbo", "log_weight"):
        assert rel_err(getattr(out_fast, name), getattr(out_ref, name)) < 1e-9, name
    for a, b in zip(out_fast.state, out_ref.state, strict=True):
        assert rel_err(a, b) < 1e-9
    if cfg.has_latent:
        assert rel_err(out_fast.z_mean, out_ref.z_mean) < 1e-9
        assert rel_err(out_fast.z_std, out_ref.z_std) < 1e-9
        assert (out_ref.kl > 0).any()
    out_ref.loss.backward()
    out_fast.loss.backward()
    grads_ref = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        assert p.grad is not None and grads_ref[name].grad.abs().max() > 0, name
        assert rel_err(p.grad, grads_ref[name].grad) < 1e-9, name


@pytest.mark.parametrize(("output", "fused"), [("gmm", "linear_gmm_nll"), ("gauss", "linear_gaussian_nll")])
@pytest.mark.parametrize("model", MODELS)
def test_fast_decoder_runs_fused(model, output, fused, monkeypatch):
    """The GMM and Gaussian outputs go through their fused_torch Function once per call (the GMM here in chunks of
    one d, D = 20)."""
    monkeypatch.setitem(fused_torch.GMM_CHUNK_ELEMENTS, "cpu", 1)
    calls = []

    def counted(*args):
        calls.append(1)
        return getattr(fused_torch, fused)(*args)

    monkeypatch.setattr(fast_model, fused, counted)
    ref, fast = pair(small_config(model, output))
    x, mask, noise = make_batch(fast.config)
    want, got = ref(x, mask, noise), fast(x, mask, noise)
    assert calls == [1]
    torch.testing.assert_close(got.nll, want.nll, rtol=1e-10, atol=1e-10)
    want.loss.backward()
    got.loss.backward()
    grads_ref = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads_ref[name].grad, rtol=1e-9, atol=1e-10, msg=name)


def test_loss_definitions_and_mask_semantics():
    cfg = small_config("vrnn", "gmm")
    ref, _ = pair(cfg)
    x, mask, noise = make_batch(cfg)
    out = ref(x, mask, noise)
    assert out.kl.shape == out.nll.shape == mask.shape and out.elbo.shape == (4,)
    torch.testing.assert_close(out.elbo, -(out.kl + out.nll).sum(1))
    torch.testing.assert_close(out.loss, -out.elbo.mean())
    assert (out.kl[~mask] == 0).all() and (out.nll[~mask] == 0).all()
    # Padding values do not matter, and a padded sequence scores like the same sequence alone.
    x2 = x.clone()
    x2[~mask] = 123.0
    torch.testing.assert_close(ref(x2, mask, noise).elbo, out.elbo)
    alone = ref(x[1:2, :6], None, noise[1:2, :6])
    torch.testing.assert_close(alone.elbo, out.elbo[1:2])
    torch.testing.assert_close(alone.state[0], out.state[0][1:2])


@pytest.mark.parametrize("cls", [ReferenceVRNN, FastVRNN])
def test_state_dicts_are_interchangeable(cls):
    cfg = small_config("vrnn", "bigmm")
    a, b = ReferenceVRNN(cfg), FastVRNN(cfg)
    assert list(a.state_dict()) == list(b.state_dict())
    other = cls(cfg)
    other.load_state_dict((b if cls is ReferenceVRNN else a).state_dict())


@pytest.mark.parametrize("cls", [ReferenceVRNN, FastVRNN])
@pytest.mark.parametrize("model", MODELS)
def test_two_halves_with_carried_state_equal_the_whole(cls, model):
    cfg = small_config(model, "gauss")
    torch.manual_seed(0)
    net = cls(cfg).double()
    x, _, noise = make_batch(cfg, steps=10)
    whole = net(x, noise=noise)
    halves = [slice(0, 4), slice(4, 10)]
    first = net(x[:, halves[0]], noise=None if noise is None else noise[:, halves[0]])
    second = net(x[:, halves[1]], noise=None if noise is None else noise[:, halves[1]], state=first.state)
    torch.testing.assert_close(torch.cat([first.kl, second.kl], 1), whole.kl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat([first.nll, second.nll], 1), whole.nll, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(second.state[1], whole.state[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model", MODELS)
def test_importance_sampling_estimate(model):
    cfg = small_config(model, "gmm")
    ref, fast = pair(cfg)
    x, mask, noise = make_batch(cfg)
    if cfg.has_latent:
        single = fast.log_likelihood(x, mask, n_samples=1, noise=noise[None])
        torch.testing.assert_close(single, ref(x, mask, noise, return_log_weight=True).log_weight)
    # Chunking (max_frames) does not change the estimate; padding is ignored.
    g = torch.Generator().manual_seed(5)
    many = torch.randn(7, *x.shape[:2], cfg.z_dim, generator=g, dtype=x.dtype) if cfg.has_latent else None
    full = fast.log_likelihood(x, mask, n_samples=7, noise=many)
    five_samples = 5 * x.shape[0] * x.shape[1]  # chunks of 5 and 2 samples
    torch.testing.assert_close(fast.log_likelihood(x, mask, n_samples=7, noise=many, max_frames=five_samples), full)
    torch.testing.assert_close(ref.log_likelihood(x, mask, n_samples=7, noise=many), full)
    x2 = x.clone()
    x2[~mask] = -7.0
    torch.testing.assert_close(fast.log_likelihood(x2, mask, n_samples=7, noise=many), full)
    if not cfg.has_latent:
        torch.testing.assert_close(full, ref(x, mask).elbo)


def test_importance_sampling_is_at_least_the_elbo_on_average():
    cfg = small_config("vrnn", "gauss", x_dim=6)
    torch.manual_seed(3)
    net = FastVRNN(cfg).double()
    x, mask, _ = make_batch(cfg, batch=4, steps=6)
    with torch.no_grad():  # a posterior far from the prior, so the bound is loose and the gap measurable
        net.encoder.mu.weight.mul_(20.0)
        net.encoder.sigma.bias.fill_(-1.0)
        elbo = torch.stack([net(x, mask).elbo for _ in range(200)]).mean(0)
        is40 = torch.stack([net.log_likelihood(x, mask, n_samples=40) for _ in range(5)]).mean(0)
    assert (is40 > elbo).all(), (is40, elbo)
    # Jensen gap is bounded by the average KL per sequence, a sanity check on the scale.
    assert (is40 - elbo < net(x, mask).kl.sum(1) + 1.0).all()


@pytest.mark.parametrize("model, output", [("vrnn", "gauss"), ("vrnn-i", "gmm"), ("rnn", "bigmm"), ("vrnn", "bigmm"),
                                           ("vrnn", "bernoulli"), ("rnn", "bernoulli")])
def test_sample_shapes_and_determinism(model, output):
    cfg = small_config(model, output)
    net = FastVRNN(cfg)
    s1 = net.sample(5, 7, generator=torch.Generator().manual_seed(1))
    s2 = net.sample(5, 7, generator=torch.Generator().manual_seed(1))
    s3 = net.sample(5, 7, generator=torch.Generator().manual_seed(2))
    assert s1.shape == (5, 7, cfg.x_dim) and torch.isfinite(s1).all()
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    mean = net.sample(3, 4, mean_output=True, generator=torch.Generator().manual_seed(1))
    assert mean.shape == (3, 4, cfg.x_dim)
    if output == "bigmm":
        assert set(s1[..., 0].unique().tolist()) <= {0.0, 1.0}
    if output == "bernoulli":  # draws are bits; the mean output is the probabilities, in (0, 1)
        assert set(s1.unique().tolist()) == {0.0, 1.0}
        assert ((mean > 0) & (mean < 1)).all() and not set(mean.unique().tolist()) <= {0.0, 1.0}


def test_sample_mean_output_of_a_gaussian_decoder_is_its_mean():
    cfg = small_config("rnn", "gauss")
    net = FastVRNN(cfg).double()
    first = net.sample(2, 1, mean_output=True)
    h0 = torch.zeros(2, cfg.h_dim, dtype=torch.float64)
    torch.testing.assert_close(first[:, 0], net.decoder.params(h0)[0])


def test_tiny_model_learns_synthetic_data():
    torch.manual_seed(0)
    cfg = VRNNConfig.preset("tiny", x_dim=16)
    net = FastVRNN(cfg)
    t = torch.arange(24, dtype=torch.float32)
    phase = torch.rand(32, 1, 1) * 6.28
    x = torch.sin(0.3 * t[None, :, None] + phase + torch.arange(16) * 0.2) + 0.05 * torch.randn(32, 24, 16)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = net(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses[::10]


@pytest.mark.parametrize("call, match", [
    (lambda m: m(torch.randn(4, 20)), r"\(B, T, D\)"),
    (lambda m: m(torch.randn(2, 3, 19)), "feature size 19"),
    (lambda m: m(torch.randn(2, 3, 20), mask=torch.ones(2, 4, dtype=torch.bool)), "mask must have shape"),
    (lambda m: m(torch.randn(2, 3, 20), mask=torch.ones(2, 3)), "torch.bool"),
    (lambda m: m(torch.full((2, 3, 20), math.nan)), "NaN"),
    (lambda m: m(torch.full((2, 3, 20), math.inf)), "NaN or inf"),
    (lambda m: m(torch.randn(2, 3, 20, dtype=torch.float64)), "dtype"),
    (lambda m: m(torch.randint(0, 3, (2, 3, 20))), "floating-point"),
    (lambda m: m(torch.randn(2, 3, 20), noise=torch.randn(2, 3, 5)), "noise must have shape"),
    (lambda m: m(torch.randn(2, 3, 20), state=(torch.zeros(2, 5), torch.zeros(2, 5))), "state h"),
    (lambda m: m(torch.randn(2, 3, 20), state=(torch.zeros(3, 37), torch.zeros(3, 37))), r"state h .*\(2, 37\)"),
    (lambda m: m(torch.randn(2, 3, 20), state=(torch.zeros(2, 37), torch.full((2, 37), math.nan))), "state c .*NaN"),
    (lambda m: m(torch.randn(2, 3, 20), state=(torch.zeros(2, 37).double(), torch.zeros(2, 37))), "state h .*dtype"),
    (lambda m: m(torch.randn(2, 3, 20), state=(torch.zeros(2, 37, device="meta"), torch.zeros(2, 37))), "h .*meta"),
    (lambda m: m(torch.randn(2, 3, 20), noise=torch.full((2, 3, 13), math.inf)), "noise contains NaN"),
    (lambda m: m(torch.randn(2, 3, 20), mask=torch.ones(2, 3, dtype=torch.bool, device="meta")), "mask is on meta"),
    (lambda m: m.sample(2, 3, state=(torch.zeros(3, 37), torch.zeros(3, 37))), r"state h .*\(2, 37\)"),
    (lambda m: m.sample(2, 3, state=(torch.full((2, 37), math.nan), torch.zeros(2, 37))), "state h .*NaN"),
    (lambda m: m.log_likelihood(torch.randn(2, 3, 20), n_samples=0), "n_samples"),
    (lambda m: m.sample(0, 3), "positive"),
])
def test_bad_input_is_named(call, match):
    net = FastVRNN(small_config("vrnn", "gauss"))
    with pytest.raises(ValueError, match=match):
        call(net)


def test_bad_backend_and_config():
    with pytest.raises(ValueError, match="backend"):
        FastVRNN(small_config(), backend="cuda")
    with pytest.raises(ValueError, match="VRNNConfig"):
        ReferenceVRNN({"x_dim": 3})


def test_bernoulli_log_likelihood_against_quadrature():
    """One step, Z = 1: log p(x) = log int N(z; prior) prod_d Bernoulli(x_d; sigmoid(dec(z))) dz by quadrature on
    a fine grid; the 4 binary frames' p(x) sum to 1, and the importance-sampled estimate converges to it."""
    cfg = small_config("vrnn", "bernoulli", x_dim=2, z_dim=1, init_scale=1.0)
    torch.manual_seed(0)
    net = FastVRNN(cfg).double()
    with torch.no_grad():  # a decoder that depends strongly on z, so the integral is not a constant, and a
        net.decoder.logits.weight.mul_(2.0)  # proposal q = N(0.3, 1.46^2) wider than the prior N(0, 1.04^2)
        for head, bias in ((net.encoder.mu, 0.3), (net.encoder.sigma, 1.2)):
            head.weight.zero_()
            head.bias.fill_(bias)
    frames = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    h0 = torch.zeros(1, cfg.h_dim, dtype=torch.float64)
    with torch.no_grad():
        mu_p, a_p = net.prior(h0)
        s_p = torch.nn.functional.softplus(a_p) + cfg.sigma_floor
        z = mu_p + s_p * torch.linspace(-12, 12, 20001, dtype=torch.float64)[:, None]  # (G, 1)
        log_prior = torch.distributions.Normal(mu_p, s_p).log_prob(z)[:, 0]
        dec_in = torch.cat([net.phi_z(z), h0.expand(len(z), -1)], -1)
        logits = net.decoder.params(dec_in)[0]  # (G, 2)
        log_px = torch.stack([torch.trapezoid((log_prior - net.decoder.nll(f.expand(len(z), 2), dec_in, 0.0)).exp(),
                                              z[:, 0]).log() for f in frames])
    assert logits.abs().max() > 5
    torch.testing.assert_close(log_px.exp().sum(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-9, atol=0)
    noise = torch.randn(20000, 4, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    estimate = net.log_likelihood(frames[:, None], n_samples=len(noise), noise=noise, max_frames=len(noise) * 4)
    torch.testing.assert_close(estimate, log_px, rtol=0, atol=0.05)  # 20000 samples: errors ~0.015 over seeds


def test_bernoulli_model_refuses_data_outside_0_1_but_not_padding():
    cfg = small_config("vrnn", "bernoulli")
    net = FastVRNN(cfg).double()
    x, mask, noise = make_batch(cfg)
    padded = x.clone()
    padded[~mask] = 5.0  # padding is not scored, so not checked
    torch.testing.assert_close(net(padded, mask, noise).elbo, net(x, mask, noise).elbo, rtol=0, atol=0)
    for cls in (ReferenceVRNN, FastVRNN):
        with pytest.raises(ValueError, match=r"x \(output='bernoulli'\) must lie in \[0, 1\]"):
            cls(cfg).double()(padded, None, noise)
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
            cls(cfg).double().log_likelihood(x - 0.5, mask, n_samples=2)


@pytest.mark.parametrize(("output", "syncs"), [("bernoulli", 3), ("bigmm", 2)])
def test_each_input_check_runs_once_per_forward(output, syncs):
    """One host read each for x's finiteness, the given noise's, and a Bernoulli x's range (a sync each on a GPU)."""
    cfg = small_config("vrnn", output)
    net = FastVRNN(cfg, backend="torch").double()
    x, mask, noise = make_batch(cfg)
    counted = count_ops(lambda: net(x, mask, noise))
    assert sum(counted.syncs.values()) == syncs, counted.syncs


@pytest.mark.parametrize("output", ["gauss", "gmm"])
def test_a_bfloat16_model_scores_in_float32(output):
    """Parameters and data in bfloat16, no autocast: the densities still run (and return) in float32."""
    config = VRNNConfig.preset("tiny", output=output)
    model = FastVRNN(config, backend="torch").to(torch.bfloat16)
    x = torch.randn(2, 5, config.x_dim, dtype=torch.bfloat16)
    out = model(x)
    assert out.nll.dtype == torch.float32 and torch.isfinite(out.nll).all()
