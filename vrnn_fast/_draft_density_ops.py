"""Scratch home of part B's section of vrnn_fast/triton_ops.py (that file does not exist yet): move everything
below the marker into it, point TRITON_OPS at these three functions, and delete this module."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .kernels import densities

# ---- log-densities (kernels/densities.py) ----
# Losses come out in float32 for float32/bfloat16/float16 inputs and in float64 for float64 inputs (the
# kernels' math dtype); gradients come back in each input's dtype. Leading dims are broadcast as torch would
# and flattened to rows (a view where the strides allow it, else reshape copies); the kernels take any strides.


def _rows(op: str, parts: list[tuple[str, Tensor, tuple]], floor: float, mask: Tensor | None):
    """Checks and flattens density inputs. parts: (name, tensor, event shape); a str in an event shape ("D",
    "K") is a size that must agree across tensors. Returns (leading shape, [(N, *event) tensors], mask (N,))."""
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not math.isfinite(floor) or floor < 0:
        raise ValueError(f"{op}: floor must be a finite number >= 0, got {floor!r}")
    first = parts[0][1]
    dtype, sizes, events, lead_shapes = None, {}, [], []
    for name, t, event in parts:
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t))}")
        if t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {parts[0][0]} is on {first.device}")
        got = tuple(t.shape[t.dim() - len(event):]) if t.dim() >= len(event) else None
        pairs = zip(event, got or event, strict=True)
        want = tuple(sizes.setdefault(e, g) if isinstance(e, str) else e for e, g in pairs)
        if got is None or got != want or 0 in got:
            raise ValueError(f"{op}: {name} must end in non-empty dims {event} = {want}, got shape {tuple(t.shape)}")
        dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
        events.append(got)
        lead_shapes.append(t.shape[: t.dim() - len(event)])
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"{op}: mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
        if mask.device != first.device:
            raise ValueError(f"{op}: mask is on {mask.device} but {parts[0][0]} is on {first.device}")
        lead_shapes.append(mask.shape)
    try:
        lead = torch.broadcast_shapes(*lead_shapes)
    except RuntimeError as err:
        raise ValueError(f"{op}: leading dims do not broadcast: {[tuple(s) for s in lead_shapes]}") from err
    rows = [t.to(dtype).expand(*lead, *ev).reshape(-1, *ev) for (_, t, _), ev in zip(parts, events, strict=True)]
    return lead, rows, None if mask is None else mask.expand(lead).reshape(-1)


class _GaussianNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mu, a, floor, mask):
        ctx.floor = floor
        ctx.save_for_backward(x, mu, a, mask)
        return densities.gaussian_nll_fwd(x, mu, a, floor, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, mu, a, mask = ctx.saved_tensors
        return (*densities.gaussian_nll_bwd(grad, x, mu, a, ctx.floor, mask), None, None)


class _GmmNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mu, a, logits, floor, mask):
        out, resp = densities.gmm_nll_fwd(x, mu, a, logits, floor, mask)
        ctx.floor = floor
        ctx.save_for_backward(resp, x, mu, a, logits, mask)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        resp, x, mu, a, logits, mask = ctx.saved_tensors
        return (*densities.gmm_nll_bwd(grad, resp, x, mu, a, logits, ctx.floor, mask), None, None)


class _BigmmNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mu, a, rho_raw, logits, pen_logit, floor, mask):
        ctx.floor = floor
        ctx.save_for_backward(x, mu, a, rho_raw, logits, pen_logit, mask)
        return densities.bigmm_nll_fwd(x, mu, a, rho_raw, logits, pen_logit, floor, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, mu, a, rho_raw, logits, pen_logit, mask = ctx.saved_tensors
        return (*densities.bigmm_nll_bwd(grad, x, mu, a, rho_raw, logits, pen_logit, ctx.floor, mask), None, None)


def gaussian_nll(x: Tensor, mu: Tensor, a: Tensor, floor: float, mask: Tensor | None = None) -> Tensor:
    """-log N(x; mu, diag(s^2)), s = softplus(a) + floor, summed over the last dim: (..., D) -> (...).

    Fused Triton forward and backward; drop-in for ``reference.gaussian_nll`` (loss in float32, or float64
    for float64 inputs; exactly 0 with zero gradient where ``mask`` is False).
    Example: ``gaussian_nll(x, mu, a, 1e-4, mask).sum().backward()`` with x, mu, a (B, T, D), mask (B, T).
    """
    parts = [("x", x, ("D",)), ("mu", mu, ("D",)), ("a", a, ("D",))]
    lead, (x, mu, a), mask = _rows("gaussian_nll", parts, floor, mask)
    return _GaussianNLL.apply(x, mu, a, float(floor), mask).reshape(lead)


def gmm_nll(x: Tensor, mu: Tensor, a: Tensor, logits: Tensor, floor: float, mask: Tensor | None = None) -> Tensor:
    """-log sum_k softmax(logits)_k N(x; mu_k, diag(s_k^2)) over whole frames: x (..., D); mu, a (..., D, K)
    (component fastest); logits (..., K) -> (...).

    Fused Triton kernels (per-component log-densities accumulated over D tiles in registers; the backward
    reuses the (N, K) responsibilities); drop-in for ``reference.gmm_nll``, same dtype and mask rules as
    ``gaussian_nll``. Example: ``gmm_nll(x, mu, a, logits, 1e-4)`` with D = 200, K = 20.
    """
    parts = [("x", x, ("D",)), ("mu", mu, ("D", "K")), ("a", a, ("D", "K")), ("logits", logits, ("K",))]
    lead, (x, mu, a, logits), mask = _rows("gmm_nll", parts, floor, mask)
    return _GmmNLL.apply(x, mu, a, logits, float(floor), mask).reshape(lead)


def bigmm_nll(x: Tensor, mu: Tensor, a: Tensor, rho_raw: Tensor, logits: Tensor, pen_logit: Tensor,
              floor: float, mask: Tensor | None = None) -> Tensor:
    """Handwriting NLL: bivariate GMM with correlation rho = RHO_MAX tanh(rho_raw) on (dx, dy) plus a Bernoulli
    pen bit. x (..., 3) = [pen, dx, dy]; mu, a (..., 2, K); rho_raw, logits (..., K); pen_logit (...) -> (...).

    Fused Triton kernels (the backward recomputes the forward); drop-in for ``reference.bigmm_nll``, same
    dtype and mask rules as ``gaussian_nll``.
    """
    parts = [("x", x, (3,)), ("mu", mu, (2, "K")), ("a", a, (2, "K")), ("rho_raw", rho_raw, ("K",)),
             ("logits", logits, ("K",)), ("pen_logit", pen_logit, ())]
    lead, (x, mu, a, rho_raw, logits, pen_logit), mask = _rows("bigmm_nll", parts, floor, mask)
    return _BigmmNLL.apply(x, mu, a, rho_raw, logits, pen_logit, float(floor), mask).reshape(lead)
