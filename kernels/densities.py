"""Log-density kernels over all time steps at once: diagonal Gaussian, K-component GMM, bivariate GMM + pen.

Dimension glossary (leading dims of the public ops are flattened to rows by the caller):
  N  rows (B * T steps)                 D  frame size (200 for speech, 2 offsets for handwriting)
  K  mixture components (20)            BLOCK_*  tile sizes (powers of two, K padded to BLOCK_K)
Layouts: x (N, D); gaussian mu, a (N, D); gmm mu, a (N, D, K) (flat index d*K + k, component fastest);
bigmm x (N, 3) = [pen, dx, dy], mu, a (N, 2, K), rho_raw, logits (N, K), pen_logit (N,). Any strides.

Math (fp32 inside for fp32/bf16/fp16 inputs, fp64 for fp64; sigma = softplus(a) + floor, softplus as torch's):
  gaussian  nll = sum_d [0.5 z_d^2 + log s_d] + D/2 log 2pi,  z = (x - mu) / s
            dx = g z / s,  dmu = -dx,  da = g (1 - z^2) / s * softplus'(a)
  gmm       lc_k = -sum_d [0.5 z_dk^2 + log s_dk] - D/2 log 2pi,  nll = -logsumexp_k(log_softmax(l)_k + lc_k)
            r = responsibilities (softmax of the same terms), saved (N, K) by the forward, so the backward
            is one pass over D and nothing (N, D, K)-sized is kept besides the gradients themselves:
            dmu_dk = -g r_k z_dk / s_dk,  dx_d = -sum_k dmu_dk,  da_dk = g r_k (1 - z^2) / s * softplus'(a),
            dlogits = g (softmax(l) - r)
  bigmm     rho = RHO_MAX tanh(rho_raw), w = 1 - rho^2, q = z1^2 + z2^2 - 2 rho z1 z2,
            log N2 = -log 2pi - log s1 - log s2 - 0.5 log w - q / (2w);  nll = -logsumexp_k(log pi + log N2) + BCE,
            in the cancellation-free form of vrnn_fast.reference.bigmm_nll: e = exp(-2|rho_raw|),
            m = 1 - |rho| = RHO_GAP + RHO_MAX 2e / (1 + e), w = m (2 - m), rho = sign (1 - m),
            v = z2 - rho z1 = sign (m z1 - (z1 - sign z2)), q / w = z1^2 + v^2 / w.
            With u2 = v / w and u1 = (z1 - rho z2) / w = z1 - rho u2, per component weighted by -g r_k:
            dlogN2/dmu1 = u1 / s1, /ds1 = (z1 u1 - 1) / s1, /drho = rho / w + u1 u2 (= (rho + z1 z2) / w - q rho / w^2),
            drho / drho_raw = RHO_MAX (1 - tanh^2) = RHO_MAX 4e / (1 + e)^2;
            dpen_logit = g (sigmoid(l) - pen), dpen = -g l. The backward recomputes the forward (all in registers).
            s, z, m and log(2pi s1 s2 sqrt(w)) are computed in fp64 and rounded once, the rest in the loss dtype:
            log N2 amplifies the rounding of z by up to 1 / w = 5e5, and fp32 exp, log and division are approximate
            on the GPU (ex2.approx, div.full; ~3 ulp in the interpreter's numpy) where PyTorch's are within ~1 ulp.
Masked rows (mask False) give exactly 0 in the loss and in every gradient.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG_2PI = tl.constexpr(math.log(2.0 * math.pi))
RHO_GAP = tl.constexpr(1e-6)  # as vrnn_fast.reference.RHO_GAP and RHO_MAX (kernels import torch and triton only)
RHO_MAX = tl.constexpr(1.0 - 1e-6)
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)  # torch.nn.functional.softplus returns a above this


# ---------------------------------------------------------------------------------------------------------
# Element-wise helpers
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _softplus(a):
    """torch's softplus: a where a > 20, else log1p(exp(a)); log1p(u) = log(1+u) * u / ((1+u) - 1) is exact
    to a few ulps (no libdevice, so it runs in the interpreter)."""
    u = tl.exp(tl.minimum(a, SOFTPLUS_THRESHOLD))
    w = 1.0 + u
    log1p_u = tl.where(w == 1.0, u, tl.log(w) * (u / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(a > SOFTPLUS_THRESHOLD, a, log1p_u)


@triton.jit
def _softplus_grad(a):
    """d softplus / da as torch computes it: 1 where a > 20, else e / (e + 1) with e = exp(a)."""
    e = tl.exp(tl.minimum(a, SOFTPLUS_THRESHOLD))
    return tl.where(a > SOFTPLUS_THRESHOLD, 1.0, e / (e + 1.0))


@triton.jit
def _sigmoid(y):
    e = tl.exp(-tl.abs(y))
    return tl.where(y >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# tanh(y) / y = sum_n C_n y^(2n), C_n = 2^(2n+2) (2^(2n+2) - 1) B_(2n+2) / (2n+2)!: through y^18 the truncation
# is below 1e-16 relative for |y| < TANH_SMALL.
TANH_SMALL = tl.constexpr(0.25)
TANH_C1, TANH_C2, TANH_C3 = tl.constexpr(-1 / 3), tl.constexpr(2 / 15), tl.constexpr(-17 / 315)
TANH_C4, TANH_C5, TANH_C6 = tl.constexpr(62 / 2835), tl.constexpr(-1382 / 155925), tl.constexpr(21844 / 6081075)
TANH_C7, TANH_C8 = tl.constexpr(-929569 / 638512875), tl.constexpr(6404582 / 10854718875)
TANH_C9 = tl.constexpr(-443861162 / 1856156927625)


@triton.jit
def _tanh(y):
    """tanh with relative accuracy at every magnitude (<= 3 ulps in fp32 and fp64; no libdevice, no expm1):
    y times the Taylor polynomial of tanh(y) / y through y^18 for |y| < 0.25, else sign(y) (1 - e) / (1 + e)
    with e = exp(-2|y|) (there 1 - e > 0.39, so the subtraction loses under 2 ulps)."""
    a = tl.abs(y)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    s = tl.minimum(a, TANH_SMALL)  # keeps the unused polynomial finite for large |y|
    s2 = s * s
    p = TANH_C9 * s2 + TANH_C8
    p = (((((((p * s2 + TANH_C7) * s2 + TANH_C6) * s2 + TANH_C5) * s2 + TANH_C4) * s2 + TANH_C3) * s2
          + TANH_C2) * s2 + TANH_C1) * s2 + 1.0
    return tl.where(a < TANH_SMALL, y * p, tl.where(y >= 0, big, -big))


@triton.jit
def _log1p_small(u):
    """log1p(u) for u in [0, 1] (exact to a few ulps)."""
    w = 1.0 + u
    return tl.where(w == 1.0, u, tl.log(w) * (u / tl.where(w == 1.0, 1.0, w - 1.0)))


@triton.jit
def _row_mask(mask_ptr, rows, row_ok, smask_n, HAS_MASK: tl.constexpr):
    """(BLOCK_N,) bool: row in range and (no mask or mask True)."""
    if HAS_MASK:
        keep = tl.load(mask_ptr + rows * smask_n, mask=row_ok, other=0) != 0
        return row_ok & keep
    else:
        return row_ok


@triton.jit
def _mixture_posterior(logits, log_comp, k_ok):
    """log_softmax(logits) + log_comp reduced over k (axis 1, padded k excluded).

    logits, log_comp (BLOCK_N, BLOCK_K). Returns (lse (BLOCK_N,), resp (BLOCK_N, BLOCK_K), pi (BLOCK_N, BLOCK_K)).
    """
    logits = tl.where(k_ok[None, :], logits, float("-inf"))
    l_max = tl.max(logits, axis=1)
    e = tl.exp(logits - l_max[:, None])
    e_sum = tl.sum(e, axis=1)
    pi = e / e_sum[:, None]
    total = tl.where(k_ok[None, :], logits - l_max[:, None] - tl.log(e_sum)[:, None] + log_comp, float("-inf"))
    t_max = tl.max(total, axis=1)
    t_exp = tl.exp(total - t_max[:, None])
    t_sum = tl.sum(t_exp, axis=1)
    return t_max + tl.log(t_sum), t_exp / t_sum[:, None], pi


# ---------------------------------------------------------------------------------------------------------
# Diagonal Gaussian
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _gaussian_nll_fwd_kernel(
    x_ptr, mu_ptr, a_ptr, mask_ptr, out_ptr,  # (N, D) x3, (N,) uint8, (N,) loss dtype
    N, D, floor,
    sx_n, sx_d, smu_n, smu_d, sa_n, sa_d, smask_n,
    HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_t = out_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    active = _row_mask(mask_ptr, rows, row_ok, smask_n, HAS_MASK)
    acc = tl.zeros([BLOCK_N], dtype=acc_t)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        m = active[:, None] & (cols < D)[None, :]
        x = tl.load(x_ptr + rows[:, None] * sx_n + cols[None, :] * sx_d, mask=m, other=0.0).to(acc_t)
        mu = tl.load(mu_ptr + rows[:, None] * smu_n + cols[None, :] * smu_d, mask=m, other=0.0).to(acc_t)
        a = tl.load(a_ptr + rows[:, None] * sa_n + cols[None, :] * sa_d, mask=m, other=0.0).to(acc_t)
        s = _softplus(a) + floor
        z = (x - mu) / s
        acc += tl.sum(tl.where(m, 0.5 * z * z + tl.log(s), 0.0), axis=1)
    nll = acc + (tl.zeros_like(acc) + D) * (0.5 * LOG_2PI)  # D as acc_t even if specialised
    tl.store(out_ptr + rows, tl.where(active, nll, 0.0), mask=row_ok)


@triton.jit
def _gaussian_nll_bwd_kernel(
    grad_ptr, x_ptr, mu_ptr, a_ptr, mask_ptr,  # (N,) loss dtype, (N, D) x3, (N,) uint8
    dx_ptr, dmu_ptr, da_ptr,  # (N, D) contiguous, input dtype
    N, D, floor,
    sg_n, sx_n, sx_d, smu_n, smu_d, sa_n, sa_d, smask_n,
    HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    acc_t = grad_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    active = _row_mask(mask_ptr, rows, row_ok, smask_n, HAS_MASK)
    g = tl.load(grad_ptr + rows * sg_n, mask=active, other=0.0).to(acc_t)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = (cols < D)[None, :]
        m = active[:, None] & col_ok
        x = tl.load(x_ptr + rows[:, None] * sx_n + cols[None, :] * sx_d, mask=m, other=0.0).to(acc_t)
        mu = tl.load(mu_ptr + rows[:, None] * smu_n + cols[None, :] * smu_d, mask=m, other=0.0).to(acc_t)
        a = tl.load(a_ptr + rows[:, None] * sa_n + cols[None, :] * sa_d, mask=m, other=0.0).to(acc_t)
        s = _softplus(a) + floor
        z = (x - mu) / s
        dx = tl.where(m, g[:, None] * z / s, 0.0)
        da = tl.where(m, g[:, None] * (1.0 - z * z) / s * _softplus_grad(a), 0.0)
        out = rows[:, None] * D + cols[None, :]
        st = row_ok[:, None] & col_ok
        tl.store(dx_ptr + out, dx.to(dx_ptr.dtype.element_ty), mask=st)
        tl.store(dmu_ptr + out, (-dx).to(dmu_ptr.dtype.element_ty), mask=st)
        tl.store(da_ptr + out, da.to(da_ptr.dtype.element_ty), mask=st)


# ---------------------------------------------------------------------------------------------------------
# K-component diagonal GMM over the whole frame
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _gmm_load_tile(x_ptr, mu_ptr, a_ptr, rows, cols, ks, m2, m3, sx_n, sx_d, smu_n, smu_d, smu_k,
                   sa_n, sa_d, sa_k, acc_t: tl.constexpr):
    """x (BLOCK_N, BLOCK_D, 1), mu and a (BLOCK_N, BLOCK_D, BLOCK_K) in acc_t (0 where masked)."""
    r3 = rows[:, None, None]
    c3 = cols[None, :, None]
    k3 = ks[None, None, :]
    x = tl.load(x_ptr + rows[:, None] * sx_n + cols[None, :] * sx_d, mask=m2, other=0.0).to(acc_t)
    mu = tl.load(mu_ptr + r3 * smu_n + c3 * smu_d + k3 * smu_k, mask=m3, other=0.0).to(acc_t)
    a = tl.load(a_ptr + r3 * sa_n + c3 * sa_d + k3 * sa_k, mask=m3, other=0.0).to(acc_t)
    return x[:, :, None], mu, a


@triton.jit
def _gmm_nll_fwd_kernel(
    x_ptr, mu_ptr, a_ptr, logits_ptr, mask_ptr,  # (N, D), (N, D, K) x2, (N, K), (N,) uint8
    out_ptr, resp_ptr,  # (N,) and (N, K) contiguous, loss dtype
    N, D, K, floor,
    sx_n, sx_d, smu_n, smu_d, smu_k, sa_n, sa_d, sa_k, sl_n, sl_k, smask_n,
    HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    acc_t = out_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    active = _row_mask(mask_ptr, rows, row_ok, smask_n, HAS_MASK)
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    k_ok = ks < K
    log_comp = tl.zeros([BLOCK_N, BLOCK_K], dtype=acc_t)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        m2 = active[:, None] & (cols < D)[None, :]
        m3 = m2[:, :, None] & k_ok[None, None, :]
        x, mu, a = _gmm_load_tile(x_ptr, mu_ptr, a_ptr, rows, cols, ks, m2, m3, sx_n, sx_d, smu_n, smu_d,
                                  smu_k, sa_n, sa_d, sa_k, acc_t)
        s = _softplus(a) + floor
        z = (x - mu) / s
        log_comp -= tl.sum(tl.where(m3, 0.5 * z * z + tl.log(s), 0.0), axis=1)
    log_comp -= (tl.zeros_like(log_comp) + D) * (0.5 * LOG_2PI)
    mk = active[:, None] & k_ok[None, :]
    logits = tl.load(logits_ptr + rows[:, None] * sl_n + ks[None, :] * sl_k, mask=mk, other=0.0).to(acc_t)
    lse, resp, _ = _mixture_posterior(logits, log_comp, k_ok)
    tl.store(out_ptr + rows, tl.where(active, -lse, 0.0), mask=row_ok)
    st = row_ok[:, None] & k_ok[None, :]
    tl.store(resp_ptr + rows[:, None] * K + ks[None, :], tl.where(mk, resp, 0.0), mask=st)


@triton.jit
def _gmm_nll_bwd_kernel(
    grad_ptr, resp_ptr, x_ptr, mu_ptr, a_ptr, logits_ptr, mask_ptr,  # (N,), (N, K), inputs as forward
    dx_ptr, dmu_ptr, da_ptr, dlogits_ptr,  # (N, D), (N, D, K) x2, (N, K) contiguous, input dtype
    N, D, K, floor,
    sg_n, sx_n, sx_d, smu_n, smu_d, smu_k, sa_n, sa_d, sa_k, sl_n, sl_k, smask_n,
    HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    acc_t = grad_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    active = _row_mask(mask_ptr, rows, row_ok, smask_n, HAS_MASK)
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    k_ok = ks < K
    mk = active[:, None] & k_ok[None, :]
    g = tl.load(grad_ptr + rows * sg_n, mask=active, other=0.0).to(acc_t)
    resp = tl.load(resp_ptr + rows[:, None] * K + ks[None, :], mask=mk, other=0.0).to(acc_t)
    logits = tl.load(logits_ptr + rows[:, None] * sl_n + ks[None, :] * sl_k, mask=mk, other=0.0).to(acc_t)
    logits = tl.where(k_ok[None, :], logits, float("-inf"))
    e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    pi = e / tl.sum(e, axis=1)[:, None]
    st_k = row_ok[:, None] & k_ok[None, :]
    dlogits = tl.where(mk, g[:, None] * (pi - resp), 0.0)
    tl.store(dlogits_ptr + rows[:, None] * K + ks[None, :], dlogits.to(dlogits_ptr.dtype.element_ty), mask=st_k)
    gr = tl.where(mk, g[:, None] * resp, 0.0)[:, None, :]  # (BLOCK_N, 1, BLOCK_K)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = (cols < D)[None, :]
        m2 = active[:, None] & col_ok
        m3 = m2[:, :, None] & k_ok[None, None, :]
        x, mu, a = _gmm_load_tile(x_ptr, mu_ptr, a_ptr, rows, cols, ks, m2, m3, sx_n, sx_d, smu_n, smu_d,
                                  smu_k, sa_n, sa_d, sa_k, acc_t)
        s = _softplus(a) + floor
        z = (x - mu) / s
        dmu = tl.where(m3, -gr * z / s, 0.0)
        da = tl.where(m3, gr * (1.0 - z * z) / s * _softplus_grad(a), 0.0)
        dx = -tl.sum(dmu, axis=2)
        st2 = row_ok[:, None] & col_ok
        st3 = st2[:, :, None] & k_ok[None, None, :]
        out3 = (rows[:, None, None] * D + cols[None, :, None]) * K + ks[None, None, :]
        tl.store(dx_ptr + rows[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=st2)
        tl.store(dmu_ptr + out3, dmu.to(dmu_ptr.dtype.element_ty), mask=st3)
        tl.store(da_ptr + out3, da.to(da_ptr.dtype.element_ty), mask=st3)


# ---------------------------------------------------------------------------------------------------------
# Bivariate GMM with correlation on (dx, dy) plus a Bernoulli pen bit
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _bigmm_rows(
    x_ptr, mu_ptr, a_ptr, rho_ptr, logits_ptr, pen_ptr, mask_ptr, floor, N, K, rows,
    sx_n, sx_c, smu_n, smu_c, smu_k, sa_n, sa_c, sa_k, sr_n, sr_k, sl_n, sl_k, sp_n, smask_n,
    acc_t: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Loads a block of rows and evaluates the forward. Shapes: (BLOCK_N,) or (BLOCK_N, BLOCK_K).

    Returns (active, ks, k_ok, mk, nll, resp, pi, s1, s2, z1, z2, v, sign, m, w, rho_slope, a1, a2, pen, pen_logit).
    """
    row_ok = rows < N
    active = _row_mask(mask_ptr, rows, row_ok, smask_n, HAS_MASK)
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    k_ok = ks < K
    mk = active[:, None] & k_ok[None, :]
    r2 = rows[:, None]
    k2 = ks[None, :]
    pen = tl.load(x_ptr + rows * sx_n, mask=active, other=0.0).to(acc_t)
    x1 = tl.load(x_ptr + rows * sx_n + sx_c, mask=active, other=0.0).to(acc_t)[:, None]
    x2 = tl.load(x_ptr + rows * sx_n + 2 * sx_c, mask=active, other=0.0).to(acc_t)[:, None]
    mu1 = tl.load(mu_ptr + r2 * smu_n + k2 * smu_k, mask=mk, other=0.0).to(acc_t)
    mu2 = tl.load(mu_ptr + r2 * smu_n + smu_c + k2 * smu_k, mask=mk, other=0.0).to(acc_t)
    a1 = tl.load(a_ptr + r2 * sa_n + k2 * sa_k, mask=mk, other=0.0).to(acc_t)
    a2 = tl.load(a_ptr + r2 * sa_n + sa_c + k2 * sa_k, mask=mk, other=0.0).to(acc_t)
    rho_raw = tl.load(rho_ptr + r2 * sr_n + k2 * sr_k, mask=mk, other=0.0).to(acc_t)
    logits = tl.load(logits_ptr + r2 * sl_n + k2 * sl_k, mask=mk, other=0.0).to(acc_t)
    pen_logit = tl.load(pen_ptr + rows * sp_n, mask=active, other=0.0).to(acc_t)

    # fp64 prologue (module docstring): sigma, z, m = 1 - |rho|, the normaliser and d rho / d rho_raw
    s1w = _softplus(a1.to(tl.float64)) + floor
    s2w = _softplus(a2.to(tl.float64)) + floor
    z1 = ((x1.to(tl.float64) - mu1.to(tl.float64)) / s1w).to(acc_t)
    z2 = ((x2.to(tl.float64) - mu2.to(tl.float64)) / s2w).to(acc_t)
    e = tl.exp(-2.0 * tl.abs(rho_raw.to(tl.float64)))
    mw = RHO_GAP + RHO_MAX * (2.0 * e / (1.0 + e))  # 1 - |rho|
    # log 2pi s1 s2 sqrt(w), from each log: (s1 s2)^2 underflows float64 for sigmas under ~1e-77 (floor 0)
    log_norm = (tl.log(s1w) + tl.log(s2w) + 0.5 * tl.log(mw * (2.0 - mw)) + LOG_2PI).to(acc_t)
    rho_slope = (4.0 * e / ((1.0 + e) * (1.0 + e)) * RHO_MAX).to(acc_t)  # d rho / d rho_raw
    s1, s2, m = s1w.to(acc_t), s2w.to(acc_t), mw.to(acc_t)
    sign = tl.where(rho_raw >= 0, 1.0, -1.0)
    w = m * (2.0 - m)
    v = sign * (m * z1 - (z1 - sign * z2))  # z2 - rho z1
    log_n2 = -log_norm - 0.5 * (z1 * z1 + v * v / w)
    lse, resp, pi = _mixture_posterior(logits, log_n2, k_ok)
    bce = tl.maximum(pen_logit, 0.0) - pen_logit * pen + _log1p_small(tl.exp(-tl.abs(pen_logit)))
    nll = bce - lse
    return active, ks, k_ok, mk, nll, resp, pi, s1, s2, z1, z2, v, sign, m, w, rho_slope, a1, a2, pen, pen_logit


@triton.jit
def _bigmm_nll_fwd_kernel(
    x_ptr, mu_ptr, a_ptr, rho_ptr, logits_ptr, pen_ptr, mask_ptr,  # (N, 3), (N, 2, K) x2, (N, K) x2, (N,) x2
    out_ptr,  # (N,) loss dtype
    N, K, floor,
    sx_n, sx_c, smu_n, smu_c, smu_k, sa_n, sa_c, sa_k, sr_n, sr_k, sl_n, sl_k, sp_n, smask_n,
    HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    fwd = _bigmm_rows(x_ptr, mu_ptr, a_ptr, rho_ptr, logits_ptr, pen_ptr, mask_ptr, floor, N, K, rows,
                      sx_n, sx_c, smu_n, smu_c, smu_k, sa_n, sa_c, sa_k, sr_n, sr_k, sl_n, sl_k, sp_n, smask_n,
                      out_ptr.dtype.element_ty, HAS_MASK, BLOCK_K)
    active, nll = fwd[0], fwd[4]
    tl.store(out_ptr + rows, tl.where(active, nll, 0.0), mask=rows < N)


@triton.jit
def _bigmm_nll_bwd_kernel(
    grad_ptr, x_ptr, mu_ptr, a_ptr, rho_ptr, logits_ptr, pen_ptr, mask_ptr,  # (N,) loss dtype, inputs as fwd
    dx_ptr, dmu_ptr, da_ptr, drho_ptr, dlogits_ptr, dpen_ptr,  # contiguous, input dtype
    N, K, floor,
    sg_n, sx_n, sx_c, smu_n, smu_c, smu_k, sa_n, sa_c, sa_k, sr_n, sr_k, sl_n, sl_k, sp_n, smask_n,
    HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    acc_t = grad_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    active, ks, k_ok, mk, _, resp, pi, s1, s2, z1, z2, v, sign, m, w, rho_slope, a1, a2, pen, pen_logit = _bigmm_rows(
        x_ptr, mu_ptr, a_ptr, rho_ptr, logits_ptr, pen_ptr, mask_ptr, floor, N, K, rows,
        sx_n, sx_c, smu_n, smu_c, smu_k, sa_n, sa_c, sa_k, sr_n, sr_k, sl_n, sl_k, sp_n, smask_n,
        acc_t, HAS_MASK, BLOCK_K)
    g = tl.load(grad_ptr + rows * sg_n, mask=active, other=0.0).to(acc_t)
    gr = tl.where(mk, g[:, None] * resp, 0.0)  # d nll / d log N2_k = -g r_k
    rho = sign * (1.0 - m)
    u2 = v / w
    u1 = z1 - rho * u2
    dmu1 = tl.where(mk, -gr * u1 / s1, 0.0)
    dmu2 = tl.where(mk, -gr * u2 / s2, 0.0)
    da1 = tl.where(mk, -gr * (z1 * u1 - 1.0) / s1 * _softplus_grad(a1), 0.0)
    da2 = tl.where(mk, -gr * (z2 * u2 - 1.0) / s2 * _softplus_grad(a2), 0.0)
    dlog_drho = rho / w + u1 * u2
    drho_raw = tl.where(mk, -gr * dlog_drho * rho_slope, 0.0)
    dlogits = tl.where(mk, g[:, None] * (pi - resp), 0.0)
    dpen_logit = tl.where(active, g * (_sigmoid(pen_logit) - pen), 0.0)
    dpen = tl.where(active, -g * pen_logit, 0.0)
    dx1 = -tl.sum(dmu1, axis=1)
    dx2 = -tl.sum(dmu2, axis=1)

    st = row_ok[:, None] & k_ok[None, :]
    o2 = rows[:, None] * (2 * K) + ks[None, :]
    ok = rows[:, None] * K + ks[None, :]
    tl.store(dx_ptr + rows * 3, dpen.to(dx_ptr.dtype.element_ty), mask=row_ok)
    tl.store(dx_ptr + rows * 3 + 1, dx1.to(dx_ptr.dtype.element_ty), mask=row_ok)
    tl.store(dx_ptr + rows * 3 + 2, dx2.to(dx_ptr.dtype.element_ty), mask=row_ok)
    tl.store(dmu_ptr + o2, dmu1.to(dmu_ptr.dtype.element_ty), mask=st)
    tl.store(dmu_ptr + o2 + K, dmu2.to(dmu_ptr.dtype.element_ty), mask=st)
    tl.store(da_ptr + o2, da1.to(da_ptr.dtype.element_ty), mask=st)
    tl.store(da_ptr + o2 + K, da2.to(da_ptr.dtype.element_ty), mask=st)
    tl.store(drho_ptr + ok, drho_raw.to(drho_ptr.dtype.element_ty), mask=st)
    tl.store(dlogits_ptr + ok, dlogits.to(dlogits_ptr.dtype.element_ty), mask=st)
    tl.store(dpen_ptr + rows, dpen_logit.to(dpen_ptr.dtype.element_ty), mask=row_ok)


# ---------------------------------------------------------------------------------------------------------
# Launchers: rows-first 2-D/3-D views with any strides in, fresh contiguous outputs out
# ---------------------------------------------------------------------------------------------------------


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of losses and of the math inside: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every kernel output is allocated here (uninitialised: the kernels write every element)."""
    return torch.empty(shape, dtype=dtype, device=device)


def gaussian_blocks(D: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_D): one pass over D up to 256 columns, about 1024 elements per tile."""
    block_d = min(triton.next_power_of_2(D), 256)
    return max(1, 1024 // block_d), block_d


def gmm_blocks(D: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, BLOCK_K): all K in one tile (padded), about 1024 elements of mu per tile
    (at D = 200, K = 20: one row, 32 x 32; larger tiles spill or double the registers of the backward)."""
    block_k = triton.next_power_of_2(K)
    block_d = max(1, min(triton.next_power_of_2(D), 1024 // block_k))
    return max(1, 1024 // (block_d * block_k)), block_d, block_k


def bigmm_blocks(K: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): all K in one tile, about 256 elements per tile (the backward keeps ~20 values live and
    the fp64 prologue's exp and log need many registers: at K = 20, 80 in the forward and 88 in the backward for sm_90;
    512 elements took 140 and 148)."""
    block_k = triton.next_power_of_2(K)
    return max(1, 256 // block_k), block_k


def _mask_args(mask: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    """(pointer, row stride, HAS_MASK); a bool mask is read as uint8 without a copy."""
    if mask is None:
        return like, 0, False
    return mask.view(torch.uint8), mask.stride(0), True


def gaussian_nll_fwd(x, mu, a, floor: float, mask=None, block_n: int | None = None, block_d: int | None = None):
    """x, mu, a (N, D); mask (N,) bool or None -> nll (N,) in loss_dtype(x.dtype)."""
    N, D = x.shape
    bn, bd = gaussian_blocks(D)
    bn, bd = block_n or bn, block_d or bd
    out = new_output((N,), loss_dtype(x.dtype), x.device)
    m, sm, has_mask = _mask_args(mask, x)
    _gaussian_nll_fwd_kernel[(triton.cdiv(N, bn),)](
        x, mu, a, m, out, N, D, float(floor), *x.stride(), *mu.stride(), *a.stride(), sm,
        HAS_MASK=has_mask, BLOCK_N=bn, BLOCK_D=bd)
    return out


def gaussian_nll_bwd(grad, x, mu, a, floor: float, mask=None, block_n: int | None = None,
                     block_d: int | None = None):
    """grad (N,) loss dtype; x, mu, a (N, D) -> (dx, dmu, da), each (N, D) contiguous in x.dtype."""
    N, D = x.shape
    bn, bd = gaussian_blocks(D)
    bn, bd = block_n or bn, block_d or bd
    dx, dmu, da = (new_output((N, D), x.dtype, x.device) for _ in range(3))
    m, sm, has_mask = _mask_args(mask, x)
    _gaussian_nll_bwd_kernel[(triton.cdiv(N, bn),)](
        grad, x, mu, a, m, dx, dmu, da, N, D, float(floor), grad.stride(0), *x.stride(), *mu.stride(),
        *a.stride(), sm, HAS_MASK=has_mask, BLOCK_N=bn, BLOCK_D=bd)
    return dx, dmu, da


def gmm_nll_fwd(x, mu, a, logits, floor: float, mask=None, block_n: int | None = None, block_d: int | None = None):
    """x (N, D); mu, a (N, D, K); logits (N, K) -> (nll (N,), responsibilities (N, K)) in loss_dtype(x.dtype)."""
    N, D = x.shape
    K = logits.shape[1]
    bn, bd, bk = gmm_blocks(D, K)
    bn, bd = block_n or bn, block_d or bd
    out = new_output((N,), loss_dtype(x.dtype), x.device)
    resp = new_output((N, K), loss_dtype(x.dtype), x.device)
    m, sm, has_mask = _mask_args(mask, x)
    _gmm_nll_fwd_kernel[(triton.cdiv(N, bn),)](
        x, mu, a, logits, m, out, resp, N, D, K, float(floor), *x.stride(), *mu.stride(), *a.stride(),
        *logits.stride(), sm, HAS_MASK=has_mask, BLOCK_N=bn, BLOCK_D=bd, BLOCK_K=bk)
    return out, resp


def gmm_nll_bwd(grad, resp, x, mu, a, logits, floor: float, mask=None, block_n: int | None = None,
                block_d: int | None = None):
    """grad (N,), resp (N, K) from the forward -> (dx (N, D), dmu, da (N, D, K), dlogits (N, K)) in x.dtype."""
    N, D = x.shape
    K = logits.shape[1]
    bn, bd, bk = gmm_blocks(D, K)
    bn, bd = block_n or bn, block_d or bd
    dx = new_output((N, D), x.dtype, x.device)
    dmu, da = (new_output((N, D, K), x.dtype, x.device) for _ in range(2))
    dlogits = new_output((N, K), x.dtype, x.device)
    m, sm, has_mask = _mask_args(mask, x)
    _gmm_nll_bwd_kernel[(triton.cdiv(N, bn),)](
        grad, resp, x, mu, a, logits, m, dx, dmu, da, dlogits, N, D, K, float(floor), grad.stride(0),
        *x.stride(), *mu.stride(), *a.stride(), *logits.stride(), sm,
        HAS_MASK=has_mask, BLOCK_N=bn, BLOCK_D=bd, BLOCK_K=bk)
    return dx, dmu, da, dlogits


def bigmm_nll_fwd(x, mu, a, rho_raw, logits, pen_logit, floor: float, mask=None, block_n: int | None = None):
    """x (N, 3); mu, a (N, 2, K); rho_raw, logits (N, K); pen_logit (N,) -> nll (N,) in loss_dtype(x.dtype)."""
    N, K = logits.shape
    bn, bk = bigmm_blocks(K)
    bn = block_n or bn
    out = new_output((N,), loss_dtype(x.dtype), x.device)
    m, sm, has_mask = _mask_args(mask, x)
    _bigmm_nll_fwd_kernel[(triton.cdiv(N, bn),)](
        x, mu, a, rho_raw, logits, pen_logit, m, out, N, K, float(floor), *x.stride(), *mu.stride(),
        *a.stride(), *rho_raw.stride(), *logits.stride(), pen_logit.stride(0), sm,
        HAS_MASK=has_mask, BLOCK_N=bn, BLOCK_K=bk)
    return out


def bigmm_nll_bwd(grad, x, mu, a, rho_raw, logits, pen_logit, floor: float, mask=None,
                  block_n: int | None = None):
    """grad (N,) -> (dx (N, 3), dmu, da (N, 2, K), drho_raw, dlogits (N, K), dpen_logit (N,)) in x.dtype."""
    N, K = logits.shape
    bn, bk = bigmm_blocks(K)
    bn = block_n or bn
    dx = new_output((N, 3), x.dtype, x.device)
    dmu, da = (new_output((N, 2, K), x.dtype, x.device) for _ in range(2))
    drho, dlogits = (new_output((N, K), x.dtype, x.device) for _ in range(2))
    dpen = new_output((N,), x.dtype, x.device)
    m, sm, has_mask = _mask_args(mask, x)
    _bigmm_nll_bwd_kernel[(triton.cdiv(N, bn),)](
        grad, x, mu, a, rho_raw, logits, pen_logit, m, dx, dmu, da, drho, dlogits, dpen, N, K, float(floor),
        grad.stride(0), *x.stride(), *mu.stride(), *a.stride(), *rho_raw.stride(), *logits.stride(),
        pen_logit.stride(0), sm, HAS_MASK=has_mask, BLOCK_N=bn, BLOCK_K=bk)
    return dx, dmu, da, drho, dlogits, dpen


# ---------------------------------------------------------------------------------------------------------
# sm_90 compile cases (consumed by tests/test_sm90_compile.py and benchmarks/kernel_resources.py)
# ---------------------------------------------------------------------------------------------------------

_TRITON_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16"}
_LOSS_ARGS = ("out_ptr", "resp_ptr", "grad_ptr")  # pointers in the loss dtype (fp32 for these inputs)
_UNIT_STRIDES = ("sx_d", "smu_k", "sa_k", "sr_k", "sl_k", "sg_n", "sp_n", "smask_n")  # contiguous inputs


def _case(name: str, fn, dtype: torch.dtype, has_mask: bool, blocks: dict) -> tuple:
    """(name, fn, signature, constexprs) as the runtime would specialise a launch on contiguous inputs:
    pointers typed by role, unit strides folded to constexpr 1 (as Triton does for int args equal to 1)."""
    ty = _TRITON_TYPE[dtype]
    constexprs = dict(blocks, HAS_MASK=has_mask)
    constexprs.update({arg: 1 for arg in _UNIT_STRIDES if arg in fn.arg_names})
    if not has_mask:
        constexprs.pop("smask_n", None)
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg == "mask_ptr":
            signature[arg] = "*u8" if has_mask else f"*{ty}"
        elif arg in _LOSS_ARGS:
            signature[arg] = "*fp32"
        elif arg.endswith("_ptr"):
            signature[arg] = f"*{ty}"
        elif arg == "floor":
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
    return (f"{name}[{ty},mask={int(has_mask)}]", fn, signature, constexprs)


def sm90_compile_cases(D: int = 200, K: int = 20) -> list[tuple]:
    """Every kernel at the paper's shapes: speech D = 200, K = 20; handwriting bigmm K = 20; float32 and
    bfloat16 inputs, with and without a mask. The row count N = B * T (2560 or 5120 for B = 64, 128 and
    T = 40) is a runtime argument that no tile depends on, so one compile per tiling covers both batches.
    Returns [(name, jit_fn, signature, constexprs)] for ``triton.compile(ASTSource(fn, signature, constexprs))``.
    """
    g_n, g_d = gaussian_blocks(D)
    m_n, m_d, m_k = gmm_blocks(D, K)
    b_n, b_k = bigmm_blocks(K)
    kernels = [
        (f"gaussian_nll_fwd[D={D}]", _gaussian_nll_fwd_kernel, dict(BLOCK_N=g_n, BLOCK_D=g_d)),
        (f"gaussian_nll_bwd[D={D}]", _gaussian_nll_bwd_kernel, dict(BLOCK_N=g_n, BLOCK_D=g_d)),
        (f"gmm_nll_fwd[D={D},K={K}]", _gmm_nll_fwd_kernel, dict(BLOCK_N=m_n, BLOCK_D=m_d, BLOCK_K=m_k)),
        (f"gmm_nll_bwd[D={D},K={K}]", _gmm_nll_bwd_kernel, dict(BLOCK_N=m_n, BLOCK_D=m_d, BLOCK_K=m_k)),
        (f"bigmm_nll_fwd[K={K}]", _bigmm_nll_fwd_kernel, dict(BLOCK_N=b_n, BLOCK_K=b_k)),
        (f"bigmm_nll_bwd[K={K}]", _bigmm_nll_bwd_kernel, dict(BLOCK_N=b_n, BLOCK_K=b_k)),
    ]
    return [_case(name, fn, dtype, has_mask, blocks) for name, fn, blocks in kernels
            for dtype in (torch.float32, torch.bfloat16) for has_mask in (False, True)]
