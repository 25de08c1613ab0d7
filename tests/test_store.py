"""Tests of vrnn_fast.data.store: source -> store -> batches equals the direct path, damaged stores are refused,
an interrupted prepare leaves no store, a finished one is kept, and the CLI trains and resumes from a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from vrnn_fast.cli import main
from vrnn_fast.data import AudioConfig, DataError, Normalizer, open_splits
from vrnn_fast.data.batching import AudioDataset
from vrnn_fast.data.store import decode_audio, encode_audio, open_store, prepare
from vrnn_fast.train import read_checkpoint

QUANT = 1 / 32768  # the stated int16 round-trip error, of full scale, before normalisation


def store_atol(normalizer) -> float:
    """Stored vs direct normalised frames: the int16 step over std, plus the float32 rounding of the two
    normalised values (an ulp is under 5e-7 below |x| = 8)."""
    return QUANT / normalizer.std + 1e-6


def speech(root, n=12, subtype="FLOAT", seed=0):
    """n noise files of 0.4-0.8 s at 16 kHz (frame counts differ; tails shorter than a segment)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        wave = (0.3 * rng.standard_normal(6400 + 557 * i)).clip(-1, 1).astype(np.float32)
        sf.write(str(root / f"u{i:02d}.wav"), wave, 16000, subtype=subtype)
    return root


def ink(root, n=6):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        pts = np.cumsum(rng.normal(size=(8 + 3 * i, 2)) * 5, axis=0)
        stroke = "".join(f'<Point x="{x:.2f}" y="{y:.2f}" time="0"/>' for x, y in pts)
        (root / f"l{i}.xml").write_text(f"<StrokeSet><Stroke>{stroke}</Stroke><Stroke>{stroke}</Stroke></StrokeSet>")
    return root


def same_batches(a, b, atol=0.0):
    """Both iterables give the same number of batches with equal masks, carries and frames (within atol)."""
    n = 0
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.mask, y.mask) and x.carry == y.carry
        torch.testing.assert_close(y.x, x.x, atol=atol, rtol=0)
        n += 1
    assert n > 0


def test_int16_round_trip_error_is_within_one_step():
    x = np.random.default_rng(0).uniform(-1, 1, 100_000).astype(np.float32)
    x[:3] = [1.0, -1.0, 0.0]
    q = encode_audio(x)
    assert q.dtype == np.int16 and np.abs(decode_audio(q) - x).max() <= QUANT
    pcm = np.arange(-32768, 32768, dtype=np.int16)  # 16-bit PCM as soundfile reads it: exact
    assert np.array_equal(encode_audio(pcm / np.float32(32768)), pcm)


@pytest.mark.parametrize("lazy", [False, True])
def test_speech_store_gives_the_direct_batches(tmp_path, monkeypatch, lazy):
    if lazy:  # a corpus over the cache limit: read file by file, at prepare as in the direct path
        monkeypatch.setattr("vrnn_fast.data.batching.CACHE_BYTES", 0)
    src = speech(tmp_path / "src")
    store = prepare(src, tmp_path / "store", seed=3, progress=False)
    assert store.frames["train"].dtype == np.int16 and store.seed == 3
    direct, stored = open_splits(src, seed=3), open_splits(tmp_path / "store")
    assert stored.normalizer == direct.normalizer and stored.kind == "speech" and stored.x_dim == 200
    atol = store_atol(direct.normalizer)
    for name in ("train", "valid", "test"):
        d, s = getattr(direct, name), getattr(stored, name)
        assert s.files == d.files and np.array_equal(s.lengths, d.lengths)
    d, s = direct.train, stored.train
    same_batches(d.iter_batches(4, seed=5), s.iter_batches(4, seed=5), atol)
    same_batches(d.iter_batches(3, shuffle=False), s.iter_batches(3, shuffle=False), atol)
    same_batches(d.iter_stream_batches(3, seed=2, epoch=1), s.iter_stream_batches(3, seed=2, epoch=1), atol)
    whole = AudioConfig(segment_seconds=None)  # the segment length is chosen when the store is opened
    same_batches(open_splits(src, audio=whole, seed=3).train.iter_batches(4, seed=1),
                 open_splits(tmp_path / "store", audio=whole).train.iter_batches(4, seed=1), atol)


def test_streaming_a_split_through_keeps_none_of_it(tmp_path):
    """raw_sequences(keep=False), as prepare reads a corpus, leaves an empty cache empty; a normal read fills it."""
    opened = open_splits(speech(tmp_path / "src"), seed=3).valid  # decoded at open: a small corpus
    valid = AudioDataset(opened.files, opened.lengths, opened.audio)  # the same files, nothing read yet
    assert valid.in_memory and valid._cache == {}
    streamed = list(valid.raw_sequences(keep=False))
    assert valid._cache == {} and len(streamed) == len(valid.lengths)
    kept = list(valid.raw_sequences())
    assert len(valid._cache) == len(kept) and all(np.array_equal(a, b) for a, b in zip(streamed, kept, strict=True))


def test_pcm16_speech_is_stored_exactly_and_a_given_normalizer_is_kept(tmp_path):
    src = speech(tmp_path / "src", subtype="PCM_16")
    given = Normalizer(0.01, 0.5)
    prepare(src, tmp_path / "store", normalizer=given, progress=False)
    stored = open_splits(tmp_path / "store")
    assert stored.normalizer == given
    same_batches(open_splits(src, normalizer=given).valid.iter_batches(2, seed=1), stored.valid.iter_batches(2, seed=1))
    other = Normalizer(0.0, 2.0)
    assert open_splits(tmp_path / "store", normalizer=other).test.normalizer == other


def test_handwriting_store_is_exact(tmp_path):
    src = ink(tmp_path / "ink")
    prepare(src, tmp_path / "store", progress=False)
    direct, stored = open_splits(src), open_splits(tmp_path / "store", kind="handwriting")
    assert stored.kind == "handwriting" and stored.audio is None and stored.normalizer == direct.normalizer
    assert stored.train.names == direct.train.names and stored.train.files == direct.train.files
    same_batches(direct.train.iter_batches(2, seed=4), stored.train.iter_batches(2, seed=4))
    same_batches(direct.train.iter_stream_batches(2, steps=5), stored.train.iter_stream_batches(2, steps=5))


def test_store_options_must_match(tmp_path):
    prepare(speech(tmp_path / "src", n=6), tmp_path / "store", progress=False)
    with pytest.raises(DataError, match="8000 Hz"):
        open_splits(tmp_path / "store", audio=AudioConfig(sample_rate=8000))
    with pytest.raises(DataError, match="seed 0, not 4"):
        open_splits(tmp_path / "store", seed=4)
    with pytest.raises(DataError, match="speech data, not handwriting"):
        open_splits(tmp_path / "store", kind="handwriting")


def test_damaged_store_is_refused(tmp_path):
    prepare(speech(tmp_path / "src", n=6), tmp_path / "store", progress=False)
    path = tmp_path / "store"
    frames = path / "train.frames.npy"
    good = frames.read_bytes()
    frames.write_bytes(good[:-200])
    with pytest.raises(DataError, match=r"train.frames.npy is \d+ bytes, the manifest says \d+ \(truncated"):
        open_splits(path)
    edited = bytearray(good)
    edited[len(good) // 2] ^= 1
    frames.write_bytes(bytes(edited))
    with pytest.raises(DataError, match="train.frames.npy does not match its sha256"):
        open_store(path)
    open_store(path, verify=False)  # sizes only: a huge store's quick open
    frames.write_bytes(good)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(DataError, match="format version 99; this vrnn-fast reads version 1"):
        open_splits(path)
    (path / "manifest.json").write_text("{")
    with pytest.raises(DataError, match="damaged manifest.json"):
        open_splits(path)
    (path / "manifest.json").unlink()
    with pytest.raises(DataError, match="not a frame store"):
        open_store(path)


def test_interrupted_prepare_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    src = speech(tmp_path / "src", n=6)
    calls = []

    def failing(frames):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of the writer
        return encode_audio(frames)

    monkeypatch.setattr("vrnn_fast.data.store.encode_audio", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "out" / "store", progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # neither the store nor its temporary folder
    left = tmp_path / "out" / f"store.tmp-{os.getpid()}"  # what a killed prepare leaves: not a store
    left.mkdir()
    (left / "train.frames.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(DataError, match="arrays of a frame store but no manifest.json"):
        open_splits(left)
    with pytest.raises(DataError, match="not a frame store"):
        open_store(left)


def test_prepare_after_a_killed_one_removes_its_leftovers(tmp_path):
    """A prepare SIGKILLed while writing leaves <out>.tmp-<pid> (not a store); the next prepare of <out> removes it
    (and an <out>.old-<pid> of a killed --force rewrite), saying so; a live process's folder stops it."""
    src, out = speech(tmp_path / "src", n=6), tmp_path / "store"
    killed = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        import vrnn_fast.data.store as store
        encode = store.encode_audio
        def slow(frames):
            print("writing", flush=True)
            time.sleep(60)
        store.encode_audio = slow
        store.prepare({str(src)!r}, {str(out)!r}, progress=False)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == "writing"
    finally:
        killed.kill()
        killed.wait()
    left = tmp_path / f"store.tmp-{killed.pid}"
    assert (left / "train.frames.npy").is_file() and not out.exists()
    with pytest.raises(DataError, match="not a frame store"):
        open_store(left)
    (tmp_path / f"store.old-{killed.pid}").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(src, out, progress=False)
    said = sorted(str(w.message) for w in caught)
    assert len(said) == 2 and all(f"left by an interrupted prepare (process {killed.pid} is gone)" in m for m in said)
    assert f"store.old-{killed.pid}," in said[0] and f"store.tmp-{killed.pid}," in said[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "store"]
    busy = tmp_path / f"store.tmp-{os.getppid()}"  # a running process: another prepare of the same --out?
    busy.mkdir()
    with pytest.raises(DataError, match=rf"store.tmp-{os.getppid()} belongs to the running process"):
        prepare(src, out, force=True, progress=False)
    assert busy.is_dir() and open_store(out).seed == 0


def test_prepare_again_keeps_a_finished_store(tmp_path):
    src = speech(tmp_path / "src", n=6)
    store = prepare(src, tmp_path / "store", progress=False)
    stamp = (tmp_path / "store" / "manifest.json").stat().st_mtime_ns
    with pytest.warns(UserWarning, match="complete already"):
        again = prepare(src, tmp_path / "store", progress=False)
    assert again.manifest == store.manifest and (tmp_path / "store" / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="options.*--force"):
        prepare(src, tmp_path / "store", seed=1, progress=False)
    assert prepare(src, tmp_path / "store", seed=1, force=True, progress=False).seed == 1
    (tmp_path / "store" / "test.index.npy").write_bytes(b"")
    with pytest.raises(DataError, match="test.index.npy is 0 bytes.*--force"):
        prepare(src, tmp_path / "store", seed=1, progress=False)
    assert open_store(prepare(src, tmp_path / "store", seed=1, force=True, progress=False).path).seed == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "store"]
    with pytest.raises(DataError, match="not a frame store"):
        prepare(src, src, progress=False)


def test_cli_prepare_train_resume_and_evaluate_from_a_store(tmp_path, capsys):
    src = speech(tmp_path / "src", n=8, subtype="PCM_16")
    store = tmp_path / "store"
    assert main(["prepare", "--data", str(src), "--out", str(store), "--seed", "2"]) == 0
    assert "frame store" in capsys.readouterr().out
    assert main(["prepare", "--data", str(src), "--out", str(store), "--seed", "2"]) == 0
    assert "complete already" in capsys.readouterr().err
    fast = ["--batch-size", "4", "--device", "cpu", "--eval-every", "100", "--checkpoint-every", "100"]
    assert main(["train", "--data", str(store), "--out", str(tmp_path / "a"), "--steps", "4", *fast]) == 0
    assert main(["train", "--data", str(store), "--out", str(tmp_path / "b"), "--steps", "2", *fast]) == 0
    assert main(["train", "--resume", "--out", str(tmp_path / "b"), "--steps", "4"]) == 0
    a, b = read_checkpoint(tmp_path / "a" / "checkpoint.pt"), read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["data"]["source"] == str(store.resolve()) and a["data"]["split_seed"] == 2
    assert b["progress"]["step"] == 4
    for k, v in a["model"].items():  # resumed from the store: the same weights as one run
        assert torch.equal(v, b["model"][k]), k
    assert main(["evaluate", "--checkpoint", str(tmp_path / "a" / "checkpoint.pt"), "--n-samples", "0"]) == 0
    assert "ELBO" in capsys.readouterr().out
    assert main(["train", "--data", str(store), "--out", str(tmp_path / "c"), "--sample-rate", "8000"]) == 2
    assert "error: frame store" in capsys.readouterr().err
