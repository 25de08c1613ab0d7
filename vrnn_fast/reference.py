"""The executable spec: per-step densities in plain PyTorch, and ReferenceVRNN.

Every function works in any floating dtype (float64 included) over arbitrary leading batch dims
and is the oracle the Triton kernels are tested against (``vrnn_fast.triton_ops`` has the same
functions). Standard deviations are always passed as raw pre-activations ``a`` and mapped by the
official rule ``sigma = softplus(a) + floor``. Losses take an optional boolean ``mask`` over the
leading dims and are exactly 0 where it is False.

Gate order of the LSTM pre-activations (last dim 4H) is ``[i, f, g, o]``, as in ``torch.nn.LSTM``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VRNNConfig
from .op_checks import checked, require, require_unit_interval

LOG_2PI = math.log(2.0 * math.pi)
# Frames (tiled rows x T) per chunk of the importance-sampled log-likelihood, per device type.
LL_CHUNK_FRAMES = {"cpu": 1024, "cuda": 65536}
RHO_GAP = 1e-6  # |rho| = RHO_MAX * |tanh(.)| with RHO_MAX = 1 - RHO_GAP keeps 1 - rho^2 >= 2e-6 (no inf at saturation)
RHO_MAX = 1.0 - RHO_GAP


def sigma_from(a: Tensor, floor: float) -> Tensor:
    """sigma = softplus(a) + floor (the official parameterisation of every standard deviation)."""
    return F.softplus(a) + floor


def to_loss_dtype(t: Tensor | None) -> Tensor | None:
    """Half-precision activations (bf16/fp16 autocast) are upcast to float32 before any loss math."""
    return t.float() if t is not None and t.dtype in (torch.bfloat16, torch.float16) else t


def _masked(value: Tensor, mask: Tensor | None) -> Tensor:
    return value if mask is None else torch.where(mask, value, torch.zeros_like(value))


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM update from full pre-activations. gates (..., 4H) in order [i, f, g, o], c_prev (..., H).

    c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c).  Returns (h, c).
    """
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def reparameterize(mu: Tensor, a: Tensor, eps: Tensor, floor: float) -> Tensor:
    """z = mu + sigma * eps with sigma = softplus(a) + floor. All (..., Z)."""
    return mu + sigma_from(a, floor) * eps


def gaussian_kl(mu_q: Tensor, a_q: Tensor, mu_p: Tensor | None, a_p: Tensor | None, floor: float,
                mask: Tensor | None = None) -> Tensor:
    """KL(N(mu_q, s_q^2) || N(mu_p, s_p^2)) summed over the last dim: (..., Z) -> (...).

    0.5 * sum_j [2 log s_p - 2 log s_q + (s_q^2 + (mu_q - mu_p)^2) / s_p^2 - 1];
    ``mu_p = a_p = None`` means the standard normal prior (VRNN-I).
    """
    s_q = sigma_from(a_q, floor)
    if mu_p is None:
        kl = 0.5 * (-2.0 * torch.log(s_q) + s_q**2 + mu_q**2 - 1.0)
    else:
        s_p = sigma_from(a_p, floor)
        kl = 0.5 * (2.0 * torch.log(s_p) - 2.0 * torch.log(s_q) + (s_q**2 + (mu_q - mu_p) ** 2) / s_p**2 - 1.0)
    return _masked(kl.sum(-1), mask)


def gaussian_nll(x: Tensor, mu: Tensor, a: Tensor, floor: float, mask: Tensor | None = None) -> Tensor:
    """-log N(x; mu, diag(s^2)) summed over the last dim: (..., D) -> (...).

    0.5 * sum_d [(x - mu)^2 / s^2 + 2 log s + log 2pi].
    """
    s = sigma_from(a, floor)
    nll = 0.5 * (((x - mu) / s) ** 2 + 2.0 * torch.log(s) + LOG_2PI)
    return _masked(nll.sum(-1), mask)


def gmm_nll(x: Tensor, mu: Tensor, a: Tensor, logits: Tensor, floor: float, mask: Tensor | None = None) -> Tensor:
    """-log sum_k pi_k N(x; mu_k, diag(s_k^2)) for a K-component diagonal GMM over the whole frame.

    x (..., D); mu, a (..., D, K); logits (..., K) with pi = softmax(logits). Returns (...).
    """
    s = sigma_from(a, floor)
    log_comp = -0.5 * (((x.unsqueeze(-1) - mu) / s) ** 2 + 2.0 * torch.log(s) + LOG_2PI).sum(-2)  # (..., K)
    nll = -torch.logsumexp(torch.log_softmax(logits, dim=-1) + log_comp, dim=-1)
    return _masked(nll, mask)


def correlation_gap(rho_raw: Tensor) -> tuple[Tensor, Tensor]:
    """rho = RHO_MAX tanh(rho_raw) as (sign, gap), rho = sign (1 - gap), with the gap 1 - |rho| free of cancellation:
    1 - |rho| = RHO_GAP + RHO_MAX (1 - tanh|rho_raw|) and 1 - tanh|y| = 2e / (1 + e), e = exp(-2|y|).
    (Rounding rho itself to float32, spacing 6e-8 near 1, would leave a gap of 1e-6 with up to 3% error.)"""
    sign = torch.where(rho_raw >= 0, 1.0, -1.0).to(rho_raw.dtype)  # a constant for autograd: d|y|/dy = sign, also at 0
    e = torch.exp(-2.0 * sign * rho_raw)
    return sign, RHO_GAP + RHO_MAX * (2.0 * e / (1.0 + e))


def bigmm_nll(x: Tensor, mu: Tensor, a: Tensor, rho_raw: Tensor, logits: Tensor, pen_logit: Tensor,
              floor: float, mask: Tensor | None = None) -> Tensor:
    """Handwriting NLL: bivariate GMM with correlation on (dx, dy) plus a Bernoulli pen bit.

    x (..., 3) = [pen, dx, dy]; mu, a (..., 2, K); rho_raw, logits (..., K); pen_logit (...).
    rho = RHO_MAX tanh(rho_raw); log N2 = -log 2pi - log s1 - log s2 - 0.5 log w - q / (2w) with z = (x - mu) / s,
    w = 1 - rho^2, q = z1^2 + z2^2 - 2 rho z1 z2; nll = -logsumexp_k [log pi_k + log N2_k] + BCE(pen_logit, pen).
    Returns (...).

    Evaluated without cancellation at |rho| -> 1 (float32 keeps its accuracy): with (sign, m = 1 - |rho|) from
    ``correlation_gap``, w = m (2 - m) and q / w = z1^2 + v^2 / w, where v = z2 - rho z1 = sign (m z1 - (z1 - sign z2))
    (z1 - sign z2 is exact where z2 ~ sign z1). Autograd through this form is stable too: it gives
    d log N2 / d z2 = -v / w and d log N2 / d z1 = -(z1 - rho v / w), as ``kernels/densities.py`` writes them.
    """
    s = sigma_from(a, floor)
    z = (x[..., 1:].unsqueeze(-1) - mu) / s  # (..., 2, K)
    z1, z2 = z[..., 0, :], z[..., 1, :]
    sign, m = correlation_gap(rho_raw)
    w = m * (2.0 - m)
    v = sign * (m * z1 - (z1 - sign * z2))
    log_n2 = -LOG_2PI - torch.log(s).sum(-2) - 0.5 * torch.log(w) - 0.5 * (z1**2 + v**2 / w)
    offsets_nll = -torch.logsumexp(torch.log_softmax(logits, dim=-1) + log_n2, dim=-1)
    pen_nll = F.binary_cross_entropy_with_logits(pen_logit, x[..., 0], reduction="none")
    return _masked(offsets_nll + pen_nll, mask)


def bernoulli_nll(x: Tensor, logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """-log prod_d Bernoulli(x_d; sigmoid(l_d)) for x in [0, 1] (exact for binary x): (..., D) -> (...).

    sum_d BCE-with-logits(l_d, x_d) = sum_d [(1 - x_d) softplus(l_d) + x_d softplus(-l_d)]: two non-negative
    terms, so no cancellation and no overflow at any logit (|l| = 1e4 included); the gradient in l is
    sigmoid(l) - x. There is no sigma, hence no floor argument.
    """
    nll = (1.0 - x) * F.softplus(logits) + x * F.softplus(-logits)
    return _masked(nll.sum(-1), mask)


PLAIN_OPS = SimpleNamespace(
    lstm_cell=lstm_cell, reparameterize=reparameterize, gaussian_kl=gaussian_kl, gaussian_nll=gaussian_nll,
    gmm_nll=gmm_nll, bigmm_nll=bigmm_nll, bernoulli_nll=bernoulli_nll)
"""The functions above, unchecked: what ReferenceVRNN's per-step loop calls (its forward checks its inputs once)."""

TORCH_OPS = SimpleNamespace(**{name: checked(name, fn) for name, fn in vars(PLAIN_OPS).items()})
"""The op set the models dispatch through, each op with the input checks of ``vrnn_fast.op_checks`` in front;
``vrnn_fast.triton_ops.TRITON_OPS`` has the same members."""


# ----------------------------------------------------------------------------------------------
# Parameter blocks shared by ReferenceVRNN and FastVRNN (identical state_dict keys).
# ----------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """``depth`` ReLU layers: (..., in_dim) -> (..., width). ``start`` skips the first layers."""

    def __init__(self, in_dim: int, width: int, depth: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(in_dim if i == 0 else width, width) for i in range(depth))

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        for layer in self.layers[start:]:
            x = F.relu(layer(x))
        return x


class GaussianBlock(nn.Module):
    """MLP then a diagonal-Gaussian head: (..., in_dim) -> (mu, a), each (..., Z); sigma = softplus(a) + floor."""

    def __init__(self, in_dim: int, width: int, depth: int, z_dim: int):
        super().__init__()
        self.net = MLP(in_dim, width, depth)
        self.mu = nn.Linear(width, z_dim)
        self.sigma = nn.Linear(width, z_dim)

    def forward(self, inp: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.net(inp))

    def heads(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(hidden), self.sigma(hidden)


class Decoder(nn.Module):
    """MLP then the output distribution's heads (official layouts: flat index d*K + k).

    gauss: mu, sigma (D); gmm: mu, sigma (D*K), coeff (K); bigmm: mu, sigma (2K), corr (K), coeff (K), pen (1);
    bernoulli: logits (D).
    """

    def __init__(self, config: VRNNConfig, in_dim: int):
        super().__init__()
        width, d, k = config.dec_dim, config.x_dim, config.n_mix
        self.kind = config.output
        self.net = MLP(in_dim, width, config.dec_layers)
        if self.kind == "gauss":
            self.mu, self.sigma = nn.Linear(width, d), nn.Linear(width, d)
        elif self.kind == "bernoulli":
            self.logits = nn.Linear(width, d)
        elif self.kind == "gmm":
            self.mu, self.sigma, self.coeff = nn.Linear(width, d * k), nn.Linear(width, d * k), nn.Linear(width, k)
        else:
            self.mu, self.sigma = nn.Linear(width, 2 * k), nn.Linear(width, 2 * k)
            self.corr, self.coeff, self.pen = nn.Linear(width, k), nn.Linear(width, k), nn.Linear(width, 1)
        self.n_mix = k

    def params(self, inp: Tensor, start: int = 0) -> tuple[Tensor, ...]:
        """Raw distribution parameters, shaped for the ops: gauss (mu, a); gmm (mu, a, logits) with
        mu, a (..., D, K); bigmm (mu, a, rho_raw, logits, pen_logit) with mu, a (..., 2, K); bernoulli (logits,)
        with logits (..., D). ``start``: ``inp`` is already the output of the MLP's first ``start`` layers."""
        hidden = self.net(inp, start=start)
        if self.kind == "bernoulli":
            return (self.logits(hidden),)
        mu, a = self.mu(hidden), self.sigma(hidden)
        if self.kind == "gauss":
            return mu, a
        mu, a = mu.unflatten(-1, (-1, self.n_mix)), a.unflatten(-1, (-1, self.n_mix))
        if self.kind == "gmm":
            return mu, a, self.coeff(hidden)
        return mu, a, self.corr(hidden), self.coeff(hidden), self.pen(hidden).squeeze(-1)

    def nll(self, x: Tensor, inp: Tensor, floor: float, mask: Tensor | None = None, ops=PLAIN_OPS,
            start: int = 0) -> Tensor:
        """-log p(x | inp): x (..., D), inp (..., in_dim) (or the output of layer ``start`` of the MLP) -> (...)."""
        params = [to_loss_dtype(p) for p in self.params(inp, start)]
        if self.kind == "bernoulli":  # no sigma, no floor
            return ops.bernoulli_nll(to_loss_dtype(x), *params, mask)
        fn = {"gauss": ops.gaussian_nll, "gmm": ops.gmm_nll, "bigmm": ops.bigmm_nll}[self.kind]
        return fn(to_loss_dtype(x), *params, floor, mask)

    def sample(self, inp: Tensor, floor: float, mean: bool, generator: torch.Generator | None) -> Tensor:
        """One x per row, (N, in_dim) -> (N, D): a draw, or the distribution's mean when ``mean``
        (bigmm: mean offsets, pen = 1 where its probability exceeds 0.5; bernoulli: the probabilities)."""
        params = self.params(inp)
        if self.kind == "bernoulli":
            p = torch.sigmoid(params[0])
            return p if mean else torch.bernoulli(p, generator=generator)
        if self.kind == "gauss":
            mu, a = params
            return mu if mean else mu + sigma_from(a, floor) * _randn(mu, generator)
        mu, a, *rest = params
        sigma = sigma_from(a, floor)
        weights = torch.softmax(rest[-1] if self.kind == "gmm" else rest[1], dim=-1)  # (N, K)
        if mean:
            offsets = (weights.unsqueeze(-2) * mu).sum(-1)
        else:
            comp = torch.multinomial(weights, 1, generator=generator)  # (N, 1)
            pick = comp.unsqueeze(-2).expand(*mu.shape[:-1], 1)
            mu_k, s_k = mu.gather(-1, pick).squeeze(-1), sigma.gather(-1, pick).squeeze(-1)  # (N, D or 2)
            eps = _randn(mu_k, generator)
            if self.kind == "bigmm":  # correlate the second coordinate
                sign, gap = (t.gather(-1, comp)[:, 0] for t in correlation_gap(rest[0]))  # (N,)
                eps = torch.stack([eps[:, 0], sign * (1 - gap) * eps[:, 0] + (gap * (2 - gap)).sqrt() * eps[:, 1]], -1)
            offsets = mu_k + s_k * eps
        if self.kind == "gmm":
            return offsets
        p_pen = torch.sigmoid(rest[2]).unsqueeze(-1)
        pen = (p_pen > 0.5).to(p_pen.dtype) if mean else torch.bernoulli(p_pen, generator=generator)
        return torch.cat([pen, offsets], dim=-1)


class LSTMWeights(nn.Module):
    """LSTM parameters: weight_ih (4H, in), weight_hh (4H, H), one bias (4H); gate order [i, f, g, o]."""

    def __init__(self, in_dim: int, h_dim: int):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(4 * h_dim, in_dim))
        self.weight_hh = nn.Parameter(torch.empty(4 * h_dim, h_dim))
        self.bias = nn.Parameter(torch.empty(4 * h_dim))

    def gates(self, inp: Tensor, h: Tensor) -> Tensor:
        """Gate pre-activations W_ih inp + W_hh h + b: (B, 4H)."""
        return F.linear(inp, self.weight_ih) + F.linear(h, self.weight_hh) + self.bias


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)


@dataclass
class StepResults:
    """What a model's recurrence produces; masked steps are 0 in kl, nll and log_pz_qz."""

    kl: Tensor  # (B, T) KL(q || p) per step (0 for the RNN baselines)
    nll: Tensor  # (B, T) -log p(x_t | z_t, h_{t-1})
    log_pz_qz: Tensor | None  # (B, T) log p(z_t | h_{t-1}) - log q(z_t | x_t, h_{t-1}) at the sample
    z_mean: Tensor | None  # (B, T, Z) posterior means
    z_std: Tensor | None  # (B, T, Z) posterior standard deviations
    state: tuple[Tensor, Tensor]  # final (h, c), each (B, H)


class OnlineStep(NamedTuple):
    """One frame of :meth:`VRNNBase.step`: kl, nll (B,) (0 where the frame is masked) and the next (h, c)."""

    kl: Tensor
    nll: Tensor
    state: tuple[Tensor, Tensor]


@dataclass
class VRNNOutput:
    """Result of a forward pass.

    ``loss`` = mean over the B sequences of sum_t [kl + nll] over unmasked steps (-ELBO per sequence);
    ``elbo`` (B,) = -sum_t [kl + nll]; ``log_weight`` (B,) = sum_t [log p(x_t|.) + log p(z_t|.) - log q(z_t|.)],
    the single-sample importance weight (only when asked for). ``state`` is the final (h, c) for
    truncated BPTT; padded steps leave it unchanged.
    """

    loss: Tensor
    kl: Tensor
    nll: Tensor
    elbo: Tensor
    state: tuple[Tensor, Tensor]
    z_mean: Tensor | None
    z_std: Tensor | None
    log_weight: Tensor | None = None


class VRNNBase(nn.Module):
    """Parameters, official initialisation, input checks and the shared API of both implementations.

    Subclasses implement ``_steps`` (the recurrence); everything else is common.
    Blocks: phi_x (D -> Fx); phi_z (Z -> Fz); encoder ([Fx, H] -> Z); prior (H -> Z);
    decoder ([Fz, H] -> x's distribution, or H for the RNN baselines); rnn ([Fx, Fz] -> 4H).
    """

    def __init__(self, config: VRNNConfig):
        super().__init__()
        if not isinstance(config, VRNNConfig):
            raise ValueError(f"config must be a VRNNConfig, got {type(config).__name__}")
        self.config = c = config
        self.phi_x = MLP(c.x_dim, c.phi_x_dim, c.phi_x_layers)
        if c.has_latent:
            self.phi_z = MLP(c.z_dim, c.phi_z_dim, c.phi_z_layers)
            self.encoder = GaussianBlock(c.phi_x_dim + c.h_dim, c.enc_dim, c.enc_layers, c.z_dim)
            if c.model == "vrnn":
                self.prior = GaussianBlock(c.h_dim, c.prior_dim, c.prior_layers, c.z_dim)
            self.decoder = Decoder(c, c.phi_z_dim + c.h_dim)
            self.rnn = LSTMWeights(c.phi_x_dim + c.phi_z_dim, c.h_dim)
        else:
            self.decoder = Decoder(c, c.h_dim)
            self.rnn = LSTMWeights(c.phi_x_dim, c.h_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official init: weights U(-s, s), recurrent blocks orthogonal per gate, biases 0, sigma biases 0.6."""
        c = self.config
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.uniform_(-c.init_scale, c.init_scale)
                module.bias.zero_()
        for name, module in self.named_modules():
            if name.endswith("sigma") and isinstance(module, nn.Linear):
                module.bias.fill_(c.sigma_bias_init)
        self.rnn.weight_ih.uniform_(-c.init_scale, c.init_scale)
        for block in self.rnn.weight_hh.chunk(4, dim=0):
            nn.init.orthogonal_(block)
        self.rnn.bias.zero_()

    # -- input checks ------------------------------------------------------------------------
    def _check(self, x: Tensor, mask: Tensor | None, state) -> None:
        c = self.config
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"x must be a (B, T, D) tensor, got {_describe(x)}")
        if x.shape[-1] != c.x_dim:
            raise ValueError(f"x has feature size {x.shape[-1]}, the model expects x_dim={c.x_dim}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"x must have at least one sequence and one step, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dtype != self.rnn.weight_hh.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"x has dtype {x.dtype} but the model's parameters are {self.rnn.weight_hh.dtype}")
        require_finite(x, "x contains NaN or inf")
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a torch.bool tensor, got {_describe(mask)}")
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask must have shape (B, T) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
            if mask.device != x.device:
                raise ValueError(f"mask is on {mask.device} but x is on {x.device}")
        if c.output == "bernoulli":
            require_unit_interval("x (output='bernoulli')", x, mask)
        if state is not None:
            self._check_state(state, x.shape[0], x.device)

    def _check_state(self, state, batch: int, device: torch.device) -> None:
        """state: a pair (h, c) of finite (batch, H) tensors in the parameters' dtype, on ``device``."""
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise ValueError("state must be a pair (h, c)")
        dtype = self.rnn.weight_hh.dtype
        for name, s in zip("hc", state, strict=True):
            if not isinstance(s, Tensor) or s.shape != (batch, self.config.h_dim):
                raise ValueError(f"state {name} must have shape (B, H) = {(batch, self.config.h_dim)}, "
                                 f"got {_describe(s)}")
            if s.dtype != dtype:
                raise ValueError(f"state {name} has dtype {s.dtype} but the model's parameters are {dtype}")
            if s.device != device:
                raise ValueError(f"state {name} is on {s.device} but the input is on {device}")
            require_finite(s, f"state {name} contains NaN or inf")

    def _check_noise(self, noise: Tensor | None, leading: tuple[int, ...], values: bool = True) -> None:
        """ValueError unless noise is None or (*leading, Z) (and, with ``values``, finite)."""
        if noise is None:
            return
        if not self.config.has_latent:
            raise ValueError(f"model {self.config.model!r} has no latent variable: noise must be None")
        expected = (*leading, self.config.z_dim)
        if not isinstance(noise, Tensor) or tuple(noise.shape) != expected:
            raise ValueError(f"noise must have shape {expected}, got {_describe(noise)}")
        if values:
            require_finite(noise, "noise contains NaN or inf")

    def _noise(self, x: Tensor, noise: Tensor | None) -> Tensor | None:
        if not self.config.has_latent:
            return None
        if noise is None:
            return torch.randn(*x.shape[:2], self.config.z_dim, dtype=x.dtype, device=x.device)
        return noise.to(device=x.device, dtype=x.dtype)

    # -- the API -------------------------------------------------------------------------------
    def forward(self, x: Tensor, mask: Tensor | None = None, noise: Tensor | None = None,
                state: tuple[Tensor, Tensor] | None = None, return_log_weight: bool = False) -> VRNNOutput:
        """Negative ELBO of a batch.

        x (B, T, D); mask (B, T) bool, False on padded steps; noise (B, T, Z) fixes the
        reparameterisation noise (drawn from N(0, I) when None); state: initial (h, c), each (B, H),
        zeros when None. Returns a :class:`VRNNOutput`.
        """
        self._check(x, mask, state)
        self._check_noise(noise, tuple(x.shape[:2]))
        state = state if state is not None else self.initial_state(x.shape[0])
        steps = self._steps(x, mask, self._noise(x, noise), state, return_log_weight)
        neg_elbo = (steps.kl + steps.nll).sum(1)  # (B,)
        log_weight = None
        if return_log_weight:
            log_weight = (steps.log_pz_qz - steps.nll).sum(1)
        return VRNNOutput(loss=neg_elbo.mean(), kl=steps.kl, nll=steps.nll, elbo=-neg_elbo, state=steps.state,
                          z_mean=steps.z_mean, z_std=steps.z_std, log_weight=log_weight)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, mask: Tensor | None = None, n_samples: int = 40,
                       noise: Tensor | None = None, max_frames: int | None = None) -> Tensor:
        """Importance-sampled log p(x) per sequence, (B,), with ``n_samples`` draws from q:

        log (1/S) sum_s exp(log_weight_s). The batch is tiled (S*B rows) in chunks of at most ``max_frames``
        rows x T frames (but at least one sample of the batch) so memory stays bounded; the default,
        ``LL_CHUNK_FRAMES`` for the device, keeps a chunk cache-sized on CPU (larger chunks measured up to 2.5x
        slower for the GMM output) and large on GPUs. noise (S, B, T, Z) fixes the draws. Runs without
        autograd. For the RNN baselines this is the exact log-likelihood.
        """
        self._check(x, mask, None)
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        B, T = x.shape[:2]
        if not self.config.has_latent:
            self._check_noise(noise, (n_samples, B, T))
            return self.forward(x, mask).elbo
        self._check_noise(noise, (n_samples, B, T))
        if max_frames is None:
            max_frames = LL_CHUNK_FRAMES["cuda" if x.is_cuda else "cpu"]
        per_chunk = max(1, max_frames // (B * T))
        log_w = []
        for s0 in range(0, n_samples, per_chunk):
            k = min(per_chunk, n_samples - s0)
            eps = None if noise is None else noise[s0:s0 + k].reshape(k * B, T, -1)
            out = self.forward(x.repeat(k, 1, 1), None if mask is None else mask.repeat(k, 1), eps,
                               return_log_weight=True)
            log_w.append(out.log_weight.view(k, B))
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(n_samples)

    def sample(self, n: int, steps: int, mean_output: bool = False, state: tuple[Tensor, Tensor] | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Generate ``n`` sequences of ``steps`` frames from the model, batched: (n, steps, D).

        From a zero state (or ``state``): z_t from the prior, x_t from the decoder, fed back through
        phi_x. ``mean_output`` writes the decoder's mean instead of a draw (the official script's
        output; Bernoulli: the probabilities); z is drawn either way. ``generator`` makes it reproducible.
        The frames of :meth:`generate` with the same arguments, stacked.
        """
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"n and steps must be positive integers, got n={n!r}, steps={steps!r}")
        return torch.stack(list(self.generate(n, state, steps, mean_output, generator)), 1)

    # -- online use: one frame at a time --------------------------------------------------------------
    def initial_state(self, batch: int) -> tuple[Tensor, Tensor]:
        """The zero state (h, c), each (batch, H), in the parameters' dtype and on their device."""
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        zeros = self.rnn.weight_hh.new_zeros(batch, self.config.h_dim)
        return zeros, zeros.clone()

    @torch.no_grad()
    def step(self, x_t: Tensor, state: tuple[Tensor, Tensor] | None, mask_t: Tensor | None = None,
             noise: Tensor | None = None) -> OnlineStep:
        """Score one frame as it arrives: x_t (B, D), state (h, c) each (B, H) (None: :meth:`initial_state`),
        mask_t (B,) bool (False: the sequence has no frame now), noise (B, Z) (drawn when None).

        Returns an :class:`OnlineStep`: that frame's kl and nll, each (B,) (kl + nll is the frame's -ELBO term,
        an online anomaly score), and the next state. A loop over t gives frame t of ``forward(x, mask, noise)``
        (masked frames: kl = nll = 0 and the state carried unchanged). Runs without autograd: for training use
        ``forward`` (and its ``state`` for truncated BPTT).
        """
        if not isinstance(x_t, Tensor) or x_t.dim() != 2:
            raise ValueError(f"x_t must be a (B, D) tensor, got {_describe(x_t)}")
        batch = x_t.shape[0]
        if mask_t is not None and (not isinstance(mask_t, Tensor) or tuple(mask_t.shape) != (batch,)):
            raise ValueError(f"mask_t must be a (B,) = ({batch},) bool tensor, got {_describe(mask_t)}")
        if noise is not None:  # its shape here, as (B, Z); forward checks its values
            self._check_noise(noise, (batch,), values=False)
        out = self.forward(x_t[:, None], None if mask_t is None else mask_t[:, None],
                           None if noise is None else noise[:, None], state)
        return OnlineStep(kl=out.kl[:, 0], nll=out.nll[:, 0], state=out.state)

    def generate(self, n: int, state: tuple[Tensor, Tensor] | None = None, steps: int | None = None,
                 mean_output: bool = False, generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """Streaming generation: an iterator of frames, each (n, D), endless (or ``steps`` of them).

        The same draws in the same order as :meth:`sample` (which stacks these frames): for one ``generator``
        state, the first T frames are ``sample(n, T, mean_output, state, generator)``. Arguments are checked
        here, not at the first frame; runs without autograd.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"steps must be a positive integer or None (endless), got {steps!r}")
        if state is not None:
            self._check_state(state, n, self.rnn.weight_hh.device)
        return self._frames(n, state if state is not None else self.initial_state(n), steps, mean_output, generator)

    @torch.no_grad()
    def _frames(self, n, state, steps, mean_output, generator) -> Iterator[Tensor]:
        c, floor, ref = self.config, self.config.sigma_floor, self.rnn.weight_hh
        h, c_state = state
        for _ in itertools.count() if steps is None else range(steps):
            if c.has_latent:
                eps = torch.randn(n, c.z_dim, dtype=ref.dtype, device=ref.device, generator=generator)
                if c.model == "vrnn":
                    mu_p, a_p = self.prior(h)
                    z = reparameterize(mu_p, a_p, eps, floor)
                else:
                    z = eps
                z_t = self.phi_z(z)
                x = self.decoder.sample(torch.cat([z_t, h], -1), floor, mean_output, generator)
                rnn_in = torch.cat([self.phi_x(x), z_t], -1)
            else:
                x = self.decoder.sample(h, floor, mean_output, generator)
                rnn_in = self.phi_x(x)
            h, c_state = lstm_cell(self.rnn.gates(rnn_in, h), c_state)
            yield x

    def _steps(self, x: Tensor, mask: Tensor | None, eps: Tensor | None, state: tuple[Tensor, Tensor],
               want_log_weight: bool) -> StepResults:
        raise NotImplementedError


def require_finite(t: Tensor, message: str) -> None:
    """ValueError(message) if ``t`` holds NaN or inf (inside ``torch.compile`` or a CUDA graph capture too, without a
    graph break: ``op_checks.require``). Its min and max are finite exactly then (NaN propagates into both): one
    reduction pass, 17x faster on a CPU than ``isfinite(t).all()``, which writes a bool per element."""
    if t.numel():
        low, high = torch.aminmax(t)
        require(torch.isfinite(low) & torch.isfinite(high), message)


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dim: (..., Z) -> (...)."""
    return -0.5 * (z**2 + LOG_2PI).sum(-1)


class ReferenceVRNN(VRNNBase):
    """The VRNN written step by step as in the paper's equations 5-11: the oracle, clarity over speed.

    Same parameters, ``state_dict`` keys and API as :class:`vrnn_fast.FastVRNN`.
    """

    def _steps(self, x, mask, eps, state, want_log_weight):
        cfg, floor = self.config, self.config.sigma_floor
        h, c = state
        kl, nll, log_pz_qz, z_means, a_qs = [], [], [], [], []
        for t in range(x.shape[1]):
            m_t = None if mask is None else mask[:, t]
            x_t = self.phi_x(x[:, t])                                        # (B, Fx)
            if cfg.has_latent:
                mu_p, a_p = self.prior(h) if cfg.model == "vrnn" else (None, None)  # eq. 5 (VRNN-I: N(0, I))
                mu_q, a_q = self.encoder(torch.cat([x_t, h], -1))           # eq. 9
                z = reparameterize(mu_q, a_q, eps[:, t], floor)
                z_t = self.phi_z(z)                                          # (B, Fz)
                dec_in = torch.cat([z_t, h], -1)                             # eq. 6
                rnn_in = torch.cat([x_t, z_t], -1)
                kl.append(gaussian_kl(*map(to_loss_dtype, (mu_q, a_q, mu_p, a_p)), floor, m_t))
                if want_log_weight:
                    log_pz = standard_normal_log_prob(z) if mu_p is None else -gaussian_nll(z, mu_p, a_p, floor)
                    log_pz_qz.append(_masked(log_pz + gaussian_nll(z, mu_q, a_q, floor), m_t))
                z_means.append(mu_q)
                a_qs.append(a_q)
            else:
                dec_in, rnn_in = h, x_t
            nll.append(self.decoder.nll(x[:, t], dec_in, floor, m_t))
            h_new, c_new = lstm_cell(self.rnn.gates(rnn_in, h), c)          # eq. 7
            if m_t is not None:                                              # padded steps keep the state
                h_new = torch.where(m_t[:, None], h_new, h)
                c_new = torch.where(m_t[:, None], c_new, c)
            h, c = h_new, c_new
        nll = torch.stack(nll, 1)
        zeros = torch.zeros_like(nll)
        return StepResults(
            kl=torch.stack(kl, 1) if kl else zeros,
            nll=nll,
            log_pz_qz=(torch.stack(log_pz_qz, 1) if log_pz_qz else zeros) if want_log_weight else None,
            z_mean=torch.stack(z_means, 1) if z_means else None,
            z_std=sigma_from(torch.stack(a_qs, 1), floor) if a_qs else None,
            state=(h, c),
        )
