"""The Triton op set: autograd Functions over the kernels in ``vrnn_fast.kernels``, and public functions with
exactly the signatures of their references in ``vrnn_fast.reference`` (the spec they are tested against).

This is the only module that joins kernels and autograd. Leading dims are broadcast as torch would and
flattened to rows (a view where the strides allow it); the kernels take any strides. Dtypes: any floating
dtype (float64 end to end, as the interpreter parity tests use; float32; bfloat16/float16 with float32 math
inside). ``lstm_cell`` and ``reparameterize`` return the inputs' promoted dtype; the losses (``gaussian_kl``
and the log-densities) return float32, or float64 for float64 inputs. Gradients come back in each input's dtype.

Beyond the reference set: ``reparameterize_seeded`` (eps drawn in the kernel from a seed, regenerated in the
backward) and ``lstm_gemm_cell`` (the cell update as the epilogue of the recurrent GEMM); FastVRNN does not
use them yet (the op set it dispatches through has no such members).

``ops_for(x)`` picks this op set for CUDA tensors, and for CPU tensors only when ``TRITON_INTERPRET=1`` is set
(an explicit opt-in to the slow interpreter).
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import op_checks as oc
from . import reference
from .kernels import densities
from .kernels import gaussian as kg
from .kernels import lstm as kl


def ops_for(x: Tensor) -> SimpleNamespace:
    """TRITON_OPS for CUDA tensors, or for CPU tensors when TRITON_INTERPRET=1; otherwise ValueError."""
    if x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return TRITON_OPS
    raise ValueError(f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the Triton interpreter "
                     f"on the CPU), got a tensor on {x.device}")


# ---- LSTM cell (kernels/lstm.py) ----


class _LSTMCell(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, c_prev):
        ctx.set_materialize_grads(False)  # an unused h or c skips its read in the backward kernel
        ctx.save_for_backward(gates, c_prev)
        return kl.lstm_fwd(gates, c_prev)

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dc):
        gates, c_prev = ctx.saved_tensors
        if dh is None and dc is None:
            return None, None
        return kl.lstm_bwd(gates, c_prev, dh, dc)


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM update from full pre-activations: gates (..., 4H) in order [i, f, g, o], c_prev (..., H) -> (h, c).

    c = sigmoid(f) c_prev + sigmoid(i) tanh(g), h = sigmoid(o) tanh(c); one fused kernel each way (the
    backward recomputes the activations from gates and c_prev). Example: ``h, c = lstm_cell(x @ w.T + b, c)``.
    """
    lead, (gates_rows, c_rows), _ = oc.rows("lstm_cell", *oc.lstm_cell_parts(gates, c_prev))
    H = c_rows.shape[-1]
    h, c = _LSTMCell.apply(gates_rows, c_rows)
    return h.reshape(*lead, H), c.reshape(*lead, H)



class _LSTMGemmCell(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, h, weight, c_prev):
        gates, h_new, c_new = kl.lstm_gemm_fwd(pre, h, weight, c_prev)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(gates, h, weight, c_prev)
        return h_new, c_new

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dc):
        gates, h, weight, c_prev = ctx.saved_tensors
        if dh is None and dc is None:
            return None, None, None, None
        dgates, dc_prev = kl.lstm_bwd(gates, c_prev, dh, dc)
        dh_in = dgates @ weight if ctx.needs_input_grad[1] else None
        dweight = dgates.t() @ h if ctx.needs_input_grad[2] else None
        return dgates, dh_in, dweight, dc_prev


def lstm_gemm_cell(pre: Tensor, h: Tensor, weight: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step with the cell update as the epilogue of the recurrent GEMM: the same result as
    ``lstm_cell(pre + h @ weight.T, c_prev)``. pre (N, 4H) (the hoisted input projection plus bias), h (N, K),
    weight (4H, K) (W_hh, gate order [i, f, g, o]), c_prev (N, H) -> (h_new, c_new), each (N, H).

    The backward is the fused cell backward plus two GEMMs in torch (dh = dgates W, dW = dgates^T h).
    Example: ``h, c = lstm_gemm_cell(gates_x[:, t], h, rnn.weight_hh, c)``.
    """
    for name, t in (("pre", pre), ("h", h), ("weight", weight), ("c_prev", c_prev)):
        if not isinstance(t, Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f"lstm_gemm_cell: {name} must be a 2-D floating-point tensor, got "
                             f"{getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))}")
    (N, H), K = c_prev.shape, h.shape[1]
    want = {"pre": (N, 4 * H), "h": (N, K), "weight": (4 * H, K)}
    for name, t in (("pre", pre), ("h", h), ("weight", weight)):
        if tuple(t.shape) != want[name] or 0 in t.shape:
            raise ValueError(f"lstm_gemm_cell: {name} must have shape {want[name]}, got {tuple(t.shape)}")
    if len({t.device for t in (pre, h, weight, c_prev)}) != 1:
        raise ValueError("lstm_gemm_cell: all inputs must be on one device")
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in (pre, h, weight, c_prev)))
    return _LSTMGemmCell.apply(*(t.to(dtype) for t in (pre, h, weight, c_prev)))

# ---- Gaussian head (kernels/gaussian.py) ----


class _Reparameterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, a, eps, seed, floor):
        ctx.floor, ctx.seed = floor, seed
        ctx.save_for_backward(a, eps)
        return kg.reparam_fwd(mu, a, eps, seed, floor)

    @staticmethod
    @once_differentiable
    def backward(ctx, dz):
        a, eps = ctx.saved_tensors
        want_deps = eps is not None and ctx.needs_input_grad[2]
        da, deps = kg.reparam_bwd(dz, a, eps, ctx.seed, ctx.floor, want_deps)
        return dz, da, deps, None, None


def reparameterize(mu: Tensor, a: Tensor, eps: Tensor, floor: float) -> Tensor:
    """z = mu + (softplus(a) + floor) * eps, all (..., Z); one fused kernel each way.

    Example: ``z = reparameterize(mu_q, a_q, torch.randn_like(mu_q), 1e-4)``.
    """
    lead, (mu, a, eps), _ = oc.rows("reparameterize", *oc.reparameterize_parts(mu, a, eps, floor))
    return _Reparameterize.apply(mu, a, eps, 0, float(floor)).reshape(*lead, mu.shape[-1])


def reparameterize_seeded(mu: Tensor, a: Tensor, seed: int, floor: float) -> Tensor:
    """z = mu + (softplus(a) + floor) * eps with eps ~ N(0, I) drawn in the kernel from ``seed`` (Philox, at
    the logical index n * Z + j of the flattened (N, Z) rows) and regenerated in the backward, never stored.

    mu, a (..., Z) -> z (..., Z). The same seed and shape give the same eps on every device and call.
    """
    floor = oc.check_floor("reparameterize_seeded", floor)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"reparameterize_seeded: seed must be an int in [0, 2**63), got {seed!r}")
    Z = mu.shape[-1] if isinstance(mu, Tensor) and mu.dim() else -1
    lead, (mu, a), _ = oc.rows("reparameterize_seeded", [("mu", mu, (Z,)), ("a", a, (Z,))])
    return _Reparameterize.apply(mu, a, None, seed, floor).reshape(*lead, Z)


class _GaussianKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu_q, a_q, mu_p, a_p, floor, mask):
        ctx.floor = floor
        ctx.save_for_backward(mu_q, a_q, mu_p, a_p, mask)
        return kg.kl_fwd(mu_q, a_q, mu_p, a_p, floor, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        mu_q, a_q, mu_p, a_p, mask = ctx.saved_tensors
        return (*kg.kl_bwd(grad, mu_q, a_q, mu_p, a_p, ctx.floor, mask), None, None)


def gaussian_kl(mu_q: Tensor, a_q: Tensor, mu_p: Tensor | None, a_p: Tensor | None, floor: float,
                mask: Tensor | None = None) -> Tensor:
    """KL(N(mu_q, s_q^2) || N(mu_p, s_p^2)) summed over the last dim: (..., Z) -> (...), s = softplus(a) + floor.

    ``mu_p = a_p = None``: the standard normal prior (VRNN-I). mask (...) bool: exactly 0 (and zero gradient)
    where False. One fused kernel each way. Example: ``gaussian_kl(mu_q, a_q, mu_p, a_p, 1e-4, mask)``.
    """
    lead, rows, mask = oc.rows("gaussian_kl", *oc.gaussian_kl_parts(mu_q, a_q, mu_p, a_p, floor, mask))
    mu_q, a_q, mu_p, a_p = (*rows, None, None) if len(rows) == 2 else rows
    return _GaussianKL.apply(mu_q, a_q, mu_p, a_p, float(floor), mask).reshape(lead)


# ---- log-densities (kernels/densities.py) ----
# Losses come out in float32 for float32/bfloat16/float16 inputs and in float64 for float64 inputs (the
# kernels' math dtype); gradients come back in each input's dtype. Leading dims are broadcast as torch would
# and flattened to rows (a view where the strides allow it, else reshape copies); the kernels take any strides.


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
    lead, (x, mu, a), mask = oc.rows("gaussian_nll", *oc.gaussian_nll_parts(x, mu, a, floor, mask))
    return _GaussianNLL.apply(x, mu, a, float(floor), mask).reshape(lead)


def gmm_nll(x: Tensor, mu: Tensor, a: Tensor, logits: Tensor, floor: float, mask: Tensor | None = None) -> Tensor:
    """-log sum_k softmax(logits)_k N(x; mu_k, diag(s_k^2)) over whole frames: x (..., D); mu, a (..., D, K)
    (component fastest); logits (..., K) -> (...).

    Fused Triton kernels (per-component log-densities accumulated over D tiles in registers; the backward
    reuses the (N, K) responsibilities); drop-in for ``reference.gmm_nll``, same dtype and mask rules as
    ``gaussian_nll``. Example: ``gmm_nll(x, mu, a, logits, 1e-4)`` with D = 200, K = 20.
    """
    lead, (x, mu, a, logits), mask = oc.rows("gmm_nll", *oc.gmm_nll_parts(x, mu, a, logits, floor, mask))
    return _GmmNLL.apply(x, mu, a, logits, float(floor), mask).reshape(lead)


def bigmm_nll(x: Tensor, mu: Tensor, a: Tensor, rho_raw: Tensor, logits: Tensor, pen_logit: Tensor,
              floor: float, mask: Tensor | None = None) -> Tensor:
    """Handwriting NLL: bivariate GMM with correlation rho = RHO_MAX tanh(rho_raw) on (dx, dy) plus a Bernoulli
    pen bit. x (..., 3) = [pen, dx, dy]; mu, a (..., 2, K); rho_raw, logits (..., K); pen_logit (...) -> (...).

    Fused Triton kernels (the backward recomputes the forward); drop-in for ``reference.bigmm_nll``, same
    dtype and mask rules as ``gaussian_nll``.
    """
    parts, mask = oc.bigmm_nll_parts(x, mu, a, rho_raw, logits, pen_logit, floor, mask)
    lead, (x, mu, a, rho_raw, logits, pen_logit), mask = oc.rows("bigmm_nll", parts, mask)
    return _BigmmNLL.apply(x, mu, a, rho_raw, logits, pen_logit, float(floor), mask).reshape(lead)


# Bernoulli NLL: the torch op, not a Triton kernel (an elementwise softplus pair and a row sum over (..., D) values the
# decoder's GEMM has just written; a fused kernel would save a fraction of that GEMM's time). The decoder casts its
# inputs to the loss dtype, as for the kernels here.
bernoulli_nll = reference.TORCH_OPS.bernoulli_nll


TRITON_OPS = SimpleNamespace(
    lstm_cell=lstm_cell, reparameterize=reparameterize, gaussian_kl=gaussian_kl,
    gaussian_nll=gaussian_nll, gmm_nll=gmm_nll, bigmm_nll=bigmm_nll, bernoulli_nll=bernoulli_nll,
)
"""The op set FastVRNN(backend="triton") dispatches through; same members as ``reference.TORCH_OPS``."""
