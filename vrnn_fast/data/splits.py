"""Sources, splits and the normaliser: :func:`open_splits` turns a data source into train/valid/test datasets
sharing one :class:`Normalizer`.

Sources: a folder (searched recursively), a text file listing files, a list of paths, one handwriting
file/archive, or a frame store (:mod:`vrnn_fast.data.store`). Splits: the dataset's own split where its layout
has one (TIMIT: ``train``/``test`` folders, a ``valid`` or ``dev`` folder if present, else about 5% of the
training speakers; FSDD ``{digit}_{speaker}_{take}.wav``: takes 0-4 are test, about 5% of the rest valid),
otherwise a deterministic (seeded) 0.9/0.05/0.05 split by file, or by sequence for a single handwriting archive.
Normaliser: speech is z-scored with one global scalar mean/std fit on the training split (PAPER.md, "Speech
data"); handwriting with one scalar mean/std pooled over dx and dy, the pen bit left raw.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from . import batching
from .audio import AUDIO_SUFFIXES, AudioConfig, _audio_frames_count, frames, read_audio
from .batching import AudioDataset, StrokeDataset, _SequenceDataset
from .errors import DataError
from .strokes import _read_stroke_sequences, _stroke_file_kind

SPLIT_FRACTIONS = (0.9, 0.05, 0.05)

DEFAULT_SPEECH: Path = Path(__file__).resolve().parent.parent / "datasets" / "cmu_arctic_slt"


SKIP_BAD_HINT = "skip_bad=True, or --skip-bad on the command line, skips unreadable files"


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

