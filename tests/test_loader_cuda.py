"""The loader on a GPU (needs CUDA: benchmarks/run_gpu.sh runs this file): batches from worker processes come in
pinned memory and reach the device unchanged through non-blocking copies, and a short training run on CUDA with
loader workers ends with the same parameters as one that reads in the training process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vrnn_fast.config import VRNNConfig
from vrnn_fast.data import open_splits, save_npz
from vrnn_fast.data.loader import BatchStream, loader
from vrnn_fast.train import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="pinned memory and non-blocking copies need a CUDA device, and this machine has none")


@pytest.fixture
def series(tmp_path):
    """Train/valid splits of 40 series of 7 features and 3-19 steps, cut into 5-step pieces."""
    rng = np.random.default_rng(0)
    save_npz(tmp_path / "s.npz", [rng.normal(size=(int(rng.integers(3, 20)), 7)) for _ in range(40)])
    return open_splits(tmp_path / "s.npz", segment_steps=5)


def test_pinned_batches_from_workers_reach_the_gpu_unchanged(series):
    expected = list(series.train.iter_batches(4, shuffle=True, seed=1, epoch=0))
    shares = list(loader(BatchStream(series.train, 4, seed=1), workers=2, pin_memory=True))
    assert len(shares) == len(expected) > 1
    for share, want in zip(shares, expected, strict=True):
        assert share.batch.x.is_pinned() and share.batch.mask.is_pinned()
        x, mask = share.batch.x.to("cuda", non_blocking=True), share.batch.mask.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        assert torch.equal(x.cpu(), want.x) and torch.equal(mask.cpu(), want.mask)


def test_cuda_training_with_workers_equals_training_without(series, tmp_path):
    model_config = VRNNConfig(x_dim=7, z_dim=3, h_dim=16, phi_x_dim=8, phi_z_dim=8, enc_dim=8, prior_dim=8,
                              dec_dim=8, batch_size=4, lr=1e-2)
    final = []
    for workers in (0, 2):
        config = TrainConfig(steps=6, out_dir=str(tmp_path / f"w{workers}"), workers=workers, eval_every=3,
                             checkpoint_every=100, device="cuda")
        trainer = Trainer(model_config, config, series.train, series.valid, series.normalizer)
        trainer.fit()
        final.append({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()})
    for k, v in final[0].items():
        assert torch.equal(v, final[1][k]), k
