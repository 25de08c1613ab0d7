"""Data pipeline throughput (CPU group): frames/s delivered to a training loop (no model) by shuffled
``iter_batches(64)`` passes over 0.5 s segments (T 40) of 16 kHz speech, from a frame store
(``vrnn_fast.store``), from the cached path (a corpus under ``data.CACHE_BYTES``, decoded once) and from the
lazy path (files decoded for every pass, as for a corpus over the cache limit). One call = one pass.
"""

import numpy as np
import pytest
import soundfile as sf
import torch

from vrnn_fast import data
from vrnn_fast.store import prepare

RATE, BATCH, FILES, SECONDS = 16000, 64, 120, 3.0  # 6 min of speech: 28,800 frames, 720 segments a pass
ROUNDS, WARMUP = 3, 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(source folder, store folder): FILES 16-bit 16 kHz files of noise-modulated tones, SECONDS each."""
    root = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * RATE)) / RATE
    for i in range(FILES):
        wave = 0.3 * np.sin(2 * np.pi * (100 + 3 * i) * t) * (1 + 0.5 * rng.standard_normal(t.shape))
        sf.write(str(root / f"utt{i:03d}.wav"), wave.clip(-1, 1).astype(np.float32), RATE, subtype="PCM_16")
    store = root.parent / "store"
    prepare(root, store, progress=False)
    return root, store


@pytest.mark.cpu_group
@pytest.mark.parametrize("provider", ["lazy", "cached", "store"])
def test_cpu_data_batches(measure, corpus, monkeypatch, provider):
    source, store = corpus
    if provider == "lazy":
        monkeypatch.setattr(data, "CACHE_BYTES", 0)
    train = data.open_splits(store if provider == "store" else source).train
    epoch = iter(range(10**6))

    def one_pass():
        for batch in train.iter_batches(BATCH, seed=0, epoch=next(epoch)):
            assert batch.x.dtype == torch.float32
    measure(one_pass, group="cpu data", case=f"16 kHz speech B{BATCH} T40", mode="batches", precision="float32",
            provider=provider, reference="lazy", device=torch.device("cpu"), frames=train.num_frames, rounds=ROUNDS,
            warmup=WARMUP)
