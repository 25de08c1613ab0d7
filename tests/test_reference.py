"""The reference densities and LSTM cell against torch.distributions and torch.nn.LSTMCell."""

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from vrnn_fast import ReferenceVRNN, VRNNConfig
from vrnn_fast.reference import (
    RHO_MAX,
    TORCH_OPS,
    bernoulli_nll,
    bigmm_nll,
    gaussian_kl,
    gaussian_nll,
    gmm_nll,
    lstm_cell,
    reparameterize,
    sigma_from,
)

FLOOR = 1e-4
f64 = dict(dtype=torch.float64)


def test_lstm_cell_matches_torch_lstmcell():
    torch.manual_seed(0)
    model = ReferenceVRNN(VRNNConfig.preset("tiny", h_dim=37)).double()
    rnn = model.rnn
    cell = torch.nn.LSTMCell(rnn.weight_ih.shape[1], 37).double()
    with torch.no_grad():
        cell.weight_ih.copy_(rnn.weight_ih)
        cell.weight_hh.copy_(rnn.weight_hh)
        cell.bias_ih.copy_(rnn.bias + torch.randn(4 * 37, **f64))
        rnn.bias.copy_(cell.bias_ih)
        cell.bias_hh.zero_()
    h, c = torch.randn(5, 37, **f64), torch.randn(5, 37, **f64)
    h_ref, c_ref = h, c
    for _ in range(3):
        inp = torch.randn(5, rnn.weight_ih.shape[1], **f64)
        h, c = lstm_cell(rnn.gates(inp, h), c)
        h_ref, c_ref = cell(inp, (h_ref, c_ref))
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=1e-12, atol=1e-12)


def test_gaussian_kl_and_nll_match_torch_distributions():
    torch.manual_seed(1)
    mu_q, a_q, mu_p, a_p = (torch.randn(4, 6, 13, **f64) * 2 for _ in range(4))
    q = Normal(mu_q, sigma_from(a_q, FLOOR))
    p = Normal(mu_p, sigma_from(a_p, FLOOR))
    torch.testing.assert_close(gaussian_kl(mu_q, a_q, mu_p, a_p, FLOOR), kl_divergence(q, p).sum(-1))
    std_normal = Normal(torch.zeros_like(mu_q), torch.ones_like(mu_q))
    torch.testing.assert_close(gaussian_kl(mu_q, a_q, None, None, FLOOR), kl_divergence(q, std_normal).sum(-1))
    x = torch.randn(4, 6, 13, **f64)
    torch.testing.assert_close(gaussian_nll(x, mu_q, a_q, FLOOR), -q.log_prob(x).sum(-1))


def test_gmm_nll_matches_mixture_same_family():
    torch.manual_seed(2)
    n, d, k = 7, 20, 5
    x, mu, a = torch.randn(n, d, **f64), torch.randn(n, d, k, **f64), torch.randn(n, d, k, **f64)
    logits = torch.randn(n, k, **f64) * 3
    comp = Independent(Normal(mu.transpose(1, 2), sigma_from(a, FLOOR).transpose(1, 2)), 1)  # batch (n, k), event d
    mix = MixtureSameFamily(Categorical(logits=logits), comp)
    torch.testing.assert_close(gmm_nll(x, mu, a, logits, FLOOR), -mix.log_prob(x))


def test_bivariate_gmm_with_pen_matches_torch_distributions():
    torch.manual_seed(3)
    n, k = 9, 4
    x = torch.cat([(torch.rand(n, 1) < 0.4).double(), torch.randn(n, 2, **f64)], -1)
    mu, a = torch.randn(n, 2, k, **f64), torch.randn(n, 2, k, **f64)
    rho_raw, logits, pen_logit = torch.randn(n, k, **f64), torch.randn(n, k, **f64), torch.randn(n, **f64)
    s, rho = sigma_from(a, FLOOR), RHO_MAX * torch.tanh(rho_raw)
    cov = torch.stack([torch.stack([s[:, 0] ** 2, rho * s[:, 0] * s[:, 1]], -1),
                       torch.stack([rho * s[:, 0] * s[:, 1], s[:, 1] ** 2], -1)], -1)  # (n, k, 2, 2)
    mix = MixtureSameFamily(Categorical(logits=logits), MultivariateNormal(mu.transpose(1, 2), covariance_matrix=cov))
    expected = -mix.log_prob(x[:, 1:]) - Bernoulli(logits=pen_logit).log_prob(x[:, 0])
    torch.testing.assert_close(bigmm_nll(x, mu, a, rho_raw, logits, pen_logit, FLOOR), expected)


def test_bernoulli_nll_matches_torch_distributions_and_bce():
    torch.manual_seed(5)
    logits = torch.randn(4, 6, 21, **f64) * 3
    bits = (torch.rand(4, 6, 21, **f64) < 0.3).double()
    want = -Independent(Bernoulli(logits=logits), 1).log_prob(bits)  # exact for binary data
    torch.testing.assert_close(bernoulli_nll(bits, logits), want, rtol=1e-12, atol=1e-12)
    frac = torch.rand(4, 6, 21, **f64)  # data in [0, 1]: the summed BCE-with-logits
    bce = F.binary_cross_entropy_with_logits(logits, frac, reduction="none").sum(-1)
    torch.testing.assert_close(bernoulli_nll(frac, logits), bce, rtol=1e-12, atol=1e-12)
    mask = torch.rand(4, 6) < 0.5
    torch.testing.assert_close(bernoulli_nll(frac, logits, mask), torch.where(mask, bernoulli_nll(frac, logits), 0.0),
                               rtol=0, atol=0)


def _triton_ops():
    from vrnn_fast.triton_ops import TRITON_OPS  # CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py)

    return TRITON_OPS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ops", ["torch", "triton"])
def test_bernoulli_nll_is_exact_at_extreme_logits(ops, dtype):
    """|logit| = 1e4 (and 50, 0): the loss and both gradients against their closed forms, all finite. Per element,
    nll = (1 - x) softplus(l) + x softplus(-l), d/dl = sigmoid(l) - x, d/dx = -l."""
    fn = (TORCH_OPS if ops == "torch" else _triton_ops()).bernoulli_nll
    l_vals = torch.tensor([1e4, -1e4, 50.0, -50.0, 0.0], dtype=torch.float64)
    x_vals = torch.tensor([0.0, 1.0, 0.25], dtype=torch.float64)
    lv, xv = (t.reshape(-1, 1) for t in torch.meshgrid(l_vals, x_vals, indexing="ij"))  # (15, 1): one per row
    logits, x = lv.to(dtype).requires_grad_(), xv.to(dtype).requires_grad_()
    nll = fn(x, logits)
    nll.sum().backward()
    want = ((1 - xv) * F.softplus(lv) + xv * F.softplus(-lv))[:, 0]  # float64: softplus(1e4) = 1e4 exactly
    assert torch.isfinite(nll).all() and torch.isfinite(logits.grad).all() and torch.isfinite(x.grad).all()
    assert nll.dtype == dtype
    torch.testing.assert_close(nll.double(), want, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)
    torch.testing.assert_close(logits.grad.double(), torch.sigmoid(lv) - xv, rtol=0, atol=1e-7)
    torch.testing.assert_close(x.grad.double(), -lv, rtol=0, atol=0)


@pytest.mark.parametrize("ops", ["torch", "triton"])
@pytest.mark.parametrize("bad", [1.5, -1e-6, float("nan")])
def test_bernoulli_nll_refuses_data_outside_0_1(ops, bad):
    fn = (TORCH_OPS if ops == "torch" else _triton_ops()).bernoulli_nll
    x, logits = torch.rand(3, 4), torch.randn(3, 4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"bernoulli_nll: x must lie in \[0, 1\]"):
        fn(x, logits)
    mask = torch.tensor([True, False, True])  # a padded frame is not scored, so not checked
    torch.testing.assert_close(fn(x, logits, mask)[[0, 2]], bernoulli_nll(x[[0, 2]], logits[[0, 2]]))


def test_masks_zero_losses_and_gradients():
    torch.manual_seed(4)
    mask = torch.tensor([[True, False, True]])
    x = torch.randn(1, 3, 8, **f64)
    mu, a = torch.randn(1, 3, 8, **f64, requires_grad=True), torch.randn(1, 3, 8, **f64, requires_grad=True)
    nll = gaussian_nll(x, mu, a, FLOOR, mask)
    kl = gaussian_kl(mu, a, None, None, FLOOR, mask)
    assert nll[0, 1] == 0 and kl[0, 1] == 0 and nll[0, 0] != 0
    (nll.sum() + kl.sum()).backward()
    assert mu.grad[0, 1].abs().sum() == 0 and a.grad[0, 1].abs().sum() == 0


def test_extreme_values_stay_finite():
    n, d, k = 3, 5, 4
    x = torch.full((n, d), 1e3 * FLOOR)  # |x - mu| / sigma ~ 1e3 at the floor
    a = torch.full((n, d, k), -50.0)  # sigma at the floor
    mu = torch.zeros(n, d, k)
    logits = torch.tensor([50.0, -50.0, 50.0, -50.0]).expand(n, k)
    assert torch.isfinite(gmm_nll(x, mu, a, logits, FLOOR)).all()
    assert torch.isfinite(gaussian_nll(x, mu[..., 0], a[..., 0], FLOOR)).all()
    xy = torch.tensor([[1.0, 0.3, -0.2]]).expand(n, 3)
    rho_raw = torch.tensor([50.0, -50.0, 0.0, 50.0]).expand(n, k)
    out = bigmm_nll(xy, torch.zeros(n, 2, k), torch.zeros(n, 2, k), rho_raw, logits, torch.full((n,), -50.0), FLOOR)
    assert torch.isfinite(out).all()


def test_reparameterize_uses_softplus_plus_floor():
    mu, a, eps = torch.randn(4, 3, **f64), torch.randn(4, 3, **f64), torch.randn(4, 3, **f64)
    torch.testing.assert_close(reparameterize(mu, a, eps, FLOOR), mu + (F.softplus(a) + FLOOR) * eps)


@pytest.mark.parametrize("model", ["vrnn", "vrnn-i", "rnn"])
def test_official_initialisation(model):
    cfg = VRNNConfig.preset("tiny", model=model, output="gmm")
    net = ReferenceVRNN(cfg)
    h = cfg.h_dim
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            expected = cfg.sigma_bias_init if name.endswith("sigma.bias") else 0.0
            assert torch.all(p == expected), name
        elif name != "rnn.weight_hh":
            assert p.abs().max() <= cfg.init_scale and p.abs().max() > cfg.init_scale / 2, name
    for block in net.rnn.weight_hh.detach().chunk(4):
        torch.testing.assert_close(block @ block.T, torch.eye(h), atol=1e-5, rtol=0)
    assert float(F.softplus(torch.tensor(cfg.sigma_bias_init))) == pytest.approx(1.0375, abs=1e-4)
