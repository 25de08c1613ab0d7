"""The recurrence op (vrnn_fast/recurrence.py): float64 gradcheck and opcheck on both backends, whole-model parity
against ReferenceVRNN, no host synchronisation, torch.compile(fullgraph=True), bf16 autocast, and the launches
per step of a training iteration (the GPU cost the op exists to cut)."""

import pytest
import torch

from vrnn_fast import FastVRNN, ReferenceVRNN, VRNNConfig
from vrnn_fast.op_count import count_ops, per_step
from vrnn_fast.recurrence import recurrence

pytestmark = pytest.mark.usefixtures("nan_outputs")  # buffers the op never writes would be NaN

BACKENDS = ["torch", "triton"]  # triton runs under TRITON_INTERPRET=1 without a GPU (tests/conftest.py)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODELS = ["vrnn", "vrnn-i", "rnn"]
OUTPUTS = ["gauss", "gmm", "bigmm", "bernoulli"]


def op_inputs(latent=True, T=4, B=3, H=5, E=6, Z=3, F=4, L_e=2, L_z=2, masked=True, seed=0):
    """Random float64 arguments of the op (odd sizes, a ragged mask with a row masked at t = 0)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(DEVICE).requires_grad_()

    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]][:B], dtype=torch.bool).t()[:T].to(DEVICE)
    args = dict(gates_x=rnd(T, B, 4 * H), h0=rnd(B, H), c0=rnd(B, H), w_hz=rnd(4 * H, H + (F if latent else 0)),
                mask=mask if masked else None)
    if latent:
        args.update(enc_x=rnd(T, B, E), eps=rnd(T, B, Z, scale=1.0), w_e1h=rnd(E, H),
                    enc_w=[rnd(E, E) for _ in range(L_e - 1)], enc_b=[rnd(E) for _ in range(L_e - 1)],
                    head_w=rnd(2 * Z, E), head_b=rnd(2 * Z), phi_z_w=[rnd(F, Z)] + [rnd(F, F) for _ in range(L_z - 1)],
                    phi_z_b=[rnd(F) for _ in range(L_z)])
    else:
        args.update(enc_x=None, eps=None, w_e1h=None, enc_w=[], enc_b=[], head_w=None, head_b=None, phi_z_w=[],
                    phi_z_b=[])
    return args


def call(args, backend, floor=1e-2):
    """The op's differentiable outputs: hz, cT (and ma, z for a VRNN)."""
    out = recurrence(**args, floor=floor, backend=backend)
    return out[:2] + out[4:6]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("latent", [True, False], ids=["vrnn", "rnn"])
@pytest.mark.parametrize("T", [1, 4])
def test_gradcheck(backend, latent, T):
    args = op_inputs(latent, T=T)
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    lists = {k: v for k, v in args.items() if isinstance(v, list)}
    flat = [args[k] for k in names] + [t for v in lists.values() for t in v]

    def fn(*tensors):
        kw = dict(args, **dict(zip(names, tensors[:len(names)], strict=True)))
        rest = list(tensors[len(names):])
        for k, v in lists.items():
            kw[k], rest = rest[:len(v)], rest[len(v):]
        return tuple(call(kw, backend))

    fast = T > 1 or backend == "triton"  # the interpreter is slow: random projections, not the whole Jacobian
    assert torch.autograd.gradcheck(fn, flat, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("latent", [True, False], ids=["vrnn", "rnn"])
def test_opcheck(backend, latent):
    args = op_inputs(latent)
    torch.library.opcheck(recurrence, (), dict(args, floor=1e-2, backend=backend))


def test_masked_steps_keep_the_state_and_get_no_gradient():
    args = op_inputs(True, masked=True)
    hz, c_T, c, *_ = recurrence(**args, floor=1e-2, backend="torch")
    H, mask = args["h0"].shape[1], args["mask"]
    for t in range(mask.shape[0]):
        frozen = ~mask[t]
        torch.testing.assert_close(hz[t + 1, frozen, :H], hz[t, frozen, :H], rtol=0, atol=0)
        torch.testing.assert_close(c[t + 1, frozen], c[t, frozen], rtol=0, atol=0)
    (hz[:, :, :H].sum() + c_T.sum()).backward()
    assert (args["gates_x"].grad[~mask] == 0).all()  # padded steps: no gradient into the LSTM input


# ---- whole model against ReferenceVRNN ----


def deep_config(model, output):
    """Odd sizes and deeper stacks than the model tests: 3-layer encoder and phi_z."""
    return VRNNConfig(x_dim=3 if output == "bigmm" else 20, z_dim=13, h_dim=37, phi_x_dim=24, phi_x_layers=2,
                      phi_z_dim=19, phi_z_layers=3, enc_dim=29, enc_layers=3, prior_dim=23, prior_layers=2,
                      dec_dim=31, dec_layers=2, n_mix=5, model=model, output=output)


def model_batch(cfg, B=4, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, cfg.x_dim, generator=g, dtype=torch.float64)
    if cfg.output == "bigmm":
        x[..., 0] = (torch.rand(B, T, generator=g) < 0.3).double()
    if cfg.output == "bernoulli":  # binary frames, and fractional ones (valid: x in [0, 1])
        x = torch.rand(B, T, cfg.x_dim, generator=g, dtype=torch.float64)
        x[:2] = (x[:2] < 0.3).double()
    mask = torch.arange(T)[None] < torch.tensor([T, T - 3, 1, T - 1])[:B, None]
    noise = torch.randn(B, T, cfg.z_dim, generator=g, dtype=torch.float64) if cfg.has_latent else None
    state = tuple(torch.randn(B, cfg.h_dim, generator=g, dtype=torch.float64) * 0.5 for _ in range(2))
    return [t if t is None else t.to(DEVICE) for t in (x, mask, noise, *state)]


def run(net, x, mask, noise, h0, c0):
    """Forward + backward of loss + the final state; returns (output, parameter grads, d x, d h0, d c0)."""
    x, h0, c0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    out = net(x, mask, noise, state=(h0, c0), return_log_weight=True)
    (out.loss + out.state[0].sum() + 0.5 * out.state[1].sum()).backward()
    return out, {n: p.grad for n, p in net.named_parameters()}, x.grad, h0.grad, c0.grad


def count_calls(monkeypatch, module, names) -> dict:
    """Counts the calls of ``module.<name>`` for each name while the test runs."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(module, name)

        def counted(*args, _name=name, _real=real, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("model", MODELS)
def test_model_matches_reference_float64(model, output, backend, monkeypatch):
    cfg = deep_config(model, output)
    torch.manual_seed(0)
    ref = ReferenceVRNN(cfg).double().to(DEVICE)
    fast = FastVRNN(cfg, backend=backend).double().to(DEVICE)
    fast.load_state_dict(ref.state_dict())
    batch = model_batch(cfg)
    want, want_grads, *want_data = run(ref, *batch)
    if backend == "triton":  # the fused kernels really run: the cell every step, the losses once per call
        from vrnn_fast.kernels import densities, gaussian
        from vrnn_fast.kernels import recurrence as kernels

        # (the Bernoulli density is PyTorch in the Triton op set: no kernel to count)
        density = {"gauss": "gaussian_nll", "gmm": "gmm_nll", "bigmm": "bigmm_nll"}.get(output)
        step_calls = count_calls(monkeypatch, kernels, ["gates_cell_fwd", "cell_bwd", "head_fwd", "head_bwd"])
        density_calls = count_calls(monkeypatch, densities, [f"{density}_fwd", f"{density}_bwd"] if density else [])
        kl_calls = count_calls(monkeypatch, gaussian, ["kl_fwd", "kl_bwd"])
    got, got_grads, *got_data = run(fast, *batch)
    if backend == "triton":
        T = batch[0].shape[1]
        assert step_calls == {"gates_cell_fwd": T, "cell_bwd": T, **dict.fromkeys(["head_fwd", "head_bwd"],
                                                                                  T if cfg.has_latent else 0)}
        # all steps at once; the log-weights add forward-only density calls
        assert not density or density_calls[f"{density}_bwd"] == 1 <= density_calls[f"{density}_fwd"], density_calls
        assert set(kl_calls.values()) == {int(cfg.has_latent)}, kl_calls
    tol = dict(rtol=1e-9, atol=1e-10)
    for name in ("loss", "kl", "nll", "elbo", "log_weight", "z_mean", "z_std"):
        if getattr(want, name) is None:
            assert getattr(got, name) is None, name
        else:
            torch.testing.assert_close(getattr(got, name), getattr(want, name), **tol, msg=name)
    for a, b in zip(got.state, want.state, strict=True):
        torch.testing.assert_close(a, b, **tol)
    for name, g in want_grads.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(got_grads[name], g, **tol, msg=name)
    for a, b in zip(got_data, want_data, strict=True):
        torch.testing.assert_close(a, b, **tol)
    x, mask, noise = batch[:3]
    if cfg.has_latent:
        many = torch.randn(3, *x.shape[:2], cfg.z_dim, dtype=x.dtype, device=DEVICE)
        torch.testing.assert_close(fast.log_likelihood(x, mask, 3, many), ref.log_likelihood(x, mask, 3, many), **tol)


def test_carried_state_gradients_match_one_pass():
    """TBPTT: two halves with the state carried (and not detached) give the whole sequence's gradients."""
    cfg = deep_config("vrnn", "gmm")
    torch.manual_seed(0)
    net = FastVRNN(cfg, backend="torch").double()
    x, _, noise, h0, c0 = model_batch(cfg, T=6)
    net(x, noise=noise, state=(h0, c0)).loss.backward()
    whole = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    first = net(x[:, :2], noise=noise[:, :2], state=(h0, c0))
    second = net(x[:, 2:], noise=noise[:, 2:], state=first.state)
    (first.loss + second.loss).backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, whole[n], rtol=1e-10, atol=1e-12, msg=n)


# ---- graph-ready: no host syncs, torch.compile(fullgraph=True), autocast ----


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("latent", [True, False], ids=["vrnn", "rnn"])
def test_the_op_never_syncs_with_the_host(backend, latent):
    args = op_inputs(latent)

    def fwd_bwd():
        hz, c_T, *rest = call(args, backend)
        sum(t.sum() for t in (hz, c_T, *rest)).backward()

    counted = count_ops(fwd_bwd)
    assert counted.aten > 0 and not counted.syncs, counted.syncs


@pytest.mark.parametrize("output", ["gauss", "gmm", "bernoulli"])
def test_compiled_fullgraph_matches_eager(output):
    """The op is opaque to the compiler and nothing around it breaks the graph (the input checks included: x in
    [0, 1] for a Bernoulli output too)."""
    cfg = VRNNConfig.preset("tiny", output=output)
    torch.manual_seed(0)
    net = FastVRNN(cfg, backend="torch").double()
    x, mask, noise = (t.double() if t.is_floating_point() else t for t in model_batch(cfg, T=5)[:3])

    def loss_and_state(x, mask, noise):
        out = net(x, mask, noise)
        return out.loss, out.state[1]

    eager = loss_and_state(x, mask, noise)
    eager[0].backward()
    want = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    compiled = torch.compile(loss_and_state, fullgraph=True)
    got = compiled(x, mask, noise)
    got[0].backward()
    torch.testing.assert_close(got, eager, rtol=1e-10, atol=1e-12)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-9, atol=1e-12, msg=n)
    with pytest.raises(ValueError, match="x contains NaN or inf"):  # an opaque op in the graph, no graph break
        compiled(torch.full_like(x, float("nan")), mask, noise)
    if output == "bernoulli":
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
            compiled(x + 2.0, mask, noise)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_autocast_keeps_float32_losses(backend):
    cfg = deep_config("vrnn", "gmm")
    torch.manual_seed(0)
    net = FastVRNN(cfg, backend=backend).to(DEVICE)
    x, mask, noise = (t.float() if t.is_floating_point() else t for t in model_batch(cfg)[:3])
    full = net(x, mask, noise)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        half = net(x, mask, noise)
    assert half.loss.dtype == half.kl.dtype == half.nll.dtype == torch.float32
    assert half.state[0].dtype == half.state[1].dtype == torch.float32
    # bf16 keeps 8 bits of mantissa in every product and activation of the recurrence: a few % on the summed loss
    torch.testing.assert_close(half.loss, full.loss, rtol=0.03, atol=0.0)
    half.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


# ---- launches per step ----


def small_widths(preset: str) -> VRNNConfig:
    """A preset's layer structure at small widths: what a step dispatches depends on the structure only."""
    return VRNNConfig.preset(preset, h_dim=16, phi_x_dim=8, phi_z_dim=8, enc_dim=8, prior_dim=8, dec_dim=8, z_dim=4)


def train_step_counts(net, cfg) -> dict:
    """Ops + launches per step of forward + backward (ragged mask), the slope between T = 4 and T = 8."""
    def make(T):
        x = torch.randn(3, T, cfg.x_dim, device=DEVICE)
        mask = torch.arange(T, device=DEVICE)[None] < torch.tensor([T, T - 3, 2], device=DEVICE)[:, None]

        def step():
            net.zero_grad(set_to_none=True)
            net(x, mask).loss.backward()

        return step

    return per_step(make, 4, 8)


@pytest.mark.parametrize(("backend", "most"), [("torch", 60), ("triton", 30)])
def test_launches_per_step_of_a_training_iteration(backend, most):
    """At the timit-vrnn-gmm structure (4-layer encoder and phi_z): 353 (reference), 132 (torch) and 118
    (triton) before the op."""
    cfg = small_widths("timit-vrnn-gmm")
    torch.manual_seed(0)
    fast = train_step_counts(FastVRNN(cfg, backend=backend).to(DEVICE), cfg)
    reference = train_step_counts(ReferenceVRNN(cfg).to(DEVICE), cfg)
    assert fast["total"] <= most, fast
    assert reference["total"] > 5 * fast["total"], (reference, fast)
