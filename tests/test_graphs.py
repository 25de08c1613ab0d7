"""vrnn_fast.graphs: a whole training step as one CUDA graph. Its input checks run anywhere; the graphed step
itself against the same steps taken eagerly needs a GPU (selected by benchmarks/run_gpu.sh)."""

import copy

import pytest
import torch
from torch.testing import assert_close

from vrnn_fast import FastVRNN, VRNNConfig
from vrnn_fast.graphs import check_like, graphed_train_step

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="a CUDA graph needs a CUDA device; this machine has none")
CONFIG = VRNNConfig.preset("tiny", h_dim=24, phi_x_dim=16, phi_z_dim=16, enc_dim=16, prior_dim=16, dec_dim=16,
                           z_dim=8)
B, T = 4, 6


def _batch(seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, CONFIG.x_dim, generator=g)
    mask = torch.arange(T) < torch.tensor([T, T - 1, T - 3, 1])[:, None]
    noise = torch.randn(B, T, CONFIG.z_dim, generator=g)
    return x.to(device), mask.to(device), noise.to(device)


def _build(device="cpu", **optimizer):
    model = FastVRNN(CONFIG).to(device)
    return model, torch.optim.Adam(model.parameters(), **{"lr": 1e-2, "capturable": True, **optimizer})


@pytest.mark.parametrize(("change", "match"), [
    (dict(example_x="x"), "example_x must be a tensor"),
    (dict(example_mask=torch.ones(B, T + 1, dtype=torch.bool)), "example_mask must have shape"),
    (dict(optimizer=dict(capturable=False)), "capturable=True"),
    (dict(max_norm=0.0), "max_norm"),
    (dict(warmup=0), "warmup"),
    ({}, "needs CUDA tensors"),
])
def test_refuses_bad_arguments(change, match):
    model, opt = _build(**change.pop("optimizer", {}))
    x, mask, _ = _batch(0)
    args = {"example_x": x, "example_mask": mask, **change}
    with pytest.raises(ValueError, match=match):
        graphed_train_step(model, opt, **args)


def test_batch_check():
    static = torch.zeros(B, T, 3)
    check_like("x", static, torch.ones(B, T, 3))
    check_like("noise", None, None)
    with pytest.raises(ValueError, match=r"batches of one shape: x must be \(4, 6, 3\)"):
        check_like("x", static, torch.ones(B, T + 1, 3))
    with pytest.raises(ValueError, match="float64"):
        check_like("x", static, torch.ones(B, T, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="mask was given to build the step"):
        check_like("mask", static, None)
    with pytest.raises(ValueError, match="noise was not given to build the step"):
        check_like("noise", None, static)


@needs_cuda
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_graphed_steps_match_eager_steps(backend):
    """Given noise: warm-up, capture and replays take the same steps as the eager loop (loss, parameters)."""
    torch.manual_seed(0)
    model, opt = _build("cuda")
    model.backend = backend
    eager = copy.deepcopy(model)
    eager_opt = torch.optim.Adam(eager.parameters(), lr=1e-2, capturable=True)
    step = graphed_train_step(model, opt, *_batch(0, "cuda"), max_norm=1.0, warmup=2)
    for seed in range(5):  # 2 warm-up calls, the capture, 2 replays
        x, mask, noise = _batch(seed, "cuda")
        loss = step(x, mask, noise)
        eager_opt.zero_grad(set_to_none=True)
        eager_loss = eager(x, mask, noise=noise).loss
        eager_loss.backward()
        torch.nn.utils.clip_grad_norm_(eager.parameters(), 1.0)
        eager_opt.step()
        assert_close(loss, eager_loss.detach())
    assert step.graph is not None and step.calls == 5
    for p, q in zip(model.parameters(), eager.parameters(), strict=True):
        assert_close(p, q)


@needs_cuda
def test_noise_drawn_inside_the_graph_changes_per_replay():
    """lr 0 keeps the parameters: the losses of one batch differ only by the noise drawn in each call."""
    torch.manual_seed(0)
    model, opt = _build("cuda", lr=0.0)
    x, mask, _ = _batch(0, "cuda")
    step = graphed_train_step(model, opt, x, mask, warmup=1)
    losses = torch.stack([step(x, mask) for _ in range(4)])  # warm-up, capture, 2 replays
    assert step.graph is not None and torch.isfinite(losses).all()
    assert len(set(losses.tolist())) == 4
    with pytest.raises(ValueError, match="batches of one shape"):
        step(x[:, :-1], mask[:, :-1])
