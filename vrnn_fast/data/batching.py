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
from collections.abc import Iterator, Sequence
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


def _collate(pieces: Sequence[np.ndarray], dim: int) -> tuple[Tensor, Tensor]:
    """Pad (t_i, D) arrays into x (B, T, D) float32 and mask (B, T) bool, T = max t_i (at least 1)."""
    t = max(1, max(len(p) for p in pieces))
    x = np.zeros((len(pieces), t, dim), np.float32)
    mask = np.zeros((len(pieces), t), bool)
    for b, p in enumerate(pieces):
        x[b, : len(p)] = p
        mask[b, : len(p)] = True
    return torch.from_numpy(x), torch.from_numpy(mask)


class _SequenceDataset:
    """Common batching over sequences i = 0..n-1 of ``lengths[i]`` steps, each read by ``_raw(i)`` (T_i, D).

    Subclasses set ``dim``, ``lengths``, ``segment`` (steps per sequence piece, None = whole sequences),
    ``stream_steps`` and implement ``_raw``. ``normalizer`` is set by :func:`open_splits`.
    """

    dim: int
    lengths: np.ndarray
    segment: int | None
    stream_steps: int
    normalizer: Normalizer | None = None
    # a frame store's split (vrnn_fast.data.store): reader(i) the raw frames, reader.rows(i) their row range in the
    # store, reader.batch(ranges, normalizer) a batch gathered from the memory map at once
    _reader = None

    def _raw(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def _load(self, i: int) -> np.ndarray:
        a = self._raw(i)
        return a if self.normalizer is None else self.normalizer.normalize(a).astype(np.float32, copy=False)

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

    def _pieces(self, a: np.ndarray) -> list[np.ndarray]:
        if self.segment is None:
            return [a] if len(a) else []
        return [a[s: s + self.segment] for s in range(0, len(a), self.segment)]

    def iter_batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                     drop_last: bool = False) -> Iterator[Batch]:
        """One pass over every sequence in batches of ``batch_size`` (the last may be smaller), carry=False.

        Shuffled passes depend only on (seed, epoch): sequences are read in a random order and batches are
        drawn at random from a buffer of about ``SHUFFLE_BUFFER_BYTES`` (all of a small corpus). Whole
        sequences (no segments) are bucketed: each shuffled batch holds neighbours in length, in random order.
        """
        _check_batch_size(batch_size)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self.lengths)) if shuffle else np.arange(len(self.lengths))
        steps_cap = SHUFFLE_BUFFER_BYTES // (4 * self.dim) if shuffle else 0
        bucket = shuffle and self.segment is None  # whole sequences: batch similar lengths (less padding)
        buffer: list[np.ndarray] = []
        buffered_steps = 0
        for i in order:
            if self.lengths[i] == 0:
                continue
            for p in self._pieces(self._load(int(i)) if self._reader is None else self._reader.rows(int(i))):
                buffer.append(p)
                buffered_steps += len(p)
            while len(buffer) >= batch_size and buffered_steps >= steps_cap:
                if not shuffle:
                    take = range(batch_size)
                elif bucket:  # a random sequence and the batch_size - 1 closest to it in length
                    lens = np.array([len(p) for p in buffer])
                    take = np.argsort(np.abs(lens - lens[rng.integers(len(buffer))]), kind="stable")[:batch_size]
                else:
                    take = rng.choice(len(buffer), batch_size, replace=False)
                chosen = set(int(k) for k in take)
                batch = [buffer[k] for k in sorted(chosen)]
                buffer = [p for k, p in enumerate(buffer) if k not in chosen]
                buffered_steps -= sum(len(p) for p in batch)
                yield self._batch(batch)
        if shuffle:
            buffer = [buffer[k] for k in rng.permutation(len(buffer))]
        if bucket:  # the rest: batches of neighbours in length, in random order
            buffer = [buffer[k] for k in np.argsort([len(p) for p in buffer], kind="stable")]
        batches = [buffer[s: s + batch_size] for s in range(0, len(buffer), batch_size)]
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
        for k in rng.permutation(len(batches)) if bucket else range(len(batches)):
            yield self._batch(batches[k])

    def _batch(self, pieces: list) -> Batch:
        """Pieces (arrays (t_i, D), or a store's row ranges) -> Batch of normalised frames, carry=False."""
        if self._reader is None:
            return Batch(*_collate(pieces, self.dim), False)
        return Batch(*self._reader.batch(pieces, self.normalizer), False)

    def iter_stream_batches(self, batch_size: int, seed: int = 0, epoch: int = 0,
                            steps: int | None = None) -> Iterator[Batch]:
        """Batches for truncated BPTT: row b walks through its own stream of concatenated sequences.

        The sequences (shuffled by (seed, epoch)) are dealt to min(batch_size, n) rows, each to the row with
        the fewest steps so far; every batch is the next ``steps`` steps of each row (default: the segment
        length, or ``STROKE_STREAM_STEPS`` for whole handwriting or series sequences). carry=False on the first
        batch of the pass, True after; a row whose stream has ended is masked out until the others end.
        """
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
        pending = [np.zeros((0, self.dim), np.float32) for _ in range(rows)]
        for k in range(n_batches):
            chunks = []
            for r in range(rows):
                parts, have = [pending[r]], len(pending[r])
                while have < steps and streams[r]:
                    a = self._load(streams[r].pop(0))
                    parts.append(a)
                    have += len(a)
                buf = np.concatenate(parts) if len(parts) > 1 else parts[0]
                chunks.append(buf[:steps])
                pending[r] = buf[steps:]
            x, mask = _collate(chunks, self.dim)
            if x.shape[1] < steps:  # every batch of a pass has the same T
                x = torch.nn.functional.pad(x, (0, 0, 0, steps - x.shape[1]))
                mask = torch.nn.functional.pad(mask, (0, steps - mask.shape[1]))
            yield Batch(x, mask, k > 0)


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
