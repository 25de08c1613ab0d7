"""Tests of vrnn_fast.data: readers on files written here, splits, normalisation, batching, bad input,
and the real sets in ../shared/data (skipped when absent)."""

from __future__ import annotations

import io
import math
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vrnn_fast.data import (
    DEFAULT_SPEECH,
    AudioConfig,
    DataError,
    Normalizer,
    StrokeDataset,
    frames,
    open_splits,
    read_audio,
    read_strokes,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")


def sine(n: int, rate: int, hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, rate: int, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, rate, **kw)
    return path


def speech_folder(root: Path, n: int, rate: int = 16000, samples: int = 3000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_wav(root / f"utt{i:03d}.wav", (0.3 * rng.standard_normal(samples + 37 * i)).clip(-1, 1), rate)
    return root


# ------------------------------------------------------------------------------------------------ readers


@pytest.mark.parametrize("fmt, subtype", [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_read_audio_formats_and_rates(tmp_path, fmt, subtype, rate):
    n = rate // 2
    wave = sine(n, rate)
    path = write_wav(tmp_path / f"a.{fmt}", wave, rate, subtype=subtype)
    out = read_audio(path, 16000)
    assert out.dtype == np.float32 and out.ndim == 1 and np.abs(out).max() <= 1.0
    assert len(out) == n * 16000 // rate
    expected = sine(len(out), 16000)
    if rate == 16000 and fmt != "ogg":  # lossless at the same rate: the PCM16 samples themselves
        np.testing.assert_allclose(out, np.round(wave * 32767) / 32768, atol=1e-4)
    else:  # resampled (or lossy): the same 440 Hz tone, away from the filter's edges
        inner = slice(400, len(out) - 400)
        assert np.corrcoef(out[inner], expected[inner])[0, 1] > 0.99


def test_read_audio_mixes_channels_down(tmp_path):
    left, right = sine(1600, 16000), sine(1600, 16000, hz=1000)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path, 16000), (left + right) / 2, atol=1e-6)


def test_read_audio_extreme_values(tmp_path):
    loud = write_wav(tmp_path / "loud.wav", np.array([0.5, 3.0, -7.0, 0.0] * 100, np.float32), 16000, subtype="FLOAT")
    with pytest.warns(UserWarning, match=r"loud.wav has samples beyond \+-1 \(peak 7\): clipped"):
        np.testing.assert_array_equal(read_audio(loud, 16000)[:4], [0.5, 1.0, -1.0, 0.0])  # clipped to [-1, 1]
    quiet = write_wav(tmp_path / "quiet.wav", np.array([0.5, 1.0, -1.0] * 100, np.float32), 16000, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full scale is not beyond it: no warning
        read_audio(quiet, 16000)
    nan = write_wav(tmp_path / "nan.wav", np.array([0.1, np.nan] * 100, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav.*non-finite"):
        read_audio(nan, 16000)
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match="empty.wav"):
        read_audio(empty, 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        read_audio(loud, 0)
    bad_configs = (dict(sample_rate=0), dict(frame_size=2.5), dict(segment_seconds=-1), dict(segment_seconds=math.nan))
    for bad in bad_configs:
        with pytest.raises(ValueError, match="AudioConfig"):
            AudioConfig(**bad)
    assert AudioConfig().segment_frames == 40 and AudioConfig(segment_seconds=None).segment_frames is None


def test_read_audio_warns_about_a_file_cut_short(tmp_path):
    path = write_wav(tmp_path / "cut.wav", sine(16000, 16000), 16000, subtype="PCM_16")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)  # the header still promises 16000 samples
    with pytest.warns(UserWarning, match=r"cut.wav is cut short: .*promises 32000 bytes.*holds 15978 \(50%\)"):
        assert len(read_audio(path, 16000)) == 7989
    whole = write_wav(tmp_path / "whole.wav", sine(16000, 16000), 16000, subtype="PCM_16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_audio(whole, 16000)


def test_symbolic_links_to_folders_are_followed(tmp_path):
    elsewhere = speech_folder(tmp_path / "elsewhere", 3)
    data = speech_folder(tmp_path / "data", 20, seed=1)
    (data / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(data, target_is_directory=True)  # a cycle is walked once
    splits = open_splits(data, audio=AudioConfig())
    files = [*splits.train.files, *splits.valid.files, *splits.test.files]
    assert len(files) == 23 and sum("linked" in str(f) for f in files) == 3


def test_frames_non_overlapping_tail_dropped():
    wave = np.arange(1050, dtype=np.float32)
    f = frames(wave, 200)
    assert f.shape == (5, 200)
    np.testing.assert_array_equal(f.ravel(), wave[:1000])
    assert frames(wave[:199], 200).shape == (0, 200)
    with pytest.raises(ValueError, match="1-D"):
        frames(wave.reshape(2, -1), 200)
    with pytest.raises(ValueError, match="frame_size"):
        frames(wave, 0)


UNIPEN_INK = """.COMMENT test
.WRITER_ID abc
.PEN_DOWN
10 20
13 24
.PEN_UP
.PEN_DOWN
20 10
.PEN_UP
.PEN_DOWN
21 12
25 11
.PEN_UP
"""
# points (10,20) (13,24) | (20,10) | (21,12) (25,11): y up already
UNIPEN_ROWS = [[1, 3, 4], [1, 7, -14], [0, 1, 2], [1, 4, -1]]


def write_unipen_tar(path: Path, inks: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        files = {"data/8/x/label.dat": '.INCLUDE x/ink.dat\n.SEGMENT TEXT 0-3 OK "hi"\n', **inks}
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


OMNIGLOT_TXT = "START\n1.0,-2.0,0\n2.0,-4.0,10\nBREAK\n5.0,-5.0,30\n5.5,-5.0,40\n6.0,-5.5,50\nBREAK\n"
OMNIGLOT_ROWS = [[1, 1, -2], [0, 3, -1], [0, 0.5, 0], [1, 0.5, -0.5]]  # stored y is up already: no flip


def write_omniglot_zip(path: Path, drawings: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in drawings.items():
            zf.writestr(name, text)
        zf.writestr("__MACOSX/strokes/._junk.txt", "\x00\x01binary")
    return path


def iam_xml(points_per_stroke: list[list[tuple[float, float]]]) -> str:
    strokes = "".join(
        "<Stroke colour=\"black\">" + "".join(f'<Point x="{x}" y="{y}" time="0.1"/>' for x, y in s) + "</Stroke>"
        for s in points_per_stroke)
    return f'<?xml version="1.0"?><WhiteboardCaptureSession><StrokeSet>{strokes}</StrokeSet></WhiteboardCaptureSession>'


def test_read_strokes_unipen_tar(tmp_path):
    path = write_unipen_tar(tmp_path / "u.tar.gz", {"include/x/ink.dat": UNIPEN_INK, "include/x/ink2.dat": UNIPEN_INK})
    seqs = read_strokes(path)
    assert len(seqs) == 2  # the label file (no ink) is not a sequence
    np.testing.assert_array_equal(seqs[0], np.array(UNIPEN_ROWS, np.float32))
    assert seqs[0].dtype == np.float32


def test_read_strokes_omniglot_zip_and_txt(tmp_path):
    path = write_omniglot_zip(tmp_path / "o.zip", {"s/a/c01/1_01.txt": OMNIGLOT_TXT, "s/a/c01/1_02.txt": OMNIGLOT_TXT})
    seqs = read_strokes(path)
    assert len(seqs) == 2
    np.testing.assert_allclose(seqs[1], OMNIGLOT_ROWS)
    (tmp_path / "one.txt").write_text(OMNIGLOT_TXT)
    np.testing.assert_allclose(read_strokes(tmp_path / "one.txt")[0], OMNIGLOT_ROWS)


def test_read_strokes_iam_xml_flips_y(tmp_path):
    path = tmp_path / "line.xml"
    path.write_text(iam_xml([[(100, 50), (103, 46)], [(110, 60), (111, 60), (115, 58)]]))
    # y grows downward in IAM-OnDB: dy is negated so that up is positive
    np.testing.assert_allclose(read_strokes(path)[0], [[1, 3, 4], [0, 7, -14], [0, 1, 0], [1, 4, 2]])


def test_read_strokes_bad_files(tmp_path):
    (tmp_path / "bad.xml").write_text("<StrokeSet><Stroke><Point x='1' y=")
    with pytest.raises(DataError, match="bad.xml"):
        read_strokes(tmp_path / "bad.xml")
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DataError, match="bad.tar.gz"):
        read_strokes(tmp_path / "bad.tar.gz")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="bad.zip"):
        read_strokes(tmp_path / "bad.zip")
    (tmp_path / "pts.txt").write_text("START\n1.0,oops,0\nBREAK\n")
    with pytest.raises(DataError, match="pts.txt"):
        read_strokes(tmp_path / "pts.txt")
    with pytest.raises(DataError, match="not found"):
        read_strokes(tmp_path / "absent.xml")


# ------------------------------------------------------------------------------------------------ splits


def test_split_is_deterministic_disjoint_and_sized(tmp_path):
    root = speech_folder(tmp_path / "s", 40, samples=400)
    a, b, c = (open_splits(root, seed=s) for s in (0, 0, 1))
    parts = [set(d.files) for d in (a.train, a.valid, a.test)]
    assert [len(p) for p in parts] == [36, 2, 2]
    assert set.union(*parts) == set(root.glob("*.wav")) and sum(map(len, parts)) == 40
    assert [d.files for d in (a.train, a.valid, a.test)] == [d.files for d in (b.train, b.valid, b.test)]
    assert set(c.test.files) != set(a.test.files)
    assert a.kind == "speech" and a.x_dim == 200 and a.audio == AudioConfig()


def test_fsdd_layout_takes_0_to_4_are_test(tmp_path):
    root = tmp_path / "fsdd" / "recordings"
    for digit in range(3):
        for spk in ("ann", "bob"):
            for take in range(10):
                write_wav(root / f"{digit}_{spk}_{take}.wav", sine(900, 8000, hz=200 + 50 * take), 8000)
    s = open_splits(tmp_path / "fsdd")
    assert {int(f.stem.split("_")[2]) for f in s.test.files} == {0, 1, 2, 3, 4} and len(s.test.files) == 30
    assert all(int(f.stem.split("_")[2]) > 4 for f in s.train.files + s.valid.files)
    assert len(s.valid.files) == 3 and len(s.train.files) == 27


def test_timit_layout_uses_train_test_folders_and_holds_out_speakers(tmp_path):
    root = tmp_path / "TIMIT"
    for split, speakers in (("TRAIN", ["FAA0", "MBB0", "FCC0", "MDD0"]), ("TEST", ["FEE0"])):
        for spk in speakers:
            for utt in ("SA1", "SX2"):  # NIST SPHERE headers with an upper-case .WAV suffix, as in TIMIT
                write_wav(root / split / "DR1" / spk / f"{utt}.WAV", sine(1600, 16000), 16000, format="NIST",
                          subtype="PCM_16")
    s = open_splits(root)
    assert all("TEST" in f.parts for f in s.test.files) and len(s.test.files) == 2
    assert all("TRAIN" in f.parts for f in s.train.files + s.valid.files)
    valid_speakers = {f.parent.name for f in s.valid.files}
    assert len(valid_speakers) == 1 and not valid_speakers & {f.parent.name for f in s.train.files}


def test_file_list_and_list_of_paths(tmp_path):
    root = speech_folder(tmp_path / "s", 5, samples=600)
    (tmp_path / "list.txt").write_text("# my files\n" + "\n".join(f"./s/utt{i:03d}.wav" for i in range(5)) + "\n\n")
    from_list = open_splits(tmp_path / "list.txt")
    from_paths = open_splits(sorted(root.glob("*.wav")))
    assert sorted(from_list.train.files + from_list.valid.files + from_list.test.files) == sorted(root.glob("*.wav"))
    assert from_list.test.files == from_paths.test.files


# ------------------------------------------------------------------------------------------------ normaliser


def test_normalizer_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 7, 3)).astype(np.float32) * 30 + 5
    a[..., 0] = rng.integers(0, 2, (4, 7))
    for norm in (Normalizer(5.0, 30.0), Normalizer(5.0, 30.0, raw_columns=1)):
        n = norm.normalize(a)
        np.testing.assert_allclose(norm.denormalize(n), a, rtol=1e-5, atol=1e-4)
        t = torch.from_numpy(a)
        torch.testing.assert_close(norm.denormalize(norm.normalize(t)), t)
        torch.testing.assert_close(norm.normalize(t), torch.from_numpy(n))
        assert Normalizer.from_dict(norm.to_dict()) == norm
    pen_raw = Normalizer(5.0, 30.0, raw_columns=1).normalize(a)
    np.testing.assert_array_equal(pen_raw[..., 0], a[..., 0])  # the pen bit is left raw
    np.testing.assert_allclose(pen_raw[..., 1:], (a[..., 1:] - 5) / 30, rtol=1e-6)
    before = a.copy()
    Normalizer(5.0, 30.0, 1).normalize(a)
    Normalizer(5.0, 30.0, 1).denormalize(torch.from_numpy(a))
    np.testing.assert_array_equal(a, before)  # the input is not modified in place


def test_normalizer_fit_and_errors():
    chunks = [np.array([[0.0, 1.0, 2.0]]), np.array([[1.0, -4.0, 9.0], [0.0, 3.0, 3.0]])]
    norm = Normalizer.fit(chunks, raw_columns=1)
    pooled = np.array([1.0, 2.0, -4.0, 9.0, 3.0, 3.0])
    assert norm.mean == pytest.approx(pooled.mean()) and norm.std == pytest.approx(pooled.std())
    with pytest.raises(DataError, match="constant"):
        Normalizer.fit([np.ones(10)])
    with pytest.raises(DataError, match="empty"):
        Normalizer.fit([])
    with pytest.raises(ValueError, match="std"):
        Normalizer(0.0, 0.0)
    with pytest.raises(ValueError, match="keys"):
        Normalizer.from_dict({"mean": 0.0})


def test_speech_normalizer_fit_on_train_and_restored(tmp_path):
    root = speech_folder(tmp_path / "s", 20, samples=1000)
    s = open_splits(root)
    train = np.concatenate([frames(read_audio(f, 16000), 200).ravel() for f in s.train.files])
    assert s.normalizer.mean == pytest.approx(train.mean(), abs=1e-7)
    assert s.normalizer.std == pytest.approx(train.std(), rel=1e-6)
    x = torch.cat([b.x[b.mask] for b in s.train.iter_batches(4)])
    assert abs(float(x.mean())) < 1e-5 and float(x.std()) == pytest.approx(1.0, rel=1e-3)
    given = Normalizer(0.25, 2.0)
    r = open_splits(root, normalizer=Normalizer.from_dict(given.to_dict()))
    assert r.normalizer == given and r.valid.normalizer == given
    b = next(r.test.iter_batches(1, shuffle=False))
    raw = frames(read_audio(r.test.files[0], 16000), 200)[:40]
    torch.testing.assert_close(b.x[0], torch.from_numpy((raw - 0.25) / 2.0))
    with pytest.raises(ValueError, match="raw_columns"):
        open_splits(root, normalizer=Normalizer(0.0, 1.0, raw_columns=1))


# ------------------------------------------------------------------------------------------------ batching


def test_segment_batches_cover_every_frame_once_with_masked_tails(tmp_path):
    root = speech_folder(tmp_path / "s", 20, samples=17000)  # 85-88 frames per file: 2 full segments and a tail
    s = open_splits(root)
    ds = s.train
    assert ds.num_sequences == 3 * len(ds.files)
    batches = list(ds.iter_batches(5, seed=3))
    assert all(b.x.shape[1:] == (40, 200) and b.x.dtype == torch.float32 and not b.carry for b in batches)
    assert sum(b.x.shape[0] for b in batches) == ds.num_sequences
    assert sum(int(b.mask.sum()) for b in batches) == ds.num_frames
    for b in batches:  # masks are prefixes; padded frames are zero
        m = b.mask.int()
        assert (m[:, 1:] <= m[:, :-1]).all() and (b.x[~b.mask] == 0).all()
    # the same (seed, epoch) gives the same pass, another epoch another order, shuffle=False the file order
    again = list(ds.iter_batches(5, seed=3))
    assert all(torch.equal(b.x, c.x) for b, c in zip(batches, again, strict=True))
    other = next(ds.iter_batches(5, seed=3, epoch=1))
    assert not torch.equal(other.x, batches[0].x)
    first = next(ds.iter_batches(2, shuffle=False))
    want = s.normalizer.normalize(frames(read_audio(ds.files[0], 16000), 200))
    torch.testing.assert_close(first.x[0], torch.from_numpy(want[:40]))
    torch.testing.assert_close(first.x[1], torch.from_numpy(want[40:80]))
    assert len(list(ds.iter_batches(5, drop_last=True))) == ds.num_sequences // 5


def test_whole_utterance_batches_have_masks(tmp_path):
    root = speech_folder(tmp_path / "s", 12, samples=3000)  # 15..17 frames per file (lengths differ)
    s = open_splits(root, audio=AudioConfig(segment_seconds=None))
    ds = s.train
    assert ds.num_sequences == len(ds.files)
    want = {int(f.stem[3:]): len(frames(read_audio(f, 16000), 200)) for f in ds.files}
    (b,) = list(ds.iter_batches(len(ds.files), shuffle=False))
    assert b.x.shape == (len(ds.files), max(want.values()), 200)
    assert b.mask.sum(1).tolist() == [want[int(f.stem[3:])] for f in ds.files]
    assert len(set(b.mask.sum(1).tolist())) > 1 and (b.x[~b.mask] == 0).all()
    with pytest.raises(ValueError, match="segment_seconds"):
        AudioConfig(segment_seconds=0.001)


def test_whole_sequence_batches_are_bucketed_by_length():
    rng = np.random.default_rng(0)
    lengths = rng.permutation(np.arange(1, 101))
    ds = StrokeDataset([np.full((n, 3), float(n), np.float32) for n in lengths], [str(n) for n in lengths],
                       ["f"] * 100)
    batches = list(ds.iter_batches(10, seed=4))
    got = sorted(int(x) for b in batches for x in b.x[:, 0, 0])
    assert got == list(range(1, 101))  # each sequence once
    assert all(int(b.mask.sum(1).max() - b.mask.sum(1).min()) <= 9 for b in batches)  # little padding
    starts = [int(b.mask.sum(1).min()) for b in batches]
    assert starts != sorted(starts)  # the batch order is random
    assert len(list(ds.iter_batches(7, drop_last=True))) == 14


def test_stream_batches_continue_rows(tmp_path):
    root = tmp_path / "s"
    for i in range(12):  # each file a distinct ramp, 7..18 frames of 200 samples
        write_wav(root / f"f{i:02d}.wav", np.linspace(-0.9, 0.9, 200 * (7 + i)).astype(np.float32) * (i + 1) / 13,
                  16000, subtype="FLOAT")
    s = open_splits(root, audio=AudioConfig(segment_seconds=0.1))  # 8-frame segments
    ds = s.train
    batches = list(ds.iter_stream_batches(3, seed=1))
    assert [b.carry for b in batches] == [False] + [True] * (len(batches) - 1)
    assert all(b.x.shape == (3, 8, 200) for b in batches)
    assert sum(int(b.mask.sum()) for b in batches) == ds.num_frames
    rows = [torch.cat([b.x[r][b.mask[r]] for b in batches]) for r in range(3)]
    # a row, read across batches, is whole files back to back (masks only end a row)
    loaded = {tuple(ds._load(i)[0, :3].tolist()): ds._load(i) for i in range(len(ds.files))}
    assert len(loaded) == len(ds.files)
    seen = []
    for row in rows:
        pos = 0
        while pos < len(row):
            key = tuple(row[pos, :3].tolist())
            arr = loaded[key]
            torch.testing.assert_close(row[pos: pos + len(arr)], torch.from_numpy(arr))
            pos += len(arr)
            seen.append(key)
    assert sorted(seen) == sorted(loaded)  # every file exactly once
    assert sum(len(r) for r in rows) == sum(len(a) for a in loaded.values())
    assert len(list(ds.iter_stream_batches(100))[0].x) == len(ds.files)  # rows capped at the number of files


# ------------------------------------------------------------------------------------------------ handwriting


def test_handwriting_sources_open_and_normalise(tmp_path):
    inks = {f"include/x/w{i}.dat": UNIPEN_INK.replace("25 11", f"{25 + i} {11 - i}") for i in range(20)}
    s = open_splits(write_unipen_tar(tmp_path / "u.tar.gz", inks))
    assert s.kind == "handwriting" and s.x_dim == 3 and s.audio is None
    assert (s.train.num_sequences, s.valid.num_sequences, s.test.num_sequences) == (18, 1, 1)
    assert s.normalizer.raw_columns == 1
    (b,) = list(s.train.iter_batches(32))
    assert b.x.shape == (18, 4, 3) and b.mask.all()
    assert set(b.x[..., 0].unique().tolist()) == {0.0, 1.0}  # the pen bit is raw
    d = b.x[..., 1:]
    assert abs(float(d.mean())) < 1e-5 and float(d.std(unbiased=False)) == pytest.approx(1.0, rel=1e-4)
    omni = open_splits(write_omniglot_zip(tmp_path / "o.zip", {f"s/c/{i}.txt": OMNIGLOT_TXT for i in range(4)}))
    assert omni.train.num_sequences + omni.valid.num_sequences + omni.test.num_sequences == 4
    xml_dir = tmp_path / "iam"
    for i in range(6):
        (xml_dir / f"a0{i}").mkdir(parents=True)
        (xml_dir / f"a0{i}" / f"l{i}.xml").write_text(iam_xml([[(0, 0), (i + 1, 2), (i + 3, 5)]] * (i + 1)))
    iam = open_splits(xml_dir, kind="handwriting")
    assert iam.train.num_sequences == 4 and len({f for ds in (iam.train, iam.valid, iam.test) for f in ds.files}) == 6
    sb = list(iam.train.iter_stream_batches(2, steps=3))
    assert sb[0].x.shape == (2, 3, 3) and sb[1].carry
    assert sum(int(b.mask.sum()) for b in sb) == iam.train.num_frames


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_source_and_no_audio(tmp_path):
    with pytest.raises(DataError, match="not found.*nowhere"):
        open_splits(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no audio files.*empty"):
        open_splits(tmp_path / "empty", kind="speech")
    with pytest.raises(DataError, match="empty"):
        open_splits(tmp_path / "empty")
    with pytest.raises(DataError, match="no default handwriting"):
        open_splits(None, kind="handwriting")
    (tmp_path / "list.txt").write_text("a.wav\n")
    with pytest.raises(DataError, match="a.wav"):
        open_splits(tmp_path / "list.txt")
    speech_folder(tmp_path / "two", 2)
    with pytest.raises(DataError, match="at least 3"):
        open_splits(tmp_path / "two")
    with pytest.raises(ValueError, match="kind"):
        open_splits(tmp_path / "two", kind="video")
    (tmp_path / "l.xml").write_text(iam_xml([[(0, 0), (1, 1)]]))
    with pytest.raises(DataError, match="not an audio file.*l.xml"):
        open_splits([tmp_path / "l.xml"] * 3, kind="speech")
    with pytest.raises(DataError, match="mixes audio"):
        open_splits([tmp_path / "l.xml", tmp_path / "two" / "utt000.wav"])
    with pytest.raises(DataError, match="not found"):
        read_audio(tmp_path / "absent.wav", 16000)


def test_corrupt_file_is_named_and_skipped_only_on_request(tmp_path):
    root = speech_folder(tmp_path / "s", 8, samples=800)
    bad = root / "utt_bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)))
    with pytest.raises(DataError, match="utt_bad.wav.*skip_bad"):
        open_splits(root)
    with pytest.raises(DataError, match="utt_bad.wav"):
        read_audio(bad, 16000)
    with pytest.warns(UserWarning, match="utt_bad.wav"):
        s = open_splits(root, skip_bad=True)
    assert [f for f, _ in s.skipped] == [bad]
    assert bad not in s.train.files + s.valid.files + s.test.files
    assert len(s.train.files + s.valid.files + s.test.files) == 8
    (root / "short.wav").unlink(missing_ok=True)
    write_wav(root / "short.wav", np.zeros(50, np.float32), 16000)  # shorter than a frame: listed, not an error
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        s = open_splits(root, skip_bad=True)
    assert (root / "short.wav") in [f for f, _ in s.skipped]


def test_damaged_flac_data_behind_a_good_header(tmp_path, monkeypatch):
    root = speech_folder(tmp_path / "s", 6, samples=2000)
    flac = write_wav(root / "damaged.flac", sine(48000, 16000), 16000)
    data = bytearray(flac.read_bytes())
    data[len(data) // 2:] = b""  # the header still reads; the data does not decode
    flac.write_bytes(bytes(data))
    assert sf.info(str(flac)).frames == 48000
    with pytest.raises(DataError, match="damaged.flac"):
        open_splits(root)  # a small corpus is decoded at open
    with pytest.warns(UserWarning, match="damaged.flac"):
        s = open_splits(root, skip_bad=True)
    assert [f.name for f, _ in s.skipped] == ["damaged.flac"]
    monkeypatch.setattr("vrnn_fast.data.batching.CACHE_BYTES", 0)  # a large corpus: headers only, files read per batch
    s = open_splits(root, normalizer=Normalizer(0.0, 1.0))
    ds = next(d for d in (s.train, s.valid, s.test) if flac in d.files)
    with pytest.raises(DataError, match="damaged.flac"):
        list(ds.iter_batches(2))


def test_lazy_reading_gives_the_same_batches(tmp_path, monkeypatch):
    root = speech_folder(tmp_path / "s", 10, rate=8000, samples=5000)
    cached = open_splits(root)
    monkeypatch.setattr("vrnn_fast.data.batching.CACHE_BYTES", 0)
    lazy = open_splits(root)
    assert lazy.train._cache is None and cached.train._cache is not None
    assert lazy.normalizer.mean == pytest.approx(cached.normalizer.mean)
    assert lazy.normalizer.std == pytest.approx(cached.normalizer.std)
    for a, b in zip(cached.train.iter_batches(3, seed=2), lazy.train.iter_batches(3, seed=2), strict=True):
        torch.testing.assert_close(a.x, b.x)
        assert torch.equal(a.mask, b.mask)


def test_corrupt_handwriting_file_among_good_ones(tmp_path):
    for i in range(5):
        (tmp_path / f"l{i}.xml").write_text(iam_xml([[(0, 0), (i + 1, 2)]]))
    (tmp_path / "l9.xml").write_text("<StrokeSet><Stroke>")
    with pytest.raises(DataError, match="l9.xml"):
        open_splits(tmp_path)
    with pytest.warns(UserWarning, match="l9.xml"):
        s = open_splits(tmp_path, skip_bad=True)
    assert [f.name for f, _ in s.skipped] == ["l9.xml"]
    assert s.train.num_sequences + s.valid.num_sequences + s.test.num_sequences == 5


def test_other_sample_rate_is_resampled_in_splits(tmp_path):
    root = speech_folder(tmp_path / "s", 6, rate=8000, samples=4000)  # 0.5 s at 8 kHz -> 40 frames at 16 kHz
    s = open_splits(root)
    assert int(s.test.lengths[0]) == len(frames(read_audio(s.test.files[0], 16000), 200)) >= 40
    s8 = open_splits(root, audio=AudioConfig(sample_rate=8000, segment_seconds=None))
    assert int(s8.test.lengths[0]) == (4000 + 37 * int(s8.test.files[0].stem[3:])) // 200


# ------------------------------------------------------------------------------------------------ shipped and shared


def test_default_speech_is_shipped_and_opens():
    assert len(list(DEFAULT_SPEECH.glob("*.wav"))) == 30
    assert (DEFAULT_SPEECH / "LICENSE.txt").is_file()
    assert "Carnegie Mellon" in (DEFAULT_SPEECH / "README.md").read_text()
    s = open_splits()
    assert (len(s.train.files), len(s.valid.files), len(s.test.files)) == (26, 2, 2)
    b = next(s.train.iter_batches(16))
    assert b.x.shape == (16, 40, 200) and torch.isfinite(b.x).all()


@needs_shared
def test_shared_fsdd_uses_its_official_test_takes():
    s = open_splits(SHARED / "speech" / "fsdd")
    assert len(s.test.files) == 250 and all(int(f.stem.split("_")[2]) <= 4 for f in s.test.files)
    assert len(s.train.files) + len(s.valid.files) == 750
    b = next(s.valid.iter_batches(8))
    assert b.x.shape[2] == 200 and b.mask.any()


@needs_shared
def test_shared_handwriting_archives():
    unipen = open_splits(SHARED / "handwriting" / "unipen_bbn_text" / "unipen_train_r01_v07_bbd_text.tar.gz")
    assert unipen.train.num_sequences + unipen.valid.num_sequences + unipen.test.num_sequences == 799
    pen = np.concatenate([unipen.train._raw(i)[:, 0] for i in range(5)])
    assert set(np.unique(pen)) == {0.0, 1.0}
    omni = read_strokes(SHARED / "handwriting" / "omniglot" / "strokes_background_small1.zip")
    assert len(omni) == 2720 and all(s.shape[1] == 3 and s[-1, 0] == 1 for s in omni)
