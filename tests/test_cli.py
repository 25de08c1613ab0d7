"""CLI tests: a smoke run of every subcommand (speech and handwriting, tiny configs), --help, resume, and bad
input turning into `error: ...` with exit code 2 (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

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
    ("evaluate", ["--checkpoint", "--split", "--n-samples", "--json"]),
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
