"""A whole training step as one CUDA graph: forward, backward, gradient clipping and the optimiser step.

Replaying a graph launches every kernel of the step with one call, so the host cost of a step no longer grows
with the number of kernels in it (see ``benchmarks/roofline.py``'s launch projection)::

    model = FastVRNN(config).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, capturable=True)   # capturable: its step counts
    step = graphed_train_step(model, opt, x0, mask0, max_norm=5.0)              # stay on the GPU
    for x, mask in loader:                          # every batch of the same shape as (x0, mask0)
        loss = step(x.cuda(), mask.cuda())          # one training step; loss is a new (,) tensor

How it works (the recipe of ``torch.cuda.graphs``, "whole network capture"): the batch is copied into static
buffers allocated once; the first ``warmup`` calls run eagerly on a side stream (real training steps: they
initialise the optimiser state, cuBLAS workspaces and the Triton kernels); the next call sets the gradients to
None, captures the step into a graph, then replays it; every later call only copies the batch in and replays.
The reparameterisation noise is drawn inside the graph from torch's CUDA generator, which is graph-safe (each
replay draws new numbers), unless the step is built with ``example_noise``: then each call passes ``noise``.
Gradient clipping uses ``clip_grad_norm_``, which scales on the device without reading the norm back.

Limits: every batch must have the example's shapes, dtypes and device (padding to a fixed T and B is the usual
way), checked on each call; the model's own input checks run when the step is captured, not on replays. Do not
call ``optimizer.zero_grad()`` or ``optimizer.step()`` yourself: the graph owns the gradients. The learning rate
is baked in at capture unless it is a tensor (``Adam(..., lr=torch.tensor(1e-3, device="cuda"))``, changed in
place). CUDA only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def graphed_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, example_x: Tensor,
                       example_mask: Tensor | None = None, example_noise: Tensor | None = None, *,
                       max_norm: float | None = 5.0, warmup: int = 3,
                       autocast_dtype: torch.dtype | None = None) -> GraphedTrainStep:
    """A callable ``step(x, mask=None, noise=None) -> loss`` that trains ``model`` on one batch per call as a
    CUDA graph (see the module docstring).

    model: a FastVRNN or ReferenceVRNN (anything whose ``model(x, mask, noise=noise).loss`` is the loss) with
    its parameters on the examples' CUDA device; optimizer: over those parameters, built with
    ``capturable=True`` where it has that option (Adam, AdamW, ...); example_x (B, T, D), example_mask (B, T)
    bool and example_noise (B, T, Z): the shapes of every batch (copied, not kept); max_norm: clip the gradients'
    global norm to it (None: no clipping); autocast_dtype: run the forward under ``torch.autocast`` in this
    dtype (e.g. ``torch.bfloat16``). Raises ValueError on CPU tensors, a non-capturable optimiser or bad values.
    """
    examples = {"x": example_x, "mask": example_mask, "noise": example_noise}
    for name, tensor in examples.items():
        if (tensor is not None or name == "x") and not isinstance(tensor, Tensor):
            raise ValueError(f"example_{name} must be a tensor, got {type(tensor).__name__}")
    if example_mask is not None and example_mask.shape != example_x.shape[:2]:
        raise ValueError(f"example_mask must have shape (B, T) = {tuple(example_x.shape[:2])}, "
                         f"got {tuple(example_mask.shape)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if any(group.get("capturable") is False for group in optimizer.param_groups):
        raise ValueError(f"{type(optimizer).__name__} must be built with capturable=True to be captured in a graph")
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"max_norm must be positive or None, got {max_norm!r}")
    if not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup must be a positive integer, got {warmup!r}")
    if not example_x.is_cuda:
        raise ValueError(f"a CUDA graph needs CUDA tensors: example_x is on {example_x.device}")
    devices = {str(t.device) for t in (*params, example_mask, example_noise) if t is not None}
    if devices != {str(example_x.device)}:
        raise ValueError(f"the model's parameters and every example must be on {example_x.device}, "
                         f"found {sorted(devices)}")
    return GraphedTrainStep(model, optimizer, params, examples, max_norm, warmup, autocast_dtype)


def check_like(name: str, static: Tensor | None, new: Tensor | None) -> None:
    """Raise ValueError unless ``new`` has ``static``'s shape, dtype and device (both None is fine)."""
    if static is None or new is None:
        if static is not new:
            given = "was" if static is not None else "was not"
            raise ValueError(f"{name} {given} given to build the step: pass it on every call or never")
        return
    if not isinstance(new, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(new).__name__}")
    if new.shape != static.shape or new.dtype != static.dtype or new.device != static.device:
        raise ValueError(f"a graphed step takes batches of one shape: {name} must be {tuple(static.shape)} "
                         f"{static.dtype} on {static.device}, got {tuple(new.shape)} {new.dtype} on {new.device}")


class GraphedTrainStep:
    """The callable :func:`graphed_train_step` returns; ``calls`` counts the steps taken, ``graph`` is the
    captured ``torch.cuda.CUDAGraph`` (None during warm-up)."""

    def __init__(self, model, optimizer, params, examples, max_norm, warmup, autocast_dtype):
        self.model, self.optimizer, self.params = model, optimizer, params
        self.static = {name: None if t is None else t.detach().clone() for name, t in examples.items()}
        self.max_norm, self.warmup, self.autocast_dtype = max_norm, warmup, autocast_dtype
        self.calls, self.graph, self._loss = 0, None, None

    def __call__(self, x: Tensor, mask: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """Train on one batch; returns its loss (a new tensor, not synchronised)."""
        batch = {"x": x, "mask": mask, "noise": noise}
        for name, new in batch.items():
            check_like(name, self.static[name], new)
        for name, new in batch.items():
            if new is not None:
                self.static[name].copy_(new)
        if self.graph is not None:
            self.graph.replay()
        elif self.calls < self.warmup:
            side = torch.cuda.Stream(self.static["x"].device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                self._loss = self._step()
            torch.cuda.current_stream().wait_stream(side)
        else:
            self.optimizer.zero_grad(set_to_none=True)  # the backward allocates them from the graph's pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._loss = self._step()
            self.graph = graph
            graph.replay()  # capturing runs nothing
        self.calls += 1
        return self._loss.clone()

    def _step(self) -> Tensor:
        """The captured work: forward, backward, clipping, optimiser step. Returns the loss (detached)."""
        s = self.static
        if self.autocast_dtype is None:
            loss = self.model(s["x"], s["mask"], noise=s["noise"]).loss
        else:  # the autocast cache must be off while capturing
            with torch.autocast("cuda", self.autocast_dtype, cache_enabled=False):
                loss = self.model(s["x"], s["mask"], noise=s["noise"]).loss
        loss.backward()
        if self.max_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.optimizer.step()
        return loss.detach()
