"""Speech files -> frames: audio files (wav, flac, ogg, ... through soundfile) mixed down to mono, resampled to
``AudioConfig.sample_rate`` with soxr and cut into non-overlapping ``frame_size``-sample frames (tail dropped).

Shapes: N samples; (N // frame_size, frame_size) frames.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".mp3")


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
    import soundfile as sf  # here, not at the top: stores, series and strokes work without soundfile and soxr
    import soxr

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
    import soundfile as sf

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
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:
        raise DataError(f"cannot read audio file {path}: {type(e).__name__}: {e}") from e
    if info.frames <= 0 or info.samplerate <= 0:
        raise DataError(f"audio file {path} has no samples")
    return _resampled_length(info.frames, info.samplerate, audio.sample_rate) // audio.frame_size
