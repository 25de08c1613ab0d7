"""The online API of both models: initial_state, step (one frame's KL, NLL and next state, equal to the
whole-sequence forward) and generate (streaming frames, equal to sample)."""

import itertools
import math

import pytest
import torch
from test_model import make_batch, small_config

from vrnn_fast import FastVRNN, ReferenceVRNN
from vrnn_fast.reference import OnlineStep

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLEMENTATIONS = ["reference", "torch", "triton"]  # triton: TRITON_INTERPRET=1 without a GPU (tests/conftest.py)


def build(impl, cfg, seed=0):
    torch.manual_seed(seed)
    net = ReferenceVRNN(cfg) if impl == "reference" else FastVRNN(cfg, backend=impl)
    return net.double().to(DEVICE)


def ragged_mask(B, T, seed=0):
    """Gaps anywhere (not only padding at the end), a row masked at t = 0 and a row with one frame."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[0], mask[1, 0], mask[2] = True, False, False
    mask[2, T // 2] = True
    return mask


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("model, output", [("vrnn", "gmm"), ("vrnn-i", "gauss"), ("rnn", "gauss"),
                                           ("vrnn", "bernoulli"), ("rnn", "bernoulli")])
def test_step_loop_equals_the_whole_sequence_forward(impl, model, output):
    """T steps from a non-zero state with a ragged mask give the forward's per-frame KL and NLL and its final state
    (float64, against ReferenceVRNN's forward); masked frames score exactly 0 and carry the state unchanged."""
    cfg = small_config(model, output)
    net, oracle = build(impl, cfg), build("reference", cfg)
    x, _, noise = (None if t is None else t.to(DEVICE) for t in make_batch(cfg, batch=4, steps=7))
    mask = ragged_mask(4, 7).to(DEVICE)
    g = torch.Generator().manual_seed(1)
    state0 = tuple((torch.randn(4, cfg.h_dim, generator=g, dtype=torch.float64) * 0.5).to(DEVICE) for _ in "hc")
    want = oracle(x, mask, noise, state=state0)
    state, kl, nll = state0, [], []
    for t in range(x.shape[1]):
        out = net.step(x[:, t], state, mask[:, t], None if noise is None else noise[:, t])
        assert isinstance(out, OnlineStep) and out.kl.shape == out.nll.shape == (4,)
        assert not out.kl.requires_grad and not out.state[0].requires_grad
        off = ~mask[:, t]
        assert (out.kl[off] == 0).all() and (out.nll[off] == 0).all()
        for new, old in zip(out.state, state, strict=True):
            assert torch.equal(new[off], old[off])
        kl.append(out.kl)
        nll.append(out.nll)
        state = out.state
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.stack(kl, 1), want.kl, **tol)
    torch.testing.assert_close(torch.stack(nll, 1), want.nll, **tol)
    torch.testing.assert_close(-(torch.stack(kl, 1) + torch.stack(nll, 1)).sum(1), want.elbo, **tol)
    for a, b in zip(state, want.state, strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert (want.nll[mask] != 0).all() and (cfg.model == "rnn" or (want.kl[mask] > 0).all())


def test_initial_state_is_zeros_in_the_parameters_dtype():
    net = FastVRNN(small_config())
    h, c = net.initial_state(3)
    assert h.shape == c.shape == (3, 37) and h.dtype == torch.float32 and not h.any() and not c.any()
    assert h.data_ptr() != c.data_ptr()
    h, c = net.double().initial_state(2)
    assert h.dtype == c.dtype == torch.float64 and h.device == net.rnn.weight_hh.device
    x = torch.rand(2, 20, dtype=torch.float64)
    torch.testing.assert_close(net.step(x, (h, c), noise=torch.zeros(2, 13, dtype=torch.float64)),
                               net.step(x, None, noise=torch.zeros(2, 13, dtype=torch.float64)), rtol=0, atol=0)
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match="batch must be a positive integer"):
            net.initial_state(bad)


@pytest.mark.parametrize("impl", ["reference", "torch"])
@pytest.mark.parametrize("model, output", [("vrnn", "gauss"), ("vrnn-i", "gmm"), ("rnn", "bigmm"),
                                           ("vrnn", "bernoulli")])
@pytest.mark.parametrize("mean_output", [False, True])
def test_generate_streams_the_frames_of_sample(impl, model, output, mean_output):
    cfg = small_config(model, output)
    net = build(impl, cfg)
    want = net.sample(3, 6, mean_output=mean_output, generator=torch.Generator(DEVICE).manual_seed(7))
    stream = net.generate(3, mean_output=mean_output, generator=torch.Generator(DEVICE).manual_seed(7))  # endless
    got = list(itertools.islice(stream, 6))
    assert all(f.shape == (3, cfg.x_dim) for f in got)
    assert torch.equal(torch.stack(got, 1), want)
    assert next(stream).shape == (3, cfg.x_dim)  # and it goes on
    bounded = net.generate(3, steps=6, mean_output=mean_output, generator=torch.Generator(DEVICE).manual_seed(7))
    assert torch.equal(torch.stack(list(bounded), 1), want)
    other = net.sample(3, 6, mean_output=mean_output, generator=torch.Generator(DEVICE).manual_seed(8))
    assert mean_output and not cfg.has_latent or not torch.equal(other, want)


def test_generate_continues_a_primed_state_like_sample():
    """Score observed frames online, then generate what follows: the same as sample from that state."""
    cfg = small_config("vrnn", "bernoulli")
    net = build("torch", cfg)
    x, _, noise = make_batch(cfg, batch=2, steps=5)
    x, noise = x[:2].to(DEVICE), noise[:2].to(DEVICE)
    state = net.initial_state(2)
    for t in range(5):
        state = net.step(x[:, t], state, noise=noise[:, t]).state
    torch.testing.assert_close(state, net(x, noise=noise).state, rtol=1e-12, atol=1e-12)
    frames = net.generate(2, state, generator=torch.Generator(DEVICE).manual_seed(3))
    want = net.sample(2, 4, state=state, generator=torch.Generator(DEVICE).manual_seed(3))
    assert torch.equal(torch.stack([next(frames) for _ in range(4)], 1), want)
    assert set(want.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("call, match", [
    (lambda m: m.step(torch.rand(2, 3, 20), None), r"x_t must be a \(B, D\) tensor"),
    (lambda m: m.step([[0.5] * 20], None), r"x_t must be a \(B, D\) tensor, got a list"),
    (lambda m: m.step(torch.rand(2, 19), None), "feature size 19"),
    (lambda m: m.step(torch.rand(2, 20).double(), None), "dtype"),
    (lambda m: m.step(torch.full((2, 20), math.nan), None), "x contains NaN"),
    (lambda m: m.step(torch.rand(2, 20) + 1, None), r"x \(output='bernoulli'\) must lie in \[0, 1\]"),
    (lambda m: m.step(torch.rand(2, 20), None, mask_t=torch.ones(3, dtype=torch.bool)), r"mask_t must be a \(B,\)"),
    (lambda m: m.step(torch.rand(2, 20), None, mask_t=torch.ones(2, 1, dtype=torch.bool)), r"mask_t must be a \(B,\)"),
    (lambda m: m.step(torch.rand(2, 20), None, mask_t=torch.ones(2)), "torch.bool"),
    (lambda m: m.step(torch.rand(2, 20), None, noise=torch.randn(2, 1, 13)), r"noise must have shape \(2, 13\)"),
    (lambda m: m.step(torch.rand(2, 20), None, noise=torch.full((2, 13), math.inf)), "noise contains NaN"),
    (lambda m: m.step(torch.rand(2, 20), (torch.zeros(3, 37), torch.zeros(3, 37))), r"state h .*\(2, 37\)"),
    (lambda m: m.step(torch.rand(2, 20), torch.zeros(2, 37)), r"state must be a pair"),
    (lambda m: m.step(torch.rand(2, 20), (torch.zeros(2, 37), torch.full((2, 37), math.nan))), "state c .*NaN"),
    (lambda m: m.generate(0), "n must be a positive integer"),
    (lambda m: m.generate(2, steps=0), "steps must be a positive integer or None"),
    (lambda m: m.generate(2, (torch.zeros(3, 37), torch.zeros(3, 37))), r"state h .*\(2, 37\)"),
])
def test_bad_online_input_is_named_at_the_call(call, match):
    net = FastVRNN(small_config("vrnn", "bernoulli"))
    with pytest.raises(ValueError, match=match):
        call(net)  # generate: when called, not at the first frame


def test_an_rnn_step_refuses_noise():
    net = FastVRNN(small_config("rnn", "gauss"))
    with pytest.raises(ValueError, match="no latent variable"):
        net.step(torch.randn(2, 20), None, noise=torch.randn(2, 13))
