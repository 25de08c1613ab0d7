"""FastVRNN: the reference model restructured so the sequential loop holds only what must be sequential.

Outside the loop, for all T steps at once: phi_x, the phi_x parts of the encoder's first layer and
of the LSTM input projection, the prior, the decoder, the KL and the output log-density. Inside the
loop: one merged GEMM ``h_{t-1} @ [W_enc_h; W_hh]^T`` (B, E + 4H), the rest of the encoder, the
reparameterised sample, phi_z and the LSTM update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import VRNNConfig
from .reference import (
    TORCH_OPS,
    StepResults,
    VRNNBase,
    _masked,
    sigma_from,
    standard_normal_log_prob,
    to_loss_dtype,
)

BACKENDS = ("auto", "torch", "triton")


class FastVRNN(VRNNBase):
    """Drop-in ``nn.Module`` VRNN; same parameters, ``state_dict`` keys and API as ReferenceVRNN.

    ``backend``: ``"torch"`` (plain PyTorch ops), ``"triton"`` (fused Triton kernels) or ``"auto"``
    (triton for CUDA tensors, torch otherwise).

    Example::

        model = FastVRNN(VRNNConfig.preset("tiny"))
        out = model(x, mask)          # x (B, T, 200), mask (B, T) bool
        out.loss.backward()           # mean over sequences of the summed -ELBO
    """

    def __init__(self, config: VRNNConfig, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        super().__init__(config)
        self.backend = backend

    def _ops(self, x: Tensor):
        backend = self.backend
        if backend == "auto":
            backend = "triton" if x.is_cuda else "torch"
        if backend == "torch":
            return TORCH_OPS
        from . import triton_ops  # imported on demand: importing triton costs seconds

        return triton_ops.ops_for(x)

    def _steps(self, x, mask, eps, state, want_log_weight):
        cfg, floor, ops = self.config, self.config.sigma_floor, self._ops(x)
        h, c = state
        fx = self.phi_x(x)  # (B, T, Fx), all steps at once
        if not cfg.has_latent:
            gates_x = F.linear(fx, self.rnn.weight_ih, self.rnn.bias)  # (B, T, 4H)
            h_prev, (h, c) = self._recur_rnn(gates_x, h, c, mask, ops)
            nll = self.decoder.nll(x, h_prev, floor, mask, ops)
            zeros = torch.zeros_like(nll)
            return StepResults(kl=zeros, nll=nll, log_pz_qz=zeros if want_log_weight else None,
                               z_mean=None, z_std=None, state=(h, c))

        n_fx, n_enc = cfg.phi_x_dim, cfg.enc_dim
        enc_first = self.encoder.net.layers[0]
        enc_x = F.linear(fx, enc_first.weight[:, :n_fx], enc_first.bias)  # (B, T, E)
        gates_x = F.linear(fx, self.rnn.weight_ih[:, :n_fx], self.rnn.bias)  # (B, T, 4H)
        w_h = torch.cat([enc_first.weight[:, n_fx:], self.rnn.weight_hh])  # (E + 4H, H): one GEMM per step
        w_z = self.rnn.weight_ih[:, n_fx:]  # (4H, Fz)
        hs, mus, a_s, zs, z_feats = [], [], [], [], []
        for t in range(x.shape[1]):
            hs.append(h)
            h_proj = F.linear(h, w_h)  # (B, E + 4H)
            enc_hidden = self.encoder.net(F.relu(enc_x[:, t] + h_proj[:, :n_enc]), start=1)
            mu_q, a_q = self.encoder.heads(enc_hidden)
            z = ops.reparameterize(mu_q, a_q, eps[:, t], floor)
            z_t = self.phi_z(z)
            gates = torch.addmm(gates_x[:, t] + h_proj[:, n_enc:], z_t, w_z.t())
            h, c = self._carry(ops.lstm_cell(gates, c), (h, c), mask, t)
            mus.append(mu_q)
            a_s.append(a_q)
            zs.append(z)
            z_feats.append(z_t)
        h_prev, mu_q, a_q, z = (torch.stack(v, 1) for v in (hs, mus, a_s, zs))  # (B, T, .)

        mu_p, a_p = self.prior(h_prev) if cfg.model == "vrnn" else (None, None)
        kl = ops.gaussian_kl(*map(to_loss_dtype, (mu_q, a_q, mu_p, a_p)), floor, mask)
        nll = self.decoder.nll(x, torch.cat([torch.stack(z_feats, 1), h_prev], -1), floor, mask, ops)
        log_pz_qz = None
        if want_log_weight:
            log_pz = standard_normal_log_prob(z) if mu_p is None else -ops.gaussian_nll(z, mu_p, a_p, floor)
            log_pz_qz = _masked(log_pz + ops.gaussian_nll(z, mu_q, a_q, floor), mask)
        return StepResults(kl=kl, nll=nll, log_pz_qz=log_pz_qz, z_mean=mu_q, z_std=sigma_from(a_q, floor),
                           state=(h, c))

    def _recur_rnn(self, gates_x: Tensor, h: Tensor, c: Tensor, mask: Tensor | None, ops):
        """The RNN baselines' loop: only the recurrent GEMM and the cell update. Returns h_{t-1} (B, T, H)."""
        hs = []
        for t in range(gates_x.shape[1]):
            hs.append(h)
            gates = torch.addmm(gates_x[:, t], h, self.rnn.weight_hh.t())
            h, c = self._carry(ops.lstm_cell(gates, c), (h, c), mask, t)
        return torch.stack(hs, 1), (h, c)

    @staticmethod
    def _carry(new: tuple[Tensor, Tensor], old: tuple[Tensor, Tensor], mask: Tensor | None, t: int):
        """The updated (h, c), except on padded steps, which keep the old state."""
        if mask is None:
            return new
        keep = mask[:, t, None]
        return torch.where(keep, new[0], old[0]), torch.where(keep, new[1], old[1])
