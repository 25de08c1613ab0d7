"""Tests of vrnn_fast.data.loader: batches through torch.utils.data are those of iter_batches and
iter_stream_batches for any number of workers (frame store, cached and lazy speech, handwriting), a resumed pass
starts where it stopped, each rank reads only its rows (2 gloo processes: disjoint shares that together are the
global batch), training with workers is bit-exact with training without (across a resume too), and a worker
lets go of the run lock it inherits."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_store import ink, same_batches, speech, store_atol
from test_train import params, small_config, strokes

from vrnn_fast.data import batching, open_splits, prepare, save_npz
from vrnn_fast.data.loader import BatchStream, loader, rank_rows
from vrnn_fast.data.store import SplitReader
from vrnn_fast.train import TrainConfig, Trainer, read_checkpoint, run_lock

PROVIDERS = ("store", "cached", "lazy", "ink", "series")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A speech folder (12 files), its frame store, a handwriting folder (14 drawings) and an .npz of 30 series
    (5 features each, a per-feature normaliser)."""
    root = tmp_path_factory.mktemp("loader")
    prepare(speech(root / "src"), root / "store", progress=False)
    ink(root / "ink", n=14)
    rng = np.random.default_rng(2)
    save_npz(root / "series.npz", [rng.normal(size=(int(rng.integers(3, 12)), 5)) * [1, 2, 3, 4, 5] for _ in range(30)])
    return root


def open_train(root, provider: str):
    """The train split of one of PROVIDERS (lazy: files decoded per pass, as for a corpus over the cache)."""
    if provider == "lazy":
        with pytest.MonkeyPatch.context() as m:
            m.setattr(batching, "CACHE_BYTES", 0)
            return open_splits(root / "src").train
    if provider == "series":
        return open_splits(root / "series.npz", segment_steps=4).train
    return open_splits(root / {"store": "store", "cached": "src", "ink": "ink"}[provider]).train


def assert_same(got, expected) -> None:
    """Equal lists of batches: x bit for bit, masks, carries."""
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask) and a.carry == b.carry


@pytest.mark.parametrize("provider", PROVIDERS)
def test_workers_give_the_batches_of_the_dataset_in_order(sources, provider):
    ds = open_train(sources, provider)
    for stream, shuffle in ((False, True), (False, False), (True, True)):
        expected = list(ds.iter_stream_batches(3, seed=4, epoch=1) if stream else
                        ds.iter_batches(3, shuffle=shuffle, seed=4, epoch=1))
        for workers, start in ((0, 0), (2, 0), (2, min(3, len(expected) - 1))):  # start: a resumed pass
            shares = list(loader(BatchStream(ds, 3, stream=stream, shuffle=shuffle, seed=4, epoch=1, start=start),
                                 workers))
            assert all((s.lo, s.hi, s.size) == (0, len(s.batch.x), len(s.batch.x)) for s in shares)
            assert_same([s.batch for s in shares], expected[start:])


def test_store_stream_batches_equal_the_direct_path(sources):
    """Source -> store -> TBPTT stream batches: rows cross sequence ends inside a batch, gathered from the store
    in one read per batch; the same frames (within the int16 step), masks and carries as the direct path."""
    direct, stored = open_train(sources, "cached"), open_train(sources, "store")
    atol = store_atol(direct.normalizer)
    for batch_size in (1, 3, 50):
        for steps in (None, 7):
            same_batches(direct.iter_stream_batches(batch_size, seed=2, steps=steps),
                         stored.iter_stream_batches(batch_size, seed=2, steps=steps), atol)
    assert any(len(np.unique(p.parts[:, 0])) < len(p.parts) for p in stored.stream_plans(3, seed=2, steps=7))


def test_a_lazy_pass_decodes_each_file_once(sources, monkeypatch):
    ds = open_train(sources, "lazy")
    calls = []
    read = batching.read_audio
    monkeypatch.setattr(batching, "read_audio", lambda path, rate: calls.append(path) or read(path, rate))
    for batches in (ds.iter_batches(4, seed=1), ds.iter_stream_batches(3, seed=1),
                    (s.batch for s in loader(BatchStream(ds, 4, seed=1, start=2), 0))):
        calls.clear()
        assert sum(1 for _ in batches) > 1
        assert len(calls) == len(set(calls)) <= len(ds.files)


def test_rank_shares_are_disjoint_and_make_the_global_batch(sources):
    ds = open_train(sources, "store")
    for batch_size, world, stream in ((5, 2, False), (5, 3, False), (1, 2, False), (2, 2, True)):
        # streams: one row's sequences end before the other's, leaving a rank a share with nothing to read
        full = list(ds.iter_stream_batches(batch_size, seed=3) if stream else ds.iter_batches(batch_size, seed=3))
        shares = [list(loader(BatchStream(ds, batch_size, stream=stream, seed=3, rank=r, world=world)))
                  for r in range(world)]
        for k, batch in enumerate(full):
            parts = [s[k] for s in shares]
            assert [(p.lo, p.hi) for p in parts] == [rank_rows(len(batch.x), r, world) for r in range(world)]
            kept = [p for p in parts if p.hi > p.lo]
            assert torch.equal(torch.cat([p.batch.x for p in kept]), batch.x)
            assert torch.equal(torch.cat([p.batch.mask for p in kept]), batch.mask)
            for p in parts:  # an empty share: one masked row of zeros (for a step of weight 0), of the batch's T
                if p.hi == p.lo:
                    assert p.batch.x.shape == (1, *batch.x.shape[1:]) and not p.batch.x.any() and not p.batch.mask.any()


def test_a_store_reader_pickles_as_its_file(sources):
    """Workers that do not fork (spawn, forkserver) get the memory map's path, not a copy of the frames."""
    reader = open_train(sources, "store")._reader
    data = pickle.dumps(reader)
    assert len(data) < reader.frames.nbytes / 4
    again = pickle.loads(data)
    assert isinstance(again, SplitReader) and isinstance(again.frames, np.memmap)
    assert np.array_equal(again.frames, reader.frames) and np.array_equal(again(1), reader(1))


# ----------------------------------------------------------------------------------------------------------
# Training with workers


def fit(tmp_path, name, steps, workers, resume=False, **kw) -> Trainer:
    cfg = TrainConfig(steps=steps, out_dir=str(tmp_path / name), workers=workers, eval_every=2, checkpoint_every=100,
                      **kw)
    trainer = Trainer(small_config(x_dim=3, batch_size=4), cfg, strokes(10, 0), strokes(5, 1))
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer


@pytest.mark.parametrize(("provider", "in_memory"), [("cached", True), ("series", True), ("ink", True),
                                                     ("lazy", False), ("store", False)])
def test_default_workers_only_where_batches_are_read_from_disk(sources, tmp_path, monkeypatch, provider, in_memory):
    """Data held in memory: no workers (a batch is a gather; a worker adds a fork per pass, 43% more wall time in
    the README's first run); lazily decoded audio and frame stores: loader.default_workers()."""
    monkeypatch.setattr("vrnn_fast.train.default_workers", lambda: 3)
    train = open_train(sources, provider)
    assert train.in_memory is in_memory
    trainer = Trainer(small_config(x_dim=train.dim, batch_size=4), TrainConfig(steps=1, out_dir=str(tmp_path)), train)
    assert trainer.workers == (0 if in_memory else 3)
    explicit = Trainer(small_config(x_dim=train.dim, batch_size=4),
                       TrainConfig(steps=1, out_dir=str(tmp_path), workers=2), train)
    assert explicit.workers == 2


@pytest.mark.parametrize("options", [dict(), dict(tbptt=True, reset_every=3)], ids=["plain", "tbptt"])
def test_training_with_workers_is_bit_exact_also_across_a_resume(tmp_path, options):
    """7 updates in the training process == 4 with 2 workers, then 3 more resumed with 1 (3 batches a pass)."""
    straight = fit(tmp_path, "straight", 7, workers=0, **options)
    fit(tmp_path, "split", 4, workers=2, **options)
    resumed = fit(tmp_path, "split", 7, workers=1, resume=True, **options)
    assert resumed.step == straight.step and resumed.epoch == straight.epoch
    for k, v in params(straight.model).items():
        assert torch.equal(v, params(resumed.model)[k]), k
    assert read_checkpoint(tmp_path / "split" / "best.pt")["progress"] == \
        read_checkpoint(tmp_path / "straight" / "best.pt")["progress"]


def test_a_loader_worker_lets_go_of_the_run_lock(tmp_path):
    """A run killed while its loader workers live: its lock is free at once (the workers hold no copy of it)."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import multiprocessing, os, time
        from vrnn_fast.train import _init_loader_worker, run_lock

        def worker():
            _init_loader_worker(0)
            print(os.getpid(), flush=True)
            time.sleep(60)

        with run_lock({str(out)!r}):
            multiprocessing.get_context("fork").Process(target=worker).start()
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the worker outlives its run here (no PR_SET_PDEATHSIG in this test)
        with warnings.catch_warnings(record=True), run_lock(out):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------------
# Two gloo ranks: each reads its own rows, and training on shares equals one process


def _gloo_rank(rank, world, init_file, root):
    import torch.distributed as dist

    from vrnn_fast.data.batching import _SequenceDataset

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        read = []  # (sequence, step) of every frame the gathers read
        gather = _SequenceDataset.gather

        def spy(self, plan, held=None):
            read.extend((i, j) for _, i, s, e in plan.parts.tolist() for j in range(s, e))
            return gather(self, plan, held)

        _SequenceDataset.gather = spy
        splits = open_splits(root / "store")
        out = {}
        for name, ds, kw in (("train", splits.train, dict(seed=3)), ("stream", splits.train, dict(stream=True)),
                             ("valid", splits.valid, dict(shuffle=False))):
            shares, reads = [], []
            for share in loader(BatchStream(ds, 5, rank=rank, world=world, **kw), 0):
                shares.append(share)
                reads.append(list(read))  # what this share read (no workers: read when it is drawn)
                read.clear()
            out[name] = [(s.lo, s.hi, s.size, s.batch.x, s.batch.mask) for s in shares], reads
            again = list(loader(BatchStream(ds, 5, rank=rank, world=world, **kw), 2))  # workers: the same shares
            assert all(torch.equal(a.batch.x, b.batch.x) for a, b in zip(shares, again, strict=True))
        _SequenceDataset.gather = gather
        torch.save(out, root / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_shares_that_make_the_global_batch(sources):
    """Each rank reads only its rows of every train, TBPTT and validation batch (frames counted at the gather).
    Training on such shares equals one process: tests/test_train.py, DDP config "planned"."""
    mp.spawn(_gloo_rank, args=(2, str(sources / "init"), sources), nprocs=2)
    ranks = [torch.load(sources / f"rank{r}.pt", weights_only=False) for r in range(2)]
    splits = open_splits(sources / "store")
    for name, batches in (("train", splits.train.iter_batches(5, seed=3)),
                          ("stream", splits.train.iter_stream_batches(5)),
                          ("valid", splits.valid.iter_batches(5, shuffle=False))):
        batches = list(batches)
        (s0, read0), (s1, read1) = ranks[0][name], ranks[1][name]
        assert len(s0) == len(s1) == len(batches) == len(read0) == len(read1)
        for batch, a, b, r0, r1 in zip(batches, s0, s1, read0, read1, strict=True):
            n = len(batch.x)
            assert (a[:3], b[:3]) == ((0, n // 2, n), (n // 2, n, n))
            kept = [s for s in (a, b) if s[1] > s[0]]  # an empty share (valid: 1 row) reads nothing
            assert torch.equal(torch.cat([s[3] for s in kept]), batch.x)
            assert torch.equal(torch.cat([s[4] for s in kept]), batch.mask)
            assert not set(r0) & set(r1) and len(r0) + len(r1) == int(batch.mask.sum())  # each frame read once
