"""The recurrence as one registered op: ``torch.ops.vrnn_fast.recurrence``, with a hand-written backward op.

What is sequential in a VRNN (and in the RNN baselines) runs here, one call for all T steps. Everything that is
not (phi_x, the phi_x parts of the encoder's first layer and of the LSTM input, the prior, the decoder, the
losses) stays outside, batched over all T by autograd. Both ops are opaque to ``torch.compile`` and neither
synchronises with the host nor allocates by data, so a whole training step can be compiled or CUDA-graphed.
Backends: ``"torch"`` (PyTorch ops inside) and ``"triton"`` (the fused kernels of ``vrnn_fast.kernels.recurrence``).

Shapes: T steps, B rows, H LSTM units, F phi_z width (0 for the RNN baselines), E encoder width, Z latent size;
L_e encoder layers, L_z phi_z layers. Every buffer is time-major (T, B, .), so a step is a contiguous slice.

Forward, step t (h = h_{t-1}, c = c_{t-1}, m = mask[t]; the RNN baselines have only the last two lines):
    a_1 = relu(enc_x[t] + h W_e1h^T);   a_k = relu(a_{k-1} W_k^T + b_k),  k = 2..L_e
    [mu | a] = a_Le W_head^T + b_head;  z = mu + (softplus(a) + floor) eps[t]
    f_1 = relu(z W_f1^T + b_f1);  f_k = relu(f_{k-1} W_fk^T + b_fk);  zf = f_Lz
    G = gates_x[t] + [h | zf] W_hz^T    with W_hz = [W_hh | W_z]  (4H, H + F): one product
    (h_t, c_t) = cell(G, c) where m, else (h, c)
Outputs: hz (T+1, B, H+F) with hz[t] = [h_{t-1} | zf_t] (hz[0, :, :H] = h0; hz[T, :, H:] = 0), cT (B, H), and
for a VRNN ma (T, B, 2Z) = [mu | a] and z (T, B, Z); then, saved for the backward only: c (T+1, B, H) with
c[t] = c_{t-1}, G, a_1..a_Le (T, B, E), f_1..f_{L_z - 1} (T, B, F). G holds the gate pre-activations (T, B, 4H) on
the triton backend; on the torch backend (T, B, 5H), the activations [sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)]
and tanh(c_t), so that its backward computes none of them again.

Backward, t = T-1..0 (dh, dc start as the gradients of h_T and c_T), only data gradients per step:
    dG, dc = cell_backward(G, c[t], dh, dc) where m (dG = 0 and dc passes where not m)
    X = dG W_hz + g_hz[t]  = [dh part | dzf]  (B, H + F)
    dv_k = df_k (f_k > 0), df_{k-1} = dv_k W_fk  (k = L_z..1, df_Lz = dzf);  dz = dv_1 W_f1 + g_z[t]
    dma = [dz + g_mu[t] | dz eps[t] sigmoid(a) + g_a[t]];  da_Le = dma W_head
    du_k = da_k (a_k > 0), da_{k-1} = du_k W_k  (k = L_e..1);  d enc_x[t] = du_1
    dh = X[:, :H] + du_1 W_e1h + (1 - m) dh
Then every weight and bias gradient as one product over all T * B rows (dW_hz = dG^T [h | zf], dW_k = du_k^T
a_{k-1}, ...), and d gates_x = dG. Autocast: the op computes in its inputs' dtype (the caller casts); the cell
state c keeps c0's dtype (float32 under bf16 autocast).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("torch", "triton")
_aten = torch.ops.aten


# ---------------------------------------------------------------------------------------------------------
# Shapes and buffers
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dims:
    T: int
    B: int
    H: int
    F: int  # phi_z width: hz is (T+1, B, H + F); 0 for the RNN baselines
    E: int  # encoder width (0 for the RNN baselines)
    Z: int
    L_e: int
    L_z: int

    @property
    def latent(self) -> bool:
        return self.L_z > 0


def _dims(gates_x: Tensor, h0: Tensor, w_hz: Tensor, w_e1h: Tensor | None, head_w: Tensor | None,
          enc_w: list[Tensor], phi_z_w: list[Tensor]) -> _Dims:
    T, B = gates_x.shape[:2]
    H = h0.shape[1]
    latent = w_e1h is not None
    return _Dims(T, B, H, w_hz.shape[1] - H, w_e1h.shape[0] if latent else 0,
                 head_w.shape[0] // 2 if latent else 0, len(enc_w) + 1 if latent else 0, len(phi_z_w))


def _forward_buffers(d: _Dims, like: Tensor, state_dtype: torch.dtype, backend: str) -> dict:
    """Outputs of the forward, allocated once per call (the fake implementation allocates the same)."""
    new = dict(dtype=like.dtype, device=like.device)
    bufs = {"hz": torch.empty(d.T + 1, d.B, d.H + d.F, **new),
            "cT": torch.empty(d.B, d.H, dtype=state_dtype, device=like.device),
            "c": torch.empty(d.T + 1, d.B, d.H, dtype=state_dtype, device=like.device),
            "G": torch.empty(d.T, d.B, (4 if backend == "triton" else 5) * d.H, **new)}
    if d.latent:
        bufs["ma"] = torch.empty(d.T, d.B, 2 * d.Z, **new)
        bufs["z"] = torch.empty(d.T, d.B, d.Z, **new)
        bufs["acts"] = [torch.empty(d.T, d.B, d.E, **new) for _ in range(d.L_e)]
        bufs["fs"] = [torch.empty(d.T, d.B, d.F, **new) for _ in range(d.L_z - 1)]
    return bufs


def _steps(t: Tensor) -> tuple[Tensor, ...]:
    """The per-step views of a time-major buffer, made in one call."""
    return t.unbind(0)


def _pack(bufs: dict) -> list[Tensor]:
    out = [bufs["hz"], bufs["cT"], bufs["c"], bufs["G"]]
    if "ma" in bufs:
        out += [bufs["ma"], bufs["z"], *bufs["acts"], *bufs["fs"]]
    return out


# ---------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------


def _right_operand(w: Tensor) -> Tensor:
    """w^T (K, N) as the right operand of the per-step products x w^T: a contiguous copy when w is small (on a CPU,
    MKL's (32, K) x (K, N) products ran 10-30% faster from it than from the transposed view at the tiny and
    cpu-speech encoder sizes, and no faster at 256 x 1024 and above), the view otherwise."""
    return w.t().contiguous() if w.numel() <= SMALL_WEIGHT else w.t()


SMALL_WEIGHT = 1 << 16  # elements


def _forward_torch(d: _Dims, b: dict, gates_x, mask, enc_x, eps, w_hz, w_e1h, enc_w, enc_b, head_w, head_b,
                   phi_z_w, phi_z_b, floor) -> None:
    """The step loop with PyTorch ops, each writing into its slice of the buffers: about L_e + L_z + 13 ops a
    step (bias + ReLU as one ``_addmm_activation``, one product for both encoder heads and one for the gates).
    Every per-step view is made once, before the loop (a view costs host time like a small op). The gate
    activations and tanh(c_t) go to b["G"], where the backward reads them."""
    H, Z = d.H, d.Z
    hz, h_of, c, gx = _steps(b["hz"]), _steps(b["hz"][..., :H]), _steps(b["c"]), _steps(gates_x)
    act = _steps(b["G"][..., :4 * H])  # [s_i, s_f, tanh(g), s_o] of every step
    s_i, s_f, t_g, s_o, t_c = (_steps(block) for block in b["G"].chunk(5, dim=2))
    gates = torch.empty_like(gx[0])  # the current step's pre-activations
    gates_g = gates[:, 2 * H:3 * H]
    keep = None if mask is None else _steps(mask[..., None])
    if d.latent:
        acts, fs = [_steps(a) for a in b["acts"]], [_steps(f) for f in b["fs"]] + [_steps(b["hz"][..., H:])]
        ma, mu, a, z = _steps(b["ma"]), _steps(b["ma"][..., :Z]), _steps(b["ma"][..., Z:]), _steps(b["z"])
        enc_x, eps = _steps(enc_x), _steps(eps)
        w_e1h, head_w = _right_operand(w_e1h), _right_operand(head_w)
        enc_w, phi_z_w = [_right_operand(w) for w in enc_w], [_right_operand(w) for w in phi_z_w]
    w_hz = _right_operand(w_hz)
    for t in range(d.T):
        if d.latent:
            inp = torch._addmm_activation(enc_x[t], h_of[t], w_e1h, out=acts[0][t])
            for k in range(1, d.L_e):
                inp = torch._addmm_activation(enc_b[k - 1], inp, enc_w[k - 1], out=acts[k][t])
            torch.addmm(head_b, inp, head_w, out=ma[t])
            inp = torch.addcmul(mu[t], F.softplus(a[t]).add_(floor), eps[t], out=z[t])
            for k in range(d.L_z):
                inp = torch._addmm_activation(phi_z_b[k], inp, phi_z_w[k], out=fs[k][t])
        torch.addmm(gx[t], hz[t], w_hz, out=gates)
        torch.sigmoid(gates, out=act[t])  # the g block becomes tanh(g) below
        torch.tanh(gates_g, out=t_g[t])
        c_new = torch.mul(s_f[t], c[t], out=c[t + 1] if keep is None else None).addcmul_(s_i[t], t_g[t])
        h_new = torch.mul(s_o[t], torch.tanh(c_new, out=t_c[t]), out=h_of[t + 1] if keep is None else None)
        if keep is not None:
            torch.where(keep[t], h_new.to(h_of[t].dtype), h_of[t], out=h_of[t + 1])
            torch.where(keep[t], c_new, c[t], out=c[t + 1])


def _forward_triton(d: _Dims, b: dict, gates_x, mask, enc_x, eps, w_hz, w_e1h, enc_w, enc_b, head_w, head_b,
                    phi_z_w, phi_z_b, floor) -> None:
    """The step loop with fused kernels: L_e + L_z + 2 launches a step (bias, ReLU, the reparameterisation and
    the LSTM cell are epilogues of the products)."""
    from .kernels import recurrence as kr

    H = d.H
    hz, c, G = b["hz"], b["c"], b["G"]
    for t in range(d.T):
        h = hz[t, :, :H]
        if d.latent:
            acts = b["acts"]
            kr.linear(h, w_e1h, acts[0][t], addend=enc_x[t], relu=True)
            for k in range(1, d.L_e):
                kr.linear(acts[k - 1][t], enc_w[k - 1], acts[k][t], bias=enc_b[k - 1], relu=True)
            kr.head_fwd(acts[-1][t], head_w, head_b, eps[t], floor, b["ma"][t], b["z"][t])
            inp = b["z"][t]
            for k in range(d.L_z):
                out = b["fs"][k][t] if k < d.L_z - 1 else hz[t, :, H:]
                kr.linear(inp, phi_z_w[k], out, bias=phi_z_b[k], relu=True)
                inp = out
        kr.gates_cell_fwd(hz[t], w_hz, gates_x[t], c[t], h, None if mask is None else mask[t], G[t],
                          hz[t + 1, :, :H], c[t + 1])


@torch.library.custom_op("vrnn_fast::recurrence", mutates_args=())
def recurrence(gates_x: Tensor, h0: Tensor, c0: Tensor, w_hz: Tensor, mask: Tensor | None, enc_x: Tensor | None,
               eps: Tensor | None, w_e1h: Tensor | None, enc_w: list[Tensor], enc_b: list[Tensor],
               head_w: Tensor | None, head_b: Tensor | None, phi_z_w: list[Tensor], phi_z_b: list[Tensor],
               floor: float, backend: str) -> list[Tensor]:
    """All T steps of the recurrence (see the module docstring for the equations, layouts and outputs).

    gates_x (T, B, 4H) = phi_x W_ihx^T + b; h0, c0 (B, H); w_hz (4H, H + F); mask (T, B) bool or None. VRNN only
    (None / [] for the RNN baselines): enc_x (T, B, E) = phi_x W_e1x^T + b_e1; eps (T, B, Z); w_e1h (E, H);
    enc_w, enc_b: layers 2..L_e; head_w (2Z, E) = [W_mu; W_sigma], head_b (2Z,); phi_z_w, phi_z_b: L_z layers.
    Returns [hz, cT, c, G] (+ [ma, z, a_1..a_Le, f_1..f_{Lz-1}] for a VRNN).
    """
    d = _dims(gates_x, h0, w_hz, w_e1h, head_w, enc_w, phi_z_w)
    b = _forward_buffers(d, gates_x, c0.dtype, backend)
    with torch.autocast(gates_x.device.type, enabled=False):
        b["hz"][0, :, :d.H].copy_(h0)
        b["hz"][d.T, :, d.H:].zero_()
        b["c"][0].copy_(c0)
        step = _forward_triton if backend == "triton" else _forward_torch
        step(d, b, gates_x, mask, enc_x, eps, w_hz, w_e1h, enc_w, enc_b, head_w, head_b, phi_z_w, phi_z_b, floor)
        b["cT"].copy_(b["c"][d.T])
    return _pack(b)


@recurrence.register_fake
def _(gates_x, h0, c0, w_hz, mask, enc_x, eps, w_e1h, enc_w, enc_b, head_w, head_b, phi_z_w, phi_z_b, floor,
      backend):
    d = _dims(gates_x, h0, w_hz, w_e1h, head_w, enc_w, phi_z_w)
    return _pack(_forward_buffers(d, gates_x, c0.dtype, backend))


# ---------------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------------


def _cell_coefficients(d: _Dims, G: Tensor, c: Tensor, mask: Tensor | None):
    """For the torch backward, all steps at once, from what its forward saved in G, [s_i, s_f, t_g, s_o, t_c]
    (T, B, 5H) with t_c = tanh(c_t): Q (T, B, 4H), Kc (T, B, H), Fc (T, B, H) such that per step dC = dc + dh Kc[t],
    dG = Q[t] [dC, dC, dC, dh] (per gate block), dc_prev = dC Fc[t]; zero (Fc = 1) where the mask is False, so
    padded steps pass dc through and give dG = 0. Q = [s_i (1 - s_i) t_g, s_f (1 - s_f) c_{t-1}, (1 - t_g^2) s_i,
    s_o (1 - s_o) t_c], Kc = s_o (1 - t_c^2), Fc = s_f."""
    H = d.H
    G = G.to(torch.promote_types(G.dtype, c.dtype))
    act = G[..., :4 * H]
    s_i, s_f, t_g, s_o, t_c = G.chunk(5, dim=-1)
    Q = torch.addcmul(act, act, act, value=-1)  # s (1 - s) in the sigmoid blocks
    torch.addcmul(Q.new_ones(()), t_g, t_g, value=-1, out=Q[..., 2 * H:3 * H])  # 1 - t_g^2
    for block, factor in zip(Q.chunk(4, dim=-1), (t_g, c[:-1], s_i, t_c), strict=True):
        block.mul_(factor)
    Kc = torch.addcmul(s_o, s_o, t_c.square(), value=-1)
    Fc = s_f
    if mask is not None:
        keep = mask[..., None]
        Q, Kc, Fc = Q.mul_(keep), Kc.mul_(keep), torch.where(keep, s_f, torch.ones_like(s_f))
    return Q, Kc, Fc


def _backward_buffers(d: _Dims, like: Tensor, backend: str) -> dict:
    new = dict(dtype=like.dtype, device=like.device)
    bufs = {"dG": torch.empty(d.T, d.B, 4 * d.H, **new), "X": torch.empty(d.T, d.B, d.H + d.F, **new)}
    if d.latent:
        bufs["dma"] = torch.empty(d.T, d.B, 2 * d.Z, **new)
        bufs["dz"] = torch.empty(d.T, d.B, (1 if backend == "triton" else 2) * d.Z, **new)  # torch: [dz | dz]
        bufs["du"] = [torch.empty(d.T, d.B, d.E, **new) for _ in range(d.L_e)]  # da_k (triton) or du_k
        bufs["dv"] = [torch.empty(d.T, d.B, d.F, **new) for _ in range(d.L_z)]  # df_k (triton) or dv_k
    return bufs


def _backward_torch(d: _Dims, b: dict, g_hz, g_ma, g_z, hz, c, G, ma, acts, fs, mask, eps, w_hz, w_e1h, enc_w,
                    head_w, phi_z_w, dh, dc):
    """Reverse loop with PyTorch ops, about 2 (L_e + L_z) + 8 a step; fills b's buffers with du_k and dv_k
    (the gradients at the ReLU inputs) and b["dz"] with [dz | dz]: the first phi_z layer's backward product
    writes dz twice (its weight side by side with itself), so that one addcmul gives
    d[mu | a] = [g_mu | g_a] + [dz | dz] [1 | eps sigmoid(a)]. The ReLU backward is a product with sign(output)
    (1 where the unit was on, 0 where off), computed for all steps before the loop. Returns the final (dh, dc)."""
    H, Z = d.H, d.Z
    Q, Kc, Fc = _cell_coefficients(d, G, c, mask)
    Kc, Fc, Q_ifg, Q_o = (_steps(t) for t in (Kc, Fc, Q.unflatten(2, (4, H))[:, :, :3], Q[..., 3 * H:]))
    dG4 = b["dG"].unflatten(2, (4, H))  # (T, B, 4, H): gate blocks
    dG, dG_ifg, dG_o, X, X_h, X_z = (_steps(t) for t in (b["dG"], dG4[:, :, :3], dG4[:, :, 3], b["X"],
                                                           b["X"][..., :H], b["X"][..., H:]))
    g_hz = _steps(g_hz)
    keep = None if mask is None else _steps((~mask)[..., None].to(dh.dtype))
    if d.latent:
        dz_dma = _steps(torch.cat([torch.ones_like(eps), eps * torch.sigmoid(ma[..., Z:])], -1))  # [1 | dz / da]
        on_a = [_steps(torch.sign(a)) for a in acts]
        on_f = [_steps(torch.sign(f)) for f in [*fs, hz[:d.T, :, H:]]]
        du, dv, dz2, dma = [_steps(t) for t in b["du"]], [_steps(t) for t in b["dv"]], _steps(b["dz"]), _steps(b["dma"])
        g_z2, g_ma = _steps(torch.cat([g_z, g_z], -1)), _steps(g_ma)
        w_z2 = torch.cat([phi_z_w[0], phi_z_w[0]], 1)
    for t in reversed(range(d.T)):
        dC = torch.addcmul(dc, dh, Kc[t])
        torch.mul(Q_ifg[t], dC[:, None], out=dG_ifg[t])
        torch.mul(Q_o[t], dh, out=dG_o[t])
        dc = dC * Fc[t]
        torch.addmm(g_hz[t], dG[t], w_hz, out=X[t])
        dh_next = X_h[t]
        if d.latent:
            grad = X_z[t]
            for k in reversed(range(d.L_z)):
                torch.mul(grad, on_f[k][t], out=dv[k][t])
                grad = torch.mm(dv[k][t], phi_z_w[k]) if k else torch.addmm(g_z2[t], dv[0][t], w_z2, out=dz2[t])
            torch.addcmul(g_ma[t], grad, dz_dma[t], out=dma[t])
            grad = torch.mm(dma[t], head_w)
            for k in reversed(range(d.L_e)):
                torch.mul(grad, on_a[k][t], out=du[k][t])
                if k:
                    grad = torch.mm(du[k][t], enc_w[k - 1])
            dh_next = torch.addmm(dh_next, du[0][t], w_e1h)
        if keep is not None:
            dh_next = dh_next.addcmul(keep[t], dh)
        dh = dh_next
    return dh, dc


def _backward_triton(d: _Dims, b: dict, g_hz, g_ma, g_z, hz, c, G, ma, acts, fs, mask, eps, w_hz, w_e1h, enc_w,
                     head_w, phi_z_w, dh, dc):
    """Reverse loop with fused kernels, L_e + L_z + 3 launches a step (the ReLU backward is the prologue of the
    next product, the heads' backward the epilogue of dz's); b's du/dv buffers receive the gradients at the
    ReLU outputs (da_k, df_k), masked after the loop. Returns the final (dh, dc)."""
    from .kernels import recurrence as kr

    H, Z = d.H, d.Z
    dG, X = b["dG"], b["X"]
    keep = None if mask is None else ~mask
    dh_bufs = [torch.empty_like(dh), torch.empty_like(dh)]
    dc_bufs = [torch.empty_like(dc), torch.empty_like(dc)]
    for i, t in enumerate(reversed(range(d.T))):
        m_t = None if mask is None else mask[t]
        dc_next, dh_next = dc_bufs[i % 2], dh_bufs[i % 2]
        kr.cell_bwd(G[t], c[t], dh, dc, m_t, dG[t], dc_next)
        if not d.latent:
            kr.linear(dG[t], w_hz.t(), dh_next, addend=g_hz[t], carry=dh, carry_rows=None if keep is None else keep[t])
        else:
            kr.linear(dG[t], w_hz.t(), X[t], addend=g_hz[t])
            grad, gate = X[t, :, H:], hz[t, :, H:]
            for k in reversed(range(1, d.L_z)):
                kr.linear(grad, phi_z_w[k].t(), b["dv"][k - 1][t], a_gate=gate)
                grad, gate = b["dv"][k - 1][t], fs[k - 1][t]
            kr.head_bwd(grad, phi_z_w[0].t(), gate, g_z[t], g_ma[t, :, :Z], g_ma[t, :, Z:], ma[t, :, Z:], eps[t],
                        b["dma"][t], b["dz"][t])
            kr.linear(b["dma"][t], head_w.t(), b["du"][-1][t])
            for k in reversed(range(1, d.L_e)):
                kr.linear(b["du"][k][t], enc_w[k - 1].t(), b["du"][k - 1][t], a_gate=acts[k][t])
            kr.linear(b["du"][0][t], w_e1h.t(), dh_next, a_gate=acts[0][t], addend=X[t, :, :H], carry=dh,
                      carry_rows=None if keep is None else keep[t])
        dh, dc = dh_next, dc_next
    if d.latent:  # the ReLU backward of every layer, all steps at once: gradients at the pre-activations
        b["dv"][-1] = X[..., H:]
        for grads, outs in ((b["du"], acts), (b["dv"], [*fs, hz[:d.T, :, H:]])):
            for k, (g, out) in enumerate(zip(grads, outs, strict=True)):
                grads[k] = _aten.threshold_backward(g, out, 0)
    return dh, dc


def _wgrad(grad: Tensor, inp: Tensor) -> Tensor:
    """sum over all T * B rows of grad^T inp: (T, B, N), (T, B, K) -> (N, K), one product."""
    return grad.flatten(0, 1).t() @ inp.flatten(0, 1)


@torch.library.custom_op("vrnn_fast::recurrence_backward", mutates_args=())
def recurrence_backward(g_hz: Tensor, g_cT: Tensor, g_ma: Tensor | None, g_z: Tensor | None, hz: Tensor, c: Tensor,
                        G: Tensor, ma: Tensor | None, z: Tensor | None, acts: list[Tensor], fs: list[Tensor],
                        mask: Tensor | None, eps: Tensor | None, w_hz: Tensor, w_e1h: Tensor | None,
                        enc_w: list[Tensor], head_w: Tensor | None, phi_z_w: list[Tensor], floor: float,
                        backend: str, want_eps: bool) -> list[Tensor]:
    """Gradients of ``recurrence`` from those of its outputs (hz, cT, ma, z) and what its forward saved.

    Returns [d gates_x, d h0, d c0, d w_hz] (+ [d enc_x, d eps (empty unless want_eps), d w_e1h, d head_w,
    d head_b, d enc_w..., d enc_b..., d phi_z_w..., d phi_z_b...] for a VRNN), in the forward's dtypes.
    """
    T, B = G.shape[:2]
    d = _dims(G, hz[0, :, :c.shape[2]], w_hz, w_e1h, head_w, enc_w, phi_z_w)
    b = _backward_buffers(d, G, backend)
    with torch.autocast(G.device.type, enabled=False):
        dh = g_hz[T, :, :d.H].to(torch.promote_types(G.dtype, c.dtype))
        dc = g_cT.to(c.dtype)
        loop = _backward_triton if backend == "triton" else _backward_torch
        dh, dc = loop(d, b, g_hz, g_ma, g_z, hz, c, G, ma, acts, fs, mask, eps, w_hz, w_e1h, enc_w, head_w,
                      phi_z_w, dh, dc)
        hz_t = hz[:T]
        out = [b["dG"], dh.to(c.dtype), dc.to(c.dtype), _wgrad(b["dG"], hz_t)]
        if d.latent:
            du, dv = b["du"], b["dv"]
            d_eps = b["dz"][..., :d.Z] * F.softplus(ma[..., d.Z:]).add_(floor) if want_eps else G.new_empty(0)
            out += [du[0], d_eps, _wgrad(du[0], hz_t[..., :d.H]), _wgrad(b["dma"], acts[-1]), b["dma"].sum((0, 1))]
            out += [_wgrad(du[k], acts[k - 1]) for k in range(1, d.L_e)] + [g.sum((0, 1)) for g in du[1:]]
            out += [_wgrad(dv[k], fs[k - 1] if k else z) for k in range(d.L_z)] + [g.sum((0, 1)) for g in dv]
    return out


@recurrence_backward.register_fake
def _(g_hz, g_cT, g_ma, g_z, hz, c, G, ma, z, acts, fs, mask, eps, w_hz, w_e1h, enc_w, head_w, phi_z_w, floor,
      backend, want_eps):
    T, B, H = c.shape[0] - 1, *c.shape[1:]
    out = [G.new_empty(T, B, 4 * H), torch.empty_like(c[0]), torch.empty_like(c[0]), torch.empty_like(w_hz)]
    if w_e1h is not None:
        out += [torch.empty_like(acts[0]), torch.empty_like(z) if want_eps else G.new_empty(0),
                torch.empty_like(w_e1h), torch.empty_like(head_w), head_w.new_empty(head_w.shape[0])]
        out += [torch.empty_like(w) for w in enc_w] + [w.new_empty(w.shape[0]) for w in enc_w]
        out += [torch.empty_like(w) for w in phi_z_w] + [w.new_empty(w.shape[0]) for w in phi_z_w]
    return out


def _setup_context(ctx, inputs, output):
    (gates_x, h0, c0, w_hz, mask, enc_x, eps, w_e1h, enc_w, enc_b, head_w, head_b, phi_z_w, phi_z_b, floor,
     backend) = inputs
    hz, _, c, G, *latent = output
    ma, z, acts, fs = (latent[0], latent[1], latent[2:2 + len(enc_w) + 1], latent[3 + len(enc_w):]) if latent \
        else (None, None, [], [])
    ctx.mark_non_differentiable(c, G, *acts, *fs)
    ctx.floor, ctx.backend, ctx.n = floor, backend, (len(acts), len(fs), len(enc_w), len(phi_z_w))
    ctx.want_eps = eps is not None and ctx.needs_input_grad[6]
    ctx.save_for_backward(hz, c, G, ma, z, mask, eps, w_hz, w_e1h, head_w, *acts, *fs, *enc_w, *phi_z_w)


def _backward(ctx, grads):
    hz, c, G, ma, z, mask, eps, w_hz, w_e1h, head_w, *rest = ctx.saved_tensors
    n_acts, n_fs, n_enc, n_phi = ctx.n
    acts, rest = rest[:n_acts], rest[n_acts:]
    fs, rest = rest[:n_fs], rest[n_fs:]
    enc_w, phi_z_w = rest[:n_enc], rest[n_enc:]
    g_hz, g_cT, _, _, *g_latent = grads
    g_ma, g_z = (g_latent[0], g_latent[1]) if g_latent else (None, None)
    out = recurrence_backward(g_hz, g_cT, g_ma, g_z, hz, c, G, ma, z, acts, fs, mask, eps, w_hz, w_e1h, enc_w,
                              head_w, phi_z_w, ctx.floor, ctx.backend, ctx.want_eps)
    d_gates_x, d_h0, d_c0, d_w_hz, *d_latent = out
    if not d_latent:
        return d_gates_x, d_h0, d_c0, d_w_hz, None, None, None, None, [], [], None, None, [], [], None, None
    d_enc_x, d_eps, d_w_e1h, d_head_w, d_head_b, *d_lists = d_latent
    d_enc_w, d_enc_b = d_lists[:n_enc], d_lists[n_enc:2 * n_enc]
    d_phi_w, d_phi_b = d_lists[2 * n_enc:2 * n_enc + n_phi], d_lists[2 * n_enc + n_phi:]
    return (d_gates_x, d_h0, d_c0, d_w_hz, None, d_enc_x, d_eps if ctx.want_eps else None, d_w_e1h, d_enc_w,
            d_enc_b, d_head_w, d_head_b, d_phi_w, d_phi_b, None, None)


recurrence.register_autograd(_backward, setup_context=_setup_context)
