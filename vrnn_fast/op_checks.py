"""Input checks of the op sets (reference.TORCH_OPS, fused_torch.FUSED_TORCH_OPS, triton_ops.TRITON_OPS): one place,
so every backend refuses the same bad input with the same ValueError.

``<op>_parts(...)`` takes an op's arguments, checks the scalars (floor, prior pair) and returns (parts, mask):
parts = [(name, tensor, event shape)], where a str in an event shape ("D", "K", "Z") is a size that must agree
across tensors. ``validate`` checks tensors, dtypes, devices, trailing sizes, the mask and the broadcast of the
leading dims; ``rows`` also flattens them to (N, *event) rows for the kernels. ``VALUE_CHECKS`` holds the ops
whose inputs also have a valid range (``bernoulli_nll``: x in [0, 1]), checked after ``validate``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor


def check_floor(op: str, floor) -> float:
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not math.isfinite(floor) or floor < 0:
        raise ValueError(f"{op}: floor must be a finite number >= 0, got {floor!r}")
    return float(floor)


@torch.library.custom_op("vrnn_fast::raise_unless", mutates_args=())
def _raise_unless(ok: Tensor, message: str) -> Tensor:
    """ValueError(message) unless ``ok``; else a copy of ``ok``. For torch.compile on a CPU: ``require`` passes its
    result to ``torch._assert_async``, which the compiler keeps and so keeps this opaque op, which raises before the
    assert can fail. (Inductor fuses ``torch._assert_async`` into its C++ kernels, where a failure inside a parallel
    region aborted the process instead of raising.)"""
    if not ok:
        raise ValueError(message)
    return ok.clone()


@_raise_unless.register_fake
def _(ok, message):
    return torch.empty_like(ok)


def require(ok: Tensor, message: str) -> None:
    """ValueError(message) unless the bool tensor ``ok`` is True. Inside a CUDA graph capture or ``torch.compile`` on
    CUDA the check stays on the device (``torch._assert_async``: no host sync, no graph break; a failure is a
    device-side assert); inside ``torch.compile`` elsewhere it is the opaque op ``vrnn_fast::raise_unless``, which
    raises the same ValueError without breaking the graph (CPU tensors: no sync to avoid)."""
    compiling = torch.compiler.is_compiling()
    if ok.is_cuda and (compiling or torch.cuda.is_current_stream_capturing()):
        torch._assert_async(ok, message)
    elif compiling:
        torch._assert_async(torch.ops.vrnn_fast.raise_unless(ok, message), message)
    elif not ok:
        raise ValueError(message)


def require_unit_interval(what: str, x: Tensor, mask: Tensor | None = None) -> None:
    """ValueError naming ``what`` unless every x (..., D) of a row where ``mask`` (...) is True (all rows when
    None) lies in [0, 1]; NaN fails (it propagates into the min and max). Bernoulli data: rows of a padded step are
    not scored, so not checked."""
    if mask is not None:
        x = torch.where(mask.unsqueeze(-1), x, 0.0)
    if x.numel():
        low, high = torch.aminmax(x)
        require((low >= 0) & (high <= 1),
                f"{what} must lie in [0, 1] (Bernoulli data), but it holds NaN or values outside [0, 1]")


def validate(op: str, parts: list[tuple[str, Tensor, tuple]], mask: Tensor | None = None):
    """Checks the parts and mask; returns (leading shape, common dtype, each part's event shape)."""
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
    return lead, dtype, events


def rows(op: str, parts: list[tuple[str, Tensor, tuple]], mask: Tensor | None = None):
    """validate, then flatten to a common dtype and broadcast leading shape. Returns (leading shape,
    [(N, *event) tensors], mask (N,) or None); N = prod(leading shape); a view where the strides allow."""
    lead, dtype, events = validate(op, parts, mask)
    flat = [t.to(dtype).expand((*lead, *ev)).reshape(-1, *ev) for (_, t, _), ev in zip(parts, events, strict=True)]
    return lead, flat, None if mask is None else mask.expand(lead).reshape(-1)


def lstm_cell_parts(gates, c_prev):
    if not isinstance(c_prev, Tensor) or c_prev.dim() == 0:
        raise ValueError(f"lstm_cell: c_prev must be a (..., H) tensor, got {getattr(c_prev, 'shape', c_prev)!r}")
    H = c_prev.shape[-1]
    return [("gates", gates, (4 * H,)), ("c_prev", c_prev, (H,))], None


def reparameterize_parts(mu, a, eps, floor):
    check_floor("reparameterize", floor)
    return [("mu", mu, ("Z",)), ("a", a, ("Z",)), ("eps", eps, ("Z",))], None


def gaussian_kl_parts(mu_q, a_q, mu_p, a_p, floor, mask=None):
    check_floor("gaussian_kl", floor)
    if (mu_p is None) != (a_p is None):
        raise ValueError("gaussian_kl: mu_p and a_p must both be tensors, or both None (standard normal prior)")
    parts = [("mu_q", mu_q, ("Z",)), ("a_q", a_q, ("Z",))]
    if mu_p is not None:
        parts += [("mu_p", mu_p, ("Z",)), ("a_p", a_p, ("Z",))]
    return parts, mask


def gaussian_nll_parts(x, mu, a, floor, mask=None):
    check_floor("gaussian_nll", floor)
    return [("x", x, ("D",)), ("mu", mu, ("D",)), ("a", a, ("D",))], mask


def gmm_nll_parts(x, mu, a, logits, floor, mask=None):
    check_floor("gmm_nll", floor)
    return [("x", x, ("D",)), ("mu", mu, ("D", "K")), ("a", a, ("D", "K")), ("logits", logits, ("K",))], mask


def bigmm_nll_parts(x, mu, a, rho_raw, logits, pen_logit, floor, mask=None):
    check_floor("bigmm_nll", floor)
    return [("x", x, (3,)), ("mu", mu, (2, "K")), ("a", a, (2, "K")), ("rho_raw", rho_raw, ("K",)),
            ("logits", logits, ("K",)), ("pen_logit", pen_logit, ())], mask


def bernoulli_nll_parts(x, logits, mask=None):
    return [("x", x, ("D",)), ("logits", logits, ("D",))], mask


def bernoulli_nll_values(x, logits, mask=None):
    require_unit_interval("bernoulli_nll: x", x, mask)


PARTS = {"lstm_cell": lstm_cell_parts, "reparameterize": reparameterize_parts, "gaussian_kl": gaussian_kl_parts,
         "gaussian_nll": gaussian_nll_parts, "gmm_nll": gmm_nll_parts, "bigmm_nll": bigmm_nll_parts,
         "bernoulli_nll": bernoulli_nll_parts}
VALUE_CHECKS = {"bernoulli_nll": bernoulli_nll_values}


def checked(op: str, fn):
    """``fn`` with the op's input checks in front (ValueError naming the problem)."""
    parts_of, values_of = PARTS[op], VALUE_CHECKS.get(op)

    @functools.wraps(fn)
    def checked_op(*args, **kwargs):
        validate(op, *parts_of(*args, **kwargs))
        if values_of is not None:
            values_of(*args, **kwargs)
        return fn(*args, **kwargs)

    return checked_op
