"""Per-step fused kernels of the VRNN recurrence (the Triton backend of vrnn_fast/recurrence.py): each launcher
runs ONE kernel that writes into outputs the caller gives (any strides), so a step's forward and backward are
a handful of launches with no allocation and no host sync (CUDA-graph friendly).

Dimension glossary:
  M  rows of one time step (the batch B: 1..128)      K  reduction size (layer input width)
  N  output columns of a layer                         H  LSTM units (1200, 2000, 4000)
  E  encoder width (input of the heads)                Z  latent size (50, 200)
  F  phi_z width (output of the first phi_z layer)     BLOCK_*  tile sizes (tl.dot tiles >= 16)
Layouts: w (N, K) is a row-major-or-not weight multiplied as a @ w^T (pass W.t() to multiply by W); gates,
pre, dgates (M, 4H) in order [i, f, g, o] (gate q of unit j at column q*H + j); heads [mu | a] (M, 2Z);
masks and carry_rows (M,) bool. Every tensor may have any strides.

Math: fp32 inside for fp32/bf16/fp16 inputs, fp64 for fp64; outputs are rounded to their own dtype.
  linear          out = act(A' w^T + addend + bias + where(carry_rows, carry, 0)),
                  A' = where(a_gate > 0, a, 0) (relu backward, as torch's threshold_backward), act = relu or id
  head_fwd        [mu | a_raw] = a w^T + bias (one program owns columns j of both halves: rows j and Z + j of w),
                  z = mu + (softplus(a_raw) + floor) eps
  head_bwd        dz = where(g_gate > 0, g, 0) w^T + g_z,  dma = [dz + g_mu | dz eps softplus'(a_raw) + g_a]
  gates_cell_fwd  G = pre + a w^T;  c_new = s(f) c_prev + s(i) tanh(g),  h_new = s(o) tanh(c_new);
                  (h, c) = mask ? (h_new, c_new) : (h_prev, c_prev)
  cell_bwd        masked-in rows: kernels/lstm.py's cell backward (dgates, dc_prev); others: dgates = 0, dc_out = dc
softplus as torch's (threshold 20); tanh, sigmoid from kernels/densities.py (relative accuracy at every scale).

Contract beyond the formulas:
  - linear's carry counts only with carry_rows: None for either makes where(carry_rows, carry, 0) zero.
  - All inputs share one compute dtype, except c_prev / c_out / dc / dc_out (the cell state may be float32
    while the rest is bf16). None for an optional input means zero / absent (a constexpr flag; a dummy pointer).
  - An output may be the same memory as an element-wise input at the same position (addend, carry, g_mu, g_a,
    g_z, h_prev / c_prev, dc): each element is read before it is written, by the same program. It must not
    overlap a GEMM operand (a, w, a_gate, g, g_gate): other programs still read those. In particular h_out
    must not be a view of `a` in gates_cell_fwd.
  - M = 0 (or N = 0) launches nothing.
  - bf16/fp16 GEMM tiles go to tl.dot as they are (tensor cores, fp32 accumulation); under TRITON_INTERPRET=1
    they are upcast to fp32 first (the interpreter's bf16 tl.dot is wrong): the same products, exactly.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .densities import _row_mask, _softplus, _softplus_grad
from .lstm import _cell_grads, _cell_update, _dot, _gates_gemm, _load_gates, _store_gates, lstm_blocks
from .sm90 import compile_case

# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _load2(ptr, rows, cols, s_r, s_c, ok, dt: tl.constexpr):
    """A (len(rows), len(cols)) tile of a 2-D tensor in dtype dt (0 where not ok)."""
    return tl.load(ptr + rows[:, None] * s_r + cols[None, :] * s_c, mask=ok, other=0.0).to(dt)


@triton.jit
def _store2(ptr, rows, cols, s_r, s_c, ok, x):
    tl.store(ptr + rows[:, None] * s_r + cols[None, :] * s_c, x.to(ptr.dtype.element_ty), mask=ok)


@triton.jit
def _gated_gemm(a_ptr, gate_ptr, w_ptr, rows, cols, row_ok, col_ok, K, sa_m, sa_k, sg_m, sg_k, sw_n, sw_k,
                acc_ty: tl.constexpr, HAS_GATE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_M, BLOCK_N) tile of A' w^T in acc_ty: a (M, K), w (N, K); HAS_GATE: A' = where(gate > 0, a, 0)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_ty)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        k_ok = ks < K
        a_ok = row_ok[:, None] & k_ok[None, :]
        a = tl.load(a_ptr + rows[:, None] * sa_m + ks[None, :] * sa_k, mask=a_ok, other=0.0)
        if HAS_GATE:
            gate = tl.load(gate_ptr + rows[:, None] * sg_m + ks[None, :] * sg_k, mask=a_ok, other=0.0)
            a = tl.where(gate > 0, a, tl.zeros_like(a))
        b = tl.load(w_ptr + cols[None, :] * sw_n + ks[:, None] * sw_k, mask=k_ok[:, None] & col_ok[None, :],
                    other=0.0)  # (BLOCK_K, BLOCK_N) tile of w^T
        acc = _dot(a, b, acc, UPCAST)
    return acc


# ---------------------------------------------------------------------------------------------------------
# Kernels: grid (cdiv(M, BLOCK_M), cdiv(columns, BLOCK_N / BLOCK_Z / BLOCK_H))
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _linear_kernel(
    a_ptr, w_ptr, gate_ptr, addend_ptr, bias_ptr, carry_ptr, take_ptr,  # (M, K), (N, K), (M, K), (M, N), (N,),
    out_ptr,  # (M, N)                                                     (M, N), (M,) bool as u8
    M, N, K,
    sa_m, sa_k, sw_n, sw_k, sg_m, sg_k, sad_m, sad_n, sb_n, sc_m, sc_n, st_m, so_m, so_n,  # strides
    HAS_GATE: tl.constexpr, HAS_ADDEND: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CARRY: tl.constexpr,
    RELU: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < M, cols < N
    acc_ty: tl.constexpr = tl.float64 if a_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc = _gated_gemm(a_ptr, gate_ptr, w_ptr, rows, cols, row_ok, col_ok, K, sa_m, sa_k, sg_m, sg_k, sw_n, sw_k,
                      acc_ty, HAS_GATE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
    ok = row_ok[:, None] & col_ok[None, :]
    if HAS_ADDEND:
        acc += _load2(addend_ptr, rows, cols, sad_m, sad_n, ok, acc_ty)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols * sb_n, mask=col_ok, other=0.0).to(acc_ty)[None, :]
    if HAS_CARRY:
        take = _row_mask(take_ptr, rows, row_ok, st_m, True)
        acc += _load2(carry_ptr, rows, cols, sc_m, sc_n, take[:, None] & col_ok[None, :], acc_ty)
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)  # NaN stays NaN, as torch.relu
    _store2(out_ptr, rows, cols, so_m, so_n, ok, acc)


@triton.jit
def _head_fwd_kernel(
    a_ptr, w_ptr, bias_ptr, eps_ptr,  # (M, E), (2Z, E), (2Z,), (M, Z)
    ma_ptr, z_ptr,  # outputs (M, 2Z) = [mu | a_raw], (M, Z)
    M, Z, K, floor,
    sa_m, sa_k, sw_r, sw_k, sb_n, se_m, se_z, sma_m, sma_n, sz_m, sz_z,  # strides
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Z: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_Z + tl.arange(0, BLOCK_Z)
    row_ok, col_ok = rows < M, cols < Z
    acc_ty: tl.constexpr = tl.float64 if a_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc_mu = tl.zeros((BLOCK_M, BLOCK_Z), dtype=acc_ty)
    acc_a = tl.zeros((BLOCK_M, BLOCK_Z), dtype=acc_ty)
    w_mu = w_ptr + cols[None, :] * sw_r  # (1, BLOCK_Z): rows j of w (mu); rows Z + j (a_raw) are Z * sw_r on
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        k_ok = ks < K
        a = tl.load(a_ptr + rows[:, None] * sa_m + ks[None, :] * sa_k, mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        b_ok = k_ok[:, None] & col_ok[None, :]
        b = w_mu + ks[:, None] * sw_k
        acc_mu = _dot(a, tl.load(b, mask=b_ok, other=0.0), acc_mu, UPCAST)
        acc_a = _dot(a, tl.load(b + Z * sw_r, mask=b_ok, other=0.0), acc_a, UPCAST)
    if HAS_BIAS:
        acc_mu += tl.load(bias_ptr + cols * sb_n, mask=col_ok, other=0.0).to(acc_ty)[None, :]
        acc_a += tl.load(bias_ptr + (Z + cols) * sb_n, mask=col_ok, other=0.0).to(acc_ty)[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    _store2(ma_ptr, rows, cols, sma_m, sma_n, ok, acc_mu)
    _store2(ma_ptr, rows, Z + cols, sma_m, sma_n, ok, acc_a)
    eps = _load2(eps_ptr, rows, cols, se_m, se_z, ok, acc_ty)
    _store2(z_ptr, rows, cols, sz_m, sz_z, ok, acc_mu + (_softplus(acc_a) + floor) * eps)


@triton.jit
def _head_bwd_kernel(
    g_ptr, w_ptr, gate_ptr, gz_ptr, gmu_ptr, ga_ptr, araw_ptr, eps_ptr,  # (M, F), (Z, F), (M, F), (M, Z) x 5
    dma_ptr, dz_ptr,  # outputs (M, 2Z), (M, Z)
    M, Z, K,
    sg_m, sg_k, sw_z, sw_k, sgg_m, sgg_k, sgz_m, sgz_z, sgm_m, sgm_z, sga_m, sga_z, sar_m, sar_z, se_m, se_z,
    sdma_m, sdma_n, sdz_m, sdz_z,  # strides
    HAS_GATE: tl.constexpr, HAS_GZ: tl.constexpr, HAS_GMU: tl.constexpr, HAS_GA: tl.constexpr,
    HAS_DZ: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Z: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_Z + tl.arange(0, BLOCK_Z)
    row_ok, col_ok = rows < M, cols < Z
    acc_ty: tl.constexpr = tl.float64 if g_ptr.dtype.element_ty == tl.float64 else tl.float32
    dz = _gated_gemm(g_ptr, gate_ptr, w_ptr, rows, cols, row_ok, col_ok, K, sg_m, sg_k, sgg_m, sgg_k, sw_z, sw_k,
                     acc_ty, HAS_GATE, UPCAST, BLOCK_M, BLOCK_Z, BLOCK_K)
    ok = row_ok[:, None] & col_ok[None, :]
    if HAS_GZ:
        dz += _load2(gz_ptr, rows, cols, sgz_m, sgz_z, ok, acc_ty)
    dmu = dz
    if HAS_GMU:
        dmu += _load2(gmu_ptr, rows, cols, sgm_m, sgm_z, ok, acc_ty)
    a_raw = _load2(araw_ptr, rows, cols, sar_m, sar_z, ok, acc_ty)
    da = dz * _load2(eps_ptr, rows, cols, se_m, se_z, ok, acc_ty) * _softplus_grad(a_raw)
    if HAS_GA:
        da += _load2(ga_ptr, rows, cols, sga_m, sga_z, ok, acc_ty)
    _store2(dma_ptr, rows, cols, sdma_m, sdma_n, ok, dmu)
    _store2(dma_ptr, rows, Z + cols, sdma_m, sdma_n, ok, da)
    if HAS_DZ:
        _store2(dz_ptr, rows, cols, sdz_m, sdz_z, ok, dz)


@triton.jit
def _gates_cell_fwd_kernel(
    a_ptr, w_ptr, pre_ptr, c_prev_ptr, h_prev_ptr, mask_ptr,  # (M, K), (4H, K), (M, 4H), (M, H) x 2, (M,) u8
    gates_ptr, h_ptr, c_ptr,  # outputs (M, 4H), (M, H), (M, H)
    M, H, K,
    sa_m, sa_k, sw_r, sw_k, sp_m, sp_h, scp_m, scp_h, shp_m, shp_h, smask_m, sg_m, sg_h, sh_m, sh_h, sc_m, sc_h,
    HAS_MASK: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The recurrent GEMM with the cell update and the step mask as its epilogue (kernels/lstm.py's
    _lstm_gemm_fwd_kernel plus the mask): the gates never round-trip through memory before the cell."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, col_ok = rows < M, cols < H
    ok = row_ok[:, None] & col_ok[None, :]
    acc_ty: tl.constexpr = tl.float64 if a_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc_i, acc_f, acc_g, acc_o = _gates_gemm(a_ptr, w_ptr, rows, cols, row_ok, col_ok, H, K, sa_m, sa_k, sw_r,
                                             sw_k, acc_ty, BLOCK_M, BLOCK_H, BLOCK_K, UPCAST)
    i, f, g, o = _load_gates(pre_ptr, rows, cols, ok, sp_m, sp_h, H)
    i, f, g, o = i + acc_i, f + acc_f, g + acc_g, o + acc_o
    _store_gates(gates_ptr, rows, cols, ok, sg_m, sg_h, H, i, f, g, o)
    c_prev = _load2(c_prev_ptr, rows, cols, scp_m, scp_h, ok, acc_ty)
    c, h = _cell_update(i, f, g, o, c_prev)
    if HAS_MASK:
        keep = _row_mask(mask_ptr, rows, row_ok, smask_m, True)[:, None]
        h_prev = _load2(h_prev_ptr, rows, cols, shp_m, shp_h, ok & ~keep, acc_ty)  # read where passed through
        h = tl.where(keep, h, h_prev)
        c = tl.where(keep, c, c_prev)
    _store2(c_ptr, rows, cols, sc_m, sc_h, ok, c)
    _store2(h_ptr, rows, cols, sh_m, sh_h, ok, h)


@triton.jit
def _cell_bwd_kernel(
    gates_ptr, c_prev_ptr, dh_ptr, dc_ptr, mask_ptr,  # (M, 4H), (M, H) x 3, (M,) u8
    dgates_ptr, dc_out_ptr,  # outputs (M, 4H), (M, H)
    M, H,
    sg_m, sg_h, scp_m, scp_h, sdh_m, sdh_h, sdc_m, sdc_h, smask_m, sdg_m, sdg_h, sdo_m, sdo_h,  # strides
    HAS_DH: tl.constexpr, HAS_DC: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, col_ok = rows < M, cols < H
    ok = row_ok[:, None] & col_ok[None, :]
    keep = _row_mask(mask_ptr, rows, row_ok, smask_m, HAS_MASK)[:, None] & col_ok[None, :]
    i, f, g, o = _load_gates(gates_ptr, rows, cols, keep, sg_m, sg_h, H)  # 0 in masked-out rows
    c_prev = _load2(c_prev_ptr, rows, cols, scp_m, scp_h, keep, i.dtype)
    dh = tl.zeros_like(i)
    dc = tl.zeros_like(i)
    if HAS_DH:
        dh = _load2(dh_ptr, rows, cols, sdh_m, sdh_h, keep, i.dtype)
    if HAS_DC:
        dc = _load2(dc_ptr, rows, cols, sdc_m, sdc_h, ok, i.dtype)
    d_i, d_f, d_g, d_o, dc_prev = _cell_grads(i, f, g, o, c_prev, dh, dc)
    _store_gates(dgates_ptr, rows, cols, ok, sdg_m, sdg_h, H, tl.where(keep, d_i, 0.0), tl.where(keep, d_f, 0.0),
                 tl.where(keep, d_g, 0.0), tl.where(keep, d_o, 0.0))
    _store2(dc_out_ptr, rows, cols, sdo_m, sdo_h, ok, tl.where(keep, dc_prev, dc))


# ---------------------------------------------------------------------------------------------------------
# Launchers: allocate nothing, pick blocks, launch one kernel
# ---------------------------------------------------------------------------------------------------------


def gemm_block_m(M: int) -> int:
    """Rows per program of the per-step GEMMs: all of a step's batch up to 64 (at least 16 for tl.dot)."""
    return max(16, min(triton.next_power_of_2(max(M, 1)), 64))


def linear_blocks(M: int, N: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) of linear: one (BLOCK_M, 32) fp32 accumulator, 32-wide k-steps (64 spills the
    fp32 backward on sm_90, whose w^T tile is column-major); 32 columns a program keep enough programs in flight
    at the paper's widths (N = 150..800: 5..25 column tiles; N = H: 38..125)."""
    return gemm_block_m(M), max(16, min(triton.next_power_of_2(max(N, 1)), 32)), \
        max(16, min(triton.next_power_of_2(max(K, 1)), 32))


def head_blocks(M: int, Z: int, K: int, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_Z, BLOCK_K) of head_fwd / head_bwd: two (BLOCK_M, 16) accumulators (mu and a_raw) in the
    forward, one in the backward; 16 latent columns a program (Z = 200: 13 column tiles); k-steps of 32, but 16
    in the forward at BLOCK_M = 64. From the sm_90 compiles (fp32; ptxas is not monotonic in the tile): the
    forward spills at 64 x 16 x 32 (not x16, not x64) and at 32 x 16 x 16 (not x32); the backward at 64 x 16 x 64."""
    bm = gemm_block_m(M)
    return bm, 16, max(16, min(triton.next_power_of_2(max(K, 1)), 16 if bm == 64 and not backward else 32))


def gates_blocks(M: int, H: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_H, BLOCK_K) of gates_cell_fwd: four (BLOCK_M, 16) accumulators, 32-wide k-steps (as
    kernels/lstm.py's fused GEMM: 64 x 32 spills on sm_90)."""
    return gemm_block_m(M), 16, max(16, min(triton.next_power_of_2(max(K, 1)), 32))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _upcast(t: torch.Tensor) -> bool:
    """bf16/fp16 tl.dot operands are multiplied in fp32 under the interpreter only."""
    return t.dtype in (torch.bfloat16, torch.float16) and _interpreting()


def _opt(t: torch.Tensor | None, like: torch.Tensor, ndim: int) -> tuple[torch.Tensor, tuple[int, ...], bool]:
    """(pointer, strides, present) of an optional tensor; a bool tensor is read as uint8 without a copy."""
    if t is None:
        return like, (0,) * ndim, False
    return (t.view(torch.uint8) if t.dtype == torch.bool else t), t.stride(), True


def _check(name: str, t: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def linear(a, w, out, *, addend=None, bias=None, a_gate=None, relu=False, carry=None, carry_rows=None,
           block_m: int | None = None, block_n: int | None = None, block_k: int | None = None) -> None:
    """out (M, N) = act(A' w^T + addend + bias + where(carry_rows, carry, 0)), A' = where(a_gate > 0, a, 0).

    a (M, K); w (N, K) (W.t() multiplies by W); addend, carry (M, N); bias (N,); a_gate (M, K) (the relu output
    whose gradient a is); carry_rows (M,) bool: the rows that take carry (None: no row does, so carry alone
    adds nothing, e.g. an unmasked step's dh). act = relu if relu else identity.
    Example: ``linear(h, W_e1h, u1, addend=enc_x[:, t], relu=True)``.
    """
    M, K = a.shape
    N = w.shape[0]
    for name, t, shape in (("w", w, (N, K)), ("out", out, (M, N)), ("addend", addend, (M, N)),
                           ("bias", bias, (N,)), ("a_gate", a_gate, (M, K)), ("carry", carry, (M, N)),
                           ("carry_rows", carry_rows, (M,))):
        _check(name, t, shape)
    if M == 0 or N == 0:
        return
    bm, bn, bk = linear_blocks(M, N, K)
    bm, bn, bk = block_m or bm, block_n or bn, block_k or bk
    gate, s_gate, has_gate = _opt(a_gate, a, 2)
    add, s_add, has_add = _opt(addend, out, 2)
    b, s_b, has_bias = _opt(bias, out, 1)
    carry_t, s_carry, has_carry = _opt(carry, out, 2)
    take, s_take, has_rows = _opt(carry_rows, out, 1)
    has_carry = has_carry and has_rows  # None for either: where(carry_rows, carry, 0) is zero
    _linear_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](
        a, w, gate, add, b, carry_t, take, out, M, N, K,
        *a.stride(), *w.stride(), *s_gate, *s_add, *s_b, *s_carry, *s_take, *out.stride(),
        HAS_GATE=has_gate, HAS_ADDEND=has_add, HAS_BIAS=has_bias, HAS_CARRY=has_carry, RELU=bool(relu),
        UPCAST=_upcast(a), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)


def head_fwd(a, w, bias, eps, floor: float, ma_out, z_out, *, block_m: int | None = None,
             block_z: int | None = None, block_k: int | None = None) -> None:
    """ma_out (M, 2Z) = a w^T + bias; z_out (M, Z) = ma[:, :Z] + (softplus(ma[:, Z:]) + floor) eps.

    a (M, E); w (2Z, E) = [W_mu; W_sigma]; bias (2Z,) or None; eps (M, Z). z is computed from the accumulators
    (before ma is rounded to its dtype).
    """
    M, K = a.shape
    Z = eps.shape[1]
    for name, t, shape in (("w", w, (2 * Z, K)), ("bias", bias, (2 * Z,)), ("eps", eps, (M, Z)),
                           ("ma_out", ma_out, (M, 2 * Z)), ("z_out", z_out, (M, Z))):
        _check(name, t, shape)
    if M == 0 or Z == 0:
        return
    bm, bz, bk = head_blocks(M, Z, K)
    bm, bz, bk = block_m or bm, block_z or bz, block_k or bk
    b, s_b, has_bias = _opt(bias, a, 1)
    _head_fwd_kernel[(triton.cdiv(M, bm), triton.cdiv(Z, bz))](
        a, w, b, eps, ma_out, z_out, M, Z, K, float(floor),
        *a.stride(), *w.stride(), *s_b, *eps.stride(), *ma_out.stride(), *z_out.stride(),
        HAS_BIAS=has_bias, UPCAST=_upcast(a), BLOCK_M=bm, BLOCK_Z=bz, BLOCK_K=bk)


def head_bwd(g, w, g_gate, g_z, g_mu, g_a, a_raw, eps, dma_out, dz_out=None, *, block_m: int | None = None,
             block_z: int | None = None, block_k: int | None = None) -> None:
    """dz = where(g_gate > 0, g, 0) w^T + g_z; dma_out (M, 2Z) = [dz + g_mu | dz eps softplus'(a_raw) + g_a].

    g, g_gate (M, F) (g_gate None: no relu backward); w (Z, F) (W_f1.t() for W_f1 (F, Z)); g_z, g_mu, g_a
    (M, Z) or None (zero); a_raw, eps (M, Z); dz_out (M, Z) or None (not written).
    """
    M, K = g.shape
    Z = a_raw.shape[1]
    for name, t, shape in (("w", w, (Z, K)), ("g_gate", g_gate, (M, K)), ("g_z", g_z, (M, Z)),
                           ("g_mu", g_mu, (M, Z)), ("g_a", g_a, (M, Z)), ("a_raw", a_raw, (M, Z)),
                           ("eps", eps, (M, Z)), ("dma_out", dma_out, (M, 2 * Z)), ("dz_out", dz_out, (M, Z))):
        _check(name, t, shape)
    if M == 0 or Z == 0:
        return
    bm, bz, bk = head_blocks(M, Z, K, backward=True)
    bm, bz, bk = block_m or bm, block_z or bz, block_k or bk
    gate, s_gate, has_gate = _opt(g_gate, g, 2)
    gz, s_gz, has_gz = _opt(g_z, a_raw, 2)
    gmu, s_gmu, has_gmu = _opt(g_mu, a_raw, 2)
    ga, s_ga, has_ga = _opt(g_a, a_raw, 2)
    dz, s_dz, has_dz = _opt(dz_out, dma_out, 2)
    _head_bwd_kernel[(triton.cdiv(M, bm), triton.cdiv(Z, bz))](
        g, w, gate, gz, gmu, ga, a_raw, eps, dma_out, dz, M, Z, K,
        *g.stride(), *w.stride(), *s_gate, *s_gz, *s_gmu, *s_ga, *a_raw.stride(), *eps.stride(),
        *dma_out.stride(), *s_dz,
        HAS_GATE=has_gate, HAS_GZ=has_gz, HAS_GMU=has_gmu, HAS_GA=has_ga, HAS_DZ=has_dz, UPCAST=_upcast(g),
        BLOCK_M=bm, BLOCK_Z=bz, BLOCK_K=bk)


def gates_cell_fwd(a, w, pre, c_prev, h_prev, mask, gates_out, h_out, c_out, *, block_m: int | None = None,
                   block_h: int | None = None, block_k: int | None = None) -> None:
    """gates_out (M, 4H) = pre + a w^T; (h_out, c_out) (M, H) = mask ? cell(gates, c_prev) : (h_prev, c_prev).

    a (M, K); w (4H, K); pre (M, 4H); c_prev, h_prev (M, H) (h_prev may be a view of a; c_prev / c_out may be
    float32 under a bf16 compute dtype); mask (M,) bool or None (all True). h_out must not overlap a.
    """
    M, K = a.shape
    H = c_prev.shape[1]
    for name, t, shape in (("w", w, (4 * H, K)), ("pre", pre, (M, 4 * H)), ("c_prev", c_prev, (M, H)),
                           ("h_prev", h_prev, (M, H)), ("mask", mask, (M,)), ("gates_out", gates_out, (M, 4 * H)),
                           ("h_out", h_out, (M, H)), ("c_out", c_out, (M, H))):
        _check(name, t, shape)
    if M == 0 or H == 0:
        return
    bm, bh, bk = gates_blocks(M, H, K)
    bm, bh, bk = block_m or bm, block_h or bh, block_k or bk
    m, s_m, has_mask = _opt(mask, a, 1)
    _gates_cell_fwd_kernel[(triton.cdiv(M, bm), triton.cdiv(H, bh))](
        a, w, pre, c_prev, h_prev, m, gates_out, h_out, c_out, M, H, K,
        *a.stride(), *w.stride(), *pre.stride(), *c_prev.stride(), *h_prev.stride(), *s_m, *gates_out.stride(),
        *h_out.stride(), *c_out.stride(),
        HAS_MASK=has_mask, UPCAST=_upcast(a), BLOCK_M=bm, BLOCK_H=bh, BLOCK_K=bk)


def cell_bwd(gates, c_prev, dh, dc, mask, dgates_out, dc_out, *, block_m: int | None = None,
             block_h: int | None = None) -> None:
    """Masked LSTM cell backward: rows with mask True get (dgates, dc_prev) of the cell at (gates, c_prev) for
    output gradients (dh, dc); rows with mask False get dgates_out = 0, dc_out = dc.

    gates (M, 4H); c_prev, dh, dc (M, H) (dh, dc None: zero); mask (M,) bool or None (all True); dgates_out
    (M, 4H); dc_out (M, H) (may be float32 with bf16 gates).
    """
    M, H = c_prev.shape
    for name, t, shape in (("gates", gates, (M, 4 * H)), ("dh", dh, (M, H)), ("dc", dc, (M, H)),
                           ("mask", mask, (M,)), ("dgates_out", dgates_out, (M, 4 * H)), ("dc_out", dc_out, (M, H))):
        _check(name, t, shape)
    if M == 0 or H == 0:
        return
    bm, bh = lstm_blocks(M, H)
    bm, bh = block_m or bm, block_h or bh
    dh_t, s_dh, has_dh = _opt(dh, c_prev, 2)
    dc_t, s_dc, has_dc = _opt(dc, c_prev, 2)
    m, s_m, has_mask = _opt(mask, c_prev, 1)
    _cell_bwd_kernel[(triton.cdiv(M, bm), triton.cdiv(H, bh))](
        gates, c_prev, dh_t, dc_t, m, dgates_out, dc_out, M, H,
        *gates.stride(), *c_prev.stride(), *s_dh, *s_dc, *s_m, *dgates_out.stride(), *dc_out.stride(),
        HAS_DH=has_dh, HAS_DC=has_dc, HAS_MASK=has_mask, BLOCK_M=bm, BLOCK_H=bh)


# ---------------------------------------------------------------------------------------------------------
# sm_90 compile cases (tests/test_sm90_compile.py, benchmarks/kernel_resources.py)
# ---------------------------------------------------------------------------------------------------------

LINEAR_USES = {  # name: (flags, w multiplied as stored (forward, unit stride sw_k) or as W.t() (backward, sw_n))
    "enc1": (dict(HAS_ADDEND=True, RELU=True), "fwd"),  # relu(enc_x[t] + h W_e1h^T)
    "layer": (dict(HAS_BIAS=True, RELU=True), "fwd"),  # relu(a W^T + b)
    "bwd": (dict(HAS_GATE=True), "bwd"),  # (da * (a > 0)) W
    "dh": (dict(HAS_GATE=True, HAS_ADDEND=True, HAS_CARRY=True), "bwd"),  # dh_{t-1}
}


def _shapes_tag(shapes: list[tuple[int, ...]], names: str) -> str:
    return ";".join(f"{n}={','.join(map(str, sorted({s[i] for s in shapes})))}" for i, n in enumerate(names))


def sm90_compile_cases(hidden=(1200, 2000, 4000), widths=(150, 800), latents=(50, 200),
                       batches=(20, 64, 128)) -> list[tuple]:
    """Every kernel for every distinct tiling at the paper's shapes, float32 and bfloat16 inputs (the cell state
    float32 under bf16), for the flag sets the recurrence uses. M = B rows of a step; N and K of linear and K of
    gates_cell_fwd range over the widths, the latent sizes and H (every one fills the N and K tiles). Shapes
    sharing a tiling share a compile; the name lists the shapes."""
    dims = sorted({*hidden, *widths, *latents})
    cases = []
    lin: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
    for B in batches:
        for N in dims:
            for K in dims:
                lin.setdefault(linear_blocks(B, N, K), []).append((B, N, K))
    for (bm, bn, bk), shapes in lin.items():
        tag = f"{_shapes_tag(shapes, 'B')};tile={bm}x{bn}x{bk}"
        for use, (flags, side) in LINEAR_USES.items():
            flags = {f: flags.get(f, False) for f in ("HAS_GATE", "HAS_ADDEND", "HAS_BIAS", "HAS_CARRY", "RELU")}
            unit = ("sa_k", "sg_k", "sad_n", "sc_n", "so_n", "sb_n", "sw_k" if side == "fwd" else "sw_n")
            for dtype in (torch.float32, torch.bfloat16):
                cases.append(compile_case(f"linear[{tag};{use}]", _linear_kernel, dtype,
                                          dict(flags, UPCAST=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk),
                                          unit_strides=unit, u8_ptrs=("take_ptr",)))
    head: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
    for B in batches:
        for Z in latents:
            for K in widths:
                head.setdefault(head_blocks(B, Z, K)[:2], []).append((B, Z, K))
    for (bm, bz), shapes in head.items():
        tag = f"{_shapes_tag(shapes, 'BZK')};tile={bm}x{bz}"
        bk, bk_bwd = head_blocks(shapes[0][0], 800, 800)[2], head_blocks(shapes[0][0], 800, 800, True)[2]
        for dtype in (torch.float32, torch.bfloat16):
            cases.append(compile_case(
                f"head_fwd[{tag}x{bk}]", _head_fwd_kernel, dtype,
                dict(HAS_BIAS=True, UPCAST=False, BLOCK_M=bm, BLOCK_Z=bz, BLOCK_K=bk),
                unit_strides=("sa_k", "sw_k", "sb_n", "se_z", "sma_n", "sz_z")))
            for every in (True, False):
                cases.append(compile_case(
                    f"head_bwd[{tag}x{bk_bwd};g_*={int(every)}]", _head_bwd_kernel, dtype,
                    dict(HAS_GATE=True, HAS_GZ=every, HAS_GMU=every, HAS_GA=every, HAS_DZ=every, UPCAST=False,
                         BLOCK_M=bm, BLOCK_Z=bz, BLOCK_K=bk_bwd),
                    unit_strides=("sg_k", "sw_z", "sgg_k", "sgz_z", "sgm_z", "sga_z", "sar_z", "se_z", "sdma_n",
                                  "sdz_z")))
    gates: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
    for B in batches:
        for H in hidden:
            for K in (*hidden, *latents, *widths):
                gates.setdefault(gates_blocks(B, H, K), []).append((B, H, K))
    for (bm, bh, bk), shapes in gates.items():
        tag = f"{_shapes_tag(shapes, 'BH')};tile={bm}x{bh}x{bk}"
        for dtype in (torch.float32, torch.bfloat16):
            for has_mask in (True, False):
                cases.append(compile_case(
                    f"gates_cell_fwd[{tag};mask={int(has_mask)}]", _gates_cell_fwd_kernel, dtype,
                    dict(HAS_MASK=has_mask, UPCAST=False, BLOCK_M=bm, BLOCK_H=bh, BLOCK_K=bk),
                    unit_strides=("sa_k", "sw_k", "sp_h", "scp_h", "shp_h", "sg_h", "sh_h", "sc_h"),
                    fp32_ptrs=("c_prev_ptr", "c_ptr"), u8_ptrs=("mask_ptr",)))
    cell: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for B in batches:
        for H in hidden:
            cell.setdefault(lstm_blocks(B, H), []).append((B, H))
    for (bm, bh), shapes in cell.items():
        tag = f"{_shapes_tag(shapes, 'BH')};tile={bm}x{bh}"
        for dtype in (torch.float32, torch.bfloat16):
            for has_mask in (True, False):
                cases.append(compile_case(
                    f"cell_bwd[{tag};mask={int(has_mask)}]", _cell_bwd_kernel, dtype,
                    dict(HAS_DH=True, HAS_DC=True, HAS_MASK=has_mask, BLOCK_M=bm, BLOCK_H=bh),
                    unit_strides=("sg_h", "scp_h", "sdh_h", "sdc_h", "sdg_h", "sdo_h"),
                    fp32_ptrs=("c_prev_ptr", "dc_ptr", "dc_out_ptr"), u8_ptrs=("mask_ptr",)))
    return cases
