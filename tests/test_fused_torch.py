"""vrnn_fast.fused_torch (FastVRNN's torch-backend densities) against the reference in float64: values and every
gradient at the paper's sizes with masks and broadcasting, extreme values, gradcheck, float32."""

import pytest
import torch

from vrnn_fast import reference
from vrnn_fast.fused_torch import FUSED_TORCH_OPS, gmm_nll


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


@pytest.mark.parametrize(("lead", "D", "K", "scale"), [((6, 7), 200, 20, 1.0), ((5,), 13, 3, 1e3), ((4,), 7, 2, 1e-6)])
def test_gmm_nll_matches_reference_float64(lead, D, K, scale):
    inputs = gmm_inputs(lead, D, K, scale=scale)
    mask = torch.rand(lead, generator=torch.Generator().manual_seed(2)) > 0.3
    (want, want_grads), (got, got_grads) = (value_and_grads(f, inputs, mask) for f in (reference.gmm_nll, gmm_nll))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert (got[~mask] == 0).all()
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


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
