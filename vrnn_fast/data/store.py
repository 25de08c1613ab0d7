"""Frame store: a data source decoded once into memory-mappable arrays, read back as the same datasets.

:func:`prepare` reads any source :func:`~vrnn_fast.data.open_splits` accepts, with the same split, sample rate,
frame size and normaliser, and writes a folder:

- ``{split}.frames.npy`` (split: train, valid, test): the raw frames of every sequence back to back, (N, D).
  Speech: int16, ``round(sample * 32768)`` clipped to [-32768, 32767]; read back as ``q / 32768``, at most
  1/32768 of full scale off the float waveform before normalisation (0.5/32768 but at +1), and exact for 16-bit
  PCM read at its own rate. Handwriting: float32 rows [pen, dx, dy], exact. Series: float32 rows, exact.
- ``{split}.index.npy``: (n, 2) int64 rows [offset, length] of each sequence in the frames array.
- ``manifest.json``: format version, source, options, normaliser, each split's files (and sequence names), the
  source files with their sizes, the skipped files, and the size and sha256 of every array file.

It streams file by file (memory: one file, plus what ``open_splits`` caches of a corpus under
``batching.CACHE_BYTES``), into ``<out>.tmp-<pid>`` renamed to ``<out>`` at the end: an interrupted prepare leaves
nothing that looks complete, and the next prepare of ``<out>`` removes what a killed one left. ``open_splits(out)``
(or :func:`open_store`) checks the manifest and gives the datasets of the source (same sequences, batches and
order for a seed), frames sliced from the memory map.

Example::

    prepare("data/timit", "stores/timit")          # once
    splits = open_splits("stores/timit")           # then as often as wanted, no decoding
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .audio import AudioConfig
from .batching import AudioDataset, SeriesDataset, StrokeDataset
from .errors import DataError
from .splits import (
    DEFAULT_SPEECH,
    RAW_COLUMNS,
    Normalizer,
    Splits,
    _check_normalizer,
    _check_segment,
    _resolve,
    fit_normalizer,
    open_splits,
)

FORMAT = "vrnn-fast frame store"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "valid", "test")
INT16_SCALE = 32768.0  # int16 audio: q = round(sample * INT16_SCALE); read back as q / INT16_SCALE
# open_store checks the sha256 of every array when the store holds at most this many bytes (verify=None).
VERIFY_BYTES = 2 * 2**30
_CHUNK = 2**22
_AUDIO = AudioConfig()


def is_store(path) -> bool:
    """True when ``path`` is a folder holding a ``manifest.json`` (a frame store, or a damaged one)."""
    return isinstance(path, (str, os.PathLike)) and (Path(path).expanduser() / MANIFEST).is_file()


def encode_audio(frames: np.ndarray) -> np.ndarray:
    """float frames in [-1, 1] -> int16 ``round(x * 32768)``, clipped; same shape."""
    return np.clip(np.rint(np.asarray(frames, np.float32) * INT16_SCALE), -32768, 32767).astype(np.int16)


def decode_audio(q: np.ndarray) -> np.ndarray:
    """int16 frames -> float32 ``q / 32768`` (exact); same shape."""
    x = q.astype(np.float32)
    x *= np.float32(1.0 / INT16_SCALE)
    return x


class _ArrayWriter:
    """Writes a 2-D .npy file of a known shape row block by row block, counting its bytes and sha256."""

    def __init__(self, path: Path, dtype, shape: tuple[int, int]):
        self.path, self.dtype, self.rows_left = path, np.dtype(dtype), shape[0]
        self.sha, self.bytes = hashlib.sha256(), 0
        self._f = open(path, "wb")  # closed by close()
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            head, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape})
        self._write(head.getvalue())

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self.sha.update(data)
        self.bytes += len(data)

    def append(self, rows: np.ndarray) -> None:
        if len(rows) > self.rows_left:
            raise DataError(f"{self.path.name}: more rows than the index announced")
        self.rows_left -= len(rows)
        self._write(np.ascontiguousarray(rows, self.dtype).tobytes())

    def close(self) -> dict:
        """Flushes to disk; the manifest entry ``{"bytes", "sha256"}``."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        if self.rows_left:
            raise DataError(f"{self.path.name}: {self.rows_left} rows fewer than the index announced")
        return {"bytes": self.bytes, "sha256": self.sha.hexdigest()}


def _save_small(path: Path, a: np.ndarray) -> dict:
    w = _ArrayWriter(path, a.dtype, a.shape)
    w.append(a)
    return w.close()


def _write_split(folder: Path, name: str, ds, speech: bool, bar, arrays: dict):
    """Writes ``{name}.frames.npy`` and ``{name}.index.npy`` of a dataset, yielding each raw sequence (T_i, D)
    once written (so that the normalizer can be fit on the way); adds their manifest entries to ``arrays``."""
    lengths = np.asarray(ds.lengths, np.int64)
    writer = _ArrayWriter(folder / f"{name}.frames.npy", np.int16 if speech else np.float32,
                          (int(lengths.sum()), ds.dim))
    for a in ds.raw_sequences(keep=False):
        writer.append(encode_audio(a) if speech else a)
        bar.update()
        yield a
    arrays[f"{name}.frames.npy"] = writer.close()
    index = np.stack([np.cumsum(lengths) - lengths, lengths], axis=1)
    arrays[f"{name}.index.npy"] = _save_small(folder / f"{name}.index.npy", index)


def _source_text(source) -> str:
    if source is None:
        return str(DEFAULT_SPEECH)
    if isinstance(source, (list, tuple)):
        return f"the list of {len(source)} files"
    return str(Path(source).expanduser().resolve())


def prepare(source, out, kind: str = "auto", audio: AudioConfig = _AUDIO, seed: int = 0,
            skip_bad: bool = False, normalizer: Normalizer | None = None, force: bool = False,
            progress: bool = True, normalize: str = "auto") -> FrameStore:
    """Decode ``source`` once into a frame store at ``out`` (see the module docstring); returns it opened.

    ``source``, ``kind``, ``audio`` (sample rate and frame size; segments are cut when batches are drawn),
    ``seed`` (the split's), ``skip_bad``, ``normalizer`` (None: fit on the train split as ``normalize`` says)
    and ``normalize`` are those of :func:`~vrnn_fast.data.open_splits`. A finished store at ``out`` prepared
    with the same source and options is kept (with a warning saying so) unless ``force``; one with other options
    needs ``force``. The folders a killed prepare of ``out`` left (``<out>.tmp-<pid>``, ``<out>.old-<pid>``) are
    removed, with a warning. Raises DataError for an unusable source, an ``out`` that exists and is not a frame
    store, or another prepare of ``out`` running now.
    """
    out = Path(out).expanduser()
    _remove_leftovers(out)
    options = {"kind": kind, "sample_rate": audio.sample_rate, "frame_size": audio.frame_size, "seed": seed,
               "skip_bad": skip_bad, "normalizer": None if normalizer is None else normalizer.to_dict(),
               "normalize": normalize}
    if is_store(out) and not force:
        try:
            store = open_store(out, verify=False)
        except DataError as e:
            raise DataError(f"{e}; force=True (--force) rewrites it") from e
        same = store.manifest["source"] == _source_text(source) and store.manifest["options"] == options
        if not same:
            raise DataError(f"{out} is a frame store of {store.manifest['source']} with options "
                            f"{store.manifest['options']}; force=True (--force) rewrites it")
        warnings.warn(f"frame store {out} is complete already (same source and options); force=True (--force) "
                      "rewrites it", stacklevel=2)
        return store
    if out.exists() and not is_store(out) and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not a frame store; give a new or empty folder")
    kind, _, _ = _resolve(source, kind)
    speech = kind == "speech"
    splits = open_splits(source, kind=kind, audio=audio, seed=seed, skip_bad=skip_bad,
                         normalizer=normalizer or Normalizer(0.0, 1.0, RAW_COLUMNS[kind]))  # fit below, while writing
    desc = _source_text(source)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        arrays = {}
        datasets = {name: getattr(splits, name) for name in SPLITS}
        with tqdm(total=sum(len(d.lengths) for d in datasets.values()), unit="seq", desc=f"prepare {out.name}",
                  disable=not progress) as bar:
            for name, ds in datasets.items():
                stream = _write_split(tmp, name, ds, speech, bar, arrays)
                if name == "train" and normalizer is None:
                    normalizer = fit_normalizer(kind, stream, normalize, what=f"the training split of {desc}")
                for _ in stream:  # all of it, or what the fit left (nothing)
                    pass
        manifest = _manifest(source, options, splits, datasets, normalizer, speech, arrays)
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if out.exists():  # an empty folder, or the store force rewrites: moved aside, then removed
            old = out.parent / f"{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_store(out, verify=False)


def _remove_leftovers(out: Path) -> None:
    """Removes ``<out>.tmp-<pid>`` and ``<out>.old-<pid>`` folders whose process is gone (a prepare killed before
    it could clean up), warning about each; DataError when a running process (not this one) owns one."""
    for path in sorted(out.parent.glob(f"{glob.escape(out.name)}.*-*")):
        found = re.fullmatch(rf"{re.escape(out.name)}\.(tmp|old)-(\d+)", path.name)
        if found is None or not path.is_dir():
            continue
        pid = int(found.group(2))
        if pid != os.getpid() and _running(pid):
            raise DataError(f"{path} belongs to the running process {pid}: another prepare of {out}? Wait for it "
                            f"to end (or remove {path} if that process is not a prepare)")
        shutil.rmtree(path)
        warnings.warn(f"removed {path}, left by an interrupted prepare (process {pid} is gone)", stacklevel=3)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def _manifest(source, options, splits: Splits, datasets: dict, normalizer, speech: bool, arrays: dict) -> dict:
    files = sorted({str(f) for ds in datasets.values() for f in ds.files})
    return {
        "format": FORMAT, "version": VERSION, "source": _source_text(source), "options": options,
        "kind": splits.kind, "dim": splits.x_dim, "dtype": "int16" if speech else "float32",
        "scale": INT16_SCALE if speech else 1.0, "normalizer": normalizer.to_dict(),
        "splits": {name: {"sequences": len(ds.lengths), "frames": int(np.sum(ds.lengths)),
                          "files": [str(f) for f in ds.files], "names": getattr(ds, "names", None)}
                   for name, ds in datasets.items()},
        "source_files": [{"path": f, "bytes": os.path.getsize(f)} for f in files],
        "skipped": [[str(f), why] for f, why in splits.skipped],
        "arrays": arrays,
    }


# ----------------------------------------------------------------------------------------------------------
# Reading


class SplitReader:
    """One split of a frame store as :class:`~vrnn_fast.data.AudioDataset` reads it (its ``reader``).

    ``frames`` (N, D) memory map (int16 audio when ``audio``, else float32 rows as they are), ``index`` (n, 2)
    [offset, length].
    """

    def __init__(self, frames: np.ndarray, index: np.ndarray, audio: bool):
        self.frames, self.index, self.audio = frames, index, audio

    def _decode(self, rows: np.ndarray) -> np.ndarray:
        return decode_audio(rows) if self.audio else np.asarray(rows)

    def __call__(self, i: int) -> np.ndarray:
        """Raw frames of sequence i, (T_i, D) float32."""
        offset, length = self.index[i]
        return self._decode(self.frames[offset: offset + length])

    def gather(self, parts: np.ndarray, rows: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """A plan's raw frames (:class:`~vrnn_fast.data.batching.BatchPlan`: ``parts`` (P, 4) [row, sequence,
        start, stop]) as x (rows, steps, D) float32 and mask (rows, steps) bool, in one gather from the memory
        map; masked steps hold frame 0 of the split."""
        row, seq, start, stop = parts.T
        first = self.index[seq, 0] + start  # each part's first frame in the split
        if len(parts) == rows and np.array_equal(row, np.arange(rows)):  # one part a row (all but streams)
            t = np.arange(steps)
            mask = t < (stop - start)[:, None]
            where = np.where(mask, first[:, None] + t, 0)
        else:  # rows of several parts (streams), or none (a row whose stream has ended: all masked)
            n = stop - start
            to = np.cumsum(n) - n  # where each part starts among all the frames
            row_first = np.flatnonzero(np.r_[len(row) > 0, row[1:] != row[:-1]])  # each row's first part
            dest = to - np.repeat(to[row_first], np.diff(np.r_[row_first, len(row)]))  # where it starts in its row
            part = np.repeat(np.arange(len(parts)), n)
            j = np.arange(int(n.sum())) - to[part]  # each frame's step within its part
            where = np.zeros((rows, steps), np.int64)
            mask = np.zeros((rows, steps), bool)
            where[row[part], dest[part] + j] = first[part] + j
            mask[row[part], dest[part] + j] = True
        return self._decode(self.frames[where]), mask

    def __reduce__(self):
        """Pickled (for loader workers that do not fork) as the memory map's file, not its content."""
        return _open_reader, (self.frames.filename, self.index, self.audio)


def _open_reader(path: str, index: np.ndarray, audio: bool) -> SplitReader:
    return SplitReader(np.load(path, mmap_mode="r"), index, audio)


@dataclass
class FrameStore:
    """An opened, checked frame store: ``manifest`` (the dict of manifest.json), per split the frames memory
    map (N, D) and the index (n, 2) [offset, length]."""

    path: Path
    manifest: dict
    frames: dict[str, np.ndarray]
    index: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def seed(self) -> int:
        """The seed of the store's split."""
        return self.manifest["options"]["seed"]

    @property
    def normalizer(self) -> Normalizer:
        return Normalizer.from_dict(self.manifest["normalizer"])

    def reader(self, split: str) -> SplitReader:
        """A split's frames as AudioDataset reads them."""
        return SplitReader(self.frames[split], self.index[split], audio=self.kind == "speech")

    def splits(self, kind: str = "auto", audio: AudioConfig = _AUDIO, seed: int | None = None,
               normalizer: Normalizer | None = None, segment_steps: int | None = None) -> Splits:
        """The datasets of the store, as ``open_splits`` gives them for its source.

        ``audio``: its sample rate and frame size must be the store's; its segment length is free. ``seed``:
        the split's (None or the store's; the split is fixed when the store is prepared). ``normalizer``:
        None for the store's. ``segment_steps``: series only, as in ``open_splits`` (free).
        """
        m, opts = self.manifest, self.manifest["options"]
        if kind not in ("auto", m["kind"]):
            raise DataError(f"frame store {self.path} holds {m['kind']} data, not {kind}")
        if seed is not None and seed != self.seed:
            raise DataError(f"frame store {self.path} was split with seed {self.seed}, not {seed}; use seed "
                            f"{self.seed} (--split-seed) or prepare another store")
        speech = m["kind"] == "speech"
        if speech and (audio.sample_rate, audio.frame_size) != (opts["sample_rate"], opts["frame_size"]):
            raise DataError(f"frame store {self.path} holds {opts['frame_size']}-sample frames at "
                            f"{opts['sample_rate']} Hz, not {audio.frame_size} at {audio.sample_rate} Hz "
                            "(--sample-rate); prepare another store for these")
        _check_segment(m["kind"], segment_steps)
        normalizer = normalizer or self.normalizer
        _check_normalizer(normalizer, m["kind"], m["dim"])
        datasets = []
        for name in SPLITS:
            entry, lengths = m["splits"][name], self.index[name][:, 1]
            reader = self.reader(name)
            if speech:
                ds = AudioDataset(entry["files"], lengths, audio, reader=reader)
            elif m["kind"] == "handwriting":  # the datasets hold views of the memory map
                ds = StrokeDataset([reader(i) for i in range(len(lengths))], entry["names"], entry["files"])
            else:
                ds = SeriesDataset([reader(i) for i in range(len(lengths))], entry["names"], entry["files"],
                                   m["dim"], segment_steps)
            ds.normalizer = normalizer
            datasets.append(ds)
        skipped = [(Path(f), why) for f, why in m["skipped"]]
        return Splits(*datasets, normalizer, m["kind"], m["dim"], skipped, audio if speech else None)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def open_store(path, verify: bool | None = None) -> FrameStore:
    """Open and check a frame store: its manifest's format and version, every array's size, the indexes
    against the arrays, and (``verify``; None: when the arrays hold at most ``VERIFY_BYTES``) every sha256.

    Raises DataError naming the store and the problem for a missing, damaged or other-version store.
    """
    path = Path(path).expanduser()
    if not (path / MANIFEST).is_file():
        raise DataError(f"{path} is not a frame store (no {MANIFEST}; an interrupted prepare leaves none)")
    try:
        m = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise DataError(f"frame store {path}: damaged {MANIFEST} ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{path / MANIFEST} is not the manifest of a vrnn-fast frame store")
    if m.get("version") != VERSION:
        raise DataError(f"frame store {path} has format version {m.get('version')}; this vrnn-fast reads version "
                        f"{VERSION}: prepare it again")
    try:
        arrays = m["arrays"]
        for name, entry in arrays.items():
            f = path / name
            size = f.stat().st_size if f.is_file() else None
            if size != entry["bytes"]:
                raise DataError(f"frame store {path}: {name} is {'missing' if size is None else f'{size} bytes'}, "
                                f"the manifest says {entry['bytes']} (truncated or damaged; prepare it again)")
        if verify or (verify is None and sum(e["bytes"] for e in arrays.values()) <= VERIFY_BYTES):
            for name, entry in arrays.items():
                if _sha256(path / name) != entry["sha256"]:
                    raise DataError(f"frame store {path}: {name} does not match its sha256 checksum (damaged or "
                                    "edited; prepare it again)")
        frames, index = {}, {}
        for split in SPLITS:
            frames[split] = np.load(path / f"{split}.frames.npy", mmap_mode="r")
            index[split] = np.load(path / f"{split}.index.npy")
            _check_split(path, split, m, frames[split], index[split])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"frame store {path}: damaged manifest or array ({type(e).__name__}: {e})") from e
    return FrameStore(path, m, frames, index)


def _check_split(path: Path, split: str, m: dict, frames: np.ndarray, index: np.ndarray) -> None:
    entry = m["splits"][split]
    n, total = entry["sequences"], entry["frames"]
    if frames.shape != (total, m["dim"]) or frames.dtype != np.dtype(m["dtype"]):
        raise DataError(f"frame store {path}: {split}.frames.npy is {frames.dtype} {frames.shape}, the manifest "
                        f"says {m['dtype']} ({total}, {m['dim']})")
    lengths = index[:, 1] if index.ndim == 2 and index.shape[1] == 2 else None
    if lengths is None or len(index) != n or (lengths < 0).any() or \
            not np.array_equal(index[:, 0], np.cumsum(lengths) - lengths) or int(lengths.sum()) != total:
        raise DataError(f"frame store {path}: {split}.index.npy does not index {n} sequences of {total} frames")


__all__ = ["FORMAT", "VERSION", "FrameStore", "SplitReader", "decode_audio", "encode_audio", "is_store", "open_store",
           "prepare"]
