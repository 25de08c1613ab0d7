"""CLI tests: a smoke run of every subcommand (speech and handwriting, tiny configs), --help, resume, and bad
input turning into `error: ...` with exit code 2 (no traceback)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from vrnn_fast.cli import main
from vrnn_fast.train import read_checkpoint

RATE = 16000


def write_waves(folder, n=8, seconds=0.6, rate=RATE, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(n):
        wave = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.normal(size=t.shape)
        sf.write(str(folder / f"utt{i:02d}.wav"), wave.astype(np.float32), rate, subtype="PCM_16")
    return folder


def write_ink(folder, n=4, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        strokes = []
        for _ in range(3):
            pts = np.cumsum(rng.normal(size=(12, 2)) * 5, axis=0) + 500
            strokes.append("<Stroke>" + "".join(f'<Point x="{x:.1f}" y="{y:.1f}" time="0"/>' for x, y in pts)
                           + "</Stroke>")
        xml = f"<WhiteboardCaptureSession><StrokeSet>{''.join(strokes)}</StrokeSet></WhiteboardCaptureSession>"
        (folder / f"ink{i}.xml").write_text(xml)
    return folder


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


TRAIN_FAST = ["--steps", "3", "--eval-every", "2", "--checkpoint-every", "2", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    """One tiny speech training run shared by the read-only tests (train, then its checkpoint)."""
    root = tmp_path_factory.mktemp("speech")
    data, out = write_waves(root / "wavs"), root / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TRAIN_FAST]) == 0
    return data, out


def test_train_writes_checkpoints_and_metrics(speech_run):
    data, out = speech_run
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["progress"]["step"] == 3 and ckpt["model_config"].x_dim == 200
    assert ckpt["data"]["kind"] == "speech" and ckpt["data"]["audio"]["sample_rate"] == RATE
    assert ckpt["train_config"].batch_size == 4
    assert (out / "best.pt").is_file()
    kinds = [json.loads(s)["kind"] for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("valid") == 2  # after update 2 (--eval-every 2) and after the last, 3


def test_evaluate_prints_table_and_writes_json(speech_run, capsys, tmp_path):
    data, out = speech_run
    code, text, _ = run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--n-samples", "3",
                        "--json", tmp_path / "r.json")
    assert code == 0 and "ELBO" in text and "log-likelihood (IS, 3)" in text
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["split"] == "test" and result["sequences"] >= 1 and result["n_samples"] == 3
    assert np.isfinite(result["log_likelihood_per_sequence"]) and np.isfinite(result["elbo_per_frame"])
    # the same numbers again (seeded noise), and a valid-split run
    code, text2, _ = run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--n-samples", "3")
    assert text2.splitlines()[:6] == text.splitlines()[:6]
    assert run(capsys, "evaluate", "--checkpoint", out / "best.pt", "--split", "valid", "--n-samples", "0")[0] == 0
    code, _, _ = run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--n-samples", "0",
                     "--whole-utterances", "--json", tmp_path / "w.json")
    whole = json.loads((tmp_path / "w.json").read_text())
    assert code == 0 and whole["frames"] == result["frames"] and whole["sequences"] < result["sequences"]


def test_evaluate_per_frame_rows_sum_to_the_reported_elbo(speech_run, capsys, tmp_path):
    """Whole utterances of different lengths in batches of 3: padded (masked) frames are left out, every other
    frame is one row, and the rows add up to the ELBO, KL and NLL evaluate reports."""
    _, out = speech_run
    ragged = tmp_path / "ragged"
    ragged.mkdir()
    t = np.arange(int(0.9 * RATE)) / RATE
    for i in range(8):
        wave = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t[: int((0.3 + 0.08 * i) * RATE)])
        sf.write(str(ragged / f"utt{i:02d}.wav"), wave.astype(np.float32), RATE, subtype="PCM_16")
    code, text, _ = run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--data", ragged, "--split",
                        "train", "--whole-utterances", "--batch-size", "3", "--n-samples", "2", "--json",
                        tmp_path / "r.json", "--per-frame", tmp_path / "scores" / "frames.csv")
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    with open(tmp_path / "scores" / "frames.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["sequence", "step", "kl", "nll"] and len(rows) - 1 == result["frames"]
    assert f"frames.csv ({result['frames']} frames)" in text
    seqs: dict[int, list] = {}
    for s, step, kl, nll in rows[1:]:
        seqs.setdefault(int(s), []).append((int(step), float(kl), float(nll)))
    assert sorted(seqs) == list(range(result["sequences"]))
    lengths = [len(v) for v in seqs.values()]
    assert len(set(lengths)) == len(lengths) > 3  # ragged: batches of 3 were padded
    for frames in seqs.values():
        assert [step for step, _, _ in frames] == list(range(len(frames)))
    elbos = [-sum(kl + nll for _, kl, nll in frames) for frames in seqs.values()]
    assert np.mean(elbos) == pytest.approx(result["elbo_per_sequence"], rel=1e-6)  # evaluate sums float32 ELBOs
    total_kl = sum(kl for frames in seqs.values() for _, kl, _ in frames)
    assert total_kl / result["frames"] == pytest.approx(result["kl_per_frame"], rel=1e-12) and total_kl > 0
    total_nll = sum(nll for frames in seqs.values() for _, _, nll in frames)
    assert total_nll / result["frames"] == pytest.approx(result["nll_per_frame"], rel=1e-12)


def test_evaluate_per_frame_is_written_atomically(speech_run, capsys, tmp_path, monkeypatch):
    """An evaluation that fails halfway leaves the previous file as it was and no temporary file."""
    import vrnn_fast.train

    _, out = speech_run
    target = tmp_path / "frames.csv"
    target.write_text("previous\n")

    def fail_halfway(*args, per_frame, **kwargs):
        per_frame(torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64),
                  torch.ones(2, 3, dtype=torch.bool))
        raise OSError("disk went away")

    monkeypatch.setattr(vrnn_fast.train, "evaluate_model", fail_halfway)
    code, _, err = run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--per-frame", target)
    _assert_clean_error(code, err, "disk went away")
    assert target.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["frames.csv"]


def test_sample_writes_16khz_int16_wavs(speech_run, capsys, tmp_path):
    _, out = speech_run
    code, text, _ = run(capsys, "sample", "--checkpoint", out / "checkpoint.pt", "--n", "3", "--steps", "5",
                        "--out", tmp_path / "s", "--seed", "1")
    assert code == 0
    files = sorted((tmp_path / "s").glob("*.wav"))
    assert len(files) == 3
    info = sf.info(str(files[0]))
    assert (info.samplerate, info.frames, info.subtype, info.channels) == (RATE, 5 * 200, "PCM_16", 1)
    assert run(capsys, "sample", "--checkpoint", out / "checkpoint.pt", "--n", "2", "--steps", "4", "--mean",
               "--out", tmp_path / "m")[0] == 0
    first = sf.read(str(tmp_path / "m" / "sample_000.wav"))[0]
    assert np.abs(first).max() > 0


def test_analyze_writes_png(speech_run, capsys, tmp_path):
    data, out = speech_run
    png = tmp_path / "fig" / "a.png"
    code, _, _ = run(capsys, "analyze", "--checkpoint", out / "checkpoint.pt", "--input", data / "utt00.wav",
                     "--out", png)
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_and_rejects_another_config(speech_run, capsys, tmp_path):
    data, out = speech_run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes())
    code, _, err = run(capsys, "train", "--resume", "--out", run_dir, "--steps", "5")
    assert code == 0, err
    assert read_checkpoint(run_dir / "checkpoint.pt")["progress"]["step"] == 5
    log = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "valid"] == [4, 5]  # continued from 3: at 4 and the last
    code, _, err = run(capsys, "train", "--resume", run_dir / "checkpoint.pt", "--preset", "timit-vrnn-gauss",
                       "--out", run_dir)
    assert code == 2 and err.startswith("error:") and "checkpoint.pt" in err and "h_dim" in err


def test_split_seed_fixes_the_split_across_seeds(speech_run, capsys, tmp_path):
    data, _ = speech_run
    runs = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}"
        code, _, err = run(capsys, "train", "--data", data, "--out", out, "--seed", seed, "--split-seed", "7",
                           *TRAIN_FAST)
        assert code == 0, err
        runs.append(read_checkpoint(out / "checkpoint.pt"))
    assert [r["data"]["split_seed"] for r in runs] == [7, 7]
    assert [r["train_config"].seed for r in runs] == [1, 2]
    assert not torch.equal(runs[0]["model"]["rnn.weight_hh"], runs[1]["model"]["rnn.weight_hh"])
    code, _, err = run(capsys, "train", "--resume", "--out", tmp_path / "seed1", "--split-seed", "8", "--steps", "5")
    assert code == 2 and "--split-seed 8" in err and "split seed 7" in err


def test_default_data_is_the_shipped_speech_set(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "train", "--steps", "2", "--eval-every", "100", "--device", "cpu")
    assert code == 0, err
    ckpt = read_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")
    assert ckpt["data"]["source"] is None and ckpt["model_config"] == ckpt["model_config"].preset("tiny")
    code, text, _ = run(capsys, "evaluate", "--checkpoint", "runs/tiny/checkpoint.pt", "--n-samples", "2",
                        "--max-batches", "1")
    assert code == 0 and "shipped speech set" in text


def test_handwriting_train_sample_and_analyze_refusal(tmp_path, capsys):
    ink, out = write_ink(tmp_path / "ink"), tmp_path / "hw"
    code, _, err = run(capsys, "train", "--data", ink, "--out", out, *TRAIN_FAST)
    assert code == 0, err
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["model_config"].output == "bigmm" and ckpt["data"]["kind"] == "handwriting"
    assert ckpt["normalizer"].raw_columns == 1
    code, _, _ = run(capsys, "sample", "--checkpoint", out / "checkpoint.pt", "--n", "2", "--steps", "30",
                     "--out", tmp_path / "png")
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert code == 0 and len(pngs) == 2 and pngs[0].read_bytes()[:4] == b"\x89PNG"
    assert run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--n-samples", "2")[0] == 0
    code, _, err = run(capsys, "analyze", "--checkpoint", out / "checkpoint.pt", "--input", ink / "ink0.xml")
    assert code == 2 and "handwriting model" in err


def test_bernoulli_model_sample_and_analyze_refusal(tmp_path, capsys):
    """A Bernoulli-output checkpoint (the Trainer on binary frames): sample writes one (steps, D) .npy of bits per
    sequence (probabilities with --mean); analyze refuses it."""
    from test_train import ArrayDataset, small_config

    from vrnn_fast.data import Normalizer
    from vrnn_fast.train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    data = ArrayDataset([(rng.random((int(n), 5)) < 0.3).astype(np.float32) for n in rng.integers(2, 7, size=8)])
    config = TrainConfig(steps=3, out_dir=str(tmp_path / "run"), checkpoint_every=1000, device="cpu")
    Trainer(small_config(output="bernoulli"), config, data, None, Normalizer(0.0, 1.0)).fit()
    ckpt = tmp_path / "run" / "checkpoint.pt"
    code, text, _ = run(capsys, "sample", "--checkpoint", ckpt, "--n", "3", "--steps", "4", "--out", tmp_path / "s")
    assert code == 0 and "wrote 3 npy files" in text
    bits = [np.load(tmp_path / "s" / f"sample_{i:03d}.npy") for i in range(3)]
    assert all(b.shape == (4, 5) for b in bits) and set(np.unique(bits).tolist()) == {0.0, 1.0}
    assert run(capsys, "sample", "--checkpoint", ckpt, "--n", "1", "--mean", "--out", tmp_path / "m")[0] == 0
    probabilities = np.load(tmp_path / "m" / "sample_000.npy")
    assert probabilities.shape == (160, 5) and ((probabilities > 0) & (probabilities < 1)).all()
    code, _, err = run(capsys, "analyze", "--checkpoint", ckpt, "--input", tmp_path / "any.wav")
    _assert_clean_error(code, err, "Bernoulli-output model")


# ----------------------------------------------------------------------------------------------------------
# Help and bad input


def test_module_help_in_subprocess():
    proc = subprocess.run([sys.executable, "-m", "vrnn_fast", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("train", "evaluate", "sample", "analyze"):
        assert command in proc.stdout


@pytest.mark.parametrize("command, options", [
    ("train", ["--data", "--preset", "--resume", "--tbptt", "--paper-faithful", "--kl-warmup", "--bf16",
               "--skip-bad", "--sample-rate", "--segment-seconds", "--whole-utterances"]),
    ("evaluate", ["--checkpoint", "--split", "--n-samples", "--json", "--per-frame"]),
    ("sample", ["--checkpoint", "--n", "--steps", "--mean", "--out", "--seed"]),
    ("analyze", ["--checkpoint", "--input", "--out"]),
])
def test_subcommand_help(command, options, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text


def _assert_clean_error(code, err, *fragments):
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    for f in fragments:
        assert str(f) in err


def test_bad_data_sources(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--data", tmp_path / "missing", "--out", tmp_path / "o", *TRAIN_FAST)
    _assert_clean_error(code, err, "not found", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    code, _, err = run(capsys, "train", "--data", tmp_path / "empty", "--out", tmp_path / "o", *TRAIN_FAST)
    _assert_clean_error(code, err, "no audio", tmp_path / "empty")


def test_corrupt_file_fails_unless_skipped(tmp_path, capsys):
    data = write_waves(tmp_path / "wavs")
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    code, _, err = run(capsys, "train", "--data", data, "--out", tmp_path / "o", *TRAIN_FAST)
    _assert_clean_error(code, err, "broken.wav")
    code, _, err = run(capsys, "train", "--data", data, "--out", tmp_path / "o", "--skip-bad", *TRAIN_FAST)
    assert code == 0, err
    assert "warning: skipped 1 file(s)" in err and "broken.wav" in err and "Warning:" not in err


def test_other_sample_rates_are_resampled_and_bad_rates_rejected(tmp_path, capsys):
    data = write_waves(tmp_path / "wavs8k", rate=8000)
    code, _, err = run(capsys, "train", "--data", data, "--out", tmp_path / "o", *TRAIN_FAST)
    assert code == 0, err
    with pytest.raises(SystemExit) as e:
        main(["train", "--sample-rate", "0"])
    assert e.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_bad_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    for command in (["evaluate"], ["sample"], ["analyze", "--input", "x.wav"]):
        code, _, err = run(capsys, *command, "--checkpoint", bad)
        _assert_clean_error(code, err, "cannot read checkpoint", bad)
    code, _, err = run(capsys, "sample", "--checkpoint", tmp_path / "none.pt")
    _assert_clean_error(code, err, "checkpoint not found", "none.pt")
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    code, _, err = run(capsys, "evaluate", "--checkpoint", tmp_path / "foreign.pt")
    _assert_clean_error(code, err, "not a vrnn_fast checkpoint")
    code, _, err = run(capsys, "train", "--resume", "--steps", "2")
    _assert_clean_error(code, err, "--resume without a checkpoint path needs --out")


def test_unwritable_output_is_a_clean_error(speech_run, capsys, tmp_path):
    _, out = speech_run
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run(capsys, "sample", "--checkpoint", out / "checkpoint.pt", "--out", blocker / "sub")
    _assert_clean_error(code, err, "file")


def test_analyze_bad_input_file(speech_run, capsys, tmp_path):
    _, out = speech_run
    code, _, err = run(capsys, "analyze", "--checkpoint", out / "checkpoint.pt", "--input", tmp_path / "nope.wav")
    _assert_clean_error(code, err, "nope.wav")


def test_tbptt_paper_faithful_warmup_options(speech_run, capsys, tmp_path):
    data, _ = speech_run
    out = tmp_path / "tb"
    code, _, err = run(capsys, "train", "--data", data, "--out", out, "--tbptt", "--reset-every", "2",
                       "--paper-faithful", "--kl-warmup", "10", "--patience", "3", "--log-every", "1", *TRAIN_FAST)
    assert code == 0, err
    ckpt = read_checkpoint(out / "checkpoint.pt")
    cfg = ckpt["train_config"]
    assert cfg.tbptt and cfg.reset_every == 2 and cfg.paper_faithful and cfg.kl_warmup_steps == 10
    assert ckpt["tbptt_state"] is not None and ckpt["tbptt_state"][0].shape[1] == ckpt["model_config"].h_dim
    log = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kl_weight"] for r in log if r["kind"] == "train"] == [0.1, 0.2, 0.3]


# ----------------------------------------------------------------------------------------------------------
# Reliability (issue 11): options, devices and paths checked before work; damaged and diverged checkpoints;
# full disks; stop signals


@pytest.mark.parametrize("argv, fragment", [
    (["evaluate", "--device", "cuda"], "CUDA is not available"),
    (["evaluate", "--device", "foo"], "not a torch device: 'foo'"),
    (["sample", "--device", "cuda:3"], "device 'cuda:3'"),
    (["analyze", "--input", "x.wav", "--device", "meta"], "device 'meta' is not supported"),
])
def test_bad_devices_are_clean_errors(speech_run, capsys, argv, fragment):
    _, out = speech_run
    code, _, err = run(capsys, *argv, "--checkpoint", out / "checkpoint.pt")
    _assert_clean_error(code, err, fragment)


@pytest.mark.parametrize("device", ["meta", "foo", "cuda"])
def test_train_bad_device_fails_before_reading_data(tmp_path, capsys, monkeypatch, device):
    import vrnn_fast.data

    monkeypatch.setattr(vrnn_fast.data, "open_splits", lambda *a, **k: pytest.fail("data read before the check"))
    code, _, err = run(capsys, "train", "--device", device, "--out", tmp_path / "o", "--steps", "1")
    _assert_clean_error(code, err, device)


@pytest.mark.parametrize("option, value, fragment", [
    ("--lr", "1e300", "learning rate in (0, 10]"), ("--lr", "1e10", "learning rate"),
    ("--sample-rate", "100000000", "from 1000 to 192000"), ("--sample-rate", "16k", "from 1000 to 192000"),
    ("--workers", "-1", "expected an integer >= 0, got '-1'"), ("--workers", "two", "expected an integer >= 0"),
])
def test_out_of_range_options_are_refused_by_the_parser(capsys, option, value, fragment):
    with pytest.raises(SystemExit) as e:
        main(["train", option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and "Traceback" not in err


def test_output_paths_are_checked_before_any_work(speech_run, capsys, tmp_path, monkeypatch):
    import vrnn_fast.data
    import vrnn_fast.train

    data, out = speech_run
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(vrnn_fast.data, "open_splits", lambda *a, **k: pytest.fail("data read before the check"))
    monkeypatch.setattr(vrnn_fast.train, "evaluate_model", lambda *a, **k: pytest.fail("evaluated first"))
    for target, fragment in ((blocker, "is a file"), (blocker / "sub", "output folder")):
        code, _, err = run(capsys, "train", "--data", data, "--out", target, *TRAIN_FAST)
        _assert_clean_error(code, err, target, fragment)
    code, _, err = run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--json", blocker / "r.json")
    _assert_clean_error(code, err, "--json", "is a file, not a folder")
    code, _, err = run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--json", tmp_path)
    _assert_clean_error(code, err, "--json", "is a folder")
    code, _, err = run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--per-frame", blocker / "f.csv")
    _assert_clean_error(code, err, "--per-frame", "is a file, not a folder")
    code, _, err = run(capsys, "evaluate", "--checkpoint", out / "checkpoint.pt", "--per-frame", tmp_path)
    _assert_clean_error(code, err, "--per-frame", "is a folder")
    code, _, err = run(capsys, "analyze", "--checkpoint", out / "checkpoint.pt", "--input", data / "utt00.wav",
                       "--out", blocker / "a.png")
    _assert_clean_error(code, err, "--out", "is a file, not a folder")


def test_a_second_run_on_one_out_is_refused_naming_the_holder(speech_run, capsys, tmp_path):
    data, _ = speech_run
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from vrnn_fast.train import run_lock
with run_lock({str(out)!r}):
    print("locked", flush=True)
    time.sleep(120)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run(capsys, "train", "--data", data, "--out", out, *TRAIN_FAST)
        _assert_clean_error(code, err, f"PID {holder.pid}", "in use by another training run")
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run(capsys, "train", "--data", data, "--out", out, *TRAIN_FAST)  # the stale lock is taken over
    assert code == 0, err


def _rewrite(src, dst, change) -> None:
    """A copy of checkpoint src with change(ckpt) applied and a valid checksum (what a diverged or buggy writer
    could have produced)."""
    from vrnn_fast.train import write_checkpoint

    ckpt = torch.load(src, weights_only=True)
    change(ckpt)
    write_checkpoint(ckpt, dst)


def test_checkpoints_with_nan_weights_are_refused_everywhere(speech_run, capsys, tmp_path):
    data, out = speech_run
    nan = tmp_path / "nan" / "checkpoint.pt"
    _rewrite(out / "checkpoint.pt", nan, lambda c: c["model"]["rnn.weight_hh"].fill_(float("nan")))
    for argv in (["evaluate"], ["sample", "--out", tmp_path / "s"], ["analyze", "--input", data / "utt00.wav"]):
        code, _, err = run(capsys, *argv, "--checkpoint", nan)
        _assert_clean_error(code, err, "non-finite model values", "rnn.weight_hh", nan)
    assert not (tmp_path / "s").exists()
    code, _, err = run(capsys, "train", "--resume", "--out", nan.parent, "--steps", "5")
    _assert_clean_error(code, err, "non-finite")


def test_nonfinite_samples_are_an_error_not_a_silent_wav(speech_run, capsys, tmp_path, monkeypatch):
    from vrnn_fast.model import FastVRNN

    _, out = speech_run
    monkeypatch.setattr(FastVRNN, "sample", lambda self, n, steps, **kw: torch.full((n, steps, 200), float("inf")))
    code, _, err = run(capsys, "sample", "--checkpoint", out / "checkpoint.pt", "--out", tmp_path / "s")
    _assert_clean_error(code, err, "generated non-finite values")
    assert not list((tmp_path / "s").glob("*.wav"))


def test_damaged_checkpoints_are_refused(speech_run, capsys, tmp_path):
    _, out = speech_run
    good = (out / "checkpoint.pt").read_bytes()
    weights = torch.load(out / "checkpoint.pt", weights_only=True)["model"]["rnn.weight_hh"]
    at = good.find(weights.numpy().tobytes()[:64])
    assert at > 0
    flipped = bytearray(good)
    flipped[at + 40] ^= 0x10  # one bit of one weight
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    code, _, err = run(capsys, "evaluate", "--checkpoint", tmp_path / "flipped.pt")
    _assert_clean_error(code, err, "checksum does not match", "flipped.pt")
    _rewrite(out / "checkpoint.pt", tmp_path / "neg.pt", lambda c: c["progress"].update(step=-1))
    code, _, err = run(capsys, "sample", "--checkpoint", tmp_path / "neg.pt")
    _assert_clean_error(code, err, "progress.step must be an integer >= 0", "neg.pt")


def test_divergence_exits_nonzero_and_keeps_finite_files(speech_run, capsys, tmp_path, monkeypatch):
    from vrnn_fast.train import Trainer

    data, _ = speech_run
    out = tmp_path / "div"
    code, _, err = run(capsys, "train", "--data", data, "--out", out, *TRAIN_FAST)
    assert code == 0, err
    best = read_checkpoint(out / "best.pt")["progress"]["step"]

    def nan_gradients(self):  # what a far too large learning rate does after a few updates
        for p in self.model.parameters():
            p.grad = torch.full_like(p, float("nan"))
        return float("nan"), True

    monkeypatch.setattr(Trainer, "_clip_and_step", nan_gradients)
    code, _, err = run(capsys, "train", "--resume", "--out", out, "--steps", "20", "--max-skipped-updates", "3")
    assert code == 1 and "error: training diverged at step 6" in err and "3 updates in a row" in err
    assert read_checkpoint(out / "checkpoint.pt")["progress"]["step"] == 4  # --checkpoint-every 2
    assert read_checkpoint(out / "best.pt")["progress"]["step"] == best
    log = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["kind"] == "diverged"


def test_full_disk_while_saving_is_one_error_line(speech_run, capsys, tmp_path, monkeypatch):
    import errno
    import io

    import vrnn_fast.train

    data, _ = speech_run
    out = tmp_path / "full"
    code, _, err = run(capsys, "train", "--data", data, "--out", out, *TRAIN_FAST)
    assert code == 0, err
    before = (out / "checkpoint.pt").read_bytes()

    class FullDisk(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vrnn_fast.train, "open", lambda path, mode="r", **kw: FullDisk(path, "w") if mode == "wb"
                        else open(path, mode, **kw), raising=False)
    code, _, err = run(capsys, "train", "--resume", "--out", out, "--steps", "5", "--eval-every", "100")
    last = err.splitlines()[-1]  # after the "training ..." line
    _assert_clean_error(code, last + "\n", "No space left on device", out / "checkpoint.pt", "is intact")
    assert err.count("error:") == 1 and "Traceback" not in err and "enforce fail" not in err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "checkpoint.pt", "metrics.jsonl", "run.lock"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_checkpoint_and_exit_128_plus_signum(speech_run, tmp_path, sig):
    data, _ = speech_run
    out = tmp_path / "sig"
    proc = subprocess.Popen([sys.executable, "-m", "vrnn_fast", "train", "--data", str(data), "--out", str(out),
                             "--steps", "100000", "--log-every", "1", "--batch-size", "4", "--device", "cpu",
                             "--eval-every", "100000", "--checkpoint-every", "100000"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and signal.Signals(sig).name in err
    log = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert read_checkpoint(out / "checkpoint.pt")["progress"]["step"] == log[-1]["step"] >= 1


def test_torchrun_sigterm_checkpoints_on_every_rank(speech_run, tmp_path):
    """torchrun forwards SIGTERM (Slurm, Kubernetes) to both gloo ranks: they agree on the stop and rank 0
    writes the checkpoint of the last update (the early --out lock is collective too)."""
    data, _ = speech_run
    out = tmp_path / "ddp"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                             "vrnn_fast", "train", "--data", str(data), "--out", str(out), "--steps", "100000",
                             "--log-every", "1", "--batch-size", "4", "--device", "cpu", "--eval-every", "100000",
                             "--checkpoint-every", "100000"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 180
        while not (out / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert err.count("SIGTERM: finishing this update") == 2, err
    log = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    ckpt = read_checkpoint(out / "checkpoint.pt")
    assert ckpt["progress"]["step"] == log[-1]["step"] >= 1 and ckpt["progress"]["world_size"] == 2
