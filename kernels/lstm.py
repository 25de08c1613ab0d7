"""LSTM pointwise cell update (the part of a step after the gate GEMM): forward and fused backward; and a
forward with the update as the epilogue of the recurrent GEMM (gates = pre + h_{t-1} W_hh^T).

Dimension glossary:
  N  rows (the batch B of one step, or any flattened leading dims)     H  hidden size (1200, 2000, 4000)
  K  input size of the fused GEMM (= H for W_hh)                        BLOCK_N, BLOCK_H, BLOCK_K  tiles
Layouts: gates, pre (N, 4H) pre-activations in order [i, f, g, o] (gate q of unit j at column q*H + j, as in
torch.nn.LSTM); W_hh (4H, K); c_prev, h, c, dh, dc, dc_prev (N, H); dgates (N, 4H). Any strides.

Math (fp32 inside for fp32/bf16/fp16, fp64 for fp64; no libdevice: densities._tanh, _sigmoid):
  c = sigmoid(f) c_prev + sigmoid(i) tanh(g),   h = sigmoid(o) tanh(c)
Backward (recomputes every activation from gates and c_prev, so the forward saves nothing extra; the
recompute is a few flops per element against 6 loads): with dC = dc + dh sigmoid(o) (1 - tanh(c)^2),
  d_i = dC tanh(g) s_i (1 - s_i),  d_f = dC c_prev s_f (1 - s_f),  d_g = dC s_i (1 - tanh(g)^2),
  d_o = dh tanh(c) s_o (1 - s_o),  dc_prev = dC s_f.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .densities import _sigmoid, _tanh  # activations with relative accuracy, shared with the log-density kernels
from .sm90 import compile_case

# ---------------------------------------------------------------------------------------------------------
# Element-wise helpers
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _load_gates(gates_ptr, rows, cols, ok, sg_n, sg_h, H):
    """The four gate pre-activations of a (BLOCK_N, BLOCK_H) tile, in the math dtype."""
    base = gates_ptr + rows[:, None] * sg_n + cols[None, :] * sg_h
    dt = tl.float64 if gates_ptr.dtype.element_ty == tl.float64 else tl.float32
    i = tl.load(base, mask=ok, other=0.0).to(dt)
    f = tl.load(base + H * sg_h, mask=ok, other=0.0).to(dt)
    g = tl.load(base + 2 * H * sg_h, mask=ok, other=0.0).to(dt)
    o = tl.load(base + 3 * H * sg_h, mask=ok, other=0.0).to(dt)
    return i, f, g, o


@triton.jit
def _store_gates(gates_ptr, rows, cols, ok, sg_n, sg_h, H, i, f, g, o):
    """Stores the four gate tiles of a (BLOCK_N, BLOCK_H) tile (gate q at column q*H + j) in gates' dtype."""
    ty = gates_ptr.dtype.element_ty
    base = gates_ptr + rows[:, None] * sg_n + cols[None, :] * sg_h
    tl.store(base, i.to(ty), mask=ok)
    tl.store(base + H * sg_h, f.to(ty), mask=ok)
    tl.store(base + 2 * H * sg_h, g.to(ty), mask=ok)
    tl.store(base + 3 * H * sg_h, o.to(ty), mask=ok)


@triton.jit
def _cell_update(i, f, g, o, c_prev):
    """(c, h) from the gate pre-activations and c_{t-1}, all in the math dtype."""
    c = _sigmoid(f) * c_prev + _sigmoid(i) * _tanh(g)
    return c, _sigmoid(o) * _tanh(c)


@triton.jit
def _cell_grads(i, f, g, o, c_prev, dh, dc):
    """(d_i, d_f, d_g, d_o, dc_prev) of the cell update (module docstring), recomputing every activation."""
    s_i, s_f, t_g, s_o = _sigmoid(i), _sigmoid(f), _tanh(g), _sigmoid(o)
    t_c = _tanh(s_f * c_prev + s_i * t_g)
    d_c = dc + dh * s_o * (1.0 - t_c * t_c)
    return (d_c * t_g * s_i * (1.0 - s_i), d_c * c_prev * s_f * (1.0 - s_f), d_c * s_i * (1.0 - t_g * t_g),
            dh * t_c * s_o * (1.0 - s_o), d_c * s_f)


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    """acc + a @ b. fp32: full-precision products, as torch's matmul without TF32. UPCAST: multiply bf16/fp16
    tiles in fp32 (for the interpreter, whose bf16 tl.dot returns garbage; on the GPU the tensor cores take them)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _gates_gemm(a_ptr, w_ptr, rows, cols, row_ok, col_ok, H, K, sa_n, sa_k, sw_r, sw_k,
                acc_ty: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                UPCAST: tl.constexpr):
    """a W^T for the four gate column blocks of a (BLOCK_N, BLOCK_H) tile: a (N, K), W (4H, K); four
    accumulators (i, f, g, o), each (BLOCK_N, BLOCK_H) in acc_ty."""
    acc_i = tl.zeros((BLOCK_N, BLOCK_H), dtype=acc_ty)
    acc_f = tl.zeros((BLOCK_N, BLOCK_H), dtype=acc_ty)
    acc_g = tl.zeros((BLOCK_N, BLOCK_H), dtype=acc_ty)
    acc_o = tl.zeros((BLOCK_N, BLOCK_H), dtype=acc_ty)
    w_cols = w_ptr + cols[None, :] * sw_r  # (1, BLOCK_H): row q*H + j of W is column j of gate q's W^T
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        k_ok = ks < K
        a = tl.load(a_ptr + rows[:, None] * sa_n + ks[None, :] * sa_k, mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        b_ok = k_ok[:, None] & col_ok[None, :]
        b = w_cols + ks[:, None] * sw_k  # (BLOCK_K, BLOCK_H) tile of gate i's W^T
        acc_i = _dot(a, tl.load(b, mask=b_ok, other=0.0), acc_i, UPCAST)
        acc_f = _dot(a, tl.load(b + H * sw_r, mask=b_ok, other=0.0), acc_f, UPCAST)
        acc_g = _dot(a, tl.load(b + 2 * H * sw_r, mask=b_ok, other=0.0), acc_g, UPCAST)
        acc_o = _dot(a, tl.load(b + 3 * H * sw_r, mask=b_ok, other=0.0), acc_o, UPCAST)
    return acc_i, acc_f, acc_g, acc_o


# ---------------------------------------------------------------------------------------------------------
# Kernels: grid (cdiv(N, BLOCK_N), cdiv(H, BLOCK_H))
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _lstm_fwd_kernel(
    gates_ptr, c_prev_ptr, h_ptr, c_ptr,  # (N, 4H), (N, H) inputs; (N, H) outputs
    N, H,
    sg_n, sg_h, scp_n, scp_h, sh_n, sh_h, sc_n, sc_h,  # strides (row, column)
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = (rows < N)[:, None] & (cols < H)[None, :]
    i, f, g, o = _load_gates(gates_ptr, rows, cols, ok, sg_n, sg_h, H)
    c_prev = tl.load(c_prev_ptr + rows[:, None] * scp_n + cols[None, :] * scp_h, mask=ok, other=0.0).to(i.dtype)
    c, h = _cell_update(i, f, g, o, c_prev)
    tl.store(c_ptr + rows[:, None] * sc_n + cols[None, :] * sc_h, c.to(c_ptr.dtype.element_ty), mask=ok)
    tl.store(h_ptr + rows[:, None] * sh_n + cols[None, :] * sh_h, h.to(h_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _lstm_bwd_kernel(
    gates_ptr, c_prev_ptr, dh_ptr, dc_ptr,  # inputs: (N, 4H), (N, H), (N, H), (N, H)
    dgates_ptr, dc_prev_ptr,  # outputs: (N, 4H), (N, H)
    N, H,
    sg_n, sg_h, scp_n, scp_h, sdh_n, sdh_h, sdc_n, sdc_h, sdg_n, sdg_h, sdcp_n, sdcp_h,  # strides
    HAS_DH: tl.constexpr, HAS_DC: tl.constexpr,  # False: that gradient is zero (not read)
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = (rows < N)[:, None] & (cols < H)[None, :]
    i, f, g, o = _load_gates(gates_ptr, rows, cols, ok, sg_n, sg_h, H)
    c_prev = tl.load(c_prev_ptr + rows[:, None] * scp_n + cols[None, :] * scp_h, mask=ok, other=0.0).to(i.dtype)
    if HAS_DH:
        dh = tl.load(dh_ptr + rows[:, None] * sdh_n + cols[None, :] * sdh_h, mask=ok, other=0.0).to(i.dtype)
    else:
        dh = tl.zeros_like(i)
    if HAS_DC:
        d_c = tl.load(dc_ptr + rows[:, None] * sdc_n + cols[None, :] * sdc_h, mask=ok, other=0.0).to(i.dtype)
    else:
        d_c = tl.zeros_like(i)
    d_i, d_f, d_g, d_o, dc_prev = _cell_grads(i, f, g, o, c_prev, dh, d_c)
    _store_gates(dgates_ptr, rows, cols, ok, sdg_n, sdg_h, H, d_i, d_f, d_g, d_o)
    tl.store(dc_prev_ptr + rows[:, None] * sdcp_n + cols[None, :] * sdcp_h,
             dc_prev.to(dc_prev_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _lstm_gemm_fwd_kernel(
    pre_ptr, h_ptr, w_ptr, c_prev_ptr,  # (N, 4H) input part of the gates, (N, K) h_{t-1}, (4H, K) W_hh, (N, H)
    gates_ptr, h_out_ptr, c_ptr,  # outputs: (N, 4H) full pre-activations (kept for the backward), (N, H) x 2
    N, H, K,
    sp_n, sp_h, sh_n, sh_k, sw_r, sw_k, scp_n, scp_h, sg_n, sg_h, sho_n, sho_h, sc_n, sc_h,  # strides
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gates = pre + h W^T for the four gate column blocks of one (BLOCK_N, BLOCK_H) tile, then the cell update
    as the GEMM's epilogue: the gates never round-trip through memory before the pointwise math."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, col_ok = rows < N, cols < H
    ok = row_ok[:, None] & col_ok[None, :]
    acc_ty: tl.constexpr = tl.float64 if h_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc_i, acc_f, acc_g, acc_o = _gates_gemm(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, K, sh_n, sh_k, sw_r,
                                             sw_k, acc_ty, BLOCK_N, BLOCK_H, BLOCK_K, False)
    i, f, g, o = _load_gates(pre_ptr, rows, cols, ok, sp_n, sp_h, H)
    i, f, g, o = i + acc_i, f + acc_f, g + acc_g, o + acc_o
    _store_gates(gates_ptr, rows, cols, ok, sg_n, sg_h, H, i, f, g, o)
    c_prev = tl.load(c_prev_ptr + rows[:, None] * scp_n + cols[None, :] * scp_h, mask=ok, other=0.0).to(i.dtype)
    c, h = _cell_update(i, f, g, o, c_prev)
    tl.store(c_ptr + rows[:, None] * sc_n + cols[None, :] * sc_h, c.to(c_ptr.dtype.element_ty), mask=ok)
    tl.store(h_out_ptr + rows[:, None] * sho_n + cols[None, :] * sho_h, h.to(h_out_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------


def lstm_blocks(N: int, H: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_H): up to 128 hidden units by up to 4 rows, 512 elements per gate tile (the backward
    holds ~12 tiles live; 1024-element tiles spill in the bf16 forward on sm_90). At least 16 columns."""
    block_h = max(16, min(triton.next_power_of_2(H), 128))
    return max(1, min(triton.next_power_of_2(N), 512 // block_h)), block_h


def lstm_fwd(gates: torch.Tensor, c_prev: torch.Tensor, block_n: int | None = None, block_h: int | None = None):
    """gates (N, 4H), c_prev (N, H) -> (h, c), each (N, H) contiguous in promote_types(gates, c_prev)."""
    N, H = c_prev.shape
    bn, bh = lstm_blocks(N, H)
    bn, bh = block_n or bn, block_h or bh
    dtype = torch.promote_types(gates.dtype, c_prev.dtype)
    h = torch.empty((N, H), dtype=dtype, device=gates.device)
    c = torch.empty((N, H), dtype=dtype, device=gates.device)
    _lstm_fwd_kernel[(triton.cdiv(N, bn), triton.cdiv(H, bh))](
        gates, c_prev, h, c, N, H, *gates.stride(), *c_prev.stride(), *h.stride(), *c.stride(),
        BLOCK_N=bn, BLOCK_H=bh)
    return h, c


def lstm_bwd(gates: torch.Tensor, c_prev: torch.Tensor, dh: torch.Tensor | None, dc: torch.Tensor | None,
             block_n: int | None = None, block_h: int | None = None):
    """dh, dc (N, H) or None (zero) -> (dgates (N, 4H) in gates.dtype, dc_prev (N, H) in c_prev.dtype)."""
    N, H = c_prev.shape
    bn, bh = lstm_blocks(N, H)
    bn, bh = block_n or bn, block_h or bh
    dgates = torch.empty((N, 4 * H), dtype=gates.dtype, device=gates.device)
    dc_prev = torch.empty((N, H), dtype=c_prev.dtype, device=gates.device)
    dh_arg, dc_arg = (dh if dh is not None else c_prev), (dc if dc is not None else c_prev)
    _lstm_bwd_kernel[(triton.cdiv(N, bn), triton.cdiv(H, bh))](
        gates, c_prev, dh_arg, dc_arg, dgates, dc_prev, N, H, *gates.stride(), *c_prev.stride(),
        *dh_arg.stride(), *dc_arg.stride(), *dgates.stride(), *dc_prev.stride(),
        HAS_DH=dh is not None, HAS_DC=dc is not None, BLOCK_N=bn, BLOCK_H=bh)
    return dgates, dc_prev


def lstm_gemm_blocks(N: int, H: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_H, BLOCK_K) of the fused GEMM: tl.dot tiles of at least 16 (the GPU's minimum); four
    (BLOCK_N, BLOCK_H) fp32 accumulators live. 64 x 16 x 32 is the largest that does not spill on sm_90
    (64 x 32 spills ~200 bytes) and still lets the bf16 dots use wgmma."""
    return max(16, min(triton.next_power_of_2(N), 64)), 16, max(16, min(triton.next_power_of_2(K), 32))


def lstm_gemm_fwd(pre, h, w, c_prev, block_n: int | None = None, block_h: int | None = None,
                  block_k: int | None = None):
    """pre (N, 4H), h (N, K), w (4H, K), c_prev (N, H), all one dtype -> (gates (N, 4H), h_new, c_new (N, H)).

    gates = pre + h w^T (kept for the backward, which is lstm_bwd plus two GEMMs in the caller)."""
    N, H = c_prev.shape
    K = h.shape[1]
    bn, bh, bk = lstm_gemm_blocks(N, H, K)
    bn, bh, bk = block_n or bn, block_h or bh, block_k or bk
    gates = torch.empty((N, 4 * H), dtype=pre.dtype, device=pre.device)
    h_new = torch.empty((N, H), dtype=pre.dtype, device=pre.device)
    c_new = torch.empty((N, H), dtype=pre.dtype, device=pre.device)
    _lstm_gemm_fwd_kernel[(triton.cdiv(N, bn), triton.cdiv(H, bh))](
        pre, h, w, c_prev, gates, h_new, c_new, N, H, K, *pre.stride(), *h.stride(), *w.stride(),
        *c_prev.stride(), *gates.stride(), *h_new.stride(), *c_new.stride(), BLOCK_N=bn, BLOCK_H=bh, BLOCK_K=bk)
    return gates, h_new, c_new


# ---------------------------------------------------------------------------------------------------------
# sm_90 compile cases (tests/test_sm90_compile.py, benchmarks/kernel_resources.py)
# ---------------------------------------------------------------------------------------------------------


def sm90_compile_cases(hidden=(1200, 2000, 4000), batches=(64, 128)) -> list[tuple]:
    """Every kernel for every distinct tiling at the paper's shapes (N = B rows per step, K = H for the fused
    GEMM's recurrent weight), float32 and bfloat16 inputs.

    H and N are runtime arguments, so shapes sharing a tiling share a compile; the name lists the shapes.
    """
    tilings: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for H in hidden:
        for B in batches:
            tilings.setdefault(lstm_blocks(B, H), []).append((B, H))
    cases = []
    for (bn, bh), shapes in tilings.items():
        blocks = dict(BLOCK_N=bn, BLOCK_H=bh)
        bs, hs = (",".join(map(str, sorted({s[i] for s in shapes}))) for i in (0, 1))
        tag = f"B={bs};H={hs};tile={bn}x{bh}"
        for dtype in (torch.float32, torch.bfloat16):
            cases.append(compile_case(f"lstm_fwd[{tag}]", _lstm_fwd_kernel, dtype, blocks,
                                      unit_strides=("sg_h", "scp_h", "sh_h", "sc_h")))
            for has_dc in (True, False):
                cases.append(compile_case(
                    f"lstm_bwd[{tag};dc={int(has_dc)}]", _lstm_bwd_kernel, dtype,
                    dict(blocks, HAS_DH=True, HAS_DC=has_dc),
                    unit_strides=("sg_h", "scp_h", "sdh_h", "sdc_h", "sdg_h", "sdcp_h")))
    gemm_tilings: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    for H in hidden:
        for B in batches:
            gemm_tilings.setdefault(lstm_gemm_blocks(B, H, H), []).append((B, H))
    for (bn, bh, bk), shapes in gemm_tilings.items():
        bs, hs = (",".join(map(str, sorted({s[i] for s in shapes}))) for i in (0, 1))
        for dtype in (torch.float32, torch.bfloat16):
            cases.append(compile_case(
                f"lstm_gemm_fwd[B={bs};H=K={hs};tile={bn}x{bh}x{bk}]", _lstm_gemm_fwd_kernel, dtype,
                dict(BLOCK_N=bn, BLOCK_H=bh, BLOCK_K=bk),
                unit_strides=("sp_h", "sh_k", "sw_k", "scp_h", "sg_h", "sho_h", "sc_h")))
    return cases
