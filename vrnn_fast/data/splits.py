"""Sources, splits and the normaliser: :func:`open_splits` turns a data source into train/valid/test datasets
sharing one :class:`Normalizer`.

Sources: a folder (searched recursively), a text file listing files, a list of paths, one handwriting
file/archive, one series file, or a frame store (:mod:`vrnn_fast.data.store`). Splits: the dataset's own split
where its layout has one (``train``/``test`` folders, a ``valid`` or ``dev`` folder if present, else about 5% of
the training speakers, or of the training sequences for series; FSDD ``{digit}_{speaker}_{take}.wav``: takes
0-4 are test, about 5% of the rest valid), otherwise a deterministic (seeded) 0.9/0.05/0.05 split by file, or by
sequence for a single handwriting archive and for series. Normaliser (:func:`fit_normalizer`): speech is
z-scored with one global scalar mean/std fit on the training split (PAPER.md, "Speech data"); handwriting with
one scalar mean/std pooled over dx and dy, the pen bit left raw; series with a mean/std per feature, or not at
all for binary data.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import batching
from .audio import AUDIO_SUFFIXES, AudioConfig, _audio_frames_count, frames, read_audio
from .batching import AudioDataset, SeriesDataset, StrokeDataset, _SequenceDataset
from .errors import DataError
from .series import SERIES_SUFFIXES, _read_series_sequences, is_series_file
from .strokes import _read_stroke_sequences, _stroke_file_kind

SPLIT_FRACTIONS = (0.9, 0.05, 0.05)
KINDS = ("speech", "handwriting", "series")
# Leading feature columns each kind leaves raw (handwriting: the pen bit).
RAW_COLUMNS = {"speech": 0, "handwriting": 1, "series": 0}
NORMALIZE = ("auto", "zscore", "none")
_FILES_OF = {"speech": f"audio files ({', '.join(AUDIO_SUFFIXES)})",
             "handwriting": "handwriting files (.xml, .tar.gz, .zip)",
             "series": f"series files ({', '.join(SERIES_SUFFIXES)})"}

DEFAULT_SPEECH: Path = Path(__file__).resolve().parent.parent / "datasets" / "cmu_arctic_slt"


SKIP_BAD_HINT = "skip_bad=True, or --skip-bad on the command line, skips unreadable files"


@dataclass
class Normalizer:
    """z-scoring ``(a - mean) / std`` of every feature column but the first ``raw_columns`` (which stay raw).

    ``mean`` and ``std`` are scalars shared by those columns (speech: ``raw_columns=0``, the whole waveform;
    handwriting: ``raw_columns=1``, the pen bit raw, dx and dy sharing one mean and std) or one value per column
    (series: tuples of D floats). ``Normalizer(0.0, 1.0)`` leaves the data as it is.
    """

    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    raw_columns: int = 0

    def __post_init__(self) -> None:
        self.mean, self.std, self.raw_columns = _statistic(self.mean), _statistic(self.std), int(self.raw_columns)
        if isinstance(self.mean, tuple) != isinstance(self.std, tuple) or \
                isinstance(self.mean, tuple) and len(self.mean) != len(self.std):
            raise ValueError(f"Normalizer.mean and std must be two scalars or two vectors of one length, got "
                             f"{self.mean} and {self.std}")
        means, stds = np.atleast_1d(self.mean), np.atleast_1d(self.std)
        if not np.isfinite(means).all():
            raise ValueError(f"Normalizer.mean must be finite, got {self.mean}")
        if not (np.isfinite(stds).all() and (stds > 0).all()):
            raise ValueError(f"Normalizer.std must be finite and > 0, got {self.std}")
        if self.raw_columns < 0:
            raise ValueError(f"Normalizer.raw_columns must be >= 0, got {self.raw_columns}")

    @property
    def features(self) -> int | None:
        """The number of columns with their own mean and std (per-feature vectors), None for scalars."""
        return len(self.mean) if isinstance(self.mean, tuple) else None

    def normalize(self, a):
        """(a - mean) / std on columns ``raw_columns:`` of the last dim; numpy array or tensor, same type out."""
        return self._apply(a, lambda v, mean, std: (v - mean) / std)

    def denormalize(self, a):
        """Inverse of :meth:`normalize`: a * std + mean on the same columns."""
        return self._apply(a, lambda v, mean, std: v * std + mean)

    def stats_for(self, a):
        """(mean, std) ready to apply to ``a`` (numpy array or tensor): floats, or per-feature vectors of its
        floating dtype (float64 for integer arrays) and device."""
        if self.features is None:
            return self.mean, self.std
        n = a.shape[-1] - self.raw_columns
        if n != self.features:
            raise ValueError(f"this normalizer holds a mean and std for {self.features} features, the data has "
                             f"{n} (shape {tuple(a.shape)}, {self.raw_columns} raw columns)")
        if isinstance(a, Tensor):
            dtype = a.dtype if a.is_floating_point() else torch.float32
            return (torch.tensor(self.mean, dtype=dtype, device=a.device),
                    torch.tensor(self.std, dtype=dtype, device=a.device))
        dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64
        return np.asarray(self.mean, dtype), np.asarray(self.std, dtype)

    def _apply(self, a, fn):
        if not isinstance(a, Tensor):
            a = np.asarray(a)
        mean, std = self.stats_for(a)
        if not self.raw_columns:
            return fn(a, mean, std)
        out = a.clone() if isinstance(a, Tensor) else np.array(a, copy=True)
        out[..., self.raw_columns:] = fn(out[..., self.raw_columns:], mean, std)
        return out

    def to_dict(self) -> dict:
        vector = self.features is not None
        return {"mean": list(self.mean) if vector else self.mean, "std": list(self.std) if vector else self.std,
                "raw_columns": self.raw_columns}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        unknown = set(d) - {"mean", "std", "raw_columns"}
        if unknown or "mean" not in d or "std" not in d:
            raise ValueError(f"Normalizer.from_dict needs keys mean, std (and optional raw_columns), got {sorted(d)}")
        return cls(**d)

    @classmethod
    def fit(cls, arrays, raw_columns: int = 0, what: str = "training data", per_feature: bool = False) -> Normalizer:
        """Mean/std of ``a[..., raw_columns:]`` over every array (float64, merged array by array): one pooled
        scalar pair, or with ``per_feature`` one pair per column. A constant column (per feature) gets std 1, with
        a warning; constant data (pooled) is a DataError."""
        n, mean, m2 = 0, 0.0, 0.0
        for a in arrays:
            v = np.asarray(a, dtype=np.float64)[..., raw_columns:]
            v = v.reshape(-1, v.shape[-1]) if per_feature else v.ravel()
            if v.size == 0:
                continue
            vm = v.mean(0)
            vm2 = ((v - vm) ** 2).sum(0)
            delta, total = vm - mean, n + len(v)
            mean = mean + delta * len(v) / total
            m2 = m2 + vm2 + delta * delta * n * len(v) / total
            n = total
        if n == 0:
            raise DataError(f"cannot fit the normalizer: {what} is empty")
        std = np.sqrt(m2 / n)
        if not per_feature:
            if not std > 0:
                raise DataError(f"cannot fit the normalizer: {what} is constant (std 0)")
            return cls(float(mean), float(std), raw_columns)
        constant = std <= 1e-10 * np.abs(mean)  # 0 up to float64 rounding of the mean
        if constant.any():
            columns = np.flatnonzero(constant) + raw_columns
            warnings.warn(f"{what}: feature column(s) {', '.join(map(str, columns))} are constant; they are only "
                          "centred (std 1)", stacklevel=2)
            std = np.where(constant, 1.0, std)
        return cls(tuple(mean.tolist()), tuple(std.tolist()), raw_columns)


def _statistic(value) -> float | tuple[float, ...]:
    """A scalar as float, a non-empty 1-D sequence as a tuple of floats (a Normalizer's mean or std)."""
    if np.ndim(value) == 0:
        return float(value)
    values = np.asarray(value, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"a Normalizer's mean and std are scalars or non-empty vectors, got shape {values.shape}")
    return tuple(values.tolist())


def is_binary(arrays) -> bool:
    """Whether every value of these arrays is 0 or 1 (binary data: left raw, and modelled as Bernoulli)."""
    return all(((a == 0) | (a == 1)).all() for a in arrays)


def fit_normalizer(kind: str, arrays, normalize: str = "auto", what: str = "training data") -> Normalizer:
    """The normaliser of a training split's raw sequences (each (T_i, D)).

    ``normalize``: "zscore" (speech: one scalar mean/std; handwriting: one pooled over dx and dy, the pen bit
    raw; series: a mean/std per feature), "none" (the identity), or "auto": "zscore", but "none" for series
    whose values are all 0 or 1 (binary data).
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    raw_columns = RAW_COLUMNS[kind]
    if normalize == "none":
        return Normalizer(0.0, 1.0, raw_columns)
    if kind != "series":
        return Normalizer.fit(arrays, raw_columns, what)
    arrays = list(arrays)
    if normalize == "auto" and is_binary(arrays):
        return Normalizer(0.0, 1.0)
    return Normalizer.fit(arrays, 0, what, per_feature=True)


def _check_normalizer(normalizer: Normalizer, kind: str, x_dim: int) -> None:
    """ValueError unless a given normaliser fits the data: its raw columns, and a vector's length."""
    if normalizer.raw_columns != RAW_COLUMNS[kind]:
        raise ValueError(f"the given normalizer has raw_columns={normalizer.raw_columns}, but {kind} data "
                         f"needs {RAW_COLUMNS[kind]}")
    if normalizer.features not in (None, x_dim - normalizer.raw_columns):
        raise ValueError(f"the given normalizer holds a mean and std for {normalizer.features} features, but the "
                         f"{kind} data has {x_dim}")


def _check_segment(kind: str, segment_steps) -> None:
    if segment_steps is None:
        return
    if kind != "series":
        raise ValueError(f"segment_steps cuts series data; {kind} data is cut by AudioConfig.segment_seconds "
                         "(speech) or kept whole (handwriting)")
    if not isinstance(segment_steps, int) or isinstance(segment_steps, bool) or segment_steps < 1:
        raise ValueError(f"segment_steps must be a positive integer or None, got {segment_steps!r}")


@dataclass
class Splits:
    """Datasets per split, the normalizer they share (fit on train unless given), and what was skipped.

    ``kind`` is "speech", "handwriting" or "series"; ``x_dim`` is D; ``skipped`` lists (file, reason) of files
    (or series sequences) left out (unreadable ones only with ``skip_bad=True``, and audio shorter than one
    frame); ``audio`` is the AudioConfig of a speech set (None otherwise).
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


def _file_kind(path: Path) -> str | None:
    """"speech", "handwriting" or "series" for a data file by its name, None for another file."""
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return "speech"
    if _stroke_file_kind(path) is not None:
        return "handwriting"
    return "series" if is_series_file(path) else None


def _scan(folder: Path) -> dict[str, list[Path]]:
    """The data files under a folder by kind (recursive, symbolic links followed, sorted, hidden entries
    skipped)."""
    found = {kind: [] for kind in KINDS}
    for p in _walk(folder):
        if p.is_file() and _visible(p, folder) and _file_kind(p) is not None:
            found[_file_kind(p)].append(p)
    return found


def _read_list(path: Path) -> list[Path]:
    """A text file of paths, one a line (blank lines and '#' comments skipped; relative to the list's folder)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path} is neither audio, handwriting, series nor a text list of files: {e}") from e
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
    if kind not in ("auto", *KINDS):
        raise ValueError(f"kind must be 'auto', 'speech', 'handwriting' or 'series', got {kind!r}")
    if source is None:
        if kind in ("handwriting", "series"):
            raise DataError(f"no default {kind} set is shipped: give a {kind} source")
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
            if (path / "train.frames.npy").is_file():  # not series data: a frame store without its manifest
                raise DataError(f"{path} holds the arrays of a frame store but no manifest.json (an interrupted "
                                "prepare?); prepare it again")
            found = _scan(path)
            if kind == "auto":  # the first kind found: audio, else handwriting, else series
                kind = next((k for k in KINDS if found[k]), None)
                if kind is None:
                    raise DataError(f"no {_FILES_OF['speech']}, {_FILES_OF['handwriting']} or "
                                    f"{_FILES_OF['series']} in folder {path}")
            if not found[kind]:
                raise DataError(f"no {_FILES_OF[kind]} in folder {path}")
            return kind, found[kind], desc
        if _file_kind(path) is not None:
            files = [path]
        else:
            head = path.read_bytes()[:4096].decode("latin-1").lstrip()
            is_ink = head.startswith("START") or re.match(r"\.[A-Z][A-Z_]*\s", head)  # Omniglot or UNIPEN
            files = [path] if is_ink else _read_list(path)
    for f in files:
        if not f.exists():
            raise DataError(f"data file not found: {f}")
    kinds = [_file_kind(f) or "handwriting" for f in files]  # unnamed files: handwriting (UNIPEN, Omniglot text)
    if kind == "auto":
        found = [k for k in KINDS if k in kinds]
        if len(found) > 1:
            names = " and ".join("audio" if k == "speech" else k for k in found)
            raise DataError(f"{desc} mixes {names} files; pass kind='speech', 'handwriting' or 'series'")
        kind = found[0]
    if kind in ("speech", "series") and any(k != kind for k in kinds):
        bad = files[next(i for i, k in enumerate(kinds) if k != kind)]
        raise DataError(f"not {'an audio' if kind == 'speech' else 'a series'} file "
                        f"({', '.join(AUDIO_SUFFIXES if kind == 'speech' else SERIES_SUFFIXES)}): {bad}")
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
    sizes = Counter(groups[i] for i in train)
    held, count = set(), 0
    for g in np.random.default_rng(seed).permutation(len(names)):
        if count >= target or len(held) == len(names) - 1:
            break
        held.add(names[g])
        count += sizes[names[g]]
    return [i for i in train if groups[i] not in held], [i for i in train if groups[i] in held]


def _folder_split(files: list[Path], root: Path | None, groups: list[str], seed: int):
    """Train/valid/test index lists from ``train``/``test`` (and ``valid`` or ``dev``) folders under ``root``
    (TIMIT-style; other files go to train), or None when there are no such folders. Without a valid folder about
    5% are held out from train, whole ``groups`` at a time."""
    if root is None:
        return None
    tags = []
    for f in files:
        parts = [p.lower() for p in f.relative_to(root).parts[:-1]]
        tag = next((p for p in parts if p in ("train", "test", "valid", "dev")), None)
        tags.append("valid" if tag == "dev" else tag)
    if "train" not in tags or "test" not in tags:
        return None
    train = [i for i, t in enumerate(tags) if t in ("train", None)]
    test = [i for i, t in enumerate(tags) if t == "test"]
    valid = [i for i, t in enumerate(tags) if t == "valid"]
    if not valid:
        train, valid = _carve_valid(train, groups, len(files), seed)
    return train, valid, test


def _layout_split(files: list[Path], root: Path | None, seed: int, what: str):
    """Train/valid/test index lists: TIMIT or FSDD layout when recognised, else the seeded random split."""
    n = len(files)
    split = _folder_split(files, root, [str(f.parent) for f in files], seed)  # valid: whole speakers
    if split is not None:
        return split
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
    if sum(lengths) * audio.frame_size * 4 <= batching.CACHE_BYTES:  # looked up now: tests lower it
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


def _open_series(files, root, desc, seed, skip_bad, segment):
    """Every sequence of the series files, split by the ``train``/``test`` (``valid``) folders under ``root``
    where there are such (about 5% of the training sequences held out for valid when there is no valid folder),
    else 0.9/0.05/0.05 by sequence; D is the number of features of most sequences (ties: the first file's), and
    a sequence with another D is a bad one."""
    seqs, skipped = [], []  # (file, name suffix, rows): the name is f.name + suffix

    def bad(f, e):
        if not skip_bad:
            raise DataError(f"{e} ({SKIP_BAD_HINT})") from e
        skipped.append((f, str(e)))

    for f in files:
        try:
            items = _read_series_sequences(f)
        except DataError as e:
            bad(f, e)
            continue
        for suffix, a in items:
            if isinstance(a, DataError):
                bad(f, a)
            else:
                seqs.append((f, suffix, a))
    if not seqs:
        raise DataError(f"no usable series in {desc} ({len(skipped)} file(s) or sequence(s) skipped)")
    dim = Counter(a.shape[1] for _, _, a in seqs).most_common(1)[0][0]
    kept = []
    for f, suffix, a in seqs:
        if a.shape[1] == dim:
            kept.append((f, suffix, a))
        else:
            bad(f, DataError(f"{f}{suffix} has {a.shape[1]} features per step (columns), the other sequences {dim}"))
    split = _folder_split([f for f, _, _ in kept], root, [str(i) for i in range(len(kept))], seed)
    train, valid, test = split or _random_split(len(kept), seed, f"series source {desc}")

    def make(ix):
        return SeriesDataset([kept[i][2] for i in ix], [kept[i][0].name + kept[i][1] for i in ix],
                             [kept[i][0] for i in ix], dim, segment)

    return make(train), make(valid), make(test), skipped


def open_splits(source=None, kind: str = "auto", audio: AudioConfig = AudioConfig(), seed: int | None = None,
                skip_bad: bool = False, normalizer: Normalizer | None = None, normalize: str = "auto",
                segment_steps: int | None = None) -> Splits:
    """Open a data source as train/valid/test datasets with a shared normalizer.

    source: None (:data:`DEFAULT_SPEECH`), a folder (audio files; or handwriting files: IAM-OnDB XML, UNIPEN
    .tar.gz, Omniglot .zip; or series files: .npy, .npz, .csv, :mod:`vrnn_fast.data.series`), a text file listing
    files (one a line), a list of paths, one handwriting file/archive, one series file (an .npz, an (N, T, D)
    .npy), or a frame store (a folder with a manifest.json, :mod:`vrnn_fast.data.store`: its split, seed,
    sample rate, frame size and normaliser are fixed, ``skip_bad`` is moot). kind: "auto" | "speech" |
    "handwriting" | "series" (auto: a folder's audio files, else its handwriting files, else its series files).
    seed: the split's seed (None: 0, or a store's own). skip_bad: skip (and list in ``Splits.skipped``, with a
    warning) unreadable files, and series sequences with a problem, instead of raising. normalizer: use this
    one (e.g. restored from a checkpoint) instead of fitting on the train split (a store's: the one it was
    prepared with). normalize: how to fit it, "auto" | "zscore" | "none" (:func:`fit_normalizer`; "none" also
    replaces a store's). segment_steps: series only, cut sequences into pieces of this many steps (the last
    piece of each shorter, masked); None keeps whole sequences.
    Raises DataError naming the file or folder (and the line or array index) for a missing source, no data, or
    an unreadable file.
    """
    if not isinstance(audio, AudioConfig):
        raise ValueError(f"audio must be an AudioConfig, got {type(audio).__name__}")
    if normalizer is not None and not isinstance(normalizer, Normalizer):
        raise ValueError(f"normalizer must be a Normalizer, got {type(normalizer).__name__}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    from .store import is_store, open_store

    if is_store(source):
        store = open_store(source)
        if normalizer is None and normalize == "none":
            normalizer = Normalizer(0.0, 1.0, RAW_COLUMNS[store.kind])
        return store.splits(kind, audio, seed, normalizer, segment_steps)
    seed = 0 if seed is None else seed
    kind, files, desc = _resolve(source, kind)
    _check_segment(kind, segment_steps)
    root = Path(source).expanduser() if isinstance(source, (str, Path)) and Path(source).is_dir() else None
    if root is None and source is None:
        root = DEFAULT_SPEECH
    if kind == "speech":
        train, valid, test, skipped = _open_speech(files, root, desc, audio, seed, skip_bad)
    elif kind == "handwriting":
        train, valid, test, skipped = _open_handwriting(files, desc, seed, skip_bad)
    else:
        train, valid, test, skipped = _open_series(files, root, desc, seed, skip_bad, segment_steps)
    if skipped:
        lines = "\n".join(f"  {f}: {why}" for f, why in skipped)
        what = "file(s) or sequence(s)" if kind == "series" else "file(s)"
        warnings.warn(f"skipped {len(skipped)} {what} of {desc}:\n{lines}", stacklevel=2)
    if normalizer is None:
        normalizer = fit_normalizer(kind, train.raw_sequences(), normalize, what=f"the training split of {desc}")
    else:
        _check_normalizer(normalizer, kind, train.dim)
    for ds in (train, valid, test):
        ds.normalizer = normalizer
    return Splits(train, valid, test, normalizer, kind, train.dim, skipped, audio if kind == "speech" else None)
