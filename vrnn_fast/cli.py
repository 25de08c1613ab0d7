"""The ``vrnn-fast`` command: train, evaluate, sample and analyze VRNNs (also ``python -m vrnn_fast``).

Bad input (a missing or empty folder, an unreadable file, a damaged checkpoint, a checkpoint of another
config, an output path that cannot be written, an unusable device, an out-of-range option) prints
``error: <message>`` on stderr and exits with code 2, without a traceback; options, devices and output paths
are checked before any work starts. A training run that diverges exits with code 1 (``error:`` line); one
stopped by SIGINT, SIGTERM or SIGHUP writes a checkpoint and exits with 128 + the signal's number.
Several GPUs or machines: ``torchrun --nproc-per-node N -m vrnn_fast train ...`` trains with DDP.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .config import FLOAT_BOUNDS, OUTPUTS

# Default number of updates of `vrnn-fast train` without --steps/--epochs: the tiny preset on the shipped
# speech set finishes in a few minutes on a 2-core CPU.
DEFAULT_STEPS = 4000
DEFAULT_PRESETS = {"speech": "tiny", "handwriting": "tiny-handwriting", "series": "tiny-series"}
SAMPLE_RATES = (1000, 192000)  # --sample-rate range (Hz): resampling to far above it takes minutes per file
MAX_LR = FLOAT_BOUNDS["lr"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _learning_rate(text: str) -> float:
    value = _positive_float(text)
    if value > MAX_LR:
        raise argparse.ArgumentTypeError(f"expected a learning rate in (0, {MAX_LR:g}], got {text!r}")
    return value


def _sample_rate(text: str) -> int:
    low, high = SAMPLE_RATES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected a positive integer from {low} to {high} (Hz), got {text!r}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' only where there is a default worth showing and the help does not say it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .config import VRNNConfig

    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="vrnn-fast", formatter_class=fmt,
        description="Train, evaluate, sample and analyze Variational RNNs (Chung et al. 2015) on speech, "
                    "handwriting and any sequence data (.npy, .npz, .csv). Run `vrnn-fast <command> --help` for a "
                    "command's options.")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    t = sub.add_parser("train", formatter_class=fmt, help="train a model (default: tiny preset, shipped speech set)",
                       description="Train a VRNN. Writes <out>/checkpoint.pt (latest, atomically), <out>/best.pt "
                                   "(best validation ELBO) and <out>/metrics.jsonl. Without --data it trains the "
                                   "tiny preset on the small speech set shipped with the package.")
    t.add_argument("--data", help="folder of audio, handwriting or series files (.npy, .npz, .csv: one sequence "
                                  "per file, rows = steps, columns = features), a text file listing files, a frame "
                                  "store (`vrnn-fast prepare`), a handwriting archive, one .npz (one array per "
                                  "sequence) or one (N, T, D) .npy (lengths in a sibling <name>.lengths.npy) "
                                  "(default: the shipped CMU ARCTIC slt speech set)")
    _kind_args(t)
    t.add_argument("--preset", help="model preset (default: tiny for speech, tiny-handwriting for handwriting, "
                                    "tiny-series for series, whose x_dim is set to the data's number of features; "
                                    f"with --resume: the checkpoint's); one of {', '.join(VRNNConfig.presets())}")
    t.add_argument("--output", choices=OUTPUTS, help="the decoder's distribution, in place of the preset's")
    t.add_argument("--steps", type=_positive_int,
                   help=f"updates to train for, in total (default {DEFAULT_STEPS} when --epochs is not given)")
    t.add_argument("--epochs", type=_positive_int, help="passes over the training data")
    t.add_argument("--batch-size", type=_positive_int, help="global batch size (default: the preset's)")
    t.add_argument("--lr", type=_learning_rate, help=f"Adam learning rate, at most {MAX_LR:g} (default: the "
                                                     "preset's)")
    t.add_argument("--clip", type=_positive_float, default=None, help="global gradient-norm clip (default 5)")
    t.add_argument("--out", help="output folder (default: runs/<preset>)")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from <out>/checkpoint.pt, or from the given checkpoint")
    t.add_argument("--seed", type=_nonneg_int, help="seed of the initialisation, the data order, the noise and "
                                                    "(unless --split-seed is given) the split (default 0)")
    t.add_argument("--split-seed", type=_nonneg_int,
                   help="seed of the train/valid/test split alone, to compare seeds on one split (default: --seed)")
    t.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else "
                                    "cpu; under torchrun cuda:LOCAL_RANK)")
    t.add_argument("--backend", choices=("auto", "torch", "triton"), help="FastVRNN backend (default auto)")
    t.add_argument("--tbptt", action="store_true", default=None,
                   help="truncated BPTT: consecutive segments of per-row streams, LSTM state carried, reset "
                        "every --reset-every updates")
    t.add_argument("--reset-every", type=_positive_int, help="with --tbptt: updates between state resets "
                                                             "(default 4)")
    t.add_argument("--paper-faithful", action="store_true", default=None,
                   help="the official optimisation scheme: clip at 5, non-finite norm -> grad = 0.1 * param, "
                        "weight columns capped at norm 1.9365")
    t.add_argument("--kl-warmup", type=_nonneg_int, help="updates over which the KL weight rises from 0 to 1")
    t.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast (CUDA only)")
    t.add_argument("--eval-every", type=_positive_int, help="updates between validation runs (default 200)")
    t.add_argument("--patience", type=_positive_int, help="stop after this many validation runs without "
                                                          "improvement (default: never)")
    t.add_argument("--checkpoint-every", type=_positive_int, help="updates between checkpoints (default 200)")
    t.add_argument("--log-every", type=_positive_int, help="updates between metrics lines (default 10)")
    t.add_argument("--max-skipped-updates", type=_positive_int,
                   help="stop with an error (exit 1) after this many updates in a row with a non-finite loss or "
                        "gradient (default 10)")
    t.add_argument("--skip-bad", action="store_true", help="skip unreadable data files, and series sequences with "
                                                          "bad values, (listed) instead of failing")
    t.add_argument("--workers", type=_nonneg_int,
                   help="data loader processes per rank, reading batches while the model steps (the batches are "
                        "the same for any number); 0 reads them in the training process (default: 0 for data held "
                        "in memory, else min(4, CPUs per rank - 1))")
    t.add_argument("--sample-rate", type=_sample_rate, default=16000,
                   help=f"audio sample rate in Hz, {SAMPLE_RATES[0]} to {SAMPLE_RATES[1]} (files are resampled "
                        f"to it)")
    t.add_argument("--segment-seconds", type=_positive_float, default=0.5, help="length of training segments")
    t.add_argument("--whole-utterances", action="store_true",
                   help="train on whole utterances (padded and masked) instead of segments")
    t.add_argument("--segment-steps", type=_positive_int,
                   help="series: train on pieces of this many steps (default: whole sequences, padded and masked)")

    e = sub.add_parser("evaluate", formatter_class=fmt, help="ELBO and importance-sampled log-likelihood",
                       description="Per-sequence and per-frame ELBO and the importance-sampled log-likelihood "
                                   "of every sequence of a split, printed as a table (and written as JSON).")
    _checkpoint_args(e)
    e.add_argument("--data", help="data source or frame store (default: the one the model was trained on)")
    e.add_argument("--split", choices=("train", "valid", "test"), default="test", help="which split")
    e.add_argument("--n-samples", type=_nonneg_int, default=40, help="importance samples (0: ELBO only)")
    e.add_argument("--batch-size", type=_positive_int, help="sequences per batch (default: the training one)")
    e.add_argument("--max-batches", type=_positive_int, help="evaluate only the first batches (quick checks)")
    e.add_argument("--json", help="also write the results to this JSON file")
    e.add_argument("--per-frame", metavar="CSV",
                   help="also write every frame's ELBO terms to this CSV file: rows sequence,step,kl,nll (-ELBO "
                        "of the frame = kl + nll; sequences numbered from 0 in evaluation order, masked frames left "
                        "out)")
    e.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the noise draws")
    e.add_argument("--skip-bad", action="store_true", help="skip unreadable data files")
    e.add_argument("--whole-utterances", action="store_true",
                   help="speech and series: score whole sequences instead of the training run's segments")

    s = sub.add_parser("sample", formatter_class=fmt, help="generate speech (wav), handwriting (PNG) or series (npy)",
                       description="Generate sequences from a zero state, batched: speech as de-normalised "
                                   "int16 wav files at the training sample rate, handwriting as PNG drawings, "
                                   "series as de-normalised (steps, D) float32 .npy files, and Bernoulli-output "
                                   "models' frames as one (steps, D) .npy array per sequence.")
    _checkpoint_args(s)
    s.add_argument("--n", type=_positive_int, default=4, help="number of sequences")
    s.add_argument("--steps", type=_positive_int, default=160, help="steps per sequence (160 frames = 2 s)")
    s.add_argument("--mean", action="store_true", help="write the decoder's mean instead of a draw")
    s.add_argument("--out", default="samples", help="output folder")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the draws")

    a = sub.add_parser("analyze", formatter_class=fmt, help="the paper's Fig. 2 for one audio file",
                       description="Plot delta_t = sum_j (mu_t,j - mu_t-1,j)^2 of the posterior means and the "
                                   "per-step KL above the input waveform (the paper's Fig. 2) as a PNG.")
    _checkpoint_args(a)
    a.add_argument("--input", required=True, help="an audio file")
    a.add_argument("--out", default="analysis.png", help="output PNG")
    a.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the posterior sample fed back")
    _prepare_parser(sub, fmt)
    return parser


def _prepare_parser(sub, fmt) -> None:
    p = sub.add_parser("prepare", formatter_class=fmt, help="decode a data source once into a frame store",
                       description="Read a speech, handwriting or series source once (the split, sample rate, "
                                   "frame size and normaliser train would use) and write a frame store: "
                                   "memory-mappable frames per split (int16 audio, float32 strokes and series), "
                                   "their index, the normaliser and a checked manifest. Every --data option "
                                   "accepts the store afterwards.")
    p.add_argument("--data", help="the source, as train's --data (default: the shipped speech set)")
    p.add_argument("--out", required=True, help="the store's folder (written as <out>.tmp-<pid>, then renamed; "
                                                   "one a killed prepare left is removed)")
    _kind_args(p)
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the train/valid/test split")
    p.add_argument("--sample-rate", type=_sample_rate, default=16000, help="audio sample rate in Hz (files are "
                                                                           "resampled to it)")
    p.add_argument("--frame-size", type=_positive_int, default=200, help="audio samples per frame (a preset's "
                                                                         "x_dim)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable data files (listed) instead of failing")
    p.add_argument("--force", action="store_true", help="rewrite a finished store")


def cmd_prepare(args) -> int:
    from .data import AudioConfig, prepare

    audio = AudioConfig(sample_rate=args.sample_rate, frame_size=args.frame_size, segment_seconds=None)
    store = prepare(args.data, args.out, kind=args.kind, audio=audio, seed=args.seed, skip_bad=args.skip_bad,
                    force=args.force, normalize=args.normalize)
    m = store.manifest
    counts = " / ".join(f"{m['splits'][s]['sequences']} {s}" for s in ("train", "valid", "test"))
    size = sum(e["bytes"] for e in m["arrays"].values())
    print(f"frame store {store.path}: {m['kind']}, {counts} sequences, {size / 2**20:.1f} MiB")
    return 0


def _kind_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("auto", "speech", "handwriting", "series"), default="auto",
                   help="kind of data (auto: a folder's audio files, else its handwriting files, else its series "
                        "files)")
    p.add_argument("--normalize", choices=("auto", "zscore", "none"), default="auto",
                   help="normalisation fit on the training split: zscore (speech: one mean/std; handwriting: one "
                        "pooled over dx and dy, the pen bit raw; series: a mean/std per feature), none, or auto: "
                        "zscore, but none for series whose values are all 0 or 1 (binary data)")


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `vrnn-fast train`")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto", help="FastVRNN backend")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 with ``error: ...`` on stderr for bad input)."""
    from .train import TrainingDiverged, reuse_freed_memory

    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # this process computes: keep freed buffers mapped instead of page-faulting them back
    handler = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "analyze": cmd_analyze,
               "prepare": cmd_prepare}
    with warnings.catch_warnings():  # warnings (e.g. skipped files) as plain `warning: ...` lines
        warnings.showwarning = _show_warning
        try:
            return handler[args.command](args)
        except (ValueError, OSError) as e:  # DataError is a ValueError; OSError: e.g. a full disk
            print(f"error: {e}", file=sys.stderr)
            return 2
        except TrainingDiverged as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as e:  # a second stop signal (train.Interrupted), or Ctrl-C outside training
            print("interrupted", file=sys.stderr)
            return 128 + getattr(e, "signum", signal.SIGINT)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------
# train


def _init_distributed() -> bool:
    """Join the process group torchrun describes (RANK/WORLD_SIZE set); True when this process set it up."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def _train_overrides(args) -> dict:
    """TrainConfig fields given on the command line."""
    pairs = {"steps": args.steps, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "clip": args.clip, "seed": args.seed, "device": args.device, "backend": args.backend,
             "tbptt": args.tbptt, "reset_every": args.reset_every, "paper_faithful": args.paper_faithful,
             "kl_warmup_steps": args.kl_warmup, "bf16": args.bf16, "eval_every": args.eval_every,
             "patience": args.patience, "checkpoint_every": args.checkpoint_every,
             "log_every": args.log_every, "max_skipped_updates": args.max_skipped_updates, "workers": args.workers}
    return {k: v for k, v in pairs.items() if v is not None}


def _binary_series(splits) -> bool:
    """Series data left raw whose training values are all 0 or 1 (then the default output is Bernoulli)."""
    from .data.splits import is_binary

    train = splits.train
    return (splits.kind == "series" and splits.normalizer.features is None
            and is_binary(train._raw(i) for i in range(len(train.lengths))))


def cmd_train(args) -> int:
    from .train import CHECKPOINT_NAME, parse_device, read_checkpoint, run_lock

    started_dist = _init_distributed()
    try:
        if args.device is not None:
            parse_device(args.device, check_available=True)
        ckpt, resume_path = None, None
        if args.resume is not None:
            if args.resume is True:
                if args.out is None:
                    raise ValueError("--resume without a checkpoint path needs --out (the run's folder)")
                resume_path = Path(args.out) / CHECKPOINT_NAME
            else:
                resume_path = Path(args.resume)
            ckpt = read_checkpoint(resume_path)
            parse_device(args.device or ckpt["train_config"].device, check_available=True)
        out = args.out or (ckpt["train_config"].out_dir if ckpt else args.preset and f"runs/{args.preset}")
        # Lock (and so check) the output folder before the data is read; the Trainer locks it otherwise.
        with run_lock(out) if out else contextlib.nullcontext():
            return _train(args, ckpt, resume_path, started_dist)
    finally:
        if started_dist:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(args, ckpt, resume_path, started_dist: bool) -> int:
    """cmd_train once the options, the device and the output folder are checked."""
    from .config import VRNNConfig
    from .data import AudioConfig, is_store, open_splits, open_store
    from .train import CHECKPOINT_NAME, TrainConfig, Trainer, config_mismatch

    overrides = _train_overrides(args)
    if ckpt is not None:
        info = ckpt["data"]
        source = args.data if args.data is not None else info.get("source")
        audio = AudioConfig(**info["audio"]) if info.get("audio") else _audio_config(args, None)
        split_seed = info.get("split_seed", ckpt["train_config"].seed)  # the same split as before
        if args.split_seed is not None and args.split_seed != split_seed:
            raise ValueError(f"--split-seed {args.split_seed} differs from the split seed {split_seed} of "
                             f"checkpoint {resume_path}; a resumed run keeps its split")
        model_config = ckpt["model_config"]
        if args.preset is not None:
            diff = config_mismatch(VRNNConfig.preset(args.preset), model_config)
            if diff:
                raise ValueError(f"--preset {args.preset} differs from the config of checkpoint {resume_path} "
                                 f"({diff}; preset vs checkpoint)")
        if args.output is not None and args.output != model_config.output:
            raise ValueError(f"--output {args.output} differs from the output {model_config.output} of checkpoint "
                             f"{resume_path}")
        values = ckpt["train_config"].to_dict()
        values.update(overrides)
        if args.out is not None:
            values["out_dir"] = args.out
        if "steps" not in overrides and "epochs" in overrides:
            values["steps"] = None
        config = TrainConfig(**values)
        splits = open_splits(source, kind=info.get("kind", args.kind), audio=audio, seed=split_seed,
                             skip_bad=args.skip_bad, normalizer=ckpt["normalizer"],
                             segment_steps=info.get("segment_steps"))
    else:
        preset_probe = VRNNConfig.preset(args.preset) if args.preset else None
        audio = _audio_config(args, preset_probe)
        split_seed = args.split_seed if args.split_seed is not None else args.seed or 0
        if args.split_seed is None and is_store(args.data):  # a store's split is fixed when it is prepared
            split_seed = open_store(args.data, verify=False).seed
        splits = open_splits(args.data, kind=args.kind, audio=audio, seed=split_seed, skip_bad=args.skip_bad,
                             normalize=args.normalize, segment_steps=args.segment_steps)
        preset = args.preset or DEFAULT_PRESETS[splits.kind]
        changes = {"x_dim": splits.x_dim} if splits.kind == "series" else {}  # any preset fits series data
        if args.output is not None:
            changes["output"] = args.output
        elif args.preset is None and _binary_series(splits):
            changes["output"] = "bernoulli"
        model_config = VRNNConfig.preset(preset, **changes)
        if "steps" not in overrides and "epochs" not in overrides:
            overrides["steps"] = DEFAULT_STEPS
        elif "steps" not in overrides:
            overrides["steps"] = None
        overrides.setdefault("device", _default_device())
        config = TrainConfig(out_dir=args.out or f"runs/{preset}", **overrides)
    if model_config.x_dim != splits.x_dim:
        what = f"preset {preset}" if ckpt is None else f"the model of checkpoint {resume_path}"
        raise ValueError(f"{what} expects x_dim={model_config.x_dim}, but the {splits.kind} data has "
                         f"{splits.x_dim} features per step")
    if started_dist and config.device.startswith("cuda"):
        config.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"

    if args.data is not None:
        source = str(Path(args.data).resolve())
    else:  # the shipped set (None), or the source the resumed run was trained on
        source = None if ckpt is None else ckpt["data"].get("source")
    info = {"kind": splits.kind, "source": source, "split_seed": split_seed,
            "audio": None if splits.audio is None else _audio_dict(splits.audio)}
    if splits.kind == "series":
        info["segment_steps"] = splits.train.segment
    trainer = Trainer(model_config, config, splits.train, splits.valid, splits.normalizer, info)
    if ckpt is not None:
        trainer.resume(resume_path)
    rank0 = trainer.rank == 0
    if rank0:
        print(f"training {model_config.model}-{model_config.output} ({_n_params(trainer.model):,} parameters) on "
              f"{splits.kind} data: {splits.train.num_sequences} train / {splits.valid.num_sequences} valid "
              f"sequences; step {trainer.step} -> {config.steps or '-'} (epochs {config.epochs or '-'}), "
              f"batch {trainer.batch_size}, lr {trainer.lr:g}, device {config.device}, writing {config.out_dir}",
              file=sys.stderr)
    summary = trainer.fit()
    if rank0:
        train = summary["train"]
        best = summary["best_valid_elbo_per_frame"]
        print(f"stopped ({summary['stopped']}) at step {summary['step']}, epoch {summary['epoch']}"
              + (f"; last train -ELBO/seq {train['loss']:.2f}" if train else "")
              + (f"; best valid ELBO/frame {best:.4f}" if best is not None else "")
              + f"; checkpoint {Path(config.out_dir) / CHECKPOINT_NAME}")
    return 0 if summary["signal"] is None else 128 + summary["signal"]


def _audio_config(args, preset):
    from .data import AudioConfig

    frame = preset.x_dim if preset is not None and preset.output != "bigmm" else 200
    seconds = None if args.whole_utterances else args.segment_seconds
    return AudioConfig(sample_rate=args.sample_rate, frame_size=frame, segment_seconds=seconds)


def _audio_dict(audio) -> dict:
    return {"sample_rate": audio.sample_rate, "frame_size": audio.frame_size,
            "segment_seconds": audio.segment_seconds}


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# evaluate / sample / analyze


def _check_output(path, option: str, is_file: bool = False) -> None:
    """ValueError unless ``path`` (a folder, or with ``is_file`` a file) can be created or overwritten: checked
    before any work, without creating anything."""
    path = Path(path)
    if is_file and path.is_dir():
        raise ValueError(f"{option} {path} is a folder, not a file")
    start = path.absolute().parent if is_file else path.absolute()
    existing = next(p for p in (start, *start.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {existing} is not writable")


def _load(args):
    from .train import load_model, parse_device, read_checkpoint

    parse_device(args.device, check_available=True)
    ckpt = read_checkpoint(args.checkpoint)
    model, normalizer, config = load_model(args.checkpoint, backend=args.backend, device=args.device)
    return ckpt, model, normalizer, config


def cmd_evaluate(args) -> int:
    if args.json:
        _check_output(args.json, "--json", is_file=True)
    if args.per_frame:
        _check_output(args.per_frame, "--per-frame", is_file=True)
    from .train import atomic_write

    with atomic_write(args.per_frame) if args.per_frame else contextlib.nullcontext() as csv_file:
        per_frame = None if csv_file is None else _FrameRows(csv_file)
        _evaluate(args, per_frame)
    if per_frame is not None:
        print(f"wrote {args.per_frame} ({per_frame.rows} frames)")
    return 0


def _evaluate(args, per_frame) -> None:
    """cmd_evaluate once the output paths are checked; ``per_frame``: the --per-frame rows' writer, or None."""
    from .data import AudioConfig, open_splits
    from .train import atomic_write, evaluate_model

    ckpt, model, normalizer, config = _load(args)
    info = ckpt["data"]
    audio = AudioConfig(**info["audio"]) if info.get("audio") else AudioConfig()
    if args.whole_utterances:
        audio = AudioConfig(sample_rate=audio.sample_rate, frame_size=audio.frame_size, segment_seconds=None)
    source = args.data if args.data is not None else info.get("source")
    segment_steps = None if args.whole_utterances else info.get("segment_steps")
    splits = open_splits(source, kind=info.get("kind", "auto"), audio=audio, seed=info.get("split_seed", 0),
                         skip_bad=args.skip_bad, normalizer=normalizer, segment_steps=segment_steps)
    if splits.x_dim != config.x_dim:
        raise ValueError(f"the data has {splits.x_dim} features per step, the model in {args.checkpoint} expects "
                         f"{config.x_dim}")
    dataset = getattr(splits, args.split)
    batch = args.batch_size or ckpt["train_config"].batch_size or config.batch_size
    result = evaluate_model(model, dataset, batch, n_samples=args.n_samples, seed=args.seed, device=args.device,
                            max_batches=args.max_batches, per_frame=per_frame)
    result = {"checkpoint": str(args.checkpoint), "split": args.split, "step": ckpt["progress"]["step"], **result}
    rows = [("ELBO", "elbo"), ("  KL", "kl"), ("  NLL", "nll")]
    print(f"{args.split} split of {source or 'the shipped speech set'}: {result['sequences']} sequences, "
          f"{result['frames']} frames (checkpoint step {result['step']})")
    print(f"{'':<24}{'per sequence':>16}{'per frame':>14}")
    for label, key in rows:
        frame_mean = result[f"{key}_per_frame"]
        per_seq = result["elbo_per_sequence"] if key == "elbo" else frame_mean * result["frames"] / result["sequences"]
        print(f"{label:<24}{per_seq:>16.3f}{frame_mean:>14.4f}")
    if args.n_samples:
        print(f"{f'log-likelihood (IS, {args.n_samples})':<24}{result['log_likelihood_per_sequence']:>16.3f}"
              f"{result['log_likelihood_per_frame']:>14.4f}")
    if args.json:
        with atomic_write(args.json) as f:
            f.write(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


class _FrameRows:
    """evaluate_model's per_frame callback: CSV rows ``sequence,step,kl,nll`` of every unmasked frame, sequences
    numbered in evaluation order; values in full float64 precision (kl + nll summed over a sequence's rows is
    its -ELBO)."""

    def __init__(self, f):
        self.writer, self.sequences, self.rows = csv.writer(f, lineterminator="\n"), 0, 0
        self.writer.writerow(["sequence", "step", "kl", "nll"])

    def __call__(self, kl, nll, mask) -> None:
        b, t = mask.nonzero(as_tuple=True)  # row-major: a sequence's frames in step order
        self.writer.writerows(zip((b + self.sequences).tolist(), t.tolist(), kl[b, t].tolist(), nll[b, t].tolist(),
                                  strict=True))
        self.sequences += mask.shape[0]
        self.rows += len(b)


def cmd_sample(args) -> int:
    _check_output(args.out, "--out")
    ckpt, model, normalizer, config = _load(args)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    x = model.sample(args.n, args.steps, mean_output=args.mean, generator=gen)  # (n, steps, D)
    x = normalizer.denormalize(x.float().cpu()).numpy()
    if not np.isfinite(x).all():  # would be written as silence (int16 of NaN) or clipped noise
        raise ValueError(f"the model in {args.checkpoint} generated non-finite values; nothing written")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = ckpt["data"].get("kind") or ("handwriting" if config.output == "bigmm" else "speech")
    if kind == "series" or config.output == "bernoulli":  # one (steps, D) array per sequence
        paths = [out / f"sample_{i:03d}.npy" for i in range(len(x))]
        for path, seq in zip(paths, x, strict=True):
            np.save(path, seq.astype(np.float32, copy=False))
    elif kind == "handwriting":
        paths = [_draw_strokes(seq, out / f"sample_{i:03d}.png") for i, seq in enumerate(x)]
    else:
        import soundfile as sf

        audio = ckpt["data"].get("audio") or {}
        rate = audio.get("sample_rate", 16000)
        paths = []
        for i, seq in enumerate(x):
            path = out / f"sample_{i:03d}.wav"
            wave = np.clip(seq.reshape(-1), -1.0, 1.0)
            sf.write(str(path), (wave * 32767).round().astype(np.int16), rate, subtype="PCM_16")
            paths.append(path)
    print(f"wrote {len(paths)} {paths[0].suffix[1:]} files to {out}")
    return 0


def _draw_strokes(seq: np.ndarray, path: Path) -> Path:
    """Rows [pen, dx, dy] -> a PNG of the pen trajectory, one line per stroke (pen = 1 ends a stroke)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = np.cumsum(seq[:, 1:], axis=0)
    ends = np.flatnonzero(seq[:, 0] > 0.5) + 1
    fig, ax = plt.subplots(figsize=(8, 2.5))
    for stroke in np.split(points, ends):
        if len(stroke):
            ax.plot(stroke[:, 0], stroke[:, 1], "k-", linewidth=1.5)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def cmd_analyze(args) -> int:
    from .data import frames, read_audio

    _check_output(args.out, "--out", is_file=True)
    ckpt, model, normalizer, config = _load(args)
    kind = ckpt["data"].get("kind")
    if config.output in ("bigmm", "bernoulli") or kind in ("handwriting", "series"):
        what = kind or ("handwriting" if config.output == "bigmm" else "Bernoulli-output")
        raise ValueError(f"analyze works on speech models; {args.checkpoint} is a {what} model")
    if not config.has_latent:
        raise ValueError(f"analyze needs a latent-variable model; {args.checkpoint} is an RNN baseline (no z)")
    rate = (ckpt["data"].get("audio") or {}).get("sample_rate", 16000)
    wave = read_audio(args.input, rate)
    x = frames(wave, config.x_dim)
    if len(x) < 2:
        raise ValueError(f"{args.input} is shorter than two frames ({2 * config.x_dim} samples at {rate} Hz)")
    xt = torch.from_numpy(normalizer.normalize(x).astype(np.float32, copy=False))[None].to(args.device)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    noise = torch.randn(1, xt.shape[1], config.z_dim, generator=gen, device=args.device)
    out = model(xt, noise=noise)
    mu = out.z_mean[0].float().cpu()  # (T, Z)
    delta = torch.cat([torch.zeros(1), ((mu[1:] - mu[:-1]) ** 2).sum(-1)]).numpy()  # (T,), delta_0 = 0
    kl = out.kl[0].float().cpu().numpy()
    _plot_analysis(wave[: len(x) * config.x_dim], rate, config.x_dim, delta, kl, Path(args.out), args.input)
    print(f"wrote {args.out}")
    return 0


def _plot_analysis(wave, rate, frame, delta, kl, path: Path, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_frames = (np.arange(len(kl)) + 0.5) * frame / rate
    fig, axes = plt.subplots(3, 1, figsize=(10, 6), sharex=True)
    axes[0].plot(t_frames, delta, color="tab:blue")
    axes[0].set_ylabel(r"$\delta_t$")
    axes[1].plot(t_frames, kl, color="tab:red")
    axes[1].set_ylabel("KL")
    axes[2].plot(np.arange(len(wave)) / rate, wave, color="k", linewidth=0.5)
    axes[2].set_ylabel("waveform")
    axes[2].set_xlabel("time (s)")
    name = Path(title).name
    name = name if len(name) <= 50 else f"{name[:24]}...{name[-23:]}"  # long names would run off the figure
    axes[0].set_title(f"posterior mean change and KL per step: {name}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
