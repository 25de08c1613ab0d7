"""PyTorch ops with hand-written backwards, for FastVRNN's torch backend: the same functions as
``vrnn_fast.reference`` (the spec they are tested against), fewer passes over memory.

``gmm_nll``: autograd through the reference's GMM density makes some 35 passes over the (..., D, K) tensors
(forward and backward); this one makes about 16 and keeps only z and 1/s for the backward. With r the
responsibilities, g the incoming gradient, s = softplus(a) + floor and z = (x - mu) / s:
    d mu = -g r z / s,   d a = -g r (z^2 - 1) / s * sigmoid(a),   d logits = g (softmax(logits) - r),
    d x = -sum_k d mu.
``FUSED_TORCH_OPS`` is ``reference.TORCH_OPS`` with these members replaced.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .op_checks import checked
from .reference import LOG_2PI, TORCH_OPS, _masked


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


FUSED_TORCH_OPS = SimpleNamespace(**{**vars(TORCH_OPS), "gmm_nll": checked("gmm_nll", gmm_nll)})
"""The op set FastVRNN(backend="torch") dispatches its losses through."""
