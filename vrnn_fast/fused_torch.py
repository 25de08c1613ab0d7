"""PyTorch ops with hand-written backwards, for FastVRNN's torch backend: the same functions as
``vrnn_fast.reference`` (the spec they are tested against), fewer passes over memory.

``gmm_nll``: autograd through the reference's GMM density makes some 35 passes over the (..., D, K) tensors
(forward and backward); this one makes about 16 and keeps only z and 1/s for the backward. With r the
responsibilities, g the incoming gradient, s = softplus(a) + floor and z = (x - mu) / s:
    d mu = -g r z / s,   d a = -g r (z^2 - 1) / s * sigmoid(a),   d logits = g (softmax(logits) - r),
    d x = -sum_k d mu.
``FUSED_TORCH_OPS`` is ``reference.TORCH_OPS`` with these members replaced.

``linear_gmm_nll``: the GMM decoder's three heads and its density as one Function (FastVRNN's GMM output on the torch
backend). It works feature-major, every tensor (features, N rows): the heads' product W hidden^T ran 20% faster on
MKL than hidden W^T at the cpu-speech shapes. And it works in chunks of d: each chunk's head products, elementwise
work and (in the backward) weight-gradient products run while the chunk is in cache, and the forward saves the two
factors of the gradients above, z / s and (z^2 - 1) sigmoid(a) / s, a chunk at a time: the backward makes two
passes over the (D, K, N) values (d mu and d a, times -g r), and no (N, D, K) tensor is ever allocated whole (on the
CPU each such 20 MB allocation page-faulted through all its pages at every call: 35-45 thousand faults, 70-110 ms
of system time in a training iteration at cpu-speech-vrnn-gmm; none now). Per chunk, d W = d[mu | a]^T hidden and
d b = its sum over rows; d hidden = the sum over chunks and heads of d[mu | a | logits] W. On a CPU (outside
torch.compile) the rows the mask leaves out are not computed at all: a fifth of the rows at the benchmarks' ragged
mask.

``linear_gaussian_nll``: the same for the diagonal Gaussian decoder (FastVRNN's gauss output): the heads
mu = hidden W_mu^T + b_mu and a = hidden W_sigma^T + b_sigma and the density, saving z / s and
(z^2 - 1) sigmoid(a) / s; the backward is two products with d[mu | a] = -g [z / s | (z^2 - 1) sigmoid(a) / s].
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .op_checks import checked
from .reference import LOG_2PI, TORCH_OPS, _masked

# Elements of one (d's, K, N) chunk of linear_gmm_nll, per device type. CPU: 2 MB of float32; of 2^17..2^22, 2^19
# and 2^20 were fastest at cpu-speech-vrnn-gmm on 1 and 2 threads (larger chunks fall out of cache, smaller ones
# make less efficient products and more parallel regions). Other devices: one chunk (each op is a kernel launch).
GMM_CHUNK_ELEMENTS = {"cpu": 1 << 19}


class _GmmNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mu, a, logits, floor, mask):
        s = torch.nn.functional.softplus(a).add_(floor)  # (..., D, K)
        inv = s.reciprocal()
        z = (x.unsqueeze(-1) - mu).mul_(inv)
        log_comp = z.square().sum(-2).mul_(-0.5).sub_(s.log_().sum(-2)).sub_(0.5 * LOG_2PI * x.shape[-1])  # (..., K)
        log_joint = torch.log_softmax(logits, dim=-1).add_(log_comp)
        lse = torch.logsumexp(log_joint, dim=-1)  # (...)
        resp = log_joint.sub_(lse.unsqueeze(-1)).exp_()
        ctx.save_for_backward(z, inv, a, logits, resp, mask)
        return _masked(-lse, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        z, inv, a, logits, resp, mask = ctx.saved_tensors
        g = _masked(grad, mask).unsqueeze(-1)  # (..., 1)
        gr = resp * g  # (..., K)
        w = inv * gr.unsqueeze(-2).neg()  # -g r / s, (..., D, K)
        d_mu = w * z
        d_a = d_mu.mul(z).sub_(w).mul_(torch.sigmoid(a)) if ctx.needs_input_grad[2] else None
        d_x = -d_mu.sum(-1) if ctx.needs_input_grad[0] else None
        d_logits = torch.softmax(logits, dim=-1).mul_(g).sub_(gr) if ctx.needs_input_grad[3] else None
        return d_x, d_mu, d_a, d_logits, None, None


def gmm_nll(x: Tensor, mu: Tensor, a: Tensor, logits: Tensor, floor: float, mask: Tensor | None = None) -> Tensor:
    """Same as ``reference.gmm_nll`` (x (..., D); mu, a (..., D, K); logits (..., K) -> (...)), with a
    hand-written backward. Leading dims broadcast as in the reference."""
    lead = torch.broadcast_shapes(x.shape[:-1], mu.shape[:-2], a.shape[:-2], logits.shape[:-1],
                                  *(() if mask is None else (mask.shape,)))
    D, K = mu.shape[-2:]
    x, mu, a, logits = (t.expand(*lead, *t.shape[t.dim() - n:]) for t, n in ((x, 1), (mu, 2), (a, 2), (logits, 1)))
    mask = None if mask is None else mask.expand(lead)
    return _GmmNLL.apply(x, mu, a, logits, float(floor), mask)


def _chunks(n: int, elements_each: int, device: torch.device) -> list[slice]:
    """Slices of range(n) of about GMM_CHUNK_ELEMENTS[device type] elements each (one slice where no entry)."""
    limit = GMM_CHUNK_ELEMENTS.get(device.type)
    step = n if limit is None else max(1, limit // max(1, elements_each))
    return [slice(i, i + step) for i in range(0, n, step)]


class _LinearGmmNLL(torch.autograd.Function):
    """Feature-major, in chunks of d (rows = the chunk's d * K + k): mu^T = W_mu[rows] hidden^T + b_mu[rows] and a^T
    likewise, each (d's, K, N). When ``saves`` (a backward will follow), each chunk's factors of the backward,
    z / s and (z^2 - 1) sigmoid(a) / s, and logits^T, resp^T (K, N) of all rows are saved."""

    @staticmethod
    def forward(ctx, hidden, xT, w_mu, b_mu, w_sigma, b_sigma, w_coeff, b_coeff, floor, mask, saves):
        (D, N), K = xT.shape, w_coeff.shape[0]
        hT, b_mu, b_sigma = hidden.t(), b_mu.unsqueeze(1), b_sigma.unsqueeze(1)
        factors = []
        neg_log_comp = hidden.new_zeros(K, N)  # sum_d [z^2 / 2 + log s]
        for ds in _chunks(D, K * N, hidden.device):
            rows = slice(ds.start * K, ds.stop * K)
            mu = torch.addmm(b_mu[rows], w_mu[rows], hT).unflatten(0, (-1, K))
            a = torch.addmm(b_sigma[rows], w_sigma[rows], hT).unflatten(0, (-1, K))
            s = F.softplus(a).add_(floor)
            z = mu.neg_().add_(xT[ds].unsqueeze(1)).div_(s)
            neg_log_comp.add_(torch.addcmul(torch.log(s), z, z, value=0.5).sum(0))
            if saves:
                factors.append(z / s)
                factors.append(z.square_().sub_(1.0).mul_(torch.sigmoid(a)).div_(s))
        logits = torch.addmm(b_coeff.unsqueeze(1), w_coeff, hT)  # (K, N)
        log_joint = torch.log_softmax(logits, dim=0).sub_(neg_log_comp)
        lse = torch.logsumexp(log_joint, dim=0)  # (N,)
        if saves:
            resp = log_joint.sub_(lse).exp_()  # responsibilities r (K, N)
            ctx.save_for_backward(hidden, w_mu, w_sigma, w_coeff, logits, resp, mask, *factors)
        return _masked(lse.neg_().add_(0.5 * LOG_2PI * D), mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        hidden, w_mu, w_sigma, w_coeff, logits, resp, mask, *factors = ctx.saved_tensors
        K = w_coeff.shape[0]
        g = _masked(grad, mask)  # (N,)
        neg_gr = resp * g.neg()  # -g r (K, N)
        d_logits = torch.softmax(logits, dim=0).mul_(g).add_(neg_gr)  # g softmax(logits) - g r
        d_hidden = torch.mm(d_logits.t(), w_coeff)  # (N, W), every head's product added below
        d_w_mu, d_b_mu, d_w_sigma, d_b_sigma, d_xT = [], [], [], [], []  # per chunk
        start = 0
        for z_over_s, a_factor in zip(factors[::2], factors[1::2], strict=True):
            rows = slice(start, start + z_over_s.shape[0] * K)
            start = rows.stop
            d_mu = z_over_s * neg_gr  # -g r z / s
            if ctx.needs_input_grad[1]:
                d_xT.append(d_mu.sum(1))
            d_a = a_factor * neg_gr  # -g r (z^2 - 1) sigmoid(a) / s
            for d_p, weight, d_w, d_b in ((d_mu, w_mu, d_w_mu, d_b_mu), (d_a, w_sigma, d_w_sigma, d_b_sigma)):
                d_p = d_p.flatten(0, 1)
                d_w.append(d_p @ hidden)
                d_b.append(d_p.sum(1))
                d_hidden.addmm_(d_p.t(), weight[rows])
        d_x = torch.cat(d_xT).neg_() if ctx.needs_input_grad[1] else None
        return (d_hidden, d_x, *map(torch.cat, (d_w_mu, d_b_mu, d_w_sigma, d_b_sigma)), d_logits @ hidden,
                d_logits.sum(1), None, None, None)


class _LinearGaussianNLL(torch.autograd.Function):
    """Row-major: mu and a (N, D) from one product each (contiguous: softplus ran 25% slower on a half of one (N, 2D)
    product); when ``saves``, [z / s | (z^2 - 1) sigmoid(a) / s] (N, 2D) is saved, so that d[mu | a] is one
    product with -g."""

    @staticmethod
    def forward(ctx, hidden, x, w_mu, b_mu, w_sigma, b_sigma, floor, mask, saves):
        N, D = x.shape
        a = torch.addmm(b_sigma, hidden, w_sigma.t())
        s = F.softplus(a).add_(floor)
        z = torch.addmm(b_mu, hidden, w_mu.t()).neg_().add_(x).div_(s)  # (x - mu) / s
        nll = torch.addcmul(torch.log(s), z, z, value=0.5).sum(1).add_(0.5 * LOG_2PI * D)
        if saves:
            z_over_s = z / s
            factors = torch.cat([z_over_s, z.square_().sub_(1.0).mul_(torch.sigmoid(a)).div_(s)], 1)
            ctx.save_for_backward(hidden, w_mu, w_sigma, mask, factors)
        return _masked(nll, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        hidden, w_mu, w_sigma, mask, factors = ctx.saved_tensors
        D = factors.shape[1] // 2
        d_ma = factors * _masked(grad, mask).neg().unsqueeze(1)  # -g [z / s | (z^2 - 1) sigmoid(a) / s]
        d_w, d_b = d_ma.t() @ hidden, d_ma.sum(0)
        d_x = d_ma[:, :D].neg() if ctx.needs_input_grad[1] else None
        d_hidden = d_ma @ torch.cat([w_mu, w_sigma])
        return d_hidden, d_x, d_w[:D], d_b[:D], d_w[D:], d_b[D:], None, None, None


def _skips_masked_rows(t: Tensor) -> bool:
    """Whether the linear_*_nll Functions leave masked rows out (a data-dependent shape): on CPUs, outside
    torch.compile."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _apply_to_rows(function, hidden: Tensor, x: Tensor, x_row_dim: int, params: tuple, mask: Tensor | None,
                   lead: torch.Size) -> Tensor:
    """function.apply(hidden (N, W), x, *params, mask, saves) -> (N,), viewed ``lead``; x's rows lie along
    ``x_row_dim``. On a CPU outside torch.compile only the rows ``mask`` keeps are passed (their NLL is 0 and their
    gradients are 0 either way); elsewhere every row is computed and masked, so that no shape depends on data."""
    saves = torch.is_grad_enabled() and any(t.requires_grad for t in (hidden, x, *params[:-1]))
    if mask is None or not _skips_masked_rows(hidden):
        mask = None if mask is None else mask.reshape(-1)
        return function.apply(hidden, x, *params, mask, saves).view(lead)
    rows = mask.reshape(-1).nonzero().squeeze(1)
    nll = function.apply(hidden.index_select(0, rows), x.index_select(x_row_dim, rows), *params, None, saves)
    return hidden.new_zeros(hidden.shape[0]).index_copy(0, rows, nll).view(lead)


def linear_gmm_nll(hidden: Tensor, x: Tensor, w_mu: Tensor, b_mu: Tensor, w_sigma: Tensor, b_sigma: Tensor,
                   w_coeff: Tensor, b_coeff: Tensor, floor: float, mask: Tensor | None = None) -> Tensor:
    """``reference.gmm_nll(x, mu, a, logits, floor, mask)`` of the decoder heads mu = hidden W_mu^T + b_mu and
    a = hidden W_sigma^T + b_sigma, both viewed (..., D, K), and logits = hidden W_coeff^T + b_coeff.

    hidden (..., W); x (..., D); w_mu, w_sigma (D*K, W); w_coeff (K, W); mask (...) bool -> (...). Leading dims
    must match (no broadcasting). On a CPU outside torch.compile the rows ``mask`` leaves out are not computed at
    all (``mask.nonzero()``); elsewhere every row is computed and masked."""
    lead, D = hidden.shape[:-1], x.shape[-1]
    hidden, xT = hidden.reshape(-1, hidden.shape[-1]), x.movedim(-1, 0).reshape(D, -1)  # (N, W), (D, N)
    params = (w_mu, b_mu, w_sigma, b_sigma, w_coeff, b_coeff, float(floor))
    return _apply_to_rows(_LinearGmmNLL, hidden, xT, 1, params, mask, lead)


def linear_gaussian_nll(hidden: Tensor, x: Tensor, w_mu: Tensor, b_mu: Tensor, w_sigma: Tensor, b_sigma: Tensor,
                        floor: float, mask: Tensor | None = None) -> Tensor:
    """``reference.gaussian_nll(x, mu, a, floor, mask)`` of the decoder heads mu = hidden W_mu^T + b_mu and
    a = hidden W_sigma^T + b_sigma.

    hidden (..., W); x (..., D); w_mu, w_sigma (D, W); mask (...) bool -> (...). Leading dims must match (no
    broadcasting); masked rows are left out on a CPU outside torch.compile, as in ``linear_gmm_nll``."""
    lead, D = hidden.shape[:-1], x.shape[-1]
    hidden, x = hidden.reshape(-1, hidden.shape[-1]), x.reshape(-1, D)  # (N, W), (N, D)
    return _apply_to_rows(_LinearGaussianNLL, hidden, x, 0, (w_mu, b_mu, w_sigma, b_sigma, float(floor)), mask, lead)


FUSED_TORCH_OPS = SimpleNamespace(**{**vars(TORCH_OPS), "gmm_nll": checked("gmm_nll", gmm_nll)})
"""The op set FastVRNN(backend="torch") dispatches its losses through."""
