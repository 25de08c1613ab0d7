"""vrnn_fast.fused_torch (FastVRNN's torch-backend densities) against the reference in float64: values and every
gradient at the paper's sizes with masks and broadcasting, extreme values, gradcheck, float32."""

import pytest
import torch
import torch.nn.functional as F

from vrnn_fast import fused_torch, reference
from vrnn_fast.fused_torch import FUSED_TORCH_OPS, gmm_nll, linear_gaussian_nll, linear_gmm_nll


def gmm_inputs(lead, D, K, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, D, generator=g, dtype=dtype) * scale
    mu = torch.randn(*lead, D, K, generator=g, dtype=dtype) * scale
    a = torch.randn(*lead, D, K, generator=g, dtype=dtype) * 3
    logits = torch.randn(*lead, K, generator=g, dtype=dtype) * 5
    return [t.requires_grad_() for t in (x, mu, a, logits)]


def value_and_grads(fn, inputs, mask, floor=1e-4):
    out = fn(*inputs, floor, mask)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    return out, torch.autograd.grad(out, inputs, grad)


def assert_same_values_and_grads(fused, ref, inputs, mask, names, rtol=1e-9, atol=1e-10):
    """fused(*inputs, floor, mask) against ref in value (to a tenth of ``rtol``, atol; masked rows exactly 0) and in
    every input's gradient (to rtol, atol)."""
    (want, want_grads), (got, got_grads) = (value_and_grads(f, inputs, mask) for f in (ref, fused))
    torch.testing.assert_close(got, want, rtol=rtol / 10, atol=atol)
    if mask is not None:
        assert (got[~mask] == 0).all()
    for name, a, b in zip(names, got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize(("lead", "D", "K", "scale"), [((6, 7), 200, 20, 1.0), ((5,), 13, 3, 1e3), ((4,), 7, 2, 1e-6)])
def test_gmm_nll_matches_reference_float64(lead, D, K, scale):
    inputs = gmm_inputs(lead, D, K, scale=scale)
    mask = torch.rand(lead, generator=torch.Generator().manual_seed(2)) > 0.3
    assert_same_values_and_grads(gmm_nll, reference.gmm_nll, inputs, mask, ["x", "mu", "a", "logits"])


def test_gmm_nll_broadcasts_like_the_reference():
    x, mu, a, logits = gmm_inputs((3,), 5, 4)
    x1 = x[:1].detach().requires_grad_()  # x broadcast over the rows, mask over a new leading dim
    mask = torch.tensor([[True, False, True], [True, True, False]])
    (want, want_grads), (got, got_grads) = (value_and_grads(f, [x1, mu, a, logits], mask)
                                            for f in (reference.gmm_nll, gmm_nll))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g1, g2 in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)


def test_gmm_nll_gradcheck_and_float32():
    inputs = gmm_inputs((3,), 4, 3)
    mask = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(lambda *t: gmm_nll(*t, 1e-2, mask), inputs)
    f32 = [t.detach().float().requires_grad_() for t in gmm_inputs((16,), 200, 20, seed=3)]
    (want, want_grads), (got, got_grads) = (value_and_grads(f, f32, None) for f in (reference.gmm_nll, gmm_nll))
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_op_set_replaces_only_the_gmm_density():
    assert vars(FUSED_TORCH_OPS).keys() == vars(reference.TORCH_OPS).keys()
    assert FUSED_TORCH_OPS.gmm_nll.__wrapped__ is gmm_nll
    assert FUSED_TORCH_OPS.gaussian_nll is reference.TORCH_OPS.gaussian_nll


# ---- linear_gmm_nll: the decoder's heads and the GMM density in one Function ----


LINEAR_GMM_ARGS = ["hidden", "x", "w_mu", "b_mu", "w_sigma", "b_sigma", "w_coeff", "b_coeff"]


def reference_linear_gmm_nll(hidden, x, w_mu, b_mu, w_sigma, b_sigma, w_coeff, b_coeff, floor, mask=None):
    """The heads as nn.Linear computes them, viewed (..., D, K), then reference.gmm_nll."""
    mu, a = (F.linear(hidden, w, b).unflatten(-1, (x.shape[-1], -1)) for w, b in ((w_mu, b_mu), (w_sigma, b_sigma)))
    return reference.gmm_nll(x, mu, a, F.linear(hidden, w_coeff, b_coeff), floor, mask)


def linear_gmm_inputs(lead, W, D, K, dtype=torch.float64, scale=1.0, a_shift=0.0, seed=0):
    """hidden (*lead, W), x (*lead, D) and the heads' weights and biases; a = hidden W_sigma^T + b_sigma lies
    around a_shift (spread about 3), mu and x scale with ``scale``."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g, dtype=dtype) * std

    hidden, x = randn(*lead, W), randn(*lead, D, std=scale)
    heads = [randn(D * K, W, std=scale / W**0.5), randn(D * K, std=scale),  # mu
             randn(D * K, W, std=2 / W**0.5), randn(D * K, std=2) + a_shift,  # a
             randn(K, W, std=3 / W**0.5), randn(K, std=3)]  # logits
    return [t.requires_grad_() for t in (hidden, x, *heads)]


@pytest.mark.parametrize("skip_masked", [True, False], ids=["masked-rows-skipped", "masked-rows-computed"])
@pytest.mark.parametrize(("lead", "W", "D", "K", "chunk", "scale", "a_shift"), [
    ((6, 7), 16, 200, 20, None, 1.0, 0.0),  # the paper's D and K, one chunk
    ((6, 7), 16, 200, 20, 3000, 1.0, 0.0),  # chunks of 3 d's and a last one of 2
    ((5,), 9, 13, 3, 1, 1.0, 0.0),  # one d per chunk
    ((4, 3), 5, 7, 2, 50, 1e3, 0.0),  # |x - mu| ~ 1e3
    ((4, 3), 5, 7, 2, 50, 1.0, 25.0),  # a > 20: softplus(a) = a (its threshold)
    ((4, 3), 5, 7, 2, 50, 1.0, -40.0),  # sigma at its floor, sigmoid(a) ~ 1e-17
])
def test_linear_gmm_nll_matches_reference_float64(monkeypatch, lead, W, D, K, chunk, scale, a_shift, skip_masked):
    """Both ways of masking: rows left out (CPU, eager) and rows computed then masked (torch.compile, GPUs)."""
    monkeypatch.setattr(fused_torch, "_skips_masked_rows", lambda t: skip_masked)
    if chunk is not None:
        monkeypatch.setitem(fused_torch.GMM_CHUNK_ELEMENTS, "cpu", chunk)
    inputs = linear_gmm_inputs(lead, W, D, K, scale=scale, a_shift=a_shift)
    mask = torch.rand(lead, generator=torch.Generator().manual_seed(2)) > 0.3
    assert_same_values_and_grads(linear_gmm_nll, reference_linear_gmm_nll, inputs, mask, LINEAR_GMM_ARGS)


@pytest.mark.parametrize("skip_masked", [True, False])
def test_linear_gmm_nll_gradcheck_in_chunks(monkeypatch, skip_masked):
    monkeypatch.setattr(fused_torch, "_skips_masked_rows", lambda t: skip_masked)
    monkeypatch.setitem(fused_torch.GMM_CHUNK_ELEMENTS, "cpu", 8)  # 2 d's of K * N = 4 (or 3) per chunk: 3 chunks
    inputs = linear_gmm_inputs((4,), 3, 5, 1)
    mask = torch.tensor([True, False, True, True])
    assert torch.autograd.gradcheck(lambda *t: linear_gmm_nll(*t, 1e-2, mask), inputs)


def test_linear_gmm_nll_with_every_row_masked():
    inputs = linear_gmm_inputs((2, 3), 4, 5, 2)
    nll = linear_gmm_nll(*inputs, 1e-4, torch.zeros(2, 3, dtype=torch.bool))
    assert nll.shape == (2, 3) and (nll == 0).all()
    nll.sum().backward()
    assert all((t.grad == 0).all() for t in inputs)


def assert_float32_error_at_most_twice_plain_pytorch(fused, ref, f64, names):
    """fused in float32 against float64: the error of the value and of every gradient at most twice that of the
    reference in float32."""
    f32 = [t.detach().float().requires_grad_() for t in f64]
    exact, exact_grads = value_and_grads(ref, f64, None)
    plain, plain_grads = value_and_grads(ref, f32, None)
    got, got_grads = value_and_grads(fused, f32, None)
    for name, e, p, g in zip(["nll", *names], [exact, *exact_grads], [plain, *plain_grads], [got, *got_grads],
                             strict=True):
        err, plain_err = ((t.double() - e).abs().max().item() for t in (g, p))
        assert err <= 2 * plain_err + 1e-6 * e.abs().max().item(), (name, err, plain_err)


def test_linear_gmm_nll_float32_error_at_most_twice_plain_pytorch():
    assert_float32_error_at_most_twice_plain_pytorch(linear_gmm_nll, reference_linear_gmm_nll,
                                                     linear_gmm_inputs((8, 5), 64, 200, 20, seed=3), LINEAR_GMM_ARGS)


# ---- linear_gaussian_nll: the Gaussian decoder's heads and density in one Function ----


LINEAR_GAUSS_ARGS = ["hidden", "x", "w_mu", "b_mu", "w_sigma", "b_sigma"]


def reference_linear_gaussian_nll(hidden, x, w_mu, b_mu, w_sigma, b_sigma, floor, mask=None):
    return reference.gaussian_nll(x, F.linear(hidden, w_mu, b_mu), F.linear(hidden, w_sigma, b_sigma), floor, mask)


def linear_gaussian_inputs(lead, W, D, dtype=torch.float64, scale=1.0, a_shift=0.0, seed=0):
    """The K = 1 case of linear_gmm_inputs, without the logits head."""
    return linear_gmm_inputs(lead, W, D, 1, dtype, scale, a_shift, seed)[:6]


@pytest.mark.parametrize("skip_masked", [True, False], ids=["masked-rows-skipped", "masked-rows-computed"])
@pytest.mark.parametrize(("lead", "W", "D", "scale", "a_shift"), [
    ((6, 7), 16, 200, 1.0, 0.0),  # the paper's frame size
    ((5,), 9, 13, 1.0, 0.0),
    ((4, 3), 5, 7, 1e3, 0.0),  # |x - mu| ~ 1e3
    ((4, 3), 5, 7, 1.0, 25.0),  # a > 20: softplus(a) = a (its threshold)
    ((4, 3), 5, 7, 1.0, -40.0),  # sigma at its floor, sigmoid(a) ~ 1e-17
])
def test_linear_gaussian_nll_matches_reference_float64(monkeypatch, lead, W, D, scale, a_shift, skip_masked):
    monkeypatch.setattr(fused_torch, "_skips_masked_rows", lambda t: skip_masked)
    inputs = linear_gaussian_inputs(lead, W, D, scale=scale, a_shift=a_shift)
    inputs[1] = inputs[1].detach().transpose(0, -2).contiguous().transpose(0, -2).requires_grad_()  # x strided
    mask = torch.rand(lead, generator=torch.Generator().manual_seed(2)) > 0.3
    assert_same_values_and_grads(linear_gaussian_nll, reference_linear_gaussian_nll, inputs, mask, LINEAR_GAUSS_ARGS)


@pytest.mark.parametrize("skip_masked", [True, False])
def test_linear_gaussian_nll_gradcheck_and_no_mask(monkeypatch, skip_masked):
    monkeypatch.setattr(fused_torch, "_skips_masked_rows", lambda t: skip_masked)
    inputs = linear_gaussian_inputs((4,), 3, 5)
    assert torch.autograd.gradcheck(lambda *t: linear_gaussian_nll(*t, 1e-2, torch.tensor([1, 0, 1, 1.]) > 0),
                                    inputs)
    assert_same_values_and_grads(linear_gaussian_nll, reference_linear_gaussian_nll, inputs, None, LINEAR_GAUSS_ARGS,
                                 rtol=1e-10, atol=1e-12)


def test_linear_gaussian_nll_with_every_row_masked_and_without_grad():
    inputs = linear_gaussian_inputs((2, 3), 4, 5)
    nll = linear_gaussian_nll(*inputs, 1e-4, torch.zeros(2, 3, dtype=torch.bool))
    assert nll.shape == (2, 3) and (nll == 0).all()
    nll.sum().backward()
    assert all((t.grad == 0).all() for t in inputs)
    with torch.no_grad():
        torch.testing.assert_close(linear_gaussian_nll(*inputs, 1e-4), reference_linear_gaussian_nll(*inputs, 1e-4))


def test_linear_gaussian_nll_float32_error_at_most_twice_plain_pytorch():
    assert_float32_error_at_most_twice_plain_pytorch(linear_gaussian_nll, reference_linear_gaussian_nll,
                                                     linear_gaussian_inputs((8, 5), 64, 200, seed=3),
                                                     LINEAR_GAUSS_ARGS)
