"""Data pipeline throughput (CPU group): frames/s delivered to a training loop (no model) by shuffled
``iter_batches(64)`` passes over 0.5 s segments (T 40) of 16 kHz speech, from a frame store
(``vrnn_fast.data.store``), from the cached path (a corpus under ``batching.CACHE_BYTES``, decoded once) and from the
lazy path (files decoded for every pass, as for a corpus over the cache limit). One call = one pass.
"""

import numpy as np
import pytest
import torch

sf = pytest.importorskip("soundfile", reason="the data pipeline needs soundfile (the GPU image has none)")

from vrnn_fast import data  # noqa: E402
from vrnn_fast.data import batching, prepare  # noqa: E402

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
        monkeypatch.setattr(batching, "CACHE_BYTES", 0)
    train = data.open_splits(store if provider == "store" else source).train
    epoch = iter(range(10**6))

    def one_pass():
        for batch in train.iter_batches(BATCH, seed=0, epoch=next(epoch)):
            assert batch.x.dtype == torch.float32
    measure(one_pass, group="cpu data", case=f"16 kHz speech B{BATCH} T40", mode="batches", precision="float32",
            provider=provider, reference="lazy", device=torch.device("cpu"), frames=train.num_frames, rounds=ROUNDS,
            warmup=WARMUP)


# Memory of prepare on a corpus 4x the cache limit, in a fresh process (ru_maxrss covers a whole process's life):
# the limit is lowered to PREPARE_CACHE_MIB so that the corpus stays small enough to write for every run.
PREPARE_CACHE_MIB, PREPARE_FILES = 32, 70  # 70 files of 30 s: 134 MiB of float32 frames, 4.2x the limit
_PREPARE = """
import json, resource, sys, time
from vrnn_fast.data import batching, prepare
batching.CACHE_BYTES = {cache} * 2**20
before = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
start = time.perf_counter()
store = prepare(sys.argv[1], sys.argv[2], progress=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
frames = sum(s["frames"] for s in store.manifest["splits"].values())
print(json.dumps({{"seconds": seconds, "frames": frames, "peak_over_start_mib": peak - before}}))
"""


@pytest.mark.cpu_group
def test_cpu_prepare_memory(benchmark, results, tmp_path, request):
    import json
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    for i in range(PREPARE_FILES):
        wave = (0.2 * rng.standard_normal(30 * RATE)).clip(-1, 1).astype(np.float32)
        sf.write(str(tmp_path / f"u{i:03d}.wav"), wave, RATE, subtype="PCM_16")
    code = _PREPARE.format(cache=PREPARE_CACHE_MIB)

    def run():
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "store")], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.splitlines()[-1])

    benchmark.group = "cpu data prepare"
    got = benchmark.pedantic(run, rounds=1, iterations=1)
    corpus_mib = got["frames"] * 200 * 4 / 2**20
    benchmark.extra_info.update(
        name=request.node.nodeid, group="cpu data", case=f"prepare {corpus_mib:.0f} MiB, cache {PREPARE_CACHE_MIB} MiB",
        mode="prepare", precision="int16", provider="store", reference="store", device="cpu",
        median_s=got["seconds"], frames=got["frames"], peak_mem_mib=got["peak_over_start_mib"], floor_s=None)
    results.add(benchmark.extra_info)
    assert got["peak_over_start_mib"] < PREPARE_CACHE_MIB + 100
