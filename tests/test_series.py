"""Series data (vrnn_fast.data.series and the series paths of splits, batching, store and the CLI): every format
reads to the same frames, headers and lengths are honoured, the per-feature normaliser is fit on the training split
alone, bad files are refused naming file and line (or skipped on request), a tiny train/evaluate/sample run works
end to end, and a frame store gives the direct batches. The public loaders of the series-data extra are tested
where it is installed."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from vrnn_fast.cli import main
from vrnn_fast.data import DataError, Normalizer, fit_normalizer, open_splits, prepare, read_series, save_npz
from vrnn_fast.train import read_checkpoint

D = 5


def sequences(n=24, dim=D, seed=0):
    """n float32 sequences of 3-21 steps whose features have different scales and offsets."""
    rng = np.random.default_rng(seed)
    scale, offset = np.array([1, 10, 100, 0.1, 3])[:dim], np.array([0, 5, -30, 1, 7])[:dim]
    return [(rng.normal(size=(3 + (7 * i) % 19, dim)) * scale + offset).astype(np.float32) for i in range(n)]


def write_npy_folder(root, seqs):
    root.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(seqs):
        np.save(root / f"s{i:03d}.npy", a)
    return root


def write_csv(path, a, header=None):
    lines = [] if header is None else [header]
    lines += [",".join(repr(float(v)) for v in row) for row in a]
    path.write_text("\n".join(lines) + "\n")


def write_csv_folder(root, seqs, header=None):
    root.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(seqs):
        write_csv(root / f"s{i:03d}.csv", a, header)
    return root


def write_padded(path, seqs, pad=np.nan):
    """One (N, T, D) .npy padded with ``pad`` and its lengths in <name>.lengths.npy."""
    steps = max(len(a) for a in seqs)
    x = np.full((len(seqs), steps, seqs[0].shape[1]), pad, np.float32)
    for i, a in enumerate(seqs):
        x[i, : len(a)] = a
    np.save(path, x)
    np.save(path.with_name(path.stem + ".lengths.npy"), np.array([len(a) for a in seqs]))
    return path


def raw(ds):
    return [ds._raw(i) for i in range(len(ds.lengths))]


def same_batches(a, b):
    n = 0
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.mask, y.mask) and x.carry == y.carry and torch.equal(x.x, y.x)
        n += 1
    assert n > 0


# ------------------------------------------------------------------------------------------------ formats


def test_every_format_reads_the_same_frames(tmp_path):
    seqs = sequences()
    sources = {
        "npy folder": write_npy_folder(tmp_path / "npy", seqs),
        "csv folder": write_csv_folder(tmp_path / "csv", seqs),
        "csv with header": write_csv_folder(tmp_path / "csvh", seqs, header="a,b,c,d,e"),
        "npz": save_npz(tmp_path / "all.npz", seqs),
        "(N, T, D) npy": write_padded(tmp_path / "padded.npy", seqs),
    }
    reference = open_splits(sources["npy folder"], seed=3)
    assert reference.kind == "series" and reference.x_dim == D and reference.audio is None
    assert sum(len(s.lengths) for s in (reference.train, reference.valid, reference.test)) == len(seqs)
    for what, src in sources.items():
        s = open_splits(src, seed=3)  # auto-detected: series
        assert s.kind == "series" and s.x_dim == D, what
        assert s.normalizer == reference.normalizer, what
        for name in ("train", "valid", "test"):
            got, want = raw(getattr(s, name)), raw(getattr(reference, name))
            assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)), what
        same_batches(reference.train.iter_batches(4, seed=1), s.train.iter_batches(4, seed=1))
    assert [len(a) for a in read_series(sources["(N, T, D) npy"])] == [len(a) for a in seqs]
    assert open_splits(sources["npz"]).train.names[0].startswith("all.npz:")


def test_one_feature_and_integer_values(tmp_path):
    root = tmp_path / "uni"
    root.mkdir()
    for i in range(6):
        np.save(root / f"u{i}.npy", np.arange(4 + i, dtype=np.int64))  # (T,): one feature
    s = open_splits(root, normalize="none")
    assert s.x_dim == 1 and s.train._raw(0).dtype == np.float32 and s.train._raw(0).shape[1] == 1


def test_csv_header_blank_lines_crlf_and_bom(tmp_path):
    a = sequences(1)[0]
    plain, fancy = tmp_path / "plain.csv", tmp_path / "fancy.csv"
    write_csv(plain, a)
    rows = [",".join(repr(float(v)) for v in row) for row in a]
    fancy.write_bytes(("\ufefftime,x1,x2,x3,x4\r\n\r\n" + "\r\n".join(rows[:2]) + "\r\n\r\n" + "\r\n".join(rows[2:]))
                      .encode("utf-8"))
    assert np.array_equal(read_series(plain)[0], a) and np.array_equal(read_series(fancy)[0], a)
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("time,2.0,x\n1,2,3\n")
    with pytest.raises(DataError, match=r"mixed.csv line 1, column 1: 'time' is not a number \(a header row"):
        read_series(mixed)
    late = tmp_path / "late.csv"
    late.write_text("a,b\n\n1,2\n\n3,oops\n")  # the physical line, blank lines counted
    with pytest.raises(DataError, match=r"late.csv line 5, column 2: 'oops' is not a number"):
        read_series(late)


def test_lengths_array_masks_the_padding(tmp_path):
    seqs = sequences(12)
    src = write_padded(tmp_path / "x.npy", seqs)  # NaN beyond each length: never read
    s = open_splits(src, seed=0)
    lengths = sorted(np.concatenate([s.train.lengths, s.valid.lengths, s.test.lengths]).tolist())
    assert lengths == sorted(len(a) for a in seqs)
    batches = list(s.train.iter_batches(4, shuffle=False))
    assert sum(int(b.mask.sum()) for b in batches) == s.train.num_frames
    for b in batches:
        assert torch.isfinite(b.x).all() and (b.x[~b.mask] == 0).all()
        assert torch.equal(b.mask.sum(1), torch.tensor([int(m.sum()) for m in b.mask]))
    first = batches[0]
    assert first.mask[0].sum() == s.train.lengths[0] and not first.mask[0, s.train.lengths[0]:].any()
    src.with_name("x.lengths.npy").unlink()  # without lengths the NaN padding is data: refused, by index
    with pytest.raises(DataError, match=r"x.npy\[0\]: x\[0, 3, 0\] = nan is not finite"):
        open_splits(src)


@pytest.mark.parametrize("lengths, fragment", [
    (np.array([3, 2]), r"must hold 3 integers"),
    (np.array([3.0, 2.0, 1.0]), r"must hold 3 integers"),
    (np.array([3, 0, 1]), r"lengths\[1\] = 0 is outside \[1, 4\]"),
    (np.array([3, 5, 1]), r"lengths\[1\] = 5 is outside \[1, 4\]"),
])
def test_bad_lengths_are_refused_naming_the_lengths_file(tmp_path, lengths, fragment):
    np.save(tmp_path / "x.npy", np.zeros((3, 4, 2), np.float32))
    np.save(tmp_path / "x.lengths.npy", lengths)
    with pytest.raises(DataError, match=r"x.lengths.npy.*" + fragment):
        read_series(tmp_path / "x.npy")


# ------------------------------------------------------------------------------------------------ normaliser


def test_per_feature_normalizer_is_fit_on_the_training_split_only(tmp_path):
    seqs = [a + 1000.0 * i for i, a in enumerate(sequences(20))]  # each sequence its own offset
    s = open_splits(write_npy_folder(tmp_path / "s", seqs), seed=1)
    train = np.concatenate(raw(s.train)).astype(np.float64)
    everything = np.concatenate(seqs).astype(np.float64)
    norm = s.normalizer
    assert norm.features == D and norm.raw_columns == 0
    np.testing.assert_allclose(norm.mean, train.mean(0), rtol=1e-12)
    np.testing.assert_allclose(norm.std, train.std(0), rtol=1e-9)
    assert not np.allclose(norm.mean, everything.mean(0), rtol=1e-3)
    x = torch.cat([b.x[b.mask] for b in s.train.iter_batches(4, shuffle=False)]).double()
    torch.testing.assert_close(x.mean(0), torch.zeros(D, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(D, dtype=torch.float64), atol=1e-4, rtol=0)
    v = next(iter(s.valid.iter_batches(8, shuffle=False)))  # valid: the training statistics, not its own
    want = (torch.from_numpy(raw(s.valid)[0]) - torch.tensor(norm.mean, dtype=torch.float32)) / \
        torch.tensor(norm.std, dtype=torch.float32)
    torch.testing.assert_close(v.x[0, : len(want)], want)


def test_binary_data_is_left_raw_unless_zscore_is_asked(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [(rng.random((6 + i, 4)) < 0.3).astype(np.float32) for i in range(10)]
    src = save_npz(tmp_path / "rolls.npz", seqs)
    assert open_splits(src).normalizer == Normalizer(0.0, 1.0)
    assert open_splits(src, normalize="zscore").normalizer.features == 4
    continuous = save_npz(tmp_path / "c.npz", sequences(10))
    assert open_splits(continuous, normalize="none").normalizer == Normalizer(0.0, 1.0)
    with pytest.raises(ValueError, match="normalize must be one of"):
        open_splits(continuous, normalize="minmax")


def test_vector_normalizer_round_trips_and_checks_its_width():
    norm = Normalizer([1.0, -2.0, 3.0], np.array([2.0, 0.5, 4.0]))
    assert norm.mean == (1.0, -2.0, 3.0) and norm.features == 3
    assert Normalizer.from_dict(norm.to_dict()) == norm
    assert Normalizer.from_dict({"mean": 0.5, "std": 2.0}) == Normalizer(0.5, 2.0)  # old checkpoints
    a = np.random.default_rng(0).normal(size=(4, 7, 3))
    np.testing.assert_allclose(norm.normalize(a), (a - [1, -2, 3]) / [2, 0.5, 4])
    np.testing.assert_allclose(norm.denormalize(norm.normalize(a)), a)
    t = torch.from_numpy(a.astype(np.float32))
    assert norm.normalize(t).dtype == torch.float32
    torch.testing.assert_close(norm.denormalize(norm.normalize(t)), t)
    assert norm.normalize(a.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="3 features, the data has 2"):
        norm.normalize(a[..., :2])
    with pytest.raises(ValueError, match="two scalars or two vectors"):
        Normalizer([0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        Normalizer([0.0, 1.0], [1.0, 0.0])


def test_constant_feature_is_centred_with_a_warning():
    arrays = [np.column_stack([np.full(5, 3.0), np.arange(5.0)]) for _ in range(3)]
    with pytest.warns(UserWarning, match="feature column.*0 are constant"):
        norm = fit_normalizer("series", arrays, "zscore")
    assert norm.mean[0] == pytest.approx(3.0) and norm.std[0] == 1.0 and norm.std[1] == pytest.approx(np.sqrt(2))


# ------------------------------------------------------------------------------------------------ bad input


def _csv_text(path, text):
    path.write_text(text)


BAD_FILES = [  # (file name, writer, what the message must name)
    ("ragged.csv", lambda p: _csv_text(p, "1,2,3,4,5\n1,2,3,4,5\n1,2,3,4\n"), r"ragged.csv line 3 has 4 columns"),
    ("text.csv", lambda p: _csv_text(p, "a,b,c,d,e\n1,2,3,4,5\n1,2,x3,4,5\n"),
     r"text.csv line 3, column 3: 'x3' is not a number"),
    ("missing.csv", lambda p: _csv_text(p, "1,2,3,4,5\n1,,3,4,5\n"), r"missing.csv line 2, column 2: '' is not"),
    ("nan.csv", lambda p: _csv_text(p, "1,2,3,4,5\n1,2,3,nan,5\n"), r"nan.csv line 2, column 4: nan is not finite"),
    ("inf.csv", lambda p: _csv_text(p, "1,2,3,4,5\n-inf,2,3,4,5\n"), r"inf.csv line 2, column 1: -inf is not fin"),
    ("huge.csv", lambda p: _csv_text(p, "1,2,3,4,5\n1,2,3,4,1e39\n"), r"huge.csv line 2, column 5: 1e39 is beyond"),
    ("empty.csv", lambda p: _csv_text(p, "\n\n"), r"empty.csv is empty"),
    ("header.csv", lambda p: _csv_text(p, "a,b,c,d,e\n"), r"header.csv has a header row \(line 1\) and no data"),
    ("nan.npy", lambda p: np.save(p, np.array([[1, 2, 3, 4, 5], [1, 2, np.inf, 4, 5]], np.float32)),
     r"nan.npy: x\[1, 2\] = inf is not finite"),
    ("empty.npy", lambda p: np.save(p, np.zeros((0, D), np.float32)), r"empty.npy is an empty sequence"),
    ("words.npy", lambda p: np.save(p, np.array([["a"] * D] * 3)), r"words.npy holds <U1 values, not numbers"),
    ("cube.npy", lambda p: np.save(p, np.zeros((2, 2, 2, 2))), r"cube.npy has shape \(2, 2, 2, 2\)"),
    ("broken.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"), r"cannot read .*broken.npy as a .npy array"),
    ("wide.npy", lambda p: np.save(p, np.ones((4, D + 1), np.float32)),
     r"wide.npy has 6 features per step \(columns\), the other sequences 5"),
]


@pytest.mark.parametrize("name, write, fragment", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_refused_naming_it_or_skipped(tmp_path, name, write, fragment):
    root = write_npy_folder(tmp_path / "data", sequences(8))
    write(root / name)
    with pytest.raises(DataError, match=fragment + r".*skip_bad=True"):
        open_splits(root)
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) or sequence\(s\)(.|\n)*" + name):
        s = open_splits(root, skip_bad=True)
    assert [(f.name, bool(re.search(fragment, why))) for f, why in s.skipped] == [(name, True)]
    assert sum(len(d.lengths) for d in (s.train, s.valid, s.test)) == 8 and s.x_dim == D


def test_a_bad_sequence_of_an_npz_is_skipped_alone(tmp_path):
    seqs = sequences(8)
    seqs[5] = seqs[5].copy()
    seqs[5][2, 1] = np.nan
    src = save_npz(tmp_path / "x.npz", seqs)
    with pytest.raises(DataError, match=r"x.npz:000005: x\[2, 1\] = nan is not finite"):
        open_splits(src)
    with pytest.warns(UserWarning, match="x.npz:000005"):
        s = open_splits(src, skip_bad=True)
    assert sum(len(d.lengths) for d in (s.train, s.valid, s.test)) == 7
    (tmp_path / "none.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read .*none.npz as a .npz archive"):
        read_series(tmp_path / "none.npz")


def test_kind_detection_and_options(tmp_path):
    src = write_npy_folder(tmp_path / "s", sequences(6))
    (tmp_path / "s" / "s000.lengths.npy").write_bytes(b"")  # a companion name: not a sequence
    assert open_splits(src).kind == "series"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no series files .* in folder .*other"):
        open_splits(tmp_path / "other", kind="series")
    (tmp_path / "a.wav").write_bytes(b"")
    with pytest.raises(DataError, match="mixes audio and series files"):
        open_splits([tmp_path / "s" / "s001.npy", tmp_path / "a.wav"])
    with pytest.raises(DataError, match="not a series file"):
        open_splits([tmp_path / "s" / "s001.npy", tmp_path / "a.wav"], kind="series")
    with pytest.raises(DataError, match="at least 3"):
        open_splits(tmp_path / "s" / "s001.npy")  # one file of one sequence
    with pytest.raises(ValueError, match="segment_steps cuts series data"):
        open_splits(None, segment_steps=10)
    with pytest.raises(ValueError, match="segment_steps must be a positive integer"):
        open_splits(src, segment_steps=0)
    with pytest.raises(ValueError, match="holds a mean and std for 2 features, but the series data has 5"):
        open_splits(src, normalizer=Normalizer([0.0, 0.0], [1.0, 1.0]))


def test_train_and_test_folders_give_the_split(tmp_path):
    """Series under train/ and test/ folders keep that split, about 5% of all sequences (seeded) held out of train
    for valid; a valid/ folder is the valid split; the normaliser is fit on the train split alone."""
    train, test = sequences(30, seed=1), sequences(10, seed=2)
    for part in ("train", "test", "valid"):
        (tmp_path / "d" / part).mkdir(parents=True)
    save_npz(tmp_path / "d" / "train" / "a.npz", train)
    save_npz(tmp_path / "d" / "test" / "b.npz", [a + 1000 for a in test])
    s = open_splits(tmp_path / "d")
    assert s.test.files == [tmp_path / "d" / "test" / "b.npz"] * 10
    assert s.train.num_sequences + s.valid.num_sequences == 30 and s.valid.num_sequences == 2  # 5% of 40
    assert set(s.train.files) == set(s.valid.files) == {tmp_path / "d" / "train" / "a.npz"}
    assert set(s.train.names).isdisjoint(s.valid.names)
    assert open_splits(tmp_path / "d", seed=3).valid.names != s.valid.names  # the seed picks the valid ones
    assert max(s.normalizer.mean) < 500  # the test sequences (offset by 1000) are not in the fit
    save_npz(tmp_path / "d" / "valid" / "c.npz", sequences(4, seed=3))
    s = open_splits(tmp_path / "d")
    assert (s.train.num_sequences, s.valid.num_sequences, s.test.num_sequences) == (30, 4, 10)


def test_segments_cut_series_into_masked_pieces(tmp_path):
    s = open_splits(save_npz(tmp_path / "x.npz", sequences(12)), segment_steps=4)
    ds = s.train
    assert ds.segment == 4 and ds.num_sequences == sum(-(-int(n) // 4) for n in ds.lengths)
    batches = list(ds.iter_batches(3, seed=2))
    assert all(b.x.shape[1] <= 4 for b in batches) and sum(b.x.shape[0] for b in batches) == ds.num_sequences
    assert sum(int(b.mask.sum()) for b in batches) == ds.num_frames
    streams = list(ds.iter_stream_batches(3, seed=2))
    assert all(b.x.shape == (3, 4, D) for b in streams) and streams[1].carry
    assert sum(int(b.mask.sum()) for b in streams) == ds.num_frames


# ------------------------------------------------------------------------------------------------ store and CLI


def test_series_store_gives_the_direct_batches(tmp_path):
    src = save_npz(tmp_path / "x.npz", sequences(16))
    store = prepare(src, tmp_path / "store", seed=2, progress=False)
    assert store.kind == "series" and store.frames["train"].dtype == np.float32 and store.manifest["dim"] == D
    direct, stored = open_splits(src, seed=2), open_splits(tmp_path / "store")
    assert stored.normalizer == direct.normalizer and stored.normalizer.features == D and stored.x_dim == D
    for name in ("train", "valid", "test"):
        d, s = getattr(direct, name), getattr(stored, name)
        assert s.names == d.names and np.array_equal(s.lengths, d.lengths)
    same_batches(direct.train.iter_batches(4, seed=5), stored.train.iter_batches(4, seed=5))
    same_batches(direct.test.iter_batches(3, shuffle=False), stored.test.iter_batches(3, shuffle=False))
    same_batches(direct.train.iter_stream_batches(3, seed=1, steps=5), stored.train.iter_stream_batches(3, seed=1,
                                                                                                         steps=5))
    seg_direct, seg_stored = open_splits(src, seed=2, segment_steps=4), open_splits(tmp_path / "store", segment_steps=4)
    same_batches(seg_direct.train.iter_batches(4, seed=1), seg_stored.train.iter_batches(4, seed=1))
    assert open_splits(tmp_path / "store", normalize="none").normalizer == Normalizer(0.0, 1.0)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


FAST = ["--steps", "3", "--eval-every", "2", "--checkpoint-every", "2", "--batch-size", "4", "--device", "cpu"]


def test_cli_train_evaluate_sample_series(tmp_path, capsys):
    src, out = save_npz(tmp_path / "x.npz", sequences(20)), tmp_path / "run"
    code, _, err = run(capsys, "train", "--data", src, "--out", out, *FAST)
    assert code == 0, err
    ckpt = read_checkpoint(out / "checkpoint.pt")
    config = ckpt["model_config"]
    assert config.x_dim == D and config.output == "gauss" and config == config.preset("tiny-series", x_dim=D)
    assert ckpt["data"]["kind"] == "series" and ckpt["data"]["segment_steps"] is None
    assert ckpt["normalizer"].features == D
    code, text, err = run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--n-samples", "2")
    assert code == 0 and "log-likelihood (IS, 2)" in text, err
    code, text, _ = run(capsys, "sample", "--checkpoint", out / "checkpoint.pt", "--n", "2", "--steps", "9",
                        "--out", tmp_path / "samples")
    files = sorted((tmp_path / "samples").glob("*.npy"))
    assert code == 0 and "wrote 2 npy files" in text and len(files) == 2
    x = np.load(files[0])
    assert x.shape == (9, D) and x.dtype == np.float32 and np.isfinite(x).all()
    assert x[:, 2].std() > 10 * x[:, 0].std()  # de-normalised: feature 2 is on a 100x scale
    code, _, err = run(capsys, "analyze", "--checkpoint", out / "checkpoint.pt", "--input", src)
    assert code == 2 and "is a series model" in err
    code, _, err = run(capsys, "train", "--resume", "--out", out, "--steps", "4")
    assert code == 0, err
    assert read_checkpoint(out / "checkpoint.pt")["progress"]["step"] == 4


def test_cli_binary_series_with_segments_tbptt_and_a_store(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rolls = [(rng.random((8 + i, 6)) < 0.2).astype(np.float32) for i in range(16)]
    src, store = write_padded(tmp_path / "rolls.npy", rolls, pad=0), tmp_path / "store"
    code, text, err = run(capsys, "prepare", "--data", src, "--out", store, "--kind", "series")
    assert code == 0 and "series" in text, err
    code, _, err = run(capsys, "train", "--data", store, "--out", tmp_path / "run", "--segment-steps", "5",
                       "--tbptt", "--output", "gmm", *FAST)
    assert code == 0, err
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["normalizer"] == Normalizer(0.0, 1.0)  # binary data: left raw
    assert ckpt["model_config"].output == "gmm" and ckpt["model_config"].x_dim == 6
    assert ckpt["data"]["segment_steps"] == 5
    code, text, err = run(capsys, "evaluate", "--checkpoint", tmp_path / "run" / "checkpoint.pt", "--n-samples",
                          "0", "--whole-utterances")
    assert code == 0, err
    code, _, err = run(capsys, "train", "--data", src, "--out", tmp_path / "bad", "--segment-steps", "5",
                       "--kind", "speech", *FAST)
    assert code == 2 and "not an audio file" in err
    code, _, err = run(capsys, "train", "--resume", "--out", tmp_path / "run", "--output", "gauss")
    assert code == 2 and "--output gauss differs" in err


# ------------------------------------------------------------------------------------------------ public data


def test_aeon_classification_sets():
    pytest.importorskip("aeon")
    from vrnn_fast.data.public import load_aeon_classification

    vowels = load_aeon_classification("JapaneseVowels")
    assert len(vowels.train) == 270 and len(vowels.test) == 370 and len(vowels.test_labels) == 370
    assert {a.shape[1] for a in vowels.train + vowels.test} == {12}
    lengths = [len(a) for a in vowels.train + vowels.test]
    assert min(lengths) == 7 and max(lengths) == 29
    assert all(np.isfinite(a).all() for a in vowels.train) and set(vowels.train_labels) == set("123456789")
    with pytest.raises(ValueError, match="bundles no classification set 'Nope'.*JapaneseVowels"):
        load_aeon_classification("Nope")


def test_aeon_anomaly_sets():
    pytest.importorskip("aeon")
    from vrnn_fast.data.public import load_aeon_anomaly

    kdd = load_aeon_anomaly("KDD-TSAD_135")
    assert kdd.train.shape == (1200, 1) and kdd.series.shape == (7501, 1) and kdd.labels.dtype == bool
    assert np.array_equal(np.flatnonzero(kdd.labels), np.arange(4187, 4199))  # one anomaly of 12 steps
    try:
        daphnet = load_aeon_anomaly("Daphnet_S06R02E0")
    except ValueError as e:  # aeon >= 1.7 no longer bundles it
        assert "does not bundle" in str(e)
    else:
        assert daphnet.train is None and daphnet.series.shape == (7040, 9) and not daphnet.labels.any()


def test_bach_chorales_as_piano_rolls(tmp_path):
    pytest.importorskip("music21")
    from vrnn_fast.data.public import load_bach_chorales

    quarters = load_bach_chorales(limit=2)
    eighths = load_bach_chorales(limit=2, step=0.5)
    assert list(quarters) == list(eighths) == ["bwv269", "bwv347"]
    for name, roll in quarters.items():
        assert roll.shape[1] == 88 and roll.dtype == np.float32 and set(np.unique(roll)) <= {0.0, 1.0}
        assert roll.sum(1).max() <= 4  # four voices
        assert len(eighths[name]) == 2 * len(roll) and np.array_equal(eighths[name][::2], roll)  # one grid in another
    first_chord = [43, 59, 62, 67]  # bwv269 opens on G2 B3 D4 G4 (bass, tenor, alto, soprano), a quarter each
    assert (np.flatnonzero(quarters["bwv269"][0]) + 21).tolist() == first_chord
    s = open_splits(save_npz(tmp_path / "rolls.npz", list(load_bach_chorales(limit=4).values())))
    assert s.x_dim == 88 and s.normalizer == Normalizer(0.0, 1.0)


def test_cli_binary_series_default_to_bernoulli(tmp_path, capsys):
    rng = np.random.default_rng(3)
    bits = [(rng.random((int(n), 5)) < 0.3).astype(np.float32) for n in rng.integers(6, 12, 20)]
    src = save_npz(tmp_path / "bits.npz", bits)
    code, _, err = run(capsys, "train", "--data", src, "--out", tmp_path / "run", *FAST)
    assert code == 0, err
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["model_config"].output == "bernoulli" and ckpt["normalizer"] == Normalizer(0.0, 1.0)
    code, _, err = run(capsys, "train", "--data", src, "--out", tmp_path / "gauss", "--output", "gauss", *FAST)
    assert code == 0 and read_checkpoint(tmp_path / "gauss" / "checkpoint.pt")["model_config"].output == "gauss"


def test_cli_raw_continuous_series_keep_the_gaussian_output(tmp_path, capsys):
    """Left raw (--normalize none, or a store prepared so) is not binary: the default output stays Gaussian."""
    src = save_npz(tmp_path / "x.npz", sequences(20))
    prepare(src, tmp_path / "store", normalize="none", progress=False)
    for name, extra in (("direct", ["--data", src, "--normalize", "none"]), ("store", ["--data", tmp_path / "store"])):
        code, _, err = run(capsys, "train", *extra, "--out", tmp_path / name, *FAST)
        assert code == 0, err
        assert read_checkpoint(tmp_path / name / "checkpoint.pt")["model_config"].output == "gauss"
