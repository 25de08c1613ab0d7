"""Triton LSTM cell and Gaussian head (kernels/lstm.py, kernels/gaussian.py via vrnn_fast.triton_ops) against
the reference functions: forward and backward, float64 at 1e-10, gradcheck, float32/bfloat16, odd sizes and tiles,
masks, non-contiguous and broadcast inputs, extreme values, errors.

Runs under TRITON_INTERPRET=1 without a GPU (tests/conftest.py); every kernel output starts as NaN.
"""

import pytest
import torch
from torch.testing import assert_close
from vrnn_fast.kernels import gaussian as kg
from vrnn_fast.kernels import lstm as kl

from vrnn_fast import reference as ref
from vrnn_fast import triton_ops as ops

pytestmark = pytest.mark.usefixtures("nan_outputs")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FLOOR = 1e-4
F64 = dict(rtol=1e-10, atol=1e-10)


def _randn(*shape, seed, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=DEVICE)


def _mask(*lead, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(*lead, generator=g) > 0.3
    mask.view(-1)[0], mask.view(-1)[-1] = True, False
    return mask.to(DEVICE)


def _run(fn, inputs, weights_seed=99):
    """Outputs of fn(*inputs) and the gradients of sum(out * w) w.r.t. every tensor input that needs them."""
    leaves = [x.detach().clone().requires_grad_(True) if isinstance(x, torch.Tensor) and x.is_floating_point()
              else x for x in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o.double() * _randn(*o.shape, seed=weights_seed + i)).sum() for i, o in enumerate(outs))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad]
    return outs, torch.autograd.grad(loss, tensors)


def _compare(fast, slow, inputs, **tol):
    (out_f, grad_f), (out_s, grad_s) = _run(fast, inputs), _run(slow, inputs)
    for a, b in zip(out_f + grad_f, out_s + grad_s, strict=True):
        assert torch.isfinite(a).all()
        assert_close(a, b.to(a.dtype), **tol)


def lstm_inputs(N, H, seed=0, scale=1.0, dtype=torch.float64):
    return [_randn(N, 4 * H, seed=seed, scale=scale, dtype=dtype), _randn(N, H, seed=seed + 1, dtype=dtype)]


def kl_inputs(lead, Z, prior=True, seed=0, dtype=torch.float64):
    n = 4 if prior else 2
    return [_randn(*lead, Z, seed=seed + i, dtype=dtype) for i in range(n)] + [None] * (4 - n)


def _kl(floor, mask):
    """(triton, reference) KL functions of (mu_q, a_q, mu_p, a_p)."""
    return lambda *args: ops.gaussian_kl(*args, floor, mask), lambda *args: ref.gaussian_kl(*args, floor, mask)


# ---- the NaN fixture itself ---------------------------------------------------------------------------


def test_nan_fixture_poisons_uninitialised_outputs():
    assert torch.isnan(torch.empty(3, dtype=torch.float64)).all()
    assert torch.isnan(torch.empty_like(torch.zeros(2, dtype=torch.bfloat16))).all()
    assert torch.empty(2, dtype=torch.int64).dtype == torch.int64


# ---- LSTM cell ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("N,H", [(8, 300), (5, 37), (1, 1)])
def test_lstm_float64_parity(N, H):
    _compare(ops.lstm_cell, ref.lstm_cell, lstm_inputs(N, H, scale=2.0), **F64)


def test_lstm_small_odd_tiles_exercise_masks():
    gates, c_prev = lstm_inputs(7, 37, seed=3)
    h, c = kl.lstm_fwd(gates, c_prev, block_n=4, block_h=16)
    h_ref, c_ref = ref.lstm_cell(gates, c_prev)
    assert_close(h, h_ref, **F64)
    assert_close(c, c_ref, **F64)
    dh, dc = _randn(7, 37, seed=5), _randn(7, 37, seed=6)
    dgates, dc_prev = kl.lstm_bwd(gates, c_prev, dh, dc, block_n=4, block_h=16)
    g, cp = gates.clone().requires_grad_(), c_prev.clone().requires_grad_()
    want = torch.autograd.grad(ref.lstm_cell(g, cp), (g, cp), (dh, dc))
    assert_close(dgates, want[0], **F64)
    assert_close(dc_prev, want[1], **F64)


@pytest.mark.parametrize("used", ["h", "c"])
def test_lstm_backward_with_one_output_unused(used):
    gates, c_prev = lstm_inputs(4, 19, seed=7)
    pick = 0 if used == "h" else 1
    _compare(lambda g, c: ops.lstm_cell(g, c)[pick], lambda g, c: ref.lstm_cell(g, c)[pick], [gates, c_prev], **F64)


def test_lstm_gradcheck():
    gates, c_prev = (x.requires_grad_() for x in lstm_inputs(3, 5, seed=11))
    assert torch.autograd.gradcheck(ops.lstm_cell, (gates, c_prev))


def test_lstm_leading_dims_and_non_contiguous():
    big = _randn(3, 2, 8 * 13, seed=1)
    gates = big[..., ::2]  # (3, 2, 4H) with column stride 2
    c_prev = _randn(2, 3, 13, seed=2).transpose(0, 1)  # (3, 2, H) non-contiguous rows
    assert not gates.is_contiguous() and not c_prev.is_contiguous()
    _compare(ops.lstm_cell, ref.lstm_cell, [gates, c_prev], **F64)


def test_lstm_extreme_gates_float64_and_float32():
    gates, c_prev = lstm_inputs(4, 37, seed=4, scale=50.0)
    _compare(ops.lstm_cell, ref.lstm_cell, [gates, c_prev], **F64)
    _compare(ops.lstm_cell, ref.lstm_cell, [gates.float(), c_prev.float()])


def test_lstm_float32_near_default_tolerance():
    _compare(ops.lstm_cell, ref.lstm_cell, lstm_inputs(8, 300, seed=8, scale=2.0, dtype=torch.float32))


def test_lstm_bfloat16_within_twice_torch_error():
    """bf16 inputs, fp32 math inside, bf16 outputs: error against float64 at most 2x plain PyTorch's in bf16."""
    gates, c_prev = lstm_inputs(8, 300, seed=9, scale=2.0)
    exact = ref.lstm_cell(gates, c_prev)
    fast = ops.lstm_cell(gates.bfloat16(), c_prev.bfloat16())
    torch_bf16 = ref.lstm_cell(gates.bfloat16(), c_prev.bfloat16())
    for f, t, e in zip(fast, torch_bf16, exact, strict=True):
        assert f.dtype == torch.bfloat16
        assert (f.double() - e).abs().max() <= 2 * (t.double() - e).abs().max() + 1e-6


def test_lstm_mixed_dtypes_promote():
    gates, c_prev = lstm_inputs(2, 16, seed=10)
    h, c = ops.lstm_cell(gates.bfloat16(), c_prev.float())
    assert h.dtype == c.dtype == torch.float32


# ---- LSTM cell fused into the recurrent GEMM ----------------------------------------------------------


def _gemm_ref(pre, h, weight, c_prev):
    return ref.lstm_cell(pre + h @ weight.t(), c_prev)


def gemm_inputs(N, H, K, seed=0, dtype=torch.float64):
    return [_randn(N, 4 * H, seed=seed, dtype=dtype), _randn(N, K, seed=seed + 1, dtype=dtype),
            _randn(4 * H, K, seed=seed + 2, scale=K**-0.5, dtype=dtype), _randn(N, H, seed=seed + 3, dtype=dtype)]


@pytest.mark.parametrize("N,H,K", [(20, 37, 37), (64, 16, 50)])
def test_lstm_gemm_float64_parity(N, H, K):
    """Odd N, H, K: partial row, column and reduction tiles (K = 37 and 50 loop over two 32-wide k-tiles)."""
    _compare(ops.lstm_gemm_cell, _gemm_ref, gemm_inputs(N, H, K), **F64)


def test_lstm_gemm_non_contiguous_and_float32():
    pre, h, weight, c_prev = gemm_inputs(5, 19, 23, seed=3)
    weight_t = weight.t().contiguous().t()  # column-major W
    pre_nc = torch.cat([pre, pre], 1)[:, ::2]
    _compare(ops.lstm_gemm_cell, _gemm_ref, [pre_nc, h, weight_t, c_prev], **F64)
    _compare(ops.lstm_gemm_cell, _gemm_ref, [t.float() for t in (pre, h, weight, c_prev)], rtol=1e-5, atol=1e-5)


def test_lstm_gemm_gradcheck():
    inputs = [t.requires_grad_() for t in gemm_inputs(3, 4, 5, seed=5)]
    assert torch.autograd.gradcheck(ops.lstm_gemm_cell, inputs)


def test_lstm_gemm_bad_shapes():
    pre, h, weight, c_prev = gemm_inputs(3, 4, 5)
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.lstm_gemm_cell(pre, h, weight[:, :4], c_prev)
    with pytest.raises(ValueError, match="2-D"):
        ops.lstm_gemm_cell(pre[None], h, weight, c_prev)

# ---- reparameterisation -------------------------------------------------------------------------------


def _reparam(impl):
    return lambda mu, a, eps: impl.reparameterize(mu, a, eps, FLOOR)


@pytest.mark.parametrize("N,Z", [(10, 200), (5, 13)])
def test_reparameterize_float64_parity(N, Z):
    inputs = [_randn(N, Z, seed=s, scale=3.0) for s in range(3)]
    _compare(_reparam(ops), _reparam(ref), inputs, **F64)


def test_reparameterize_small_odd_tile_and_non_contiguous_eps():
    mu, a = _randn(7, 13, seed=0), _randn(7, 13, seed=1)
    eps = _randn(7, 3, 13, seed=2)[:, 1]  # a step slice of (B, T, Z) noise
    z = kg.reparam_fwd(mu, a, eps, 0, FLOOR, block_n=4, block_z=16)
    assert_close(z, ref.reparameterize(mu, a, eps, FLOOR), **F64)
    dz = _randn(7, 13, seed=3)
    da, deps = kg.reparam_bwd(dz, a, eps, 0, FLOOR, True, block_n=4, block_z=16)
    aa, ee = a.clone().requires_grad_(), eps.clone().requires_grad_()
    want = torch.autograd.grad(ref.reparameterize(mu, aa, ee, FLOOR), (aa, ee), dz)
    assert_close(da, want[0], **F64)
    assert_close(deps, want[1], **F64)
    _compare(_reparam(ops), _reparam(ref), [mu.t().contiguous().t(), a, eps], **F64)


def test_reparameterize_extreme_values():
    """sigma at the floor (a = -60), the softplus threshold (a = 20 +- 1e-9, 30) and |eps| = 1e3."""
    a = torch.tensor([[-60.0, -20.0, 0.0, 20.0 - 1e-9, 20.0 + 1e-9, 30.0]], dtype=torch.float64, device=DEVICE)
    mu, eps = torch.zeros_like(a), torch.full_like(a, 1e3)
    _compare(_reparam(ops), _reparam(ref), [mu, a, eps], **F64)
    _compare(_reparam(ops), _reparam(ref), [mu.float(), a.float(), eps.float()])


def test_reparameterize_gradcheck():
    inputs = [_randn(3, 5, seed=s).requires_grad_() for s in range(3)]
    assert torch.autograd.gradcheck(_reparam(ops), inputs)


def test_reparameterize_float32_and_bfloat16():
    inputs = [_randn(6, 200, seed=s, scale=2.0) for s in range(3)]
    _compare(_reparam(ops), _reparam(ref), [x.float() for x in inputs])
    exact = ref.reparameterize(*inputs, FLOOR)
    fast = ops.reparameterize(*(x.bfloat16() for x in inputs), FLOOR)
    plain = ref.reparameterize(*(x.bfloat16() for x in inputs), FLOOR)
    assert fast.dtype == torch.bfloat16
    assert (fast.double() - exact).abs().max() <= 2 * (plain.double() - exact).abs().max()


def test_seeded_reparameterize_draws_standard_normal_and_regenerates_eps():
    mu, a = _randn(64, 200, seed=0), _randn(64, 200, seed=1)
    sigma = ref.sigma_from(a, FLOOR)
    z = ops.reparameterize_seeded(mu, a, 1234, FLOOR)
    eps = (z - mu) / sigma
    assert abs(eps.mean().item()) < 0.03 and abs(eps.std().item() - 1.0) < 0.03
    assert torch.equal(z, ops.reparameterize_seeded(mu, a, 1234, FLOOR))  # deterministic
    assert not torch.allclose(z, ops.reparameterize_seeded(mu, a, 1235, FLOOR))
    # the backward regenerates the same eps: it matches the reference fed with the recovered noise
    _compare(lambda m, s: ops.reparameterize_seeded(m, s, 1234, FLOOR),
             lambda m, s: ref.reparameterize(m, s, eps, FLOOR), [mu, a], rtol=1e-7, atol=1e-7)


def test_seeded_reparameterize_gradcheck_and_leading_dims():
    mu, a = _randn(2, 3, 5, seed=0).requires_grad_(), _randn(2, 3, 5, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, s: ops.reparameterize_seeded(m, s, 5, FLOOR), (mu, a))
    assert ops.reparameterize_seeded(mu, a, 5, FLOOR).shape == (2, 3, 5)


# ---- KL -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prior", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_kl_float64_parity(prior, masked):
    lead = (4, 3)
    mask = _mask(*lead) if masked else None
    fast, slow = _kl(FLOOR, mask)
    _compare(fast, slow, kl_inputs(lead, 200, prior), **F64)


@pytest.mark.parametrize("prior", [True, False])
def test_kl_small_odd_tiles_loop_over_z(prior):
    mask = _mask(7, seed=2)
    mq, aq, mp, ap = kl_inputs((7,), 37, prior, seed=3)
    out = kg.kl_fwd(mq, aq, mp, ap, FLOOR, mask, block_n=4, block_z=16)
    assert_close(out, ref.gaussian_kl(mq, aq, mp, ap, FLOOR, mask), **F64)
    leaves = [x.clone().requires_grad_() for x in (mq, aq, mp, ap) if x is not None]
    grad = _randn(7, seed=4)
    want = torch.autograd.grad(ref.gaussian_kl(*leaves, *([None, None] if not prior else []), FLOOR, mask),
                               leaves, grad)
    got = [g for g in kg.kl_bwd(grad, mq, aq, mp, ap, FLOOR, mask, block_n=4, block_z=16) if g is not None]
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **F64)


@pytest.mark.parametrize("prior", [True, False])
def test_kl_gradcheck(prior):
    inputs = [x.requires_grad_() if x is not None else None for x in kl_inputs((3,), 4, prior, seed=5)]
    mask = torch.tensor([True, False, True], device=DEVICE)
    assert torch.autograd.gradcheck(lambda *args: ops.gaussian_kl(*args, FLOOR, mask), inputs)


def test_kl_masked_rows_ignore_garbage():
    mq, aq, mp, ap = kl_inputs((5,), 13, seed=6)
    mask = torch.tensor([True, False, True, False, True], device=DEVICE)
    for t in (mq, aq, mp, ap):
        t[~mask] = 1e30
    leaves = [x.clone().requires_grad_() for x in (mq, aq, mp, ap)]
    out = ops.gaussian_kl(*leaves, FLOOR, mask)
    assert torch.equal(out[~mask], torch.zeros(2, dtype=out.dtype, device=DEVICE))
    for g in torch.autograd.grad(out.sum(), leaves):
        assert torch.equal(g[~mask], torch.zeros_like(g[~mask])) and torch.isfinite(g).all()
    keep = [x[mask] for x in (mq, aq, mp, ap)]
    assert_close(out[mask], ref.gaussian_kl(*keep, FLOOR), **F64)


def test_kl_extreme_values():
    """sigma at the floor on either side, softplus threshold, |mu_q - mu_p| / s_p ~ 1e3."""
    a = torch.tensor([-60.0, 0.0, 20.0 + 1e-9, 30.0, -5.0, 3.0], dtype=torch.float64, device=DEVICE)[None]
    mq, aq, mp, ap = a * 0 + 1e3 * FLOOR, a, torch.zeros_like(a), a.flip(-1)
    fast, slow = _kl(FLOOR, None)
    _compare(fast, slow, [mq, aq, mp, ap], **F64)
    _compare(fast, slow, [mq, aq, None, None], **F64)
    _compare(fast, slow, [x.float() for x in (mq, aq, mp, ap)], rtol=1e-5, atol=1e-5)


def test_kl_float32_and_bfloat16_outputs_float32():
    inputs = kl_inputs((6, 5), 200, seed=7)
    fast, slow = _kl(FLOOR, _mask(6, 5))
    _compare(fast, slow, [x.float() for x in inputs], rtol=1e-5, atol=1e-4)  # sums of 200 terms ~ 1e2
    exact = slow(*inputs)
    got = fast(*(x.bfloat16() for x in inputs))
    plain = slow(*(x.bfloat16().float() for x in inputs))  # torch's best on the same bf16 values
    assert got.dtype == torch.float32
    assert (got.double() - exact).abs().max() <= 2 * (plain.double() - exact).abs().max() + 1e-3


def test_kl_broadcast_prior_and_non_contiguous():
    mq = _randn(5, 4, 13, seed=1).transpose(0, 1)  # (4, 5, Z) non-contiguous
    aq = _randn(4, 5, 26, seed=2)[..., 1::2]
    mp, ap = _randn(13, seed=3), _randn(1, 13, seed=4)  # broadcast over the leading dims
    fast, slow = _kl(FLOOR, _mask(4, 5))
    _compare(fast, slow, [mq, aq, mp, ap], **F64)


def test_empty_rows():
    x = torch.zeros(0, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    outs = [ops.gaussian_kl(x, x, x, x, FLOOR), ops.gaussian_kl(x, x, None, None, FLOOR),
            ops.reparameterize(x, x, x, FLOOR), *ops.lstm_cell(torch.cat([x, x, x, x], -1), x)]
    assert [tuple(o.shape) for o in outs] == [(0,), (0,), (0, 5), (0, 5), (0, 5)]
    (grad,) = torch.autograd.grad(sum(o.sum() for o in outs), x)
    assert grad.shape == (0, 5)

# ---- errors -------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_error():
    gates, c_prev = lstm_inputs(2, 4)
    with pytest.raises(ValueError, match="gates must end in"):
        ops.lstm_cell(gates[:, :-1], c_prev)
    with pytest.raises(ValueError, match="floating-point"):
        ops.lstm_cell(gates.long(), c_prev)
    with pytest.raises(ValueError, match="do not broadcast"):
        ops.lstm_cell(gates[:2], c_prev[:1].expand(3, 4))
    mu = _randn(2, 3, seed=0)
    with pytest.raises(ValueError, match="eps must end in"):
        ops.reparameterize(mu, mu, mu[:, :2], FLOOR)
    with pytest.raises(ValueError, match="floor"):
        ops.reparameterize(mu, mu, mu, -1.0)
    with pytest.raises(ValueError, match="seed"):
        ops.reparameterize_seeded(mu, mu, -3, FLOOR)
    with pytest.raises(ValueError, match="both"):
        ops.gaussian_kl(mu, mu, mu, None, FLOOR)
    with pytest.raises(ValueError, match="mask must be a bool"):
        ops.gaussian_kl(mu, mu, None, None, FLOOR, torch.ones(2, device=DEVICE))
    with pytest.raises(ValueError, match="CUDA"):
        ops.ops_for(torch.zeros(1, device="meta"))
