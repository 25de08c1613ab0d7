"""Loading machinery: one pass of a dataset's batches through ``torch.utils.data``, read by worker processes into
pinned memory, each rank reading only its own rows.

A pass is planned from the sequence lengths alone (:class:`~vrnn_fast.data.batching.BatchPlan`), so that of W
workers, worker w reads batches start + w, start + w + W, ... and the DataLoader hands them out in order: the
batches, their order and their values are those of ``iter_batches`` / ``iter_stream_batches`` whatever W.
Under ``torchrun``, rank r of R reads rows :func:`rank_rows` of every global batch and nothing else.

Example::

    stream = BatchStream(splits.train, 64, seed=0, epoch=0, rank=rank, world=world)
    for share in loader(stream, workers=4, pin_memory=True):   # Share(batch (rows lo:hi), lo, hi, size)
        x = share.batch.x.to("cuda", non_blocking=True)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .batching import Batch


class Share(NamedTuple):
    """Rows lo:hi of a global batch of ``size`` rows: ``batch`` x (hi - lo, T, D), mask, carry, with T that of the
    global batch. An empty share (lo == hi: more ranks than rows) reads nothing and holds one row of zeros, all
    masked, for a step of weight 0."""

    batch: Batch
    lo: int
    hi: int
    size: int


def rank_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of an n-row global batch that rank ``rank`` of ``world`` takes (contiguous, sizes differ by
    at most 1, rank order)."""
    return rank * n // world, (rank + 1) * n // world


def default_workers() -> int:
    """Loader workers of each rank when none are asked for and batches are read from disk (the trainer gives data
    held in memory none): min(4, the CPUs this process may use per local rank - 1), 0 when that leaves none."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_rank = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(4, per_rank - 1))


class BatchStream(IterableDataset):
    """One pass of ``dataset``'s batches from batch ``start`` on (and before batch ``stop``), cut to rank
    ``rank`` of ``world``'s rows, as :class:`Share` items: ``iter_stream_batches`` when ``stream``, else
    ``iter_batches(shuffle=shuffle)``, of ``batch_size`` and (seed, epoch).

    A dataset of this package is planned (each worker reads only its batches and its rows); any other dataset
    with the ``iter_batches`` / ``iter_stream_batches`` interface is read whole and cut (in the main process:
    :func:`loader` gives it no workers).
    """

    def __init__(self, dataset, batch_size: int, *, stream: bool = False, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, start: int = 0, stop: int | None = None, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        self.dataset, self.batch_size, self.stream, self.shuffle = dataset, batch_size, stream, shuffle
        self.seed, self.epoch, self.start, self.stop, self.rank, self.world = seed, epoch, start, stop, rank, world

    @property
    def planned(self) -> bool:
        return hasattr(self.dataset, "batch_plans")

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        ds, b, seed, epoch = self.dataset, self.batch_size, self.seed, self.epoch
        if self.planned:
            items = ds.stream_plans(b, seed, epoch) if self.stream else ds.batch_plans(b, self.shuffle, seed, epoch)
        else:
            items = ds.iter_stream_batches(b, seed=seed, epoch=epoch) if self.stream else \
                ds.iter_batches(b, shuffle=self.shuffle, seed=seed, epoch=epoch)
        held: dict = {}  # raw sequences a planned pass reads once (batching._SequenceDataset.read)
        for k, item in enumerate(items):
            if self.stop is not None and k >= self.stop:
                return
            if k >= self.start and (k - self.start) % workers == worker:
                size, steps, dim = (item.rows, item.steps, ds.dim) if self.planned else item.x.shape
                lo, hi = rank_rows(size, self.rank, self.world)
                if hi == lo:
                    batch = Batch(torch.zeros(1, steps, dim), torch.zeros(1, steps, dtype=torch.bool), item.carry)
                elif self.planned:
                    batch = ds.gather(item.share(lo, hi), held)
                else:
                    batch = Batch(item.x[lo:hi], item.mask[lo:hi], item.carry)
                yield Share(batch, lo, hi, size)
            for i in item.finished if self.planned else ():
                held.pop(i, None)


def loader(stream: BatchStream, workers: int = 0, pin_memory: bool = False,
           worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """A DataLoader over the stream's Share items: ``workers`` processes (0: read in this process, as is a
    dataset that is not planned), each first running ``worker_init_fn`` (on Linux they die with this process);
    pinned memory with ``pin_memory`` (for non-blocking copies to a GPU). The global RNGs are left alone.

    Workers are forked where the OS can (whatever the default start method: a spawned worker imports torch and
    unpickles the dataset, seconds per worker per pass, and copies a cached corpus instead of sharing it).
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    workers = workers if stream.planned else 0
    if workers:
        stream.dataset.load_cache()  # read once here, shared by the forked workers
    fork = workers and "fork" in multiprocessing.get_all_start_methods()
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      worker_init_fn=functools.partial(_init_worker, worker_init_fn) if workers else None,
                      multiprocessing_context="fork" if fork else None, generator=torch.Generator())


def _init_worker(worker_init_fn: Callable[[int], None] | None, worker_id: int) -> None:
    if sys.platform == "linux":  # die with the main process: a killed run leaves no worker holding its sockets
        with contextlib.suppress(AttributeError, OSError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if worker_init_fn is not None:
        worker_init_fn(worker_id)


__all__ = ["BatchStream", "Share", "default_workers", "loader", "rank_rows"]
