"""Data pipeline: speech waveforms, online handwriting and any sequence data as batches of (x, mask) for the VRNN.

Where things are:

- :mod:`.audio`: speech files -> frames (:func:`read_audio`, :func:`frames`, :class:`AudioConfig`).
- :mod:`.strokes`: handwriting files -> rows [pen, dx, dy] (:func:`read_strokes`).
- :mod:`.series`: any sequence data (.npy, .npz, .csv) -> (T, D) rows (:func:`read_series`).
- :mod:`.public`: public data sets of the ``series-data`` extra (aeon, music21) as (T, D) arrays.
- :mod:`.splits`: sources, train/valid/test splits and the :class:`Normalizer` (:func:`open_splits`).
- :mod:`.batching`: the datasets and their batches (:class:`Batch`, ``iter_batches``, ``iter_stream_batches``).
- :mod:`.loader`: batches through ``torch.utils.data``: worker processes, pinned memory, per-rank shares.
- :mod:`.store`: the frame store, a source decoded once into memory-mapped arrays (:func:`prepare`).

Speech (PAPER.md, "Speech data"): mono, resampled, cut into ``frame_size``-sample frames and z-scored with one
global scalar mean/std fit on the training split. A sequence is either a fixed-length segment of
``segment_seconds`` (a file's last, shorter segment is kept, padded and masked) or a whole utterance
(``segment_seconds=None``). Handwriting (PAPER.md, "IAM-OnDB"): rows [pen, dx, dy], dx and dy z-scored with one
pooled scalar mean/std, the pen bit raw. Series: rows of D features, z-scored per feature (a mean/std vector fit
on the training split), or left as they are (``normalize="none"``, the default for binary data); whole sequences
or pieces of ``segment_steps`` steps.

Shapes: B batch, T steps (frames, pen points or series steps), D = x_dim (frame_size for speech, 3 for
handwriting, the number of features of a series).

Example::

    splits = open_splits()                          # the shipped CMU ARCTIC slt set, 0.5 s segments
    for batch in splits.train.iter_batches(16):     # Batch(x (B, 40, 200), mask (B, 40), carry=False)
        out = model(batch.x, mask=batch.mask)
"""

from .audio import AUDIO_SUFFIXES, AudioConfig, frames, read_audio
from .batching import AudioDataset, Batch, SeriesDataset, StrokeDataset
from .errors import DataError
from .series import SERIES_SUFFIXES, read_series, save_npz
from .splits import DEFAULT_SPEECH, Normalizer, Splits, fit_normalizer, open_splits
from .store import FrameStore, is_store, open_store, prepare
from .strokes import read_strokes

__all__ = [
    "AUDIO_SUFFIXES", "DEFAULT_SPEECH", "SERIES_SUFFIXES", "AudioConfig", "AudioDataset", "Batch", "DataError",
    "FrameStore", "Normalizer", "SeriesDataset", "Splits", "StrokeDataset", "fit_normalizer", "frames", "is_store",
    "open_splits", "open_store", "prepare", "read_audio", "read_series", "read_strokes", "save_npz",
]
