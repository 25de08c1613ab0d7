"""Datasets and their batches: sequences of frames (speech), pen offsets (handwriting) or any features (series)
as (x, mask) batches.

A sequence is either cut into pieces of ``segment`` steps (a sequence's last, shorter piece is kept, padded and
masked) or kept whole (``segment=None``). :meth:`~_SequenceDataset.iter_batches` gives shuffled (or ordered)
batches of pieces, whole sequences bucketed by length; :meth:`~_SequenceDataset.iter_stream_batches` gives the
per-row streams of truncated BPTT. Audio files are read lazily per batch (cached in memory only when the whole
corpus is under ``CACHE_BYTES``), or from a frame store's memory map (:mod:`vrnn_fast.data.store`).

Shapes: B batch, T steps (frames, pen points or series steps), D = x_dim (frame_size for speech, 3 for
handwriting, the number of features of a series).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .audio import AudioConfig, frames, read_audio
from .errors import DataError

if TYPE_CHECKING:
    from .splits import Normalizer

# The waveform of a corpus smaller than this is kept in memory after its first read.
CACHE_BYTES = 256 * 2**20
# Shuffled batches draw at random from a buffer of about this many bytes of sequences (files stream through it).
SHUFFLE_BUFFER_BYTES = 64 * 2**20
# Truncated-BPTT chunk length of handwriting streams, and of unsegmented series, when the caller gives none.
STROKE_STREAM_STEPS = 300


class Batch(NamedTuple):
    """x (B, T, D) float32, zero where masked; mask (B, T) bool; carry: row b continues row b of the last batch."""

    x: Tensor
    mask: Tensor
    carry: bool


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


class BatchPlan(NamedTuple):
    """Which frames make one batch, known before any is read.

    ``parts`` (P, 4) int64 rows [row, sequence, start, stop], sorted by row: row b of the batch holds frames
    start:stop of each of its parts' sequences, back to back; ``rows`` B; ``steps`` T (the longest row, at least
    1, or the stream length); ``carry`` as :attr:`Batch.carry`; ``finished`` the sequences that no later batch of
    the pass reads (a reader may forget them).
    """

    parts: np.ndarray
    rows: int
    steps: int
    carry: bool
    finished: tuple[int, ...]

    def share(self, lo: int, hi: int) -> BatchPlan:
        """Rows lo:hi of the batch (numbered from 0), same T."""
        parts = self.parts[(self.parts[:, 0] >= lo) & (self.parts[:, 0] < hi)] - np.array([lo, 0, 0, 0])
        return self._replace(parts=parts, rows=hi - lo)


def _plan(rows: list[list[tuple[int, int, int]]], steps: int, carry: bool, finished: list[int]) -> BatchPlan:
    """A BatchPlan of per-row parts (sequence, start, stop)."""
    parts = [(b, i, s, e) for b, row in enumerate(rows) for i, s, e in row]
    return BatchPlan(np.array(parts, np.int64).reshape(-1, 4), len(rows), steps, carry, tuple(finished))


class _SequenceDataset:
    """Common batching over sequences i = 0..n-1 of ``lengths[i]`` steps, each read by ``_raw(i)`` (T_i, D).

    A pass is planned from the lengths alone (:meth:`batch_plans`, :meth:`stream_plans`: which frames go where)
    and read by :meth:`gather`, so that loader workers can each read their own batches, and ranks their own rows
    (:mod:`vrnn_fast.data.loader`). Subclasses set ``dim``, ``lengths``, ``segment`` (steps per sequence piece,
    None = whole sequences), ``stream_steps`` and implement ``_raw``. ``normalizer`` is set by
    :func:`open_splits`.
    """

    dim: int
    lengths: np.ndarray
    segment: int | None
    stream_steps: int
    normalizer: Normalizer | None = None
    # a frame store's split (vrnn_fast.data.store): reader(i) the raw frames, reader.gather(parts, rows, steps)
    # the raw frames of a plan, gathered from the memory map at once
    _reader = None

    def _raw(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def load_cache(self) -> None:
        """Reads now what the dataset keeps in memory (before loader workers copy it); nothing by default."""

    @property
    def in_memory(self) -> bool:
        """Whether every sequence is held in memory (then a batch costs a gather, and loader workers only add a
        fork per pass): sequences given as arrays, unless read from a frame store."""
        return self._reader is None

    def raw_sequences(self, keep: bool = True):
        """Each raw sequence (T_i, dim), in order. ``keep=False``: what the dataset does not hold yet is read
        without being kept (a frame store's prepare streams a corpus through)."""
        for i in range(len(self.lengths)):
            yield self._raw(i)

    def __len__(self) -> int:
        return self.num_sequences

    @property
    def num_sequences(self) -> int:
        """Sequences one pass of :meth:`iter_batches` yields (segments, or whole utterances/drawings)."""
        if self.segment is None:
            return int((self.lengths > 0).sum())
        return int(sum(-(-int(n) // self.segment) for n in self.lengths))

    @property
    def num_frames(self) -> int:
        """Unmasked steps (frames or pen points) in one pass."""
        return int(self.lengths.sum())

    def _pieces(self, i: int) -> list[tuple[int, int, int]]:
        """Sequence i's pieces (i, start, stop): segments, or the whole sequence."""
        n = int(self.lengths[i])
        if self.segment is None:
            return [(i, 0, n)] if n else []
        return [(i, s, min(s + self.segment, n)) for s in range(0, n, self.segment)]

    def iter_batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                     drop_last: bool = False) -> Iterator[Batch]:
        """One pass over every sequence in batches of ``batch_size`` (the last may be smaller), carry=False.

        Shuffled passes depend only on (seed, epoch): sequences are read in a random order and batches are
        drawn at random from a buffer of about ``SHUFFLE_BUFFER_BYTES`` (all of a small corpus). Whole
        sequences (no segments) are bucketed: each shuffled batch holds neighbours in length, in random order.
        """
        return self.read(self.batch_plans(batch_size, shuffle, seed, epoch, drop_last))

    def iter_stream_batches(self, batch_size: int, seed: int = 0, epoch: int = 0,
                            steps: int | None = None) -> Iterator[Batch]:
        """Batches for truncated BPTT: row b walks through its own stream of concatenated sequences.

        The sequences (shuffled by (seed, epoch)) are dealt to min(batch_size, n) rows, each to the row with
        the fewest steps so far; every batch is the next ``steps`` steps of each row (default: the segment
        length, or ``STROKE_STREAM_STEPS`` for whole handwriting or series sequences). carry=False on the first
        batch of the pass, True after; a row whose stream has ended is masked out until the others end.
        """
        return self.read(self.stream_plans(batch_size, seed, epoch, steps))

    def read(self, plans: Iterable[BatchPlan]) -> Iterator[Batch]:
        """:meth:`gather` of each plan of one pass, in order; each sequence is read once a pass (held until a plan
        says it is finished)."""
        held: dict[int, np.ndarray] = {}
        for plan in plans:
            yield self.gather(plan, held)
            for i in plan.finished:
                held.pop(i, None)

    def gather(self, plan: BatchPlan, held: dict[int, np.ndarray] | None = None) -> Batch:
        """The batch a plan describes: x (B, T, D) float32 normalised, zero where masked, mask (B, T) bool.
        ``held``: raw sequences kept from earlier batches of the pass (read here when missing, and added)."""
        if self._reader is not None:
            x, mask = self._reader.gather(plan.parts, plan.rows, plan.steps)
        else:
            x = np.zeros((plan.rows, plan.steps, self.dim), np.float32)
            mask = np.zeros((plan.rows, plan.steps), bool)
            held = {} if held is None else held
            filled = np.zeros(plan.rows, np.int64)
            for b, i, s, e in plan.parts.tolist():
                if i not in held:
                    held[i] = self._raw(i)
                t = filled[b]
                x[b, t: t + e - s] = held[i][s:e]
                mask[b, t: t + e - s] = True
                filled[b] += e - s
        if self.normalizer is not None:  # in place: the same float32 operations as Normalizer.normalize
            mean, std = self.normalizer.stats_for(x)
            v = x[..., self.normalizer.raw_columns:]
            v -= mean
            v /= std
        x[~mask] = 0
        return Batch(torch.from_numpy(x), torch.from_numpy(mask), plan.carry)

    def batch_plans(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                    drop_last: bool = False) -> Iterator[BatchPlan]:
        """The plans of :meth:`iter_batches` (same arguments), one a batch."""
        _check_batch_size(batch_size)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self.lengths)) if shuffle else np.arange(len(self.lengths))
        steps_cap = SHUFFLE_BUFFER_BYTES // (4 * self.dim) if shuffle else 0
        bucket = shuffle and self.segment is None  # whole sequences: batch similar lengths (less padding)
        buffer: list[tuple[int, int, int]] = []  # pieces (sequence, start, stop)
        buffered_steps = 0
        unplanned: dict[int, int] = {}  # pieces of each buffered sequence not in a batch yet

        def plan(pieces):
            finished = []
            for i, _, _ in pieces:
                unplanned[i] -= 1
                if not unplanned[i]:
                    finished.append(i)
                    del unplanned[i]
            return _plan([[p] for p in pieces], max(1, max(e - s for _, s, e in pieces)), False, finished)

        for i in order:
            if self.lengths[i] == 0:
                continue
            pieces = self._pieces(int(i))
            unplanned[int(i)] = len(pieces)
            buffer += pieces
            buffered_steps += int(self.lengths[i])
            while len(buffer) >= batch_size and buffered_steps >= steps_cap:
                if not shuffle:
                    take = range(batch_size)
                elif bucket:  # a random sequence and the batch_size - 1 closest to it in length
                    lens = np.array([e - s for _, s, e in buffer])
                    take = np.argsort(np.abs(lens - lens[rng.integers(len(buffer))]), kind="stable")[:batch_size]
                else:
                    take = rng.choice(len(buffer), batch_size, replace=False)
                chosen = set(int(k) for k in take)
                batch = [buffer[k] for k in sorted(chosen)]
                buffer = [p for k, p in enumerate(buffer) if k not in chosen]
                buffered_steps -= sum(e - s for _, s, e in batch)
                yield plan(batch)
        if shuffle:
            buffer = [buffer[k] for k in rng.permutation(len(buffer))]
        if bucket:  # the rest: batches of neighbours in length, in random order
            buffer = [buffer[k] for k in np.argsort([e - s for _, s, e in buffer], kind="stable")]
        batches = [buffer[s: s + batch_size] for s in range(0, len(buffer), batch_size)]
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
        for k in rng.permutation(len(batches)) if bucket else range(len(batches)):
            yield plan(batches[k])

    def stream_plans(self, batch_size: int, seed: int = 0, epoch: int = 0,
                     steps: int | None = None) -> Iterator[BatchPlan]:
        """The plans of :meth:`iter_stream_batches` (same arguments), one a batch; every plan has T = steps."""
        _check_batch_size(batch_size)
        steps = steps or self.segment or self.stream_steps
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        rng = np.random.default_rng([seed, epoch])
        order = [int(i) for i in rng.permutation(len(self.lengths)) if self.lengths[i] > 0]
        if not order:
            return
        rows = min(batch_size, len(order))
        streams: list[list[int]] = [[] for _ in range(rows)]
        heap = [(0, r) for r in range(rows)]
        for i in order:
            total, r = heapq.heappop(heap)
            streams[r].append(i)
            heapq.heappush(heap, (total + int(self.lengths[i]), r))
        n_batches = -(-max(t for t, _ in heap) // steps)
        at = [0] * rows  # steps of its current (first) sequence each row has used
        for k in range(n_batches):
            parts, finished = [], []
            for r, stream in enumerate(streams):
                row, need = [], steps
                while need and stream:
                    i = stream[0]
                    take = min(need, int(self.lengths[i]) - at[r])
                    row.append((i, at[r], at[r] + take))
                    at[r] += take
                    need -= take
                    if at[r] == self.lengths[i]:
                        finished.append(stream.pop(0))
                        at[r] = 0
                parts.append(row)
            yield _plan(parts, steps, k > 0, finished)


class AudioDataset(_SequenceDataset):
    """Speech files as frame sequences (see the module docstring). ``files``: the audio files, in order.

    ``reader``: a frame store's split (:mod:`vrnn_fast.data.store`), read instead of the files (``files`` are then
    names only); nothing is cached then.
    """

    def __init__(self, files: Sequence[Path], lengths: Sequence[int], audio: AudioConfig,
                 decoded: Sequence[np.ndarray] | None = None, reader=None):
        self.files = [Path(f) for f in files]
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.audio = audio
        self.dim = audio.frame_size
        self.segment = audio.segment_frames
        self.stream_steps = audio.segment_frames or max(1, round(0.5 * audio.sample_rate / audio.frame_size))
        self._reader = reader
        # raw frames per file index, kept when the corpus is small (given when open_splits decoded it already)
        small = reader is None and self.num_frames * self.dim * 4 <= CACHE_BYTES
        self._cache: dict[int, np.ndarray] | None = {} if small else None
        if decoded is not None and self._cache is not None:
            self._cache.update(enumerate(decoded))

    @property
    def in_memory(self) -> bool:
        """Whether the decoded corpus is kept (under the cache limit, not a frame store)."""
        return self._reader is None and self._cache is not None

    def raw_sequences(self, keep: bool = True):
        """Each file's raw frames, in order; with ``keep=False`` a cache still empty stays empty."""
        cache = self._cache
        if not keep and cache == {}:
            self._cache = None
        try:
            yield from super().raw_sequences()
        finally:
            self._cache = cache

    def load_cache(self) -> None:
        """Decodes now every file a split under the cache limit keeps (loader workers then share them)."""
        if self._cache is not None:
            for i in range(len(self.files)):
                self._raw(i)

    def _raw(self, i: int) -> np.ndarray:
        if self._reader is not None:
            return self._reader(i)
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        a = frames(read_audio(self.files[i], self.audio.sample_rate), self.dim)
        n = int(self.lengths[i])  # from the header: the index must stay exact
        if len(a) < n - 1:
            raise DataError(f"audio file {self.files[i]} decoded to {len(a)} frames, its header promised {n}: "
                            "truncated or corrupt")
        if len(a) != n:  # a decoder may differ from the header by a sample
            a = np.concatenate([a[:n], np.zeros((max(0, n - len(a)), self.dim), np.float32)])
        if self._cache is not None:
            self._cache[i] = a
        return a


class SeriesDataset(_SequenceDataset):
    """Sequences held in memory, each (T_i, dim) float32: whole sequences per batch row (``segment=None``), or
    pieces of ``segment`` steps (the last piece of a sequence shorter, padded and masked).

    ``files``: the source file of each sequence (a file holding several repeats); ``names``: each sequence's name.
    """

    def __init__(self, sequences: Sequence[np.ndarray], names: Sequence[str], files: Sequence[Path], dim: int,
                 segment: int | None = None):
        self._seqs = [np.asarray(s, np.float32) for s in sequences]
        wrong = [i for i, s in enumerate(self._seqs) if s.ndim != 2 or s.shape[1] != dim]
        if wrong:
            raise ValueError(f"sequence {names[wrong[0]]} has shape {self._seqs[wrong[0]].shape}, not (T, {dim})")
        self.names, self.files = list(names), [Path(f) for f in files]
        self.lengths = np.array([len(s) for s in self._seqs], dtype=np.int64)
        self.dim, self.segment, self.stream_steps = dim, segment, segment or STROKE_STREAM_STEPS

    def _raw(self, i: int) -> np.ndarray:
        return self._seqs[i]


class StrokeDataset(SeriesDataset):
    """Handwriting sequences [pen, dx, dy] held in memory (whole sequences per batch row).

    ``files``: the source file of each sequence (an archive repeats); ``names``: each sequence's name.
    """

    def __init__(self, sequences: Sequence[np.ndarray], names: Sequence[str], files: Sequence[Path]):
        super().__init__(sequences, names, files, dim=3)
