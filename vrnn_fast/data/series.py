"""Any sequence data -> (T, D) float32 arrays: rows are time steps, columns are features.

Files:

- ``.csv``: one sequence, comma-separated numbers, one row per step; the first line may be a header (it is one
  when none of its cells is a number; a first line mixing names and numbers is refused). Blank lines are skipped.
- ``.npy``: (T, D) one sequence ((T,): one feature); (N, T, D) N sequences of T steps, all whole unless a sibling
  ``<name>.lengths.npy`` holds N integer lengths in [1, T] (sequence i is ``x[i, :lengths[i]]``; what lies
  beyond a length is never read, NaN padding included).
- ``.npz``: one sequence per array ((T, D) or (T,)), in the archive's order.

Every value must be a finite number within the float32 range. A problem is a :class:`DataError` naming the file
and where in it: ``line L, column C`` (1-based, as an editor counts) in a CSV, the numpy index ``x[i, t, d]``
(0-based) in an array.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import DataError

SERIES_SUFFIXES = (".npy", ".npz", ".csv")
LENGTHS_SUFFIX = ".lengths.npy"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_series_file(path: Path) -> bool:
    """A .npy, .npz or .csv file by name (a ``<name>.lengths.npy`` companion is not one)."""
    low = path.name.lower()
    return low.endswith(SERIES_SUFFIXES) and not low.endswith(LENGTHS_SUFFIX)


def _checked(a: np.ndarray, where: str, index: tuple[int, ...] = ()) -> np.ndarray:
    """``a`` (T, D) as float32 when every value is finite in float32, else DataError naming the first bad value
    by its numpy index (``index`` prefixes it: the sequence's index in an (N, T, D) array)."""
    if a.shape[0] == 0:
        raise DataError(f"{where} is an empty sequence (0 steps)")
    if a.shape[1] == 0:
        raise DataError(f"{where} has no features (0 columns)")
    with np.errstate(over="ignore"):  # beyond float32: inf, found below
        out = a.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        t, d = np.argwhere(bad)[0]
        value = a[t, d]
        why = "is not finite" if not np.isfinite(value) else "is beyond the float32 range"
        raise DataError(f"{where}: x[{', '.join(str(int(i)) for i in (*index, t, d))}] = {float(value):.9g} {why}")
    return out


def _as_steps(a: np.ndarray, where: str) -> np.ndarray:
    """A loaded array as (T, D): (T,) -> (T, 1); numbers only."""
    if a.dtype.kind not in "biuf":
        raise DataError(f"{where} holds {a.dtype} values, not numbers")
    if a.ndim == 1:
        return a[:, None]
    if a.ndim != 2:
        raise DataError(f"{where} has shape {a.shape}: one sequence is (T, D) or (T,)")
    return a


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> np.ndarray:
    """A CSV file (see the module docstring) as (T, D) float32."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: {e}") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    rows = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not rows:
        raise DataError(f"{path} is empty: no rows")
    first_line, first = rows[0]
    cells = first.split(",")
    numeric = [_is_number(c) for c in cells]
    if not any(numeric):  # a header row
        rows = rows[1:]
        if not rows:
            raise DataError(f"{path} has a header row (line {first_line}) and no data rows")
    elif not all(numeric):
        j = numeric.index(False)
        raise DataError(f"{path} line {first_line}, column {j + 1}: {cells[j].strip()!r} is not a number (a header "
                        "row holds names only)")
    width = len(cells)
    try:  # numpy's C parser; the slow check below names the first problem when it fails
        a = np.loadtxt(io.StringIO("\n".join(r for _, r in rows)), delimiter=",", dtype=np.float64, ndmin=2,
                       comments=None)
    except ValueError:
        a = None
    if a is None or a.shape != (len(rows), width) or not (np.abs(a) <= _FLOAT32_MAX).all():
        raise DataError(_csv_problem(path, rows, width) or f"cannot read {path} as comma-separated numbers")
    return a.astype(np.float32)


def _csv_problem(path: Path, rows: list[tuple[int, str]], width: int) -> str | None:
    """The first ragged row, non-numeric cell or non-finite value of a CSV file, named by line and column."""
    for n, row in rows:
        cells = row.split(",")
        if len(cells) != width:
            return f"{path} line {n} has {len(cells)} columns, line {rows[0][0]} has {width}"
        for j, cell in enumerate(cells):
            try:
                value = float(cell)
            except ValueError:
                return f"{path} line {n}, column {j + 1}: {cell.strip()!r} is not a number"
            if not abs(value) <= _FLOAT32_MAX:
                why = "is beyond the float32 range" if np.isfinite(value) else "is not finite"
                return f"{path} line {n}, column {j + 1}: {cell.strip()} {why}"
    return None


def _load(path: Path, what: str):
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path} as a {what}: {e}") from e


def _lengths(path: Path, n: int, steps: int) -> np.ndarray | None:
    """The lengths of an (n, steps, D) array from its sibling ``<name>.lengths.npy``, None without one."""
    lpath = path.with_name(path.name[: -len(".npy")] + LENGTHS_SUFFIX)
    if not lpath.is_file():
        return None
    lengths = _load(lpath, ".npy array of lengths")
    if lengths.dtype.kind not in "iu" or lengths.shape != (n,):
        raise DataError(f"{lpath} must hold {n} integers (one length per sequence of {path}), got "
                        f"{lengths.dtype} {lengths.shape}")
    bad = np.flatnonzero((lengths < 1) | (lengths > steps))
    if len(bad):
        raise DataError(f"{lpath}: lengths[{bad[0]}] = {lengths[bad[0]]} is outside [1, {steps}] (the steps of "
                        f"{path})")
    return lengths


def _read_series_sequences(path: Path) -> list[tuple[str, np.ndarray | DataError]]:
    """(suffix, sequence) for every sequence of a series file: the sequence (T, D) float32, or the DataError that
    makes it unusable (one of several in an .npz or (N, T, D) .npy); ``path.name + suffix`` names it ("" for a
    file holding one sequence, ``:key`` in an .npz, ``[i]`` in an (N, T, D) .npy). Raises DataError for a file
    unusable as a whole (missing, unreadable, empty, a bad lengths file)."""
    if not path.is_file():
        raise DataError(f"series file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return [("", _read_csv(path))]
    if suffix == ".npz":
        with _load(path, ".npz archive") as archive:
            keys = list(archive.files)
            if not keys:
                raise DataError(f"{path} holds no arrays")
            out = []
            for key in keys:
                where = f"{path}:{key}"
                try:
                    out.append((f":{key}", _checked(_as_steps(archive[key], where), where)))
                except DataError as e:
                    out.append((f":{key}", e))
                except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                    out.append((f":{key}", DataError(f"cannot read array {key} of {path}: {e}")))
            return out
    if suffix != ".npy":
        raise DataError(f"not a series file ({', '.join(SERIES_SUFFIXES)}): {path}")
    a = _load(path, ".npy array")
    if a.ndim != 3:
        return [("", _checked(_as_steps(a, str(path)), str(path)))]
    if a.dtype.kind not in "biuf":
        raise DataError(f"{path} holds {a.dtype} values, not numbers")
    if a.shape[0] == 0:
        raise DataError(f"{path} holds no sequences (shape {a.shape})")
    lengths = _lengths(path, a.shape[0], a.shape[1])
    out = []
    for i in range(a.shape[0]):
        x = a[i] if lengths is None else a[i, : lengths[i]]
        try:
            out.append((f"[{i}]", _checked(x, f"{path}[{i}]", (i,))))
        except DataError as e:
            out.append((f"[{i}]", e))
    return out


def read_series(path) -> list[np.ndarray]:
    """Every sequence of a series file (.csv, .npy, .npz; see the module docstring), each (T, D) float32.

    Raises DataError naming the file and the line (CSV) or array index of the first problem.
    """
    out = []
    for _, a in _read_series_sequences(Path(path)):
        if isinstance(a, DataError):
            raise a
        out.append(a)
    return out


def save_npz(path, sequences: Iterable[np.ndarray]) -> Path:
    """Write sequences ((T_i, D) arrays) as one .npz that :func:`read_series` and ``open_splits`` read back in
    this order (keys ``000000``, ``000001``, ...); returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"save_npz writes a .npz file, got {path}")
    arrays = {f"{i:06d}": np.asarray(a) for i, a in enumerate(sequences)}
    if not arrays:
        raise ValueError("save_npz needs at least one sequence")
    np.savez(path, **arrays)
    return path
