"""Per-step recurrence kernels (kernels/recurrence.py) against plain-torch references of their formulas: float64 at
1e-10 on odd sizes and tile edges, every optional input on and off, masks with both values, strided views, extreme
values, float32 near the default tolerance, bfloat16 by the 2x rule, empty M; and the relative accuracy of every
activation helper in kernels/ (tanh, sigmoid, softplus, softplus', log1p) from 1e-30 to large |x|.

Runs under TRITON_INTERPRET=1 without a GPU (tests/conftest.py). Every output starts as NaN, so an element a
kernel never writes fails the comparison.
"""

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.testing import assert_close
from vrnn_fast.kernels import densities as kd
from vrnn_fast.kernels import recurrence as kr

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F64 = dict(rtol=1e-10, atol=1e-10)
FLOOR = 1e-4


def _randn(*shape, seed, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=DEVICE)


def _nan(*shape, dtype=torch.float64):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def _wide(t, pad=5):
    """t's values in a non-contiguous view: columns pad.. of a wider buffer (rows keep a stride != width)."""
    buf = torch.full((t.shape[0], t.shape[1] + 2 * pad), float("nan"), dtype=t.dtype, device=t.device)
    buf[:, pad:pad + t.shape[1]] = t
    return buf[:, pad:pad + t.shape[1]]


def _col_major(t):
    return t.t().contiguous().t()


def _rows(M, seed=0):
    """(M,) bool with both values (first True, last False)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(M, generator=g) > 0.4
    m[0], m[-1] = True, False
    return m.to(DEVICE)


def _mask_column(M, seed=0):
    """(M,) bool as the step slice mask[:, t] of a (M, T) mask (stride T)."""
    full = torch.zeros(M, 3, dtype=torch.bool, device=DEVICE)
    full[:, 1] = _rows(M, seed)
    return full[:, 1]


def _relu_gate(M, K, seed):
    """A relu output: exact zeros (about half) and positive values."""
    return torch.relu(_randn(M, K, seed=seed))


# ---- plain-torch references ---------------------------------------------------------------------------


def linear_ref(a, w, addend=None, bias=None, a_gate=None, relu=False, carry=None, carry_rows=None):
    a = torch.where(a_gate > 0, a, 0.0) if a_gate is not None else a
    out = a @ w.t()
    if addend is not None:
        out = out + addend
    if bias is not None:
        out = out + bias
    if carry is not None:
        out = out + torch.where(carry_rows[:, None], carry, 0.0)
    return torch.relu(out) if relu else out


def head_fwd_ref(a, w, bias, eps, floor):
    ma = a @ w.t() + (bias if bias is not None else 0.0)
    Z = eps.shape[1]
    return ma, ma[:, :Z] + (F.softplus(ma[:, Z:]) + floor) * eps


def _softplus_grad(x):
    return torch.where(x > 20, torch.ones_like(x), torch.sigmoid(x))


def head_bwd_ref(g, w, g_gate, g_z, g_mu, g_a, a_raw, eps):
    dz = (torch.where(g_gate > 0, g, 0.0) if g_gate is not None else g) @ w.t()
    dz = dz + g_z if g_z is not None else dz
    dmu = dz + g_mu if g_mu is not None else dz
    da = dz * eps * _softplus_grad(a_raw)
    da = da + g_a if g_a is not None else da
    return torch.cat([dmu, da], 1), dz


def cell_ref(gates, c_prev):
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gates_cell_ref(a, w, pre, c_prev, h_prev, mask):
    gates = pre + a @ w.t()
    h, c = cell_ref(gates, c_prev.to(gates.dtype))
    if mask is not None:
        h = torch.where(mask[:, None], h, h_prev)
        c = torch.where(mask[:, None], c, c_prev.to(c.dtype))
    return gates, h, c


def cell_bwd_ref(gates, c_prev, dh, dc, mask):
    gg, cc = gates.detach().requires_grad_(), c_prev.detach().requires_grad_()
    h, c = cell_ref(gg, cc)
    zero = torch.zeros_like(c)
    dgates, dc_prev = torch.autograd.grad((h, c), (gg, cc), (dh if dh is not None else zero,
                                                              dc if dc is not None else zero))
    if mask is not None:
        dgates = torch.where(mask[:, None], dgates, 0.0)
        dc_prev = torch.where(mask[:, None], dc_prev, dc if dc is not None else zero)
    return dgates, dc_prev


# ---- linear -------------------------------------------------------------------------------------------

LINEAR_FLAGS = {
    "plain": {},
    "enc1": dict(addend=True, relu=True),
    "layer": dict(bias=True, relu=True),
    "bwd": dict(a_gate=True),
    "dh": dict(a_gate=True, addend=True, carry=True),
    "all": dict(a_gate=True, addend=True, bias=True, carry=True, relu=True),
}


def linear_inputs(M, N, K, flags, seed=0, dtype=torch.float64):
    args = dict(a=_randn(M, K, seed=seed, dtype=dtype), w=_randn(N, K, seed=seed + 1, scale=K**-0.5, dtype=dtype))
    if flags.get("addend"):
        args["addend"] = _randn(M, N, seed=seed + 2, dtype=dtype)
    if flags.get("bias"):
        args["bias"] = _randn(N, seed=seed + 3, dtype=dtype)
    if flags.get("a_gate"):
        args["a_gate"] = _relu_gate(M, K, seed + 4).to(dtype)
    if flags.get("carry"):
        args["carry"], args["carry_rows"] = _randn(M, N, seed=seed + 5, dtype=dtype), _rows(M, seed)
    args["relu"] = bool(flags.get("relu"))
    return args


def _linear(args, out, **blocks):
    args = dict(args)
    kr.linear(args.pop("a"), args.pop("w"), out, **args, **blocks)
    return out


@pytest.mark.parametrize("use", list(LINEAR_FLAGS))
def test_linear_float64_parity(use):
    args = linear_inputs(5, 29, 37, LINEAR_FLAGS[use])
    assert_close(_linear(args, _nan(5, 29)), linear_ref(**args), **F64)


def test_linear_tile_edges():
    """M > BLOCK_M, N > BLOCK_N, K > BLOCK_K, none a multiple of its tile."""
    args = linear_inputs(37, 45, 40, LINEAR_FLAGS["all"], seed=3)
    assert_close(_linear(args, _nan(37, 45), block_m=16, block_n=16, block_k=16), linear_ref(**args), **F64)


def test_linear_strided_views_and_transposed_weight():
    args = linear_inputs(6, 21, 19, LINEAR_FLAGS["all"], seed=5)
    W = _randn(19, 21, seed=9)  # (K, N): the backward multiplies by W, passing W.t()
    strided = dict(args, a=_wide(args["a"]), w=W.t(), addend=_col_major(args["addend"]),
                   bias=torch.stack([args["bias"], args["bias"]], 1)[:, 1], a_gate=_col_major(args["a_gate"]),
                   carry=_wide(args["carry"], 2), carry_rows=_mask_column(6, seed=5))
    assert not strided["a"].is_contiguous() and strided["bias"].stride() == (2,)
    out = _wide(_nan(6, 21))
    assert_close(_linear(strided, out), linear_ref(**strided), **F64)


def test_linear_dh_carry_in_place_and_extreme_values():
    """out is the addend (each element read before written); huge values; relu gates with exact zeros."""
    args = linear_inputs(7, 23, 33, LINEAR_FLAGS["dh"], seed=7)
    args["a"] = args["a"] * 1e150
    args["a_gate"][:, ::3] = 0.0  # exact zeros: a excluded there, whatever its size
    args["a_gate"][:, 1::5] = -0.0
    want = linear_ref(**args)
    out = args["addend"].clone()
    _linear(dict(args, addend=out), out)
    assert_close(out, want, **F64)
    args = linear_inputs(4, 17, 16, LINEAR_FLAGS["layer"], seed=8)
    args["a"], args["bias"] = args["a"] * 0.0, args["bias"] * 1e-300  # relu at +-tiny
    assert_close(_linear(args, _nan(4, 17)), linear_ref(**args), rtol=1e-10, atol=0)


def test_linear_float32_near_default_tolerance():
    args = linear_inputs(9, 40, 70, LINEAR_FLAGS["all"], seed=11, dtype=torch.float32)
    exact = linear_ref(**{k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                          for k, v in args.items()})
    assert_close(_linear(args, _nan(9, 40, dtype=torch.float32)), exact.float())


def test_linear_bfloat16_within_twice_torch_error():
    args = linear_inputs(12, 40, 96, LINEAR_FLAGS["all"], seed=13)
    exact = linear_ref(**args)
    low = {k: v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in args.items()}
    got = _linear(low, _nan(12, 40, dtype=torch.bfloat16))
    plain = linear_ref(**low)
    assert got.dtype == torch.bfloat16
    assert (got.double() - exact).abs().max() <= 2 * (plain.double() - exact).abs().max()


def test_linear_float32_output_of_bfloat16_inputs():
    args = linear_inputs(5, 16, 32, LINEAR_FLAGS["enc1"], seed=14, dtype=torch.bfloat16)
    out = _nan(5, 16, dtype=torch.float32)
    _linear(args, out)
    want = linear_ref(**{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in args.items()})
    assert_close(out, want.float(), rtol=1e-5, atol=1e-5)


def test_linear_bad_shapes():
    args = linear_inputs(3, 4, 5, LINEAR_FLAGS["dh"])
    with pytest.raises(ValueError, match="addend must have shape"):
        _linear(dict(args, addend=args["addend"][:, :3]), _nan(3, 4))


def test_linear_carry_without_rows_adds_nothing():
    """carry_rows None (an unmasked step): no row takes the carry, even a NaN one."""
    args = linear_inputs(3, 4, 5, LINEAR_FLAGS["dh"], seed=2)
    want = linear_ref(**dict(args, carry=None, carry_rows=None))
    assert_close(_linear(dict(args, carry=_nan(3, 4), carry_rows=None), _nan(3, 4)), want, **F64)


# ---- heads --------------------------------------------------------------------------------------------


def head_inputs(M, E, Z, seed=0, dtype=torch.float64):
    return [_randn(M, E, seed=seed, dtype=dtype), _randn(2 * Z, E, seed=seed + 1, scale=2 * E**-0.5, dtype=dtype),
            _randn(2 * Z, seed=seed + 2, dtype=dtype), _randn(M, Z, seed=seed + 3, dtype=dtype)]


def _head_fwd(a, w, bias, eps, **blocks):
    M, Z = eps.shape
    ma, z = _nan(M, 2 * Z, dtype=a.dtype), _nan(M, Z, dtype=a.dtype)
    kr.head_fwd(a, w, bias, eps, FLOOR, ma, z, **blocks)
    return ma, z


@pytest.mark.parametrize("has_bias", [True, False])
def test_head_fwd_float64_parity(has_bias):
    a, w, bias, eps = head_inputs(5, 37, 13)
    bias = bias if has_bias else None
    for got, want in zip(_head_fwd(a, w, bias, eps), head_fwd_ref(a, w, bias, eps, FLOOR), strict=True):
        assert_close(got, want, **F64)


def test_head_fwd_tile_edges_strided_and_extreme():
    a, w, bias, eps = head_inputs(37, 40, 21, seed=3)
    w[21:] *= 1e-3  # a_raw ~ bias: sigma at the floor, at the softplus threshold and above
    bias[21:27] = torch.tensor([-60.0, -20.0, 20.0 - 1e-9, 20.0 + 1e-9, 30.0, 1e-12], dtype=torch.float64)
    eps3 = torch.stack([eps, eps], 1) * 1e3  # (M, 2, Z): a step slice of noise
    got = _head_fwd(_col_major(a), _wide(w), bias, eps3[:, 1], block_m=16, block_z=16, block_k=16)
    for g, want in zip(got, head_fwd_ref(a, w, bias, eps3[:, 1], FLOOR), strict=True):
        assert_close(g, want, **F64)


def test_head_fwd_float32_and_bfloat16():
    inputs = head_inputs(20, 150, 50, seed=5)
    exact = head_fwd_ref(*inputs, FLOOR)
    for got, want in zip(_head_fwd(*(x.float() for x in inputs)), exact, strict=True):
        assert_close(got, want.float())
    got = _head_fwd(*(x.bfloat16() for x in inputs))
    plain = head_fwd_ref(*(x.bfloat16() for x in inputs), FLOOR)
    for g, p, e in zip(got, plain, exact, strict=True):
        assert g.dtype == torch.bfloat16
        assert (g.double() - e).abs().max() <= 2 * (p.double() - e).abs().max()


def head_bwd_inputs(M, F_, Z, seed=0, dtype=torch.float64):
    """g, w (= W_f1.t()), g_gate, g_z, g_mu, g_a, a_raw, eps."""
    W_f1 = _randn(F_, Z, seed=seed + 1, scale=F_**-0.5, dtype=dtype)
    return [_randn(M, F_, seed=seed, dtype=dtype), W_f1.t(), _relu_gate(M, F_, seed + 2).to(dtype)] + \
        [_randn(M, Z, seed=seed + s, dtype=dtype) for s in (3, 4, 5)] + \
        [_randn(M, Z, seed=seed + 6, scale=5.0, dtype=dtype), _randn(M, Z, seed=seed + 7, dtype=dtype)]


def _head_bwd(inputs, want_dz=True, **blocks):
    M, Z = inputs[6].shape
    dma, dz = _nan(M, 2 * Z, dtype=inputs[0].dtype), (_nan(M, Z, dtype=inputs[0].dtype) if want_dz else None)
    kr.head_bwd(*inputs, dma, dz, **blocks)
    return dma, dz


@pytest.mark.parametrize("given", ["all", "none", "gate+g_z", "g_mu+g_a"])
def test_head_bwd_float64_parity(given):
    inputs = head_bwd_inputs(5, 37, 13)
    keep = {"all": {2, 3, 4, 5}, "none": set(), "gate+g_z": {2, 3}, "g_mu+g_a": {4, 5}}[given]
    inputs = [x if i not in (2, 3, 4, 5) or i in keep else None for i, x in enumerate(inputs)]
    want = head_bwd_ref(*inputs)
    dma, dz = _head_bwd(inputs, want_dz=given != "none")
    assert_close(dma, want[0], **F64)
    if dz is not None:
        assert_close(dz, want[1], **F64)


def test_head_bwd_tile_edges_strided_extreme():
    inputs = head_bwd_inputs(37, 40, 21, seed=9)
    inputs[6][:, :6] = torch.tensor([-60.0, -20.0, 20.0 - 1e-9, 20.0 + 1e-9, 30.0, 0.0], dtype=torch.float64)
    inputs[0] = _wide(inputs[0] * 1e100)
    inputs[4] = _col_major(inputs[4])
    dma, dz = _head_bwd(inputs, block_m=16, block_z=16, block_k=16)
    want = head_bwd_ref(*inputs)
    assert_close(dma, want[0], **F64)
    assert_close(dz, want[1], **F64)


def test_head_bwd_float32_and_bfloat16():
    inputs = head_bwd_inputs(20, 64, 50, seed=11)
    exact = head_bwd_ref(*inputs)
    for got, want in zip(_head_bwd([x.float() for x in inputs]), exact, strict=True):
        assert_close(got, want.float())
    low = [x.bfloat16() for x in inputs]
    plain = head_bwd_ref(*low)
    for g, p, e in zip(_head_bwd(low), plain, exact, strict=True):
        assert (g.double() - e).abs().max() <= 2 * (p.double() - e).abs().max()


# ---- LSTM gates + cell ----------------------------------------------------------------------------------


def gates_inputs(M, H, Zf, seed=0, scale=1.0, dtype=torch.float64, state=None):
    """a = [h_prev | zf] (M, H + Zf), w (4H, H + Zf), pre (M, 4H), c_prev (M, H), h_prev = a[:, :H]."""
    a = _randn(M, H + Zf, seed=seed, dtype=dtype)
    w = _randn(4 * H, H + Zf, seed=seed + 1, scale=scale * (H + Zf) ** -0.5, dtype=dtype)
    pre = _randn(M, 4 * H, seed=seed + 2, scale=scale, dtype=dtype)
    c_prev = _randn(M, H, seed=seed + 3, dtype=state or dtype)
    return [a, w, pre, c_prev, a[:, :H]]


def _gates_cell(a, w, pre, c_prev, h_prev, mask, **blocks):
    M, H = c_prev.shape
    gates, h, c = _nan(M, 4 * H, dtype=a.dtype), _nan(M, H, dtype=a.dtype), _nan(M, H, dtype=c_prev.dtype)
    kr.gates_cell_fwd(a, w, pre, c_prev, h_prev, mask, gates, h, c, **blocks)
    return gates, h, c


@pytest.mark.parametrize("masked", [True, False])
def test_gates_cell_fwd_float64_parity(masked):
    inputs = gates_inputs(5, 19, 18, scale=2.0)
    mask = _rows(5) if masked else None
    for got, want in zip(_gates_cell(*inputs, mask), gates_cell_ref(*inputs, mask), strict=True):
        assert_close(got, want, **F64)


def test_gates_cell_fwd_tile_edges_strided():
    a, w, pre, c_prev, h_prev = gates_inputs(37, 21, 12, seed=3, scale=2.0)
    inputs = [a, _col_major(w), _wide(pre), _col_major(c_prev), h_prev]
    mask = _mask_column(37, seed=3)
    got = _gates_cell(*inputs, mask, block_m=16, block_h=16, block_k=16)
    for g, want in zip(got, gates_cell_ref(*inputs, mask), strict=True):
        assert_close(g, want, **F64)


@pytest.mark.parametrize("scale", [1e-9, 50.0])
def test_gates_cell_fwd_extreme_gates(scale):
    """Tiny pre-activations (tanh, sigmoid near 0: relative accuracy) and saturated ones."""
    inputs = gates_inputs(6, 19, 5, seed=4, scale=scale)
    inputs[3] = inputs[3] * scale
    mask = _rows(6, seed=4)
    for got, want in zip(_gates_cell(*inputs, mask), gates_cell_ref(*inputs, mask), strict=True):
        assert_close(got, want, rtol=1e-12, atol=0)


def test_gates_cell_fwd_float32_and_bfloat16_with_float32_state():
    inputs = gates_inputs(20, 40, 24, seed=6, scale=2.0)
    mask = _rows(20, seed=6)
    exact = gates_cell_ref(*inputs, mask)
    f32 = [x.float() for x in inputs]
    for got, want in zip(_gates_cell(*f32[:4], f32[0][:, :40], mask), exact, strict=True):
        assert_close(got, want.float())
    low = [x.bfloat16() for x in inputs]
    low[3] = inputs[3].float()  # the cell state stays float32
    low[4] = low[0][:, :40]
    got = _gates_cell(*low, mask)
    plain = gates_cell_ref(*low, mask)
    assert [g.dtype for g in got] == [torch.bfloat16, torch.bfloat16, torch.float32]
    for g, p, e in zip(got, plain, exact, strict=True):
        assert (g.double() - e).abs().max() <= 2 * (p.double() - e).abs().max()
    keep = ~mask
    assert torch.equal(got[2][keep], low[3][keep]) and torch.equal(got[1][keep], low[4][keep])  # passed through


def cell_bwd_inputs(M, H, seed=0, scale=2.0, dtype=torch.float64):
    return [_randn(M, 4 * H, seed=seed, scale=scale, dtype=dtype)] + \
        [_randn(M, H, seed=seed + s, dtype=dtype) for s in (1, 2, 3)]


def _cell_bwd(gates, c_prev, dh, dc, mask, **blocks):
    M, H = c_prev.shape
    dgates, dc_out = _nan(M, 4 * H, dtype=gates.dtype), _nan(M, H, dtype=c_prev.dtype)
    kr.cell_bwd(gates, c_prev, dh, dc, mask, dgates, dc_out, **blocks)
    return dgates, dc_out


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("given", ["dh+dc", "dh", "dc", "none"])
def test_cell_bwd_float64_parity(masked, given):
    gates, c_prev, dh, dc = cell_bwd_inputs(5, 19)
    dh, dc = (dh if "dh" in given else None), (dc if "dc" in given else None)
    mask = _rows(5) if masked else None
    for got, want in zip(_cell_bwd(gates, c_prev, dh, dc, mask), cell_bwd_ref(gates, c_prev, dh, dc, mask),
                         strict=True):
        assert_close(got, want, **F64)


def test_cell_bwd_tile_edges_strided_extreme():
    gates, c_prev, dh, dc = cell_bwd_inputs(7, 37, seed=3, scale=50.0)
    gates[:, :20] = gates[:, :20] * 1e-10  # tiny activations: relative accuracy of tanh near 0
    mask = _mask_column(7, seed=3)
    args = [_wide(gates), _col_major(c_prev), _wide(dh), _col_major(dc), mask]
    got = _cell_bwd(*args, block_m=4, block_h=16)
    for g, want in zip(got, cell_bwd_ref(*args), strict=True):  # atol: 1 - tanh^2 of saturated gates (both ways)
        assert_close(g, want, rtol=1e-12, atol=1e-14)


def test_cell_bwd_float32_and_bfloat16_with_float32_state():
    gates, c_prev, dh, dc = cell_bwd_inputs(8, 300, seed=5)
    mask = _rows(8, seed=5)
    exact = cell_bwd_ref(gates, c_prev, dh, dc, mask)
    for got, want in zip(_cell_bwd(*(x.float() for x in (gates, c_prev, dh, dc)), mask), exact, strict=True):
        assert_close(got, want.float())
    low = [gates.bfloat16(), c_prev.float(), dh.bfloat16(), dc.float()]
    got = _cell_bwd(*low, mask)
    plain = cell_bwd_ref(low[0], low[1].bfloat16(), low[2], low[3].bfloat16(), mask)
    assert [g.dtype for g in got] == [torch.bfloat16, torch.float32]
    for g, p, e in zip(got, plain, exact, strict=True):
        assert (g.double() - e).abs().max() <= 2 * (p.double() - e).abs().max()


# ---- empty step -----------------------------------------------------------------------------------------


def test_empty_rows_launch_nothing():
    z = torch.zeros(0, 8, dtype=torch.float64, device=DEVICE)
    w = _randn(8, 8, seed=0)
    kr.linear(z, w, z.clone(), addend=z, relu=True)
    kr.head_fwd(z, w, None, z[:, :4], FLOOR, z.clone(), z[:, :4].clone())
    kr.head_bwd(z, w[:4], z, None, None, None, z[:, :4], z[:, :4], z.clone())
    kr.gates_cell_fwd(z, w, z, z[:, :2], z[:, :2], None, z.clone(), z[:, :2].clone(), z[:, :2].clone())
    kr.cell_bwd(z, z[:, :2], None, None, None, z.clone(), z[:, :2].clone())


# ---- activation helpers: relative accuracy at every scale -------------------------------------------------


@triton.jit
def _activation_kernel(x_ptr, y_ptr, N, FN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(x_ptr + offs, mask=ok, other=0.0)
    if FN == "tanh":
        y = kd._tanh(x)
    elif FN == "sigmoid":
        y = kd._sigmoid(x)
    elif FN == "softplus":
        y = kd._softplus(x)
    elif FN == "softplus_grad":
        y = kd._softplus_grad(x)
    else:
        y = kd._log1p_small(x)
    tl.store(y_ptr + offs, y, mask=ok)


def _softplus_grad_torch(x):
    x = x.detach().requires_grad_()
    return torch.autograd.grad(F.softplus(x).sum(), x)[0]


ACTIVATIONS = {  # name: (torch reference, inputs)
    "tanh": (torch.tanh, "signed"),
    "sigmoid": (torch.sigmoid, "signed"),
    "softplus": (F.softplus, "signed"),
    "softplus_grad": (_softplus_grad_torch, "signed"),
    "log1p": (torch.log1p, "unit"),
}


def _activation_inputs(kind, dtype):
    small = torch.logspace(-30, -2, 57, dtype=torch.float64)
    if kind == "unit":  # _log1p_small's domain [0, 1]
        x = torch.cat([small, torch.linspace(0.01, 1.0, 23, dtype=torch.float64)])
    else:
        big = torch.tensor([0.1, 0.2499, 0.25, 0.2501, 0.5, 1.0, 3.0, 10.0, 19.9, 20.0, 20.1, 30.0, 50.0, 80.0],
                           dtype=torch.float64)
        x = torch.cat([small, -small, big, -big])
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_relative_accuracy(name, dtype):
    """Each helper within 4 ulps (relative) of the exact value (torch in float64 on the same inputs), from
    |x| = 1e-30 to 80: no helper loses relative accuracy near 0 (the old tanh returned 0 below 3e-8)."""
    fn, kind = ACTIVATIONS[name]
    x = _activation_inputs(kind, dtype).to(DEVICE)
    y = torch.full_like(x, float("nan"))
    _activation_kernel[(1,)](x, y, x.numel(), FN=name, BLOCK=triton.next_power_of_2(x.numel()))
    exact = fn(x.double())
    rel = ((y.double() - exact).abs() / exact.abs().clamp_min(1e-300)).max().item()
    assert rel <= 4 * torch.finfo(dtype).eps, (name, rel)
