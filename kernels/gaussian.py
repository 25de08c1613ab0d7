"""Gaussian head: reparameterised sample and diagonal-Gaussian KL, forward and fused backward.

Dimension glossary:
  N  rows (B for one step, B * T for all steps)      Z  latent size (200 in the paper)
  BLOCK_N, BLOCK_Z  tile sizes (powers of two)
Layouts: mu, a, eps, z (N, Z); mask (N,) bool; kl (N,). Any strides.

Math (fp32 inside for fp32/bf16/fp16, fp64 for fp64; sigma = softplus(a) + floor, softplus as torch's):
  reparameterise  z = mu + s eps; eps is given, or eps = randn(seed, n * Z + j) (Philox, regenerated in
                  the backward instead of stored).  dmu = dz, da = dz eps softplus'(a), deps = dz s.
  KL (per row)    sum_j [log s_p - log s_q + (s_q^2 + d^2) / (2 s_p^2) - 1/2],  d = mu_q - mu_p;
                  standard-normal prior (VRNN-I): sum_j [-log s_q + (s_q^2 + mu_q^2) / 2 - 1/2].
                  dmu_q = g d / s_p^2 = -dmu_p,  ds_q = g (s_q / s_p^2 - 1 / s_q),
                  ds_p = g (1 / s_p - (s_q^2 + d^2) / s_p^3),  da = ds softplus'(a)  (s_p = 1, mu_p = 0 for N(0, I)).
Masked rows (mask False) give exactly 0 in the KL and in its gradients.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .densities import _softplus, _softplus_grad  # torch-exact softplus, shared with the log-density kernels
from .sm90 import compile_case

# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _eps_tile(eps_ptr, seed, rows, cols, ok, se_n, se_z, Z, dt: tl.constexpr, HAS_EPS: tl.constexpr):
    """The noise of a (BLOCK_N, BLOCK_Z) tile: loaded, or drawn from the seed at logical index n * Z + j."""
    if HAS_EPS:
        eps = tl.load(eps_ptr + rows[:, None] * se_n + cols[None, :] * se_z, mask=ok, other=0.0).to(dt)
    else:
        # Box-Muller: tl.sin / tl.cos, for which triton 3.6 reserves a 32-byte stack frame (libdevice's slow-path
        # argument reduction; tl.rand alone: none; triton 3.9: none), so kernel_resources.py under 3.6 lists the
        # seeded kernels with STACK 32: not a register spill
        eps = tl.randn(seed, rows[:, None] * Z + cols[None, :]).to(dt)
    return eps


@triton.jit
def _reparam_fwd_kernel(
    mu_ptr, a_ptr, eps_ptr, z_ptr,  # (N, Z) each; eps_ptr unused without HAS_EPS
    seed, N, Z, floor,
    smu_n, smu_z, sa_n, sa_z, se_n, se_z, sz_n, sz_z,  # strides (row, column)
    HAS_EPS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Z: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_Z + tl.arange(0, BLOCK_Z)
    ok = (rows < N)[:, None] & (cols < Z)[None, :]
    dt: tl.constexpr = tl.float64 if mu_ptr.dtype.element_ty == tl.float64 else tl.float32  # math dtype
    mu = tl.load(mu_ptr + rows[:, None] * smu_n + cols[None, :] * smu_z, mask=ok, other=0.0).to(dt)
    a = tl.load(a_ptr + rows[:, None] * sa_n + cols[None, :] * sa_z, mask=ok, other=0.0).to(dt)
    eps = _eps_tile(eps_ptr, seed, rows, cols, ok, se_n, se_z, Z, dt, HAS_EPS)
    z = mu + (_softplus(a) + floor) * eps
    tl.store(z_ptr + rows[:, None] * sz_n + cols[None, :] * sz_z, z.to(z_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _reparam_bwd_kernel(
    dz_ptr, a_ptr, eps_ptr, da_ptr, deps_ptr,  # (N, Z) each; dmu = dz needs no kernel
    seed, N, Z, floor,
    sdz_n, sdz_z, sa_n, sa_z, se_n, se_z, sda_n, sda_z, sde_n, sde_z,  # strides (row, column)
    HAS_EPS: tl.constexpr, WANT_DEPS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Z: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_Z + tl.arange(0, BLOCK_Z)
    ok = (rows < N)[:, None] & (cols < Z)[None, :]
    dt: tl.constexpr = tl.float64 if a_ptr.dtype.element_ty == tl.float64 else tl.float32  # math dtype
    dz = tl.load(dz_ptr + rows[:, None] * sdz_n + cols[None, :] * sdz_z, mask=ok, other=0.0).to(dt)
    a = tl.load(a_ptr + rows[:, None] * sa_n + cols[None, :] * sa_z, mask=ok, other=0.0).to(dt)
    eps = _eps_tile(eps_ptr, seed, rows, cols, ok, se_n, se_z, Z, dt, HAS_EPS)
    tl.store(da_ptr + rows[:, None] * sda_n + cols[None, :] * sda_z,
             (dz * eps * _softplus_grad(a)).to(da_ptr.dtype.element_ty), mask=ok)
    if WANT_DEPS:
        tl.store(deps_ptr + rows[:, None] * sde_n + cols[None, :] * sde_z,
                 (dz * (_softplus(a) + floor)).to(deps_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _row_keep(mask_ptr, rows, smask_n, N, HAS_MASK: tl.constexpr):
    """(BLOCK_N,) bool: row in range and (no mask or mask True)."""
    if HAS_MASK:
        return (rows < N) & (tl.load(mask_ptr + rows * smask_n, mask=rows < N, other=0) != 0)
    else:
        return rows < N


@triton.jit
def _kl_fwd_kernel(
    mq_ptr, aq_ptr, mp_ptr, ap_ptr, mask_ptr, kl_ptr,  # (N, Z) x 4, (N,) bool as u8, (N,) out
    N, Z, floor,
    smq_n, smq_z, saq_n, saq_z, smp_n, smp_z, sap_n, sap_z, smask_n,  # strides
    HAS_PRIOR: tl.constexpr, HAS_MASK: tl.constexpr,  # no prior: N(0, I); no mask: every row counts
    BLOCK_N: tl.constexpr, BLOCK_Z: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _row_keep(mask_ptr, rows, smask_n, N, HAS_MASK)
    dt: tl.constexpr = tl.float64 if kl_ptr.dtype.element_ty == tl.float64 else tl.float32  # math dtype
    acc = tl.zeros((BLOCK_N,), dtype=dt)
    for z0 in range(0, Z, BLOCK_Z):
        cols = z0 + tl.arange(0, BLOCK_Z).to(tl.int64)
        ok = keep[:, None] & (cols < Z)[None, :]
        mq = tl.load(mq_ptr + rows[:, None] * smq_n + cols[None, :] * smq_z, mask=ok, other=0.0).to(dt)
        s_q = _softplus(tl.load(aq_ptr + rows[:, None] * saq_n + cols[None, :] * saq_z, mask=ok, other=0.0)
                        .to(dt)) + floor
        if HAS_PRIOR:
            mp = tl.load(mp_ptr + rows[:, None] * smp_n + cols[None, :] * smp_z, mask=ok, other=0.0).to(dt)
            s_p = _softplus(tl.load(ap_ptr + rows[:, None] * sap_n + cols[None, :] * sap_z, mask=ok, other=0.0)
                            .to(dt)) + floor
            d = mq - mp
            term = tl.log(s_p) - tl.log(s_q) + 0.5 * (s_q * s_q + d * d) / (s_p * s_p) - 0.5
        else:
            term = -tl.log(s_q) + 0.5 * (s_q * s_q + mq * mq) - 0.5
        acc += tl.sum(tl.where(ok, term, 0.0), axis=1)
    tl.store(kl_ptr + rows, tl.where(keep, acc, 0.0), mask=rows < N)


@triton.jit
def _kl_bwd_kernel(
    grad_ptr, mq_ptr, aq_ptr, mp_ptr, ap_ptr, mask_ptr,  # (N,), (N, Z) x 4, (N,) bool as u8
    dmq_ptr, daq_ptr, dmp_ptr, dap_ptr,  # (N, Z) outputs (the prior's only with HAS_PRIOR)
    N, Z, floor,
    sg_n, smq_n, smq_z, saq_n, saq_z, smp_n, smp_z, sap_n, sap_z, smask_n,  # input strides
    sdmq_n, sdmq_z, sdaq_n, sdaq_z, sdmp_n, sdmp_z, sdap_n, sdap_z,  # output strides
    HAS_PRIOR: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Z: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _row_keep(mask_ptr, rows, smask_n, N, HAS_MASK)
    dt: tl.constexpr = tl.float64 if grad_ptr.dtype.element_ty == tl.float64 else tl.float32  # math dtype
    g = tl.where(keep, tl.load(grad_ptr + rows * sg_n, mask=keep, other=0.0).to(dt), 0.0)[:, None]
    out_ty = dmq_ptr.dtype.element_ty
    for z0 in range(0, Z, BLOCK_Z):
        cols = z0 + tl.arange(0, BLOCK_Z).to(tl.int64)
        ok = keep[:, None] & (cols < Z)[None, :]
        in_range = (rows < N)[:, None] & (cols < Z)[None, :]
        mq = tl.load(mq_ptr + rows[:, None] * smq_n + cols[None, :] * smq_z, mask=ok, other=0.0).to(dt)
        aq = tl.load(aq_ptr + rows[:, None] * saq_n + cols[None, :] * saq_z, mask=ok, other=0.0).to(dt)
        s_q = _softplus(aq) + floor
        if HAS_PRIOR:
            mp = tl.load(mp_ptr + rows[:, None] * smp_n + cols[None, :] * smp_z, mask=ok, other=0.0).to(dt)
            ap = tl.load(ap_ptr + rows[:, None] * sap_n + cols[None, :] * sap_z, mask=ok, other=0.0).to(dt)
            s_p = _softplus(ap) + floor
            inv_p2 = 1.0 / (s_p * s_p)
            d = mq - mp
            dmq = g * d * inv_p2
            ds_q = g * (s_q * inv_p2 - 1.0 / s_q)
            ds_p = g * (1.0 - (s_q * s_q + d * d) * inv_p2) / s_p
            tl.store(dmp_ptr + rows[:, None] * sdmp_n + cols[None, :] * sdmp_z, (-dmq).to(out_ty), mask=in_range)
            tl.store(dap_ptr + rows[:, None] * sdap_n + cols[None, :] * sdap_z,
                     (ds_p * _softplus_grad(ap)).to(out_ty), mask=in_range)
        else:
            dmq = g * mq
            ds_q = g * (s_q - 1.0 / s_q)
        tl.store(dmq_ptr + rows[:, None] * sdmq_n + cols[None, :] * sdmq_z, dmq.to(out_ty), mask=in_range)
        tl.store(daq_ptr + rows[:, None] * sdaq_n + cols[None, :] * sdaq_z,
                 (ds_q * _softplus_grad(aq)).to(out_ty), mask=in_range)


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the KL and of the math inside: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gaussian_blocks(N: int, Z: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_Z): the whole latent (up to 256) in one tile, about 512 elements per tile (the KL
    backward holds ~10 tiles live: 1024-element tiles take ~150 registers on sm_90)."""
    block_z = max(16, min(triton.next_power_of_2(Z), 256))
    return max(1, min(triton.next_power_of_2(N), 512 // block_z)), block_z


def _strides(t: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(pointer, row stride, column stride); an absent tensor passes ``like`` (never read)."""
    return (like, 0, 0) if t is None else (t, *t.stride())


def reparam_fwd(mu, a, eps, seed: int, floor: float, block_n: int | None = None, block_z: int | None = None):
    """mu, a (N, Z); eps (N, Z) or None (drawn from ``seed``) -> z (N, Z) contiguous in mu.dtype."""
    N, Z = mu.shape
    bn, bz = gaussian_blocks(N, Z)
    bn, bz = block_n or bn, block_z or bz
    z = torch.empty((N, Z), dtype=mu.dtype, device=mu.device)
    eps_arg, se_n, se_z = _strides(eps, mu)
    _reparam_fwd_kernel[(triton.cdiv(N, bn), triton.cdiv(Z, bz))](
        mu, a, eps_arg, z, seed, N, Z, float(floor), *mu.stride(), *a.stride(), se_n, se_z, *z.stride(),
        HAS_EPS=eps is not None, BLOCK_N=bn, BLOCK_Z=bz)
    return z


def reparam_bwd(dz, a, eps, seed: int, floor: float, want_deps: bool, block_n: int | None = None,
                block_z: int | None = None):
    """dz, a (N, Z) -> (da (N, Z), deps (N, Z) or None) in a.dtype (dmu is dz itself)."""
    N, Z = a.shape
    bn, bz = gaussian_blocks(N, Z)
    bn, bz = block_n or bn, block_z or bz
    da = torch.empty((N, Z), dtype=a.dtype, device=a.device)
    deps = torch.empty((N, Z), dtype=a.dtype, device=a.device) if want_deps else None
    eps_arg, se_n, se_z = _strides(eps, a)
    deps_arg, sde_n, sde_z = _strides(deps, a)
    _reparam_bwd_kernel[(triton.cdiv(N, bn), triton.cdiv(Z, bz))](
        dz, a, eps_arg, da, deps_arg, seed, N, Z, float(floor), *dz.stride(), *a.stride(), se_n, se_z,
        *da.stride(), sde_n, sde_z, HAS_EPS=eps is not None, WANT_DEPS=want_deps, BLOCK_N=bn, BLOCK_Z=bz)
    return da, deps


def _mask_args(mask: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(pointer, row stride); a bool mask is read as uint8 without a copy."""
    return (like, 0) if mask is None else (mask.view(torch.uint8), mask.stride(0))


def kl_fwd(mu_q, a_q, mu_p, a_p, floor: float, mask=None, block_n: int | None = None,
           block_z: int | None = None):
    """mu_q, a_q (N, Z); mu_p, a_p (N, Z) or both None (N(0, I)); mask (N,) bool or None
    -> kl (N,) in loss_dtype(mu_q.dtype)."""
    N, Z = mu_q.shape
    bn, bz = gaussian_blocks(N, Z)
    bn, bz = block_n or bn, block_z or bz
    kl = torch.empty((N,), dtype=loss_dtype(mu_q.dtype), device=mu_q.device)
    (mp, *smp), (ap, *sap) = _strides(mu_p, mu_q), _strides(a_p, mu_q)
    m, sm = _mask_args(mask, mu_q)
    _kl_fwd_kernel[(triton.cdiv(N, bn),)](
        mu_q, a_q, mp, ap, m, kl, N, Z, float(floor), *mu_q.stride(), *a_q.stride(), *smp, *sap, sm,
        HAS_PRIOR=mu_p is not None, HAS_MASK=mask is not None, BLOCK_N=bn, BLOCK_Z=bz)
    return kl


def kl_bwd(grad, mu_q, a_q, mu_p, a_p, floor: float, mask=None, block_n: int | None = None,
           block_z: int | None = None):
    """grad (N,) in the loss dtype -> (dmu_q, da_q, dmu_p, da_p), each (N, Z) in mu_q.dtype
    (the prior's are None without a prior). Masked rows get zero gradients."""
    N, Z = mu_q.shape
    bn, bz = gaussian_blocks(N, Z)
    bn, bz = block_n or bn, block_z or bz
    has_prior = mu_p is not None
    grads = [torch.empty((N, Z), dtype=mu_q.dtype, device=mu_q.device) for _ in range(4 if has_prior else 2)]
    dmq, daq = grads[:2]
    (mp, *smp), (ap, *sap) = _strides(mu_p, mu_q), _strides(a_p, mu_q)
    (dmp, *sdmp), (dap, *sdap) = (_strides(t, mu_q) for t in (grads[2:] or [None, None]))
    m, sm = _mask_args(mask, mu_q)
    _kl_bwd_kernel[(triton.cdiv(N, bn),)](
        grad, mu_q, a_q, mp, ap, m, dmq, daq, dmp, dap, N, Z, float(floor), grad.stride(0), *mu_q.stride(),
        *a_q.stride(), *smp, *sap, sm, *dmq.stride(), *daq.stride(), *sdmp, *sdap,
        HAS_PRIOR=has_prior, HAS_MASK=mask is not None, BLOCK_N=bn, BLOCK_Z=bz)
    return dmq, daq, (grads[2] if has_prior else None), (grads[3] if has_prior else None)


# ---------------------------------------------------------------------------------------------------------
# sm_90 compile cases (tests/test_sm90_compile.py, benchmarks/kernel_resources.py)
# ---------------------------------------------------------------------------------------------------------


def sm90_compile_cases(Z: int = 200, batches=(64, 128), steps: int = 40) -> list[tuple]:
    """Every kernel and flag combination at the paper's shapes, float32 and bfloat16 inputs: the sample on
    N = B rows per step, the KL on N = B * T rows. N is a runtime argument; one compile per distinct tiling."""
    shapes = [("reparam", B) for B in batches] + [("kl", B * steps) for B in batches]
    tilings: dict[tuple[str, int, int], list[int]] = {}
    for op, N in shapes:
        tilings.setdefault((op, *gaussian_blocks(N, Z)), []).append(N)
    cases = []
    for (op, bn, bz), rows in tilings.items():
        blocks = dict(BLOCK_N=bn, BLOCK_Z=bz)
        tag = f"N={','.join(map(str, rows))};Z={Z};tile={bn}x{bz}"
        for dtype in (torch.float32, torch.bfloat16):
            if op == "reparam":
                for has_eps in (True, False):
                    cases.append(compile_case(
                        f"reparam_fwd[{tag};eps={'given' if has_eps else 'seeded'}]", _reparam_fwd_kernel, dtype,
                        dict(blocks, HAS_EPS=has_eps), unit_strides=("smu_z", "sa_z", "se_z", "sz_z"),
                        i64_args=("seed",)))
                    cases.append(compile_case(
                        f"reparam_bwd[{tag};eps={'given' if has_eps else 'seeded'}]", _reparam_bwd_kernel, dtype,
                        dict(blocks, HAS_EPS=has_eps, WANT_DEPS=has_eps),
                        unit_strides=("sdz_z", "sa_z", "se_z", "sda_z", "sde_z"), i64_args=("seed",)))
                continue
            for has_prior in (True, False):
                for has_mask in (True, False):
                    flags = dict(blocks, HAS_PRIOR=has_prior, HAS_MASK=has_mask)
                    name = f"{tag};prior={'learned' if has_prior else 'N01'};mask={int(has_mask)}"
                    units = ("smq_z", "saq_z", "smp_z", "sap_z") + (("smask_n",) if has_mask else ())
                    u8 = ("mask_ptr",) if has_mask else ()
                    cases.append(compile_case(f"kl_fwd[{name}]", _kl_fwd_kernel, dtype, flags, unit_strides=units,
                                              fp32_ptrs=("kl_ptr",), u8_ptrs=u8))
                    cases.append(compile_case(
                        f"kl_bwd[{name}]", _kl_bwd_kernel, dtype, flags,
                        unit_strides=units + ("sg_n", "sdmq_z", "sdaq_z", "sdmp_z", "sdap_z"),
                        fp32_ptrs=("grad_ptr",), u8_ptrs=u8))
    return cases
