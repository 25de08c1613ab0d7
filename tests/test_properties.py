"""Property-based tests (hypothesis): every op of both backends (reference.TORCH_OPS, triton_ops.TRITON_OPS; the
Triton ones under TRITON_INTERPRET=1 without CUDA) on random shapes, masks, dtypes and extreme-but-valid values
stays finite and within its stated error of the float64 reference, forward and backward; invalid input raises
ValueError; random tiny models agree across implementations; bad configs are refused.

Reproducible: derandomized, few examples, no deadline. Stated errors: float64 within 1e-9 relative (plus 1e-9
absolute) of the float64 reference; float32 within 2x the error of the plain PyTorch reference in float32 (the
project's low-precision rule) plus 2e-6 relative, and the PyTorch reference itself within 1e-4 relative.
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vrnn_fast import FastVRNN, ReferenceVRNN, VRNNConfig  # noqa: E402
from vrnn_fast.config import FLOAT_BOUNDS  # noqa: E402
from vrnn_fast.reference import TORCH_OPS  # noqa: E402
from vrnn_fast.train import TrainConfig  # noqa: E402
from vrnn_fast.triton_ops import TRITON_OPS  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = {"torch": TORCH_OPS, "triton": TRITON_OPS}
# Ops TRITON_OPS takes from TORCH_OPS as they are: comparing them with the reference would compare it with itself.
SHARED_OPS = {name for name, fn in vars(TRITON_OPS).items() if fn is getattr(TORCH_OPS, name)}
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REGIMES = ("plain", "sigma_at_floor", "saturated_logits", "huge_x", "tiny_x", "mixed")
F64_RTOL = 1e-9
F32_RTOL = 2e-6
TORCH32_RTOL = 1e-4


# ---- inputs -------------------------------------------------------------------------------------------


def _values(rng: np.random.Generator, shape, kind: str, regime: str) -> np.ndarray:
    """Float64 values of one input. kind: "x" (data, means, cell state), "a" (sigma pre-activation), "logit"
    (logits, gates, rho, pen) or "eps". Regimes push inputs to the edges of the valid range: sigma at its floor
    (a = -50), logits +-50, |x| up to 1e4, |x| down to 1e-30; "mixed" mixes them element-wise."""
    v = rng.normal(size=shape)
    extreme = {"a": ("sigma_at_floor", np.full(shape, -50.0)),
               "logit": ("saturated_logits", rng.choice([-50.0, 50.0], size=shape)),
               "x": ("huge_x", rng.uniform(-1e4, 1e4, size=shape))}
    if kind == "x" and regime == "tiny_x":
        return v * 1e-30
    if kind in extreme:
        name, values = extreme[kind]
        if regime == name:
            return values
        if regime == "mixed":
            return np.where(rng.random(shape) < 0.3, values, v)
    return v


@st.composite
def op_cases(draw, op: str, min_lead: int = 0):
    """(inputs as float64 tensors or None, floor, mask) for one op; at least ``min_lead`` leading dims."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    regime = draw(st.sampled_from(REGIMES))
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=min_lead, max_size=2)))
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    floor = draw(st.sampled_from([1e-4, 1e-2, 1.0]))

    def t(*event, kind):
        return torch.from_numpy(_values(rng, lead + event, kind, regime))

    if op == "lstm_cell":
        inputs = [t(4 * n, kind="logit"), t(n, kind="x")]
    elif op == "reparameterize":
        inputs = [t(n, kind="x"), t(n, kind="a"), t(n, kind="eps")]
    elif op == "gaussian_kl":
        standard_prior = draw(st.booleans())
        inputs = [t(n, kind="x"), t(n, kind="a")] + ([None, None] if standard_prior else
                                                     [t(n, kind="x"), t(n, kind="a")])
    elif op == "gaussian_nll":
        inputs = [t(n, kind="x"), t(n, kind="x"), t(n, kind="a")]
    elif op == "gmm_nll":
        inputs = [t(n, kind="x"), t(n, k, kind="x"), t(n, k, kind="a"), t(k, kind="logit")]
    elif op == "bernoulli_nll":
        inputs = [torch.from_numpy(_unit_values(rng, lead + (n,), regime)), t(n, kind="logit")]
    else:  # bigmm_nll
        x = t(3, kind="x")
        x[..., 0] = torch.from_numpy(np.asarray(rng.integers(0, 2, size=lead), dtype=np.float64))
        inputs = [x, t(2, k, kind="x"), t(2, k, kind="a"), t(k, kind="logit"), t(k, kind="logit"),
                  t(kind="logit")]
    mask = None
    if op not in ("lstm_cell", "reparameterize") and draw(st.booleans()):
        mask = torch.from_numpy(np.asarray(rng.random(lead) < 0.7))
    return inputs, floor, mask


def _unit_values(rng: np.random.Generator, shape, regime: str) -> np.ndarray:
    """Bernoulli data in [0, 1]: bits, and (regime "mixed") some fractional values, 0 and 1 included."""
    bits = rng.integers(0, 2, size=shape).astype(np.float64)
    return np.where(rng.random(shape) < 0.5, rng.uniform(size=shape), bits) if regime == "mixed" else bits


def _call(ops, op: str, inputs, floor, mask):
    fn = getattr(ops, op)
    if op == "lstm_cell":
        return fn(*inputs)
    if op == "bernoulli_nll":  # no sigma, no floor
        return fn(*inputs, mask)
    return fn(*inputs, floor) if mask is None else fn(*inputs, floor, mask)


def _run(ops, op, inputs, floor, mask, dtype):
    """Outputs and input gradients (of a fixed random weighting of the outputs), all as float64."""
    xs = [None if t is None else t.to(DEVICE, dtype).requires_grad_() for t in inputs]
    m = None if mask is None else mask.to(DEVICE)
    outs = _call(ops, op, xs, floor, m)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(DEVICE) for o in outs]
    loss = sum((o.double() * w).sum() for o, w in zip(outs, weights, strict=True))
    live = [x for x in xs if x is not None]
    grads = torch.autograd.grad(loss, live, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(live, grads, strict=True)]
    return [o.detach().double().cpu() for o in outs] + [g.double().cpu() for g in grads]


def _excess(got: list, want: list, rtol: float) -> float:
    """max over elements of |got - want| / (rtol * (1 + |want|)): <= 1 means within the tolerance."""
    return max(float(((g - w).abs() / (rtol * (1 + w.abs()))).max()) if g.numel() else 0.0
               for g, w in zip(got, want, strict=True))


def _errors(got: list, want: list) -> list:
    return [(g - w).abs() for g, w in zip(got, want, strict=True)]


OP_NAMES = ("lstm_cell", "reparameterize", "gaussian_kl", "gaussian_nll", "gmm_nll", "bigmm_nll", "bernoulli_nll")


# ---- ops: finite and within the stated error ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OP_NAMES)
def test_float64_ops_match_the_reference(backend, op):
    if backend == "triton" and op in SHARED_OPS:
        pytest.skip(f"TRITON_OPS.{op} is the torch op")
    @PROPERTY
    @given(op_cases(op))
    def check(case):
        want = _run(TORCH_OPS, op, *case, torch.float64)
        got = _run(BACKENDS[backend], op, *case, torch.float64)
        assert all(torch.isfinite(g).all() for g in got), "non-finite output or gradient"
        assert _excess(got, want, F64_RTOL) <= 1

    check()


@pytest.mark.parametrize("op", OP_NAMES)
def test_float32_ops_are_finite_and_within_2x_of_plain_pytorch(op):
    """Triton in float32 is at most 2x as far from the float64 reference as PyTorch in float32 (+ 2e-6 rel.)."""
    if op in SHARED_OPS:
        pytest.skip(f"TRITON_OPS.{op} is the torch op")
    @PROPERTY
    @given(op_cases(op))
    def check(case):
        want = _run(TORCH_OPS, op, *case, torch.float64)
        plain = _errors(_run(TORCH_OPS, op, *case, torch.float32), want)
        got = _run(TRITON_OPS, op, *case, torch.float32)
        assert all(torch.isfinite(g).all() for g in got), "non-finite output or gradient"
        for err, e_plain, w in zip(_errors(got, want), plain, want, strict=True):
            assert bool((err <= 2 * e_plain + F32_RTOL * (1 + w.abs())).all())

    check()


@pytest.mark.parametrize("op", OP_NAMES)
def test_float32_reference_ops_are_accurate(op):
    """The plain PyTorch op in float32 is within 1e-4 relative (+1e-4 absolute) of its float64 evaluation."""
    @PROPERTY
    @given(op_cases(op))
    def check(case):
        want = _run(TORCH_OPS, op, *case, torch.float64)
        got = _run(TORCH_OPS, op, *case, torch.float32)
        assert all(torch.isfinite(g).all() for g in got)
        assert _excess(got, want, TORCH32_RTOL) <= 1

    check()


@pytest.mark.parametrize("rho_raw", [8.0, -50.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bigmm_float32_saturated_rho(backend, rho_raw):
    """One component near rho = +-RHO_MAX, dx = +-dy = 1: loss and gradients within 1e-4 of float64. rho rounded to
    float32 (spacing 6e-8 near 1) would leave 1 - rho^2 ~ 2e-6 with a ~1% error (the NLL ~2e-2 off, gradients
    ~100% off); both backends compute 1 - |rho| directly."""
    x = torch.tensor([[0.0, 1.0, math.copysign(1.0, rho_raw)]], dtype=torch.float64)
    args = [x, torch.zeros(1, 2, 1, dtype=torch.float64), torch.zeros(1, 2, 1, dtype=torch.float64),
            torch.full((1, 1), rho_raw, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
            torch.zeros(1, dtype=torch.float64)]
    want = _run(TORCH_OPS, "bigmm_nll", args, 1e-4, None, torch.float64)
    got = _run(BACKENDS[backend], "bigmm_nll", args, 1e-4, None, torch.float32)
    assert _excess(got, want, TORCH32_RTOL) <= 1


def test_triton_bigmm_without_leading_dims():
    """x (3,), mu and a (2, K), rho_raw and logits (K,), pen_logit (): no leading dims, as the reference allows
    (expand() of a 0-dim tensor with no sizes used to raise TypeError)."""
    args = [torch.tensor([1.0, 0.5, -0.5]), torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2), torch.zeros(2),
            torch.tensor(0.0)]
    want = TORCH_OPS.bigmm_nll(*args, 1e-4)
    torch.testing.assert_close(TRITON_OPS.bigmm_nll(*[a.to(DEVICE) for a in args], 1e-4).cpu(), want)


# ---- ops: invalid input -------------------------------------------------------------------------------

CORRUPTIONS = ("trailing_size", "int_dtype", "not_a_tensor", "leading_mismatch", "nan_floor", "negative_floor",
               "inf_floor", "str_floor", "float_mask", "mask_shape", "x_above_1", "x_below_0", "x_nan")


@st.composite
def invalid_cases(draw, op: str):
    """(inputs, floor, mask, corruption) with exactly one thing wrong."""
    inputs, floor, mask = draw(op_cases(op, min_lead=1))
    options = [c for c in CORRUPTIONS if op != "lstm_cell" or not ("floor" in c or "mask" in c)]
    if op == "reparameterize":
        options = [c for c in options if "mask" not in c]
    if op == "bernoulli_nll":  # no floor; x has a range
        options = [c for c in options if "floor" not in c]
    else:
        options = [c for c in options if not c.startswith("x_")]
    corruption = draw(st.sampled_from(options))
    inputs = list(inputs)
    live = sum(t is not None for t in inputs)  # the None pair of a standard-normal prior comes last
    i = draw(st.integers(0, live - 1))
    t, lead0 = inputs[i], inputs[0].shape[0]
    if corruption == "trailing_size":  # (pen_logit has no event dims: its last dim is a broadcast leading dim)
        i = min(i, 4) if op == "bigmm_nll" else i
        inputs[i] = torch.cat([inputs[i], inputs[i][..., :1]], dim=-1)
    elif corruption == "int_dtype":
        inputs[i] = t.long()
    elif corruption == "not_a_tensor":
        inputs[i] = t.tolist()
    elif corruption == "leading_mismatch":  # sizes that do not broadcast (neither is 1)
        j = (i + 1) % live
        inputs[i], inputs[j] = _resize0(t, lead0 + 1), _resize0(inputs[j], lead0 + 2 if lead0 == 1 else lead0)
    elif corruption.endswith("floor"):
        floor = {"nan_floor": float("nan"), "negative_floor": -1e-4, "inf_floor": float("inf"),
                 "str_floor": "1e-4"}[corruption]
    elif corruption == "mask_shape" and lead0 > 1:
        mask = torch.ones(lead0 + 1, *inputs[0].shape[1:-1], dtype=torch.bool)
    elif corruption.startswith("x_"):  # one value of an unmasked frame of Bernoulli data out of [0, 1]
        inputs[0] = inputs[0].clone()
        inputs[0].view(-1, inputs[0].shape[-1])[0, -1] = {"x_above_1": 1.5, "x_below_0": -1e-6,
                                                          "x_nan": float("nan")}[corruption]
        if mask is not None:
            mask = mask.clone()
            mask.view(-1)[0] = True
    else:
        mask = torch.ones(inputs[0].shape[:-1], dtype=torch.float64)
    return inputs, floor, mask, corruption


def _resize0(t: torch.Tensor, n: int) -> torch.Tensor:
    return t[:1].expand(n, *t.shape[1:]).clone()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("op", OP_NAMES)
def test_invalid_op_input_raises_value_error(backend, op):
    @PROPERTY
    @given(invalid_cases(op))
    def check(case):
        inputs, floor, mask, corruption = case
        with pytest.raises(ValueError):
            _call(BACKENDS[backend], op, inputs, floor, mask)

    check()


# ---- models: random tiny configs, both implementations, both backends --------------------------------


@st.composite
def tiny_models(draw):
    """(config, x (B, T, D) float64, mask or None, seed) with edge-of-range data and options."""
    output = draw(st.sampled_from(("gauss", "gmm", "bigmm", "bernoulli")))
    sizes = {f"{b}_{s}": draw(st.integers(1, 4 if s == "dim" else 2)) for b in ("phi_x", "phi_z", "enc", "prior",
                                                                                 "dec") for s in ("dim", "layers")}
    cfg = VRNNConfig(x_dim=3 if output == "bigmm" else draw(st.integers(1, 4)), z_dim=draw(st.integers(1, 3)),
                     h_dim=draw(st.integers(1, 4)), model=draw(st.sampled_from(("vrnn", "vrnn-i", "rnn"))),
                     output=output, n_mix=draw(st.integers(2, 3)), sigma_floor=draw(st.sampled_from([1e-4, 1.0])),
                     init_scale=draw(st.sampled_from([0.08, 1.0])), **sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b, t = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    x = torch.from_numpy(_values(rng, (b, t, cfg.x_dim), "x", draw(st.sampled_from(("plain", "huge_x", "tiny_x")))))
    if output == "bigmm":
        x[..., 0] = torch.from_numpy(np.asarray(rng.integers(0, 2, size=(b, t)), dtype=np.float64))
    if output == "bernoulli":
        x = torch.from_numpy(_unit_values(rng, (b, t, cfg.x_dim), draw(st.sampled_from(("plain", "mixed")))))
    mask = None
    if draw(st.booleans()):
        mask = torch.from_numpy(np.asarray(rng.random((b, t)) < 0.7))
        mask[:, 0] = True
    return cfg, x, mask, draw(st.integers(0, 2**16))


def _forward(model, x, mask, noise):
    out = model(x, mask=mask, noise=noise)
    grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(model.parameters(), grads, strict=True)]
    return [t.detach().cpu() for t in (out.kl, out.nll, out.elbo, *out.state, *grads)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_tiny_models_match_the_reference_model(backend):
    """FastVRNN (float64) equals ReferenceVRNN on random tiny configs and edge-of-range data: loss terms, final
    state and every parameter gradient; all finite."""
    @settings(PROPERTY, max_examples=25 if backend == "torch" else 8)
    @given(tiny_models())
    def check(case):
        cfg, x, mask, seed = case
        torch.manual_seed(seed)
        ref = ReferenceVRNN(cfg).double()
        fast = FastVRNN(cfg, backend=backend).double().to(DEVICE)
        fast.load_state_dict(ref.state_dict())
        noise = torch.randn(*x.shape[:2], cfg.z_dim, dtype=torch.float64) if cfg.has_latent else None
        want = _forward(ref, x, mask, noise)
        got = _forward(fast, *(None if t is None else t.to(DEVICE) for t in (x, mask, noise)))
        assert all(torch.isfinite(g).all() for g in got), "non-finite loss, state or gradient"
        assert _excess(got, want, F64_RTOL) <= 1

    check()


@st.composite
def invalid_model_inputs(draw):
    cfg = VRNNConfig.preset("tiny", x_dim=3, z_dim=2, h_dim=4)
    x, mask, state, noise = torch.randn(2, 3, 3), None, None, None
    what = draw(st.sampled_from(("nan", "inf", "rank", "features", "empty", "int", "mask_dtype", "mask_shape",
                                 "state_shape", "state_type", "noise_shape", "noise_nan")))
    if what in ("nan", "inf"):
        x[draw(st.integers(0, 1)), draw(st.integers(0, 2)), 0] = float(what)
    elif what == "rank":
        x = x[0]
    elif what == "features":
        x = torch.randn(2, 3, draw(st.sampled_from([1, 2, 4])))
    elif what == "empty":
        x = x[:, :0]
    elif what == "int":
        x = x.long()
    elif what == "mask_dtype":
        mask = torch.ones(2, 3)
    elif what == "mask_shape":
        mask = torch.ones(2, draw(st.sampled_from([2, 4])), dtype=torch.bool)
    elif what == "state_shape":
        state = (torch.zeros(2, 5), torch.zeros(2, 5))
    elif what == "state_type":
        state = torch.zeros(2, 4)
    elif what == "noise_shape":
        noise = torch.randn(2, 3, 3)
    else:
        noise = torch.full((2, 3, 2), float("nan"))
    return cfg, x, mask, state, noise


@pytest.mark.parametrize("model", ["reference", "fast"])
def test_invalid_model_input_raises_value_error(model):
    @PROPERTY
    @given(invalid_model_inputs())
    def check(case):
        cfg, x, mask, state, noise = case
        net = ReferenceVRNN(cfg) if model == "reference" else FastVRNN(cfg, backend="torch")
        with pytest.raises(ValueError):
            net(x, mask=mask, noise=noise, state=state)

    check()


# ---- configs: out-of-range values are refused ---------------------------------------------------------


BAD_FLOATS = st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0, -1e-4, 1e30, True, "1e-4", None])


@PROPERTY
@given(st.sampled_from(sorted(FLOAT_BOUNDS)), st.one_of(BAD_FLOATS, st.floats(1.0001, 1e300)))
def test_model_config_float_bounds(name, value):
    if isinstance(value, float) and value <= FLOAT_BOUNDS[name]:
        return  # e.g. lr = 5 is valid
    with pytest.raises(ValueError, match=name):
        VRNNConfig.preset("tiny", **{name: value})


@PROPERTY
@given(st.sampled_from(sorted(FLOAT_BOUNDS)), st.floats(1e-12, 1.0))
def test_model_config_accepts_values_in_bounds(name, fraction):
    value = fraction * FLOAT_BOUNDS[name]
    assert getattr(VRNNConfig.preset("tiny", **{name: value}), name) == value


@PROPERTY
@given(st.sampled_from(["steps", "epochs", "batch_size", "eval_every", "checkpoint_every", "log_every",
                        "max_skipped_updates", "kl_warmup_steps", "seed", "lr", "clip", "device", "backend"]),
       st.sampled_from([-1, 0, 1.5, float("nan"), float("inf"), 1e300, True, "2", "meta", "cuda:x", [1]]))
def test_train_config_rejects_bad_values(name, value):
    valid = {"kl_warmup_steps": [0], "seed": [0], "lr": [1.5], "clip": [1.5]}.get(name, [])
    if value in valid and not isinstance(value, bool):
        return
    with pytest.raises(ValueError, match=name):
        TrainConfig(**{name: value})
