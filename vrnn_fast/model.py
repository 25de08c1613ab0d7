"""FastVRNN: the reference model restructured so that everything sequential is one op.

Outside the op, for all T steps at once (time-major, (T, B, .)): phi_x, the phi_x parts of the encoder's first
layer and of the LSTM input projection, the prior, the decoder, the KL and the output log-density. Inside,
``torch.ops.vrnn_fast.recurrence`` (vrnn_fast/recurrence.py): the encoder, the reparameterised sample, phi_z
and the LSTM update of every step, with a hand-written backward that leaves the weight gradients to a few
products over all B x T rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import VRNNConfig
from .fused_torch import FUSED_TORCH_OPS, linear_gaussian_nll, linear_gmm_nll
from .recurrence import recurrence
from .reference import (
    PLAIN_OPS,
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

    ``backend``: ``"torch"`` (PyTorch ops; ``vrnn_fast.fused_torch`` for the Gaussian and GMM heads and density),
    ``"triton"`` (fused Triton kernels) or ``"auto"`` (triton for CUDA tensors, torch otherwise).

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
        """(op set for the losses, backend name of the recurrence op) for this input."""
        backend = self.backend
        if backend == "auto":
            backend = "triton" if x.is_cuda else "torch"
        if backend == "torch":
            return FUSED_TORCH_OPS, "torch"
        from . import triton_ops  # imported on demand: importing triton costs seconds

        return triton_ops.ops_for(x), "triton"

    def _recurrence_weights(self, dtype: torch.dtype) -> dict:
        """The op's weight arguments in the compute dtype (autograd flows back through the casts and slices)."""
        cfg, rnn = self.config, self.rnn
        if not cfg.has_latent:
            return dict(w_hz=rnn.weight_hh.to(dtype), w_e1h=None, enc_w=[], enc_b=[], head_w=None, head_b=None,
                        phi_z_w=[], phi_z_b=[])
        n_fx, enc = cfg.phi_x_dim, self.encoder
        layers = enc.net.layers
        return dict(
            w_hz=torch.cat([rnn.weight_hh, rnn.weight_ih[:, n_fx:]], 1).to(dtype),  # [W_hh | W_z] (4H, H + Fz)
            w_e1h=layers[0].weight[:, n_fx:].to(dtype),
            enc_w=[layer.weight.to(dtype) for layer in layers[1:]],
            enc_b=[layer.bias.to(dtype) for layer in layers[1:]],
            head_w=torch.cat([enc.mu.weight, enc.sigma.weight]).to(dtype),
            head_b=torch.cat([enc.mu.bias, enc.sigma.bias]).to(dtype),
            phi_z_w=[layer.weight.to(dtype) for layer in self.phi_z.layers],
            phi_z_b=[layer.bias.to(dtype) for layer in self.phi_z.layers],
        )

    def _decoder_nll(self, x_t: Tensor, inp: Tensor, start: int, mask_t: Tensor | None, ops, backend: str) -> Tensor:
        """-log p(x_t | .), (T, B), from the decoder MLP's input (or its layer ``start``'s output): a GMM's or a
        Gaussian's heads and density as one fused Function on the torch backend (float32/64, autocast off),
        ``ops``'s density otherwise (16-bit: the density in float32)."""
        dec, floor = self.decoder, self.config.sigma_floor
        fused = (backend == "torch" and inp.dtype in (torch.float32, torch.float64)
                 and not torch.is_autocast_enabled(x_t.device.type))
        if fused and dec.kind == "gmm":
            return linear_gmm_nll(dec.net(inp, start=start), x_t, dec.mu.weight, dec.mu.bias, dec.sigma.weight,
                                  dec.sigma.bias, dec.coeff.weight, dec.coeff.bias, floor, mask_t)
        if fused and dec.kind == "gauss":
            return linear_gaussian_nll(dec.net(inp, start=start), x_t, dec.mu.weight, dec.mu.bias, dec.sigma.weight,
                                       dec.sigma.bias, floor, mask_t)
        if dec.kind == "bernoulli":  # x in [0, 1] was checked with the inputs: the op set's check would repeat it
            ops = PLAIN_OPS
        return dec.nll(x_t, inp, floor, mask_t, ops, start=start)

    def _steps(self, x, mask, eps, state, want_log_weight):
        cfg, floor = self.config, self.config.sigma_floor
        ops, backend = self._ops(x)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        T, H = x.shape[1], cfg.h_dim
        x_t = x.transpose(0, 1)  # (T, B, D): time-major, so that a step is a contiguous slice
        mask_t = None if mask is None else mask.t()
        fx = self.phi_x(x_t)  # (T, B, Fx), all steps at once
        w = self._recurrence_weights(dtype)
        if cfg.has_latent:
            n_fx, enc_first = cfg.phi_x_dim, self.encoder.net.layers[0]
            enc_x = F.linear(fx, enc_first.weight[:, :n_fx], enc_first.bias).to(dtype)  # (T, B, E)
            gates_x = F.linear(fx, self.rnn.weight_ih[:, :n_fx], self.rnn.bias)  # (T, B, 4H)
            eps_t = eps.transpose(0, 1).to(dtype)
        else:
            enc_x = eps_t = None
            gates_x = F.linear(fx, self.rnn.weight_ih, self.rnn.bias)
        h0, c0 = state
        hz, c_T, _, _, *latent = recurrence(gates_x.to(dtype), h0, c0, w["w_hz"], mask_t, enc_x, eps_t, w["w_e1h"],
                                            w["enc_w"], w["enc_b"], w["head_w"], w["head_b"], w["phi_z_w"],
                                            w["phi_z_b"], floor, backend)
        h_prev = hz[:T, :, :H]  # (T, B, H): h_{t-1} of every step
        final = (hz[T, :, :H].to(c0.dtype, copy=True), c_T)
        if not cfg.has_latent:
            nll = self._decoder_nll(x_t, h_prev, 0, mask_t, ops, backend).t().contiguous()
            zeros = torch.zeros_like(nll)
            return StepResults(kl=zeros, nll=nll, log_pz_qz=zeros if want_log_weight else None,
                               z_mean=None, z_std=None, state=final)

        ma, z = latent[0], latent[1]
        mu_q, a_q = ma[..., :cfg.z_dim], ma[..., cfg.z_dim:]
        mu_p, a_p = self.prior(h_prev) if cfg.model == "vrnn" else (None, None)
        kl = ops.gaussian_kl(*map(to_loss_dtype, (mu_q, a_q, mu_p, a_p)), floor, mask_t)
        # The decoder's input is [phi_z(z_t), h_{t-1}]; hz holds [h_{t-1} | phi_z(z_t)], so its first layer's
        # weight columns are swapped instead of concatenating the activations.
        first, n_fz = self.decoder.net.layers[0], cfg.phi_z_dim
        w_dec = torch.cat([first.weight[:, n_fz:], first.weight[:, :n_fz]], 1)
        dec_hidden = F.relu(F.linear(hz[:T], w_dec, first.bias))
        nll = self._decoder_nll(x_t, dec_hidden, 1, mask_t, ops, backend)
        log_pz_qz = None
        if want_log_weight:
            log_pz = standard_normal_log_prob(z) if mu_p is None else -ops.gaussian_nll(z, mu_p, a_p, floor)
            log_pz_qz = _masked(log_pz + ops.gaussian_nll(z, mu_q, a_q, floor), mask_t).t()
        return StepResults(kl=kl.t().contiguous(), nll=nll.t().contiguous(), log_pz_qz=log_pz_qz,
                           z_mean=mu_q.transpose(0, 1), z_std=sigma_from(a_q, floor).transpose(0, 1), state=final)
