"""Handwriting files -> pen-offset sequences (PAPER.md, "IAM-OnDB").

Each sequence is rows ``[pen, dx, dy]`` where (dx, dy) are successive differences of the pen positions (N points
-> N-1 rows), ``pen = 1`` marks a row that ends at the last point of a stroke, and y grows upward. Formats:
UNIPEN ASCII inside a ``.tar.gz`` (read with tarfile, never extracted; y up already), Omniglot stroke files
(``START`` / ``x,y,t`` / ``BREAK``) inside a ``.zip`` (Omniglot stores "motor" coordinates, y = -image row, so
y is up already) and IAM-OnDB's XML (``<Stroke><Point x= y= .../>``, y grows downward: flipped).
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError


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
