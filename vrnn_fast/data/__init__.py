"""Data pipeline: speech waveforms and online handwriting as batches of (x, mask) for the VRNN.

Speech (PAPER.md, "Speech data"): audio files (wav, flac, ogg, ... through soundfile) are mixed down to mono,
resampled to ``AudioConfig.sample_rate`` with soxr, cut into non-overlapping ``frame_size``-sample frames
(tail dropped) and z-scored with one global scalar mean/std fit on the training split. A sequence is either a
fixed-length segment of ``segment_seconds`` (``segment_frames`` frames; a file's last, shorter segment is kept,
padded and masked) or a whole utterance (``segment_seconds=None``). Files are read lazily per batch (cached in
memory only when the whole corpus is small), so a large corpus is streamed; or from a frame store
(:mod:`vrnn_fast.data.store`), decoded once and memory-mapped.

Handwriting (PAPER.md, "IAM-OnDB"): each sequence is rows ``[pen, dx, dy]`` where (dx, dy) are successive
differences of the pen positions (N points -> N-1 rows), ``pen = 1`` marks a row that ends at the last point
of a stroke, and y grows upward. One scalar mean/std pooled over dx and dy is fit on the training split; the
pen bit is left raw. Formats: UNIPEN ASCII inside a ``.tar.gz`` (read with tarfile, never extracted; y up
already), Omniglot stroke files (``START`` / ``x,y,t`` / ``BREAK``) inside a ``.zip`` (Omniglot stores
"motor" coordinates, y = -image row, so y is up already) and IAM-OnDB's XML (``<Stroke><Point x= y= .../>``,
y grows downward: flipped).

Splits: the dataset's own split where its layout has one (TIMIT: ``train``/``test`` folders, a ``valid`` or
``dev`` folder if present, else about 5% of the training speakers; FSDD ``{digit}_{speaker}_{take}.wav``:
takes 0-4 are test, about 5% of the rest valid), otherwise a deterministic (seeded) 0.9/0.05/0.05 split by
file, or by sequence for a single handwriting archive.

Shapes: B batch, T steps (frames or pen points), D = x_dim (frame_size for speech, 3 for handwriting).

Example::

    splits = open_splits()                          # the shipped CMU ARCTIC slt set, 0.5 s segments
    for batch in splits.train.iter_batches(16):     # Batch(x (B, 40, 200), mask (B, 40), carry=False)
        out = model(batch.x, mask=batch.mask)
"""

from __future__ import annotations

import heapq
import math
import os
import re
import tarfile
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".mp3")
# The waveform of a corpus smaller than this is kept in memory after its first read.
CACHE_BYTES = 256 * 2**20
# Shuffled batches draw at random from a buffer of about this many bytes of sequences (files stream through it).
SHUFFLE_BUFFER_BYTES = 64 * 2**20
# Truncated-BPTT chunk length of handwriting streams when the caller gives none.
STROKE_STREAM_STEPS = 300
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)

DEFAULT_SPEECH: Path = Path(__file__).resolve().parent.parent / "datasets" / "cmu_arctic_slt"


SKIP_BAD_HINT = "skip_bad=True, or --skip-bad on the command line, skips unreadable files"


class DataError(ValueError):
    """Any problem with input data; the message names the file or folder."""


@dataclass(frozen=True)
class AudioConfig:
    """How audio becomes frames: rate in Hz, samples per frame, and segment length in seconds.

    ``segment_seconds=None`` keeps whole utterances (variable length, padded and masked in batches).
    """

    sample_rate: int = 16000
    frame_size: int = 200
    segment_seconds: float | None = 0.5

    def __post_init__(self) -> None:
        for name in ("sample_rate", "frame_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AudioConfig.{name} must be a positive integer, got {value!r}")
        seg = self.segment_seconds
        if seg is not None and not (isinstance(seg, (int, float)) and math.isfinite(seg) and seg > 0):
            raise ValueError(f"AudioConfig.segment_seconds must be None or > 0, got {seg!r}")
        if seg is not None and seg * self.sample_rate < self.frame_size:
            raise ValueError(f"AudioConfig.segment_seconds={seg} is shorter than one frame "
                             f"({self.frame_size} samples at {self.sample_rate} Hz)")

    @property
    def segment_frames(self) -> int | None:
        """Frames per segment (40 for 0.5 s of 200-sample frames at 16 kHz), None for whole utterances."""
        if self.segment_seconds is None:
            return None
        return max(1, round(self.segment_seconds * self.sample_rate / self.frame_size))


class Batch(NamedTuple):
    """x (B, T, D) float32, zero where masked; mask (B, T) bool; carry: row b continues row b of the last batch."""

    x: Tensor
    mask: Tensor
    carry: bool


@dataclass
class Normalizer:
    """z-scoring with one scalar: ``(a - mean) / std`` on every feature column but the first ``raw_columns``.

    Speech: ``raw_columns=0`` (the whole waveform). Handwriting: ``raw_columns=1`` (the pen bit stays raw,
    dx and dy share one mean and std).
    """

    mean: float
    std: float
    raw_columns: int = 0

    def __post_init__(self) -> None:
        self.mean, self.std, self.raw_columns = float(self.mean), float(self.std), int(self.raw_columns)
        if not math.isfinite(self.mean):
            raise ValueError(f"Normalizer.mean must be finite, got {self.mean}")
        if not (math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"Normalizer.std must be finite and > 0, got {self.std}")
        if self.raw_columns < 0:
            raise ValueError(f"Normalizer.raw_columns must be >= 0, got {self.raw_columns}")

    def normalize(self, a):
        """(a - mean) / std on columns ``raw_columns:`` of the last dim; numpy array or tensor, same type out."""
        return self._apply(a, lambda v: (v - self.mean) / self.std)

    def denormalize(self, a):
        """Inverse of :meth:`normalize`: a * std + mean on the same columns."""
        return self._apply(a, lambda v: v * self.std + self.mean)

    def _apply(self, a, fn):
        if not self.raw_columns:
            return fn(a)
        out = a.clone() if isinstance(a, Tensor) else np.array(a, copy=True)
        out[..., self.raw_columns:] = fn(out[..., self.raw_columns:])
        return out

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "raw_columns": self.raw_columns}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        unknown = set(d) - {"mean", "std", "raw_columns"}
        if unknown or "mean" not in d or "std" not in d:
            raise ValueError(f"Normalizer.from_dict needs keys mean, std (and optional raw_columns), got {sorted(d)}")
        return cls(**d)

    @classmethod
    def fit(cls, arrays, raw_columns: int = 0, what: str = "training data") -> Normalizer:
        """Pooled scalar mean/std over ``a[..., raw_columns:]`` of every array (float64, merged per array)."""
        n, mean, m2 = 0, 0.0, 0.0
        for a in arrays:
            v = np.asarray(a, dtype=np.float64)[..., raw_columns:].ravel()
            if v.size == 0:
                continue
            vm = float(v.mean())
            vm2 = float(((v - vm) ** 2).sum())
            delta, total = vm - mean, n + v.size
            mean += delta * v.size / total
            m2 += vm2 + delta * delta * n * v.size / total
            n = total
        if n == 0:
            raise DataError(f"cannot fit the normalizer: {what} is empty")
        std = math.sqrt(m2 / n)
        if not std > 0:
            raise DataError(f"cannot fit the normalizer: {what} is constant (std 0)")
        return cls(mean, std, raw_columns)


# ----------------------------------------------------------------------------------------------------------
# Speech files


def _resampled_length(n: int, rate_in: int, rate_out: int) -> int:
    """soxr's output length for n input samples: round(n * rate_out / rate_in), halves up."""
    return (2 * n * rate_out + rate_in) // (2 * rate_in)


def read_audio(path, sample_rate: int) -> np.ndarray:
    """The file's waveform as float32 mono in [-1, 1] at ``sample_rate`` Hz, shape (N,).

    Several channels are mixed down (their mean); another rate is resampled with soxr (HQ).
    Raises DataError naming the file when it is missing, unreadable, corrupt or has no samples.
    """
    path = Path(path)
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if not path.is_file():
        raise DataError(f"audio file not found: {path}")
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types (LibsndfileError, RuntimeError, ...)
        raise DataError(f"cannot read audio file {path}: {type(e).__name__}: {e}") from e
    if wave.shape[0] == 0:
        raise DataError(f"audio file {path} has no samples")
    wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if not np.isfinite(wave).all():
        raise DataError(f"audio file {path} holds non-finite samples")
    _warn_if_cut_short(path)
    peak = float(np.abs(wave).max())
    if peak > 1.0:  # only float formats can hold these
        warnings.warn(f"audio file {path} has samples beyond +-1 (peak {peak:.3g}): clipped to [-1, 1]", stacklevel=2)
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate).astype(np.float32, copy=False)
    return np.clip(wave, -1.0, 1.0)


_CUT_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _warn_if_cut_short(path: Path) -> None:
    """Warns when libsndfile found less audio than the file's header promises (a file cut short with its
    header intact, e.g. an interrupted copy): the samples present are used."""
    try:
        found = _CUT_SHORT.search(sf.info(str(path)).extra_info)
    except Exception:  # the read itself succeeded; a header it cannot describe says nothing more
        return
    if found and int(found.group(2)) < int(found.group(1)):
        promised, present = int(found.group(1)), int(found.group(2))
        warnings.warn(f"audio file {path} is cut short: its header promises {promised} bytes of audio, the file "
                      f"holds {present} ({100 * present / promised:.0f}%); using what is there", stacklevel=3)


def frames(wave: np.ndarray, frame_size: int) -> np.ndarray:
    """Non-overlapping frames of a 1-D waveform: (N,) -> (N // frame_size, frame_size); the tail is dropped."""
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"frames expects a 1-D waveform, got shape {wave.shape}")
    if not isinstance(frame_size, int) or frame_size < 1:
        raise ValueError(f"frame_size must be a positive integer, got {frame_size!r}")
    n = wave.shape[0] // frame_size
    return wave[: n * frame_size].reshape(n, frame_size)


def _audio_frames_count(path: Path, audio: AudioConfig) -> int:
    """Frames the file will give, from its header alone (DataError if the header cannot be read)."""
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise DataError(f"cannot read audio file {path}: {type(e).__name__}: {e}") from e
    if info.frames <= 0 or info.samplerate <= 0:
        raise DataError(f"audio file {path} has no samples")
    return _resampled_length(info.frames, info.samplerate, audio.sample_rate) // audio.frame_size


# ----------------------------------------------------------------------------------------------------------
# Handwriting files


def _offsets(strokes: list[np.ndarray], flip_y: bool) -> np.ndarray:
    """Strokes (each (n, 2) pen positions) -> rows [pen, dx, dy], (N-1, 3) float32; pen=1 ends a stroke."""
    strokes = [s for s in strokes if len(s)]
    if not strokes:
        return np.zeros((0, 3), np.float32)
    points = np.concatenate(strokes).astype(np.float64)
    pen = np.zeros(len(points))
    pen[np.cumsum([len(s) for s in strokes]) - 1] = 1.0
    d = np.diff(points, axis=0)
    if flip_y:
        d[:, 1] = -d[:, 1]
    return np.column_stack([pen[1:], d]).astype(np.float32)


def _parse_unipen(text: str, name: str) -> list[np.ndarray] | None:
    """UNIPEN ASCII: points between ``.PEN_DOWN`` and ``.PEN_UP`` (first two numbers of each line).

    Returns None for a file without ink (a label file of ``.INCLUDE``s and ``.SEGMENT``s).
    """
    strokes, current, down = [], [], False
    for line_no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("."):
            keyword = s.split(None, 1)[0]
            if keyword == ".PEN_DOWN":
                down, current = True, []
            elif keyword == ".PEN_UP":
                if down and current:
                    strokes.append(np.array(current, np.float64))
                down, current = False, []
            elif down:  # another keyword ends the pen-down block
                if current:
                    strokes.append(np.array(current, np.float64))
                down, current = False, []
            continue
        if down:
            parts = s.split()
            try:
                current.append((float(parts[0]), float(parts[1])))
            except (ValueError, IndexError) as e:
                raise DataError(f"bad UNIPEN point line {line_no} in {name}: {s!r}") from e
    if down and current:
        strokes.append(np.array(current, np.float64))
    return strokes or None


def _parse_omniglot(text: str, name: str) -> list[np.ndarray]:
    """Omniglot stroke file: ``START``, ``x,y,t`` lines, ``BREAK`` after each stroke."""
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    if not lines or lines[0] != "START":
        raise DataError(f"not an Omniglot stroke file (no START line): {name}")
    strokes, current = [], []
    for line_no, s in enumerate(lines[1:], 2):
        if s == "BREAK":
            if current:
                strokes.append(np.array(current, np.float64))
            current = []
            continue
        if s == "START":
            continue
        parts = s.split(",")
        try:
            current.append((float(parts[0]), float(parts[1])))
        except (ValueError, IndexError) as e:
            raise DataError(f"bad Omniglot point line {line_no} in {name}: {s!r}") from e
    if current:
        strokes.append(np.array(current, np.float64))
    return strokes


def _parse_iam_xml(data: bytes, name: str) -> list[np.ndarray]:
    """IAM-OnDB XML: ``<StrokeSet><Stroke><Point x= y= time=/>...`` (y grows downward)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise DataError(f"cannot parse XML file {name}: {e}") from e
    strokes = []
    for stroke in root.iter("Stroke"):
        try:
            pts = [(float(p.attrib["x"]), float(p.attrib["y"])) for p in stroke.iter("Point")]
        except (KeyError, ValueError) as e:
            raise DataError(f"bad <Point> in {name}: needs numeric x and y ({e})") from e
        if pts:
            strokes.append(np.array(pts, np.float64))
    if not strokes:
        raise DataError(f"no <Stroke> with <Point>s in XML file {name}")
    return strokes


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith((".tar.gz", ".tgz", ".tar"))


def _stroke_file_kind(path: Path) -> str | None:
    """'unipen' | 'omniglot' | 'iam' for a handwriting file or archive (by name), else None."""
    low = path.name.lower()
    if _is_archive(path):
        return "unipen"
    if low.endswith(".zip"):
        return "omniglot"
    if low.endswith(".xml"):
        return "iam"
    return None


def _decode(data: bytes) -> str:
    return data.decode("latin-1")


def _read_stroke_sequences(path: Path) -> list[tuple[str, np.ndarray]]:
    """(name, rows [pen, dx, dy]) for every sequence in a handwriting file or archive; empty ones dropped."""
    if not path.exists():
        raise DataError(f"handwriting file not found: {path}")
    kind = _stroke_file_kind(path)
    out: list[tuple[str, np.ndarray]] = []
    try:
        if kind == "unipen":
            with tarfile.open(path) as tar:
                for member in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
                    base = member.name.rsplit("/", 1)[-1]
                    if base.startswith("."):
                        continue
                    strokes = _parse_unipen(_decode(tar.extractfile(member).read()), f"{path}:{member.name}")
                    if strokes:
                        out.append((member.name, _offsets(strokes, flip_y=False)))
            if not out:
                raise DataError(f"no UNIPEN ink (.PEN_DOWN blocks) in archive {path}")
        elif kind == "omniglot":
            with zipfile.ZipFile(path) as zf:
                names = sorted(n for n in zf.namelist() if n.lower().endswith(".txt") and "__MACOSX" not in n
                               and not n.rsplit("/", 1)[-1].startswith("."))
                for n in names:
                    out.append((n, _offsets(_parse_omniglot(_decode(zf.read(n)), f"{path}:{n}"), flip_y=False)))
            if not out:
                raise DataError(f"no Omniglot stroke files (.txt) in zip archive {path}")
        elif kind == "iam":
            out.append((path.name, _offsets(_parse_iam_xml(path.read_bytes(), str(path)), flip_y=True)))
        else:
            text = _decode(path.read_bytes())
            if text.lstrip().startswith("START"):
                out.append((path.name, _offsets(_parse_omniglot(text, str(path)), flip_y=False)))
            else:
                strokes = _parse_unipen(text, str(path))
                if not strokes:
                    raise DataError(f"not a handwriting file (no UNIPEN .PEN_DOWN, Omniglot START or XML): {path}")
                out.append((path.name, _offsets(strokes, flip_y=False)))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read handwriting file {path}: {e}") from e
    return [(n, a) for n, a in out if len(a)]


def read_strokes(path) -> list[np.ndarray]:
    """Every pen-trajectory sequence in a handwriting file, each (N, 3) float32 rows [pen, dx, dy] (raw).

    ``path``: a UNIPEN ``.tar.gz`` (every ink file inside) or ``.dat`` file, an Omniglot ``.zip`` (every
    drawing) or ``.txt`` file, or an IAM-OnDB ``.xml`` file. y grows upward in every output.
    """
    return [a for _, a in _read_stroke_sequences(Path(path))]


# ----------------------------------------------------------------------------------------------------------
# Datasets


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
        length, or ``STROKE_STREAM_STEPS`` for handwriting). carry=False on the first batch of the pass, True
        after; a row whose stream has ended is masked out until the others end.
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


class StrokeDataset(_SequenceDataset):
    """Handwriting sequences [pen, dx, dy] held in memory (whole sequences per batch row).

    ``files``: the source file of each sequence (an archive repeats); ``names``: each sequence's name.
    """

    def __init__(self, sequences: Sequence[np.ndarray], names: Sequence[str], files: Sequence[Path]):
        self._seqs = [np.asarray(s, np.float32) for s in sequences]
        self.names, self.files = list(names), [Path(f) for f in files]
        self.lengths = np.array([len(s) for s in self._seqs], dtype=np.int64)
        self.dim, self.segment, self.stream_steps = 3, None, STROKE_STREAM_STEPS

    def _raw(self, i: int) -> np.ndarray:
        return self._seqs[i]


@dataclass
class Splits:
    """Datasets per split, the normalizer they share (fit on train unless given), and what was skipped.

    ``kind`` is "speech" or "handwriting"; ``x_dim`` is D; ``skipped`` lists (file, reason) of files left out
    (unreadable ones only with ``skip_bad=True``, and audio shorter than one frame); ``audio`` is the
    AudioConfig of a speech set (None for handwriting).
    """

    train: _SequenceDataset
    valid: _SequenceDataset
    test: _SequenceDataset
    normalizer: Normalizer
    kind: str
    x_dim: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    audio: AudioConfig | None = None


# ----------------------------------------------------------------------------------------------------------
# Sources and splits

_FSDD_NAME = re.compile(r"^(\d+)_([A-Za-z]+)_(\d+)$")


def _visible(path: Path, root: Path) -> bool:
    return not any(p.startswith(".") or p == "__MACOSX" for p in path.relative_to(root).parts)


def _walk(folder: Path) -> list[Path]:
    """Every file under a folder, following symbolic links to folders (each real folder visited once)."""
    seen, files = set(), []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        files += [Path(root) / n for n in names]
    return sorted(files)


def _scan(folder: Path) -> tuple[list[Path], list[Path]]:
    """Audio files and handwriting files under a folder (recursive, symbolic links followed, sorted, hidden
    entries skipped)."""
    audio, ink = [], []
    for p in _walk(folder):
        if not p.is_file() or not _visible(p, folder):
            continue
        if p.suffix.lower() in AUDIO_SUFFIXES:
            audio.append(p)
        elif _stroke_file_kind(p) is not None:
            ink.append(p)
    return audio, ink


def _read_list(path: Path) -> list[Path]:
    """A text file of paths, one a line (blank lines and '#' comments skipped; relative to the list's folder)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path} is neither audio, handwriting nor a text list of files: {e}") from e
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            p = Path(s).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    if not out:
        raise DataError(f"file list {path} names no files")
    return out


def _resolve(source, kind: str) -> tuple[str, list[Path], str]:
    """(kind, files, description) for a source: a folder, a list file, a list of paths or one file."""
    if kind not in ("auto", "speech", "handwriting"):
        raise ValueError(f"kind must be 'auto', 'speech' or 'handwriting', got {kind!r}")
    if source is None:
        if kind == "handwriting":
            raise DataError("no default handwriting set is shipped: give a handwriting source")
        source = DEFAULT_SPEECH
    if isinstance(source, (list, tuple)):
        files = [Path(p).expanduser() for p in source]
        if not files:
            raise DataError("the list of data files is empty")
        desc = f"the list of {len(files)} files"
    else:
        path = Path(source).expanduser()
        desc = str(path)
        if not path.exists():
            raise DataError(f"data source not found: {path}")
        if path.is_dir():
            audio, ink = _scan(path)
            if kind == "speech" or (kind == "auto" and audio):
                if not audio:
                    raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in folder {path}")
                return "speech", audio, desc
            if not ink:
                what = "handwriting files (.xml, .tar.gz, .zip)" if kind == "handwriting" else \
                    f"audio files ({', '.join(AUDIO_SUFFIXES)}) or handwriting files (.xml, .tar.gz, .zip)"
                raise DataError(f"no {what} in folder {path}")
            return "handwriting", ink, desc
        if path.suffix.lower() in AUDIO_SUFFIXES or _stroke_file_kind(path) is not None:
            files = [path]
        else:
            head = path.read_bytes()[:4096].decode("latin-1").lstrip()
            is_ink = head.startswith("START") or re.match(r"\.[A-Z][A-Z_]*\s", head)  # Omniglot or UNIPEN
            files = [path] if is_ink else _read_list(path)
    for f in files:
        if not f.exists():
            raise DataError(f"data file not found: {f}")
    is_audio = [f.suffix.lower() in AUDIO_SUFFIXES for f in files]
    if kind == "auto":
        if all(is_audio):
            kind = "speech"
        elif not any(is_audio):
            kind = "handwriting"
        else:
            raise DataError(f"{desc} mixes audio and non-audio files; pass kind='speech' or 'handwriting'")
    if kind == "speech" and not all(is_audio):
        bad = files[is_audio.index(False)]
        raise DataError(f"not an audio file ({', '.join(AUDIO_SUFFIXES)}): {bad}")
    return kind, files, desc


def _split_counts(n: int, what: str) -> tuple[int, int]:
    """(n_valid, n_test) for n items: 5% each, at least 1 each."""
    if n < 3:
        raise DataError(f"{what} has {n} usable item(s); a train/valid/test split needs at least 3")
    k = max(1, int(n * SPLIT_FRACTIONS[1] + 0.5))
    return k, k


def _random_split(n: int, seed: int, what: str) -> tuple[list[int], list[int], list[int]]:
    """Deterministic 0.9/0.05/0.05 split of range(n) (sorted index lists) from the seed alone."""
    n_valid, n_test = _split_counts(n, what)
    perm = np.random.default_rng(seed).permutation(n)
    test, valid, train = perm[:n_test], perm[n_test: n_test + n_valid], perm[n_test + n_valid:]
    return sorted(train.tolist()), sorted(valid.tolist()), sorted(test.tolist())


def _carve_valid(train: list[int], groups: list[str], n_total: int, seed: int) -> tuple[list[int], list[int]]:
    """Move about 5% of n_total items, whole groups at a time (speakers), from train to valid."""
    names = sorted({groups[i] for i in train})
    if len(names) < 2:
        raise DataError("the training split is too small to hold out a validation split")
    target = max(1, int(n_total * SPLIT_FRACTIONS[1] + 0.5))
    held, count = set(), 0
    for g in np.random.default_rng(seed).permutation(len(names)):
        if count >= target or len(held) == len(names) - 1:
            break
        held.add(names[g])
        count += sum(groups[i] == names[g] for i in train)
    return [i for i in train if groups[i] not in held], [i for i in train if groups[i] in held]


def _layout_split(files: list[Path], root: Path | None, seed: int, what: str):
    """Train/valid/test index lists: TIMIT or FSDD layout when recognised, else the seeded random split."""
    n = len(files)
    if root is not None:
        tags = []
        for f in files:
            parts = [p.lower() for p in f.relative_to(root).parts[:-1]]
            tag = next((p for p in parts if p in ("train", "test", "valid", "dev")), None)
            tags.append("valid" if tag == "dev" else tag)
        if "train" in tags and "test" in tags:  # TIMIT-style folders
            train = [i for i, t in enumerate(tags) if t in ("train", None)]
            test = [i for i, t in enumerate(tags) if t == "test"]
            valid = [i for i, t in enumerate(tags) if t == "valid"]
            if not valid:  # hold out whole speakers (a file's parent folder)
                train, valid = _carve_valid(train, [str(files[i].parent) for i in range(n)], n, seed)
            return train, valid, test
    names = [_FSDD_NAME.match(f.stem) for f in files]
    if n and all(names):  # FSDD: {digit}_{speaker}_{take}; takes 0-4 are the official test set
        test = [i for i, m in enumerate(names) if int(m.group(3)) <= 4]
        rest = [i for i, m in enumerate(names) if int(m.group(3)) > 4]
        if test and len(rest) >= 2:
            train, valid = _carve_valid(rest, [str(i) for i in range(n)], n, seed)
            return train, valid, test
    return _random_split(n, seed, what)


def _open_speech(files, root, desc, audio, seed, skip_bad):
    """Index the files from their headers; a corpus small enough to cache is also decoded now, so that a file
    whose header reads but whose data does not (a damaged FLAC) is found here, not in the middle of training."""
    skipped = []

    def bad(f, e):
        if not skip_bad:
            raise DataError(f"{e} ({SKIP_BAD_HINT})") from e
        skipped.append((f, str(e)))

    good, lengths = [], []
    for f in files:
        try:
            n = _audio_frames_count(f, audio)
        except DataError as e:
            bad(f, e)
            continue
        good.append(f)
        lengths.append(n)
    decoded = None
    if sum(lengths) * audio.frame_size * 4 <= CACHE_BYTES:
        kept, decoded = [], []
        for f in good:
            try:
                decoded.append(frames(read_audio(f, audio.sample_rate), audio.frame_size))
                kept.append(f)
            except DataError as e:
                bad(f, e)
        good, lengths = kept, [len(a) for a in decoded]
    short = {i for i, n in enumerate(lengths) if n == 0}
    for i in sorted(short):
        skipped.append((good[i], f"shorter than one frame ({audio.frame_size} samples at {audio.sample_rate} Hz)"))
    keep = [i for i in range(len(good)) if i not in short]
    good, lengths = [good[i] for i in keep], [lengths[i] for i in keep]
    decoded = None if decoded is None else [decoded[i] for i in keep]
    if not good:
        raise DataError(f"no usable audio in {desc} ({len(skipped)} file(s) skipped)")
    train, valid, test = _layout_split(good, root, seed, f"audio source {desc}")

    def make(idx):
        return AudioDataset([good[i] for i in idx], [lengths[i] for i in idx], audio,
                            None if decoded is None else [decoded[i] for i in idx])

    return make(train), make(valid), make(test), skipped


def _open_handwriting(files, desc, seed, skip_bad):
    seqs, skipped = [], []  # (file, name, rows)
    for f in files:
        try:
            seqs.extend((f, n, a) for n, a in _read_stroke_sequences(f))
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{e} ({SKIP_BAD_HINT})") from e
            skipped.append((f, str(e)))
    if not seqs:
        raise DataError(f"no handwriting sequences in {desc} ({len(skipped)} file(s) skipped)")
    sources = sorted({f for f, _, _ in seqs})
    if len(sources) >= 3:  # split by file
        ftrain, fvalid, ftest = _random_split(len(sources), seed, f"handwriting source {desc}")
        part = {sources[i]: s for s, idx in (("train", ftrain), ("valid", fvalid), ("test", ftest)) for i in idx}
        idx = {s: [i for i, (f, _, _) in enumerate(seqs) if part[f] == s] for s in ("train", "valid", "test")}
        train, valid, test = idx["train"], idx["valid"], idx["test"]
    else:  # one archive (or two): split by sequence
        train, valid, test = _random_split(len(seqs), seed, f"handwriting source {desc}")

    def make(ix):
        return StrokeDataset([seqs[i][2] for i in ix], [seqs[i][1] for i in ix], [seqs[i][0] for i in ix])

    return make(train), make(valid), make(test), skipped


def open_splits(source=None, kind: str = "auto", audio: AudioConfig = AudioConfig(), seed: int | None = None,
                skip_bad: bool = False, normalizer: Normalizer | None = None) -> Splits:
    """Open a data source as train/valid/test datasets with a shared normalizer.

    source: None (:data:`DEFAULT_SPEECH`), a folder (audio files, or handwriting files: IAM-OnDB XML, UNIPEN
    .tar.gz, Omniglot .zip), a text file listing files (one a line), a list of paths, one handwriting
    file/archive, or a frame store (a folder with a manifest.json, :mod:`vrnn_fast.data.store`: its split, seed,
    sample rate and frame size are fixed, ``skip_bad`` is moot). kind: "auto" | "speech" | "handwriting".
    seed: the split's seed (None: 0, or a store's own). skip_bad: skip (and list in ``Splits.skipped``, with
    a warning) unreadable files instead of raising. normalizer: use this one (e.g. restored from a checkpoint)
    instead of fitting on the train split (a store's: the one it was prepared with).
    Raises DataError naming the file or folder for a missing source, no data, or an unreadable file.
    """
    if not isinstance(audio, AudioConfig):
        raise ValueError(f"audio must be an AudioConfig, got {type(audio).__name__}")
    if normalizer is not None and not isinstance(normalizer, Normalizer):
        raise ValueError(f"normalizer must be a Normalizer, got {type(normalizer).__name__}")
    from .store import is_store, open_store

    if is_store(source):
        return open_store(source).splits(kind, audio, seed, normalizer)
    seed = 0 if seed is None else seed
    kind, files, desc = _resolve(source, kind)
    root = Path(source).expanduser() if isinstance(source, (str, Path)) and Path(source).is_dir() else None
    if root is None and source is None:
        root = DEFAULT_SPEECH
    if kind == "speech":
        train, valid, test, skipped = _open_speech(files, root, desc, audio, seed, skip_bad)
        raw_columns, x_dim = 0, audio.frame_size
    else:
        train, valid, test, skipped = _open_handwriting(files, desc, seed, skip_bad)
        raw_columns, x_dim = 1, 3
    if skipped:
        lines = "\n".join(f"  {f}: {why}" for f, why in skipped)
        warnings.warn(f"skipped {len(skipped)} file(s) of {desc}:\n{lines}", stacklevel=2)
    if normalizer is None:
        normalizer = Normalizer.fit((train._raw(i) for i in range(len(train.lengths))), raw_columns,
                                    what=f"the training split of {desc}")
    elif normalizer.raw_columns != raw_columns:
        raise ValueError(f"the given normalizer has raw_columns={normalizer.raw_columns}, but {kind} data "
                         f"needs {raw_columns}")
    for ds in (train, valid, test):
        ds.normalizer = normalizer
    return Splits(train, valid, test, normalizer, kind, x_dim, skipped, audio if kind == "speech" else None)


__all__ = [
    "AUDIO_SUFFIXES", "DEFAULT_SPEECH", "AudioConfig", "AudioDataset", "Batch", "DataError", "Normalizer",
    "Splits", "StrokeDataset", "frames", "open_splits", "read_audio", "read_strokes",
]
