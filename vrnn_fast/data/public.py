"""Public sequence data shipped inside the wheels of the ``series-data`` extra, as (T, D) arrays.

``pip install 'vrnn-fast[series-data]'`` installs aeon and music21 (both BSD-3-Clause). Nothing is downloaded:
every loader reads files bundled in the installed packages.

- :func:`load_aeon_classification`: aeon's classification sets with their own train/test split, e.g. the
  multivariate JapaneseVowels (270 train / 370 test utterances, 12 LPC cepstrum coefficients per step, 7-29
  steps) and BasicMotions (40 / 40 recordings, 6 accelerometer and gyroscope channels, 100 steps).
- :func:`load_aeon_anomaly`: aeon's labelled anomaly series. KDD-TSAD_135 (UCR InternalBleeding16, a heart
  rate: 1200 normal training steps, then a 7501-step test series with one anomaly of 12 steps, 1 feature);
  Daphnet_S06R02E0 (7040 steps of 9 accelerometer channels, no training part, and no anomaly: every label of
  this excerpt is 0, which is why aeon 1.6 deprecates it and 1.7 drops it).
- :func:`load_bach_chorales`: music21's Bach chorales (Riemenschneider's numbering) as binary piano rolls.

The CLI reads them once written with :func:`~vrnn_fast.data.save_npz` (``vrnn-fast train --data file.npz``).
"""

from __future__ import annotations

import importlib
import math
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

PIANO_LOW, PIANO_KEYS = 21, 88  # piano-roll column k is MIDI pitch 21 + k: A0 (21) to C8 (108)


def _require(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"{name} is not installed; pip install 'vrnn-fast[series-data]'") from e


def _aeon_data() -> Path:
    """The folder of the data sets bundled in aeon's wheel."""
    return Path(_require("aeon").__file__).parent / "datasets" / "data"


class Classification(NamedTuple):
    """A classification set: sequences (T_i, D) float64 and their labels (str), per split."""

    train: list[np.ndarray]
    train_labels: np.ndarray
    test: list[np.ndarray]
    test_labels: np.ndarray


def load_aeon_classification(name: str = "JapaneseVowels") -> Classification:
    """A classification set bundled with aeon (``<name>_TRAIN.ts`` and ``<name>_TEST.ts`` in its wheel), each
    series transposed from aeon's (channels, T) to (T, D). ValueError naming the bundled sets for another name."""
    root = _aeon_data()
    bundled = sorted(p.name for p in root.iterdir() if (p / f"{p.name}_TRAIN.ts").is_file()
                     and (p / f"{p.name}_TEST.ts").is_file())
    if name not in bundled:
        raise ValueError(f"aeon {_require('aeon').__version__} bundles no classification set {name!r}; it bundles "
                         f"{', '.join(bundled)}")
    from aeon.datasets import load_from_ts_file

    parts = []
    for split in ("TRAIN", "TEST"):
        x, y = load_from_ts_file(str(root / name / f"{name}_{split}.ts"))
        parts += [[np.asarray(s, np.float64).T for s in x], np.asarray(y)]
    return Classification(*parts)


class Anomaly(NamedTuple):
    """A labelled anomaly set: ``train`` (T0, D) float64 normal data (None when the set has no training part),
    ``series`` (T, D) float64 to score, ``labels`` (T,) bool, True at anomalous steps."""

    train: np.ndarray | None
    series: np.ndarray
    labels: np.ndarray


# name -> (training file or None, test file) in aeon's data folder, TimeEval CSVs: timestamp, features, is_anomaly
_ANOMALY_FILES = {
    "KDD-TSAD_135": ("135_UCR_Anomaly_InternalBleeding16_TRAIN.csv", "135_UCR_Anomaly_InternalBleeding16_TEST.csv"),
    "Daphnet_S06R02E0": (None, "S06R02E0.csv"),
}


def load_aeon_anomaly(name: str = "KDD-TSAD_135") -> Anomaly:
    """An anomaly series bundled with aeon: "KDD-TSAD_135" or "Daphnet_S06R02E0" (see the module docstring).

    ValueError for another name, or one this aeon does not bundle (Daphnet_S06R02E0 is gone from aeon 1.7)."""
    if name not in _ANOMALY_FILES:
        raise ValueError(f"unknown anomaly set {name!r}; one of {', '.join(_ANOMALY_FILES)}")
    root = _aeon_data() / name
    train_file, test_file = _ANOMALY_FILES[name]
    if not (root / test_file).is_file():
        raise ValueError(f"aeon {_require('aeon').__version__} does not bundle {name} ({root / test_file} missing)")
    from aeon.datasets import load_from_timeeval_csv_file

    def read(file):
        x, y = load_from_timeeval_csv_file(root / file)
        return np.asarray(x, np.float64).reshape(len(x), -1), np.asarray(y) != 0

    train = None
    if train_file is not None:
        train, train_labels = read(train_file)
        if train_labels.any():
            raise ValueError(f"{root / train_file}: the training part holds anomalies")
    series, labels = read(test_file)
    return Anomaly(train, series, labels)


def load_bach_chorales(limit: int | None = None, step: float = 1.0,
                       four_parts_only: bool = True) -> dict[str, np.ndarray]:
    """music21's Bach chorales as binary piano rolls: name (e.g. "bwv269") -> (T, 88) float32.

    Column k is MIDI pitch 21 + k (the 88 piano keys, as in the JSB Chorales of Boulanger-Lewandowski et al.
    2012). ``step``: the time step in quarter notes; 1.0 (the default) is the quarter-note resolution of JSB
    Chorales, 0.5 eighth notes. A pitch is on at step k when one of its notes sounds at time k * step (onset <=
    k * step < onset + duration), so notes between grid times vanish and a held note looks like a repeated one,
    as in JSB Chorales. T = ceil(end of the last note / step). Chorales in Riemenschneider's order (music21's
    numbering), each file once (music21 10.5: 350 files); ``four_parts_only`` keeps the chorales of four parts
    (331 of them), leaving out those with instrumental parts; ``limit``: the first ``limit`` chorales only. All
    331 span MIDI 36-81 (C2-A5), 24-193 quarter notes (53 on average), 0-4 notes a step.
    Unlike JSB Chorales (382 chorales, Allan & Williams' split), there is no official split here.
    """
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive number of quarter notes, got {step!r}")
    _require("music21")
    from music21 import corpus
    from music21.corpus import chorales

    grid = Fraction(step).limit_denominator(1000)
    rolls: dict[str, np.ndarray] = {}
    for path in dict.fromkeys(chorales.Iterator(returnType="filename")):  # one entry a file, in order
        if limit is not None and len(rolls) >= limit:
            break
        score = corpus.parse(path)
        if four_parts_only and len(score.parts) != 4:
            continue
        notes = [(Fraction(n.offset), Fraction(n.quarterLength), p.midi) for n in score.flatten().notes
                 for p in n.pitches]
        end = max(onset + length for onset, length, _ in notes)
        roll = np.zeros((math.ceil(end / grid), PIANO_KEYS), np.float32)
        for onset, length, midi in notes:
            if not PIANO_LOW <= midi < PIANO_LOW + PIANO_KEYS:
                raise ValueError(f"{path}: MIDI pitch {midi} is off the piano keyboard")
            roll[math.ceil(onset / grid): math.ceil((onset + length) / grid), midi - PIANO_LOW] = 1.0
        rolls[path.rsplit("/", 1)[-1]] = roll
    return rolls
