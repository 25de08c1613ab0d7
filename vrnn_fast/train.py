"""Training: :class:`TrainConfig`, :class:`Trainer` (single process or DistributedDataParallel) and checkpoints.

One step is one optimiser update on one global batch of B sequences. The loss is the mean over the batch of
the summed -ELBO, sum_t [w_kl * KL_t + NLL_t] (w_kl < 1 only during KL warm-up). Batches come through
``torch.utils.data`` (:mod:`vrnn_fast.data.loader`): ``workers`` processes read them into pinned memory while the
model steps, in the same order for any number of workers. Under ``torchrun`` each of the W ranks reads only its
share of every global batch (and of the validation batches) and scales its summed loss by W / B, so DDP's
gradient average equals the single-process gradient of the same global batch. The reparameterisation noise of
the global batch comes from one seeded generator, the same on every rank, so single- and multi-process runs see
the same draws.

Checkpoint (a dict, ``torch.load(..., weights_only=True)``-safe; written to ``<name>.tmp-<pid>``, flushed, fsynced,
then ``os.replace``d so a kill never leaves a half-written checkpoint): ``format``, ``model_config``, ``model``
(state dict), ``optimizer``, ``train_config``, ``normalizer``, ``data`` (how the data was read), ``progress``
(step, epoch, batch within the epoch, best valid -ELBO per frame, evaluations without improvement), ``tbptt_state``
(the carried (h, c) of the whole global batch, or None), ``rng`` (torch CPU/CUDA, numpy, python and the
noise generator's states) and ``checksum`` (sha256 of all the rest, verified on load: a flipped byte is
refused). Checkpoints with non-finite weights are never written and never loaded.

Reliability: one run per output folder (``run.lock``, see :func:`run_lock`); SIGINT, SIGTERM and SIGHUP
finish the update, write a checkpoint and stop (``stopped="interrupted"``, ``signal`` in the summary);
:class:`TrainingDiverged` stops a run whose updates keep failing or whose validation ELBO is not finite.

Example::

    splits = open_splits()
    trainer = Trainer(VRNNConfig.preset("tiny"), TrainConfig(steps=500, out_dir="runs/tiny"),
                      splits.train, splits.valid, splits.normalizer)
    summary = trainer.fit()                     # {"step": 500, "stopped": "steps", ...}
    model, normalizer, config = load_model("runs/tiny/checkpoint.pt")
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .config import FLOAT_BOUNDS, VRNNConfig
from .data import Normalizer
from .data.loader import BatchStream, Share, default_workers, loader, rank_rows
from .model import BACKENDS, FastVRNN

CHECKPOINT_FORMAT = "vrnn_fast-checkpoint-2"  # 2: with a checksum
OLD_FORMATS = ("vrnn_fast-checkpoint-1",)  # still read, without a checksum to verify
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
METRICS_NAME = "metrics.jsonl"
LOCK_NAME = "run.lock"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
DEVICE_TYPES = ("cpu", "cuda")
PAPER_MAX_COLUMN_NORM = 1.9365  # the official code's cap on each non-recurrent weight column (PAPER.md)


@dataclass
class TrainConfig:
    """Options of one training run.

    Stops after ``steps`` updates or ``epochs`` passes over the training set, whichever comes first (at least
    one must be set). ``lr`` / ``batch_size`` None take the model preset's. ``clip``: global gradient-norm
    clip (None = none). The loss is the batch mean, i.e. gradients are already divided by the batch size as in
    the official code. ``paper_faithful``: the official scheme (PAPER.md): clip at ``clip``, a non-finite
    gradient norm replaces each gradient by 0.1 * parameter, and after each update every non-recurrent weight
    column is capped at L2 norm 1.9365; otherwise an update with a non-finite gradient norm is skipped.
    ``kl_warmup_steps``: the KL weight rises linearly from 0 to 1 over that many updates. ``workers``: loader
    worker processes reading batches ahead (0: in the training process; None: 0 when the training data are held
    in memory, else :func:`default_workers`, min(4, CPUs - 1)); the batches are the same for any number.
    ``tbptt``: train on consecutive segments of per-row streams and carry the LSTM state between them, reset every
    ``reset_every`` updates (None: only at the start of a pass). ``bf16``: autocast on CUDA (ignored with a
    warning on CPU). Every ``eval_every`` updates, and after the last one (``steps`` or ``epochs`` reached), the
    validation -ELBO per frame is measured (a new best is saved as best.pt); training stops after ``patience``
    evaluations without improvement (None: never). ``checkpoint_every``: updates between checkpoints (one is
    always written at the end). ``max_skipped_updates``: that many updates in a row with a non-finite loss or
    gradient norm stop the run with :class:`TrainingDiverged`. ``lr`` is at most 10; ``device`` is a cpu or
    cuda device.
    """

    steps: int | None = 1000
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    clip: float | None = 5.0
    paper_faithful: bool = False
    kl_warmup_steps: int = 0
    tbptt: bool = False
    reset_every: int | None = 4
    bf16: bool = False
    eval_every: int = 200
    patience: int | None = None
    checkpoint_every: int = 200
    log_every: int = 10
    max_skipped_updates: int = 10
    out_dir: str = "runs/tiny"
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"
    workers: int | None = None

    def __post_init__(self) -> None:
        self.out_dir = str(self.out_dir)
        if self.steps is None and self.epochs is None:
            raise ValueError("TrainConfig needs steps or epochs (or both)")
        for name in ("steps", "epochs", "batch_size", "patience", "reset_every"):
            _check_int(name, getattr(self, name), low=1, optional=True)
        for name in ("eval_every", "checkpoint_every", "log_every", "max_skipped_updates"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("kl_warmup_steps", self.kl_warmup_steps, low=0)
        _check_int("seed", self.seed, low=0)
        _check_int("workers", self.workers, low=0, optional=True)
        for name, high in (("lr", FLOAT_BOUNDS["lr"]), ("clip", math.inf)):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and 0 < value <= high and math.isfinite(value)):
                raise ValueError(f"TrainConfig.{name} must be a finite number in (0, {high:g}] or None, got {value!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"TrainConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        try:
            parse_device(self.device)
        except ValueError as e:
            raise ValueError(f"TrainConfig.device: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**values)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def reuse_freed_memory(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 256 * 2**20) -> bool:
    """Has glibc's malloc keep freed memory for reuse: allocations up to ``mmap_threshold`` bytes come from the heap
    and up to ``trim_threshold`` bytes of freed heap stay mapped. Returns whether it took (Linux with glibc; a
    no-op returning False elsewhere). Process-wide: the ``vrnn-fast`` commands call it; call it once in your own
    CPU training process if you like.

    Why: FastVRNN allocates buffers of a few MB per call (whole-sequence activations, their gradients). With
    glibc's defaults each is handed back to the OS when freed and page-faulted in again at the next step: on a
    2-core VM, 1,000 minor faults and 3 ms of system time per training iteration at ``tiny`` (8%), 9,800 and 31 ms
    at ``cpu-speech-vrnn-gmm`` (486 -> 385 ms an iteration with this call)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters (malloc.h)
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold) and libc.mallopt(m_trim_threshold, trim_threshold))


def parse_device(name, check_available: bool = False) -> torch.device:
    """``name`` as a cpu or cuda torch.device; with ``check_available``, a cuda device must exist here.
    ValueError naming the problem otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"not a torch device: {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"device {name!r} is not supported (use cpu, cuda or cuda:N)")
    if check_available and device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    return device


def _check_int(name: str, value, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"TrainConfig.{name} must be an integer >= {low}{' or None' if optional else ''}, "
                         f"got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files


class TrainingDiverged(RuntimeError):
    """Training stopped: updates kept failing (non-finite loss or gradients) or the validation ELBO is not
    finite. The files in the output folder are the last ones written with finite weights."""


class Interrupted(KeyboardInterrupt):
    """A second stop signal during training: stopped at once (the last checkpoint is intact)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Stderr:
    """sys.stderr for progress and signal messages, ignoring write errors: after SIGHUP the terminal may be gone,
    and an EIO must not keep the run from writing its checkpoint."""

    def write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()

    def fileno(self) -> int:  # tqdm's terminal width
        return sys.stderr.fileno()


class _RecordingWriter:
    """A file wrapper that keeps the OSError of a failed write (torch.save turns it into a RuntimeError)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: dict, path: str | os.PathLike) -> None:
    """torch.save through :func:`atomic_write`: ``path`` is always a whole checkpoint (or absent).

    On any failure the temporary file is removed and ``path`` keeps its previous content; an OS error (a full
    disk, a read-only folder) is raised as one OSError naming ``path`` and the reason."""
    writer = None
    try:
        with atomic_write(path, "wb") as f:
            writer = _RecordingWriter(f)
            torch.save(obj, writer)
    except BaseException as e:
        cause = writer.error if writer is not None and writer.error is not None else e
        if isinstance(cause, OSError):
            reason = cause.strerror or str(cause)
            raise OSError(f"cannot write {path}: {reason} (the previous {Path(path).name}, if any, is intact)") from e
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
    """A file to write ``path`` through (``mode`` "w": text, "wb": binary): ``<path>.tmp-<pid>``, flushed,
    fsynced and ``os.replace``d onto ``path`` when the block ends, so ``path`` is the whole new file or its
    previous content, never a part. An error in the block removes the temporary file and propagates (the
    previous ``path``, if any, is intact)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    text = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (power loss) where the OS allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoint_digest(ckpt: dict) -> str:
    """sha256 of every field but ``checksum``: tensors by dtype, shape and bytes, other values by type and repr
    (so it is the same before saving and after loading)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ckpt.items() if k != "checksum"})
    return h.hexdigest()


def _feed(h, value) -> None:
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, (list, tuple)):  # pickling keeps tuples, but lists and tuples hash alike anyway
        h.update(f"L{len(value)}".encode())
        for v in value:
            _feed(h, v)
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


def write_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """:func:`atomic_save` of a checkpoint dict with its ``checksum`` added."""
    atomic_save({**ckpt, "checksum": checkpoint_digest(ckpt)}, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a checkpoint written by :class:`Trainer` (on the CPU). ValueError naming the file if it
    is missing, unreadable, truncated, not a vrnn_fast checkpoint, changed since it was written (checksum),
    has invalid progress fields or non-finite weights or optimiser state."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle errors, foreign objects: all mean "not loadable"
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (CHECKPOINT_FORMAT, *OLD_FORMATS):
        raise ValueError(f"{path} is not a vrnn_fast checkpoint (format {CHECKPOINT_FORMAT!r})")
    if ckpt["format"] == CHECKPOINT_FORMAT and ckpt.get("checksum") != checkpoint_digest(ckpt):
        raise ValueError(f"checkpoint {path} is damaged: its checksum does not match its content (the file "
                         f"changed after it was written)")
    try:
        ckpt["model_config"] = VRNNConfig.from_dict(ckpt["model_config"])
        ckpt["normalizer"] = Normalizer.from_dict(ckpt["normalizer"])
        ckpt["train_config"] = TrainConfig.from_dict(ckpt["train_config"])
        _check_progress(ckpt["progress"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is damaged: {type(e).__name__}: {e}") from e
    for part in ("model", "optimizer"):
        bad = _non_finite(ckpt.get(part))
        if bad:
            raise ValueError(f"checkpoint {path} holds non-finite {part} values (NaN or inf in {bad}); it "
                             f"comes from a diverged run")
    return ckpt


def _check_progress(progress: dict) -> None:
    for name, low in (("step", 0), ("epoch", 0), ("batch_in_epoch", 0), ("bad_evals", 0), ("world_size", 1)):
        value = progress.get(name, low) if name == "world_size" else progress[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"progress.{name} must be an integer >= {low}, got {value!r}")
    best = progress["best_valid"]
    if best is not None and not (_is_number(best) and math.isfinite(best)):
        raise ValueError(f"progress.best_valid must be a finite number or None, got {best!r}")


def _non_finite(value, name: str = "") -> str | None:
    """The name of the first floating-point tensor in a nested dict/list with a NaN or inf, else None."""
    if isinstance(value, Tensor):
        return (name or "a tensor") if value.is_floating_point() and not torch.isfinite(value).all() else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _non_finite(v, f"{name}.{k}" if name else str(k))
        if found:
            return found
    return None


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike):
    """Hold the exclusive lock of a run folder while the block runs: ``fcntl.flock`` on ``<out_dir>/run.lock``,
    which holds the holder's PID while it is held. The kernel drops the lock when its process dies, so a killed
    run's lock is stale and taken over (with a warning naming the dead PID); re-entrant within one process.
    ValueError naming the holder's PID when another process holds it, or when the folder cannot be created or
    written; a warning (and no lock) where the filesystem does not support locks.

    Under ``torchrun`` only rank 0 locks (only it writes); every rank fails together when rank 0 cannot.
    """
    out_dir = Path(out_dir)
    error, key, f = None, None, None
    if _rank() == 0:
        try:
            key, f = _acquire(out_dir)
        except ValueError as e:
            error = e
    if _any_rank(error is not None) and error is None:
        raise ValueError(f"rank 0 could not lock the output folder {out_dir}")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if f is not None:
            del _HELD_LOCKS[key]
            f.truncate(0)  # released cleanly: a PID left in the file means a run that died holding the lock
            f.close()


_HELD_LOCKS: dict[str, object] = {}  # real path of a locked folder -> its open lock file (this process)


def _acquire(out_dir: Path):
    """(key, open lock file) for a newly taken lock; (None, None) when this process holds it already."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is a file")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(out_dir)
        if key in _HELD_LOCKS:
            return None, None
        f = open(out_dir / LOCK_NAME, "a+", encoding="utf-8")  # held open until released
    except OSError as e:
        raise ValueError(f"cannot write to output folder {out_dir}: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise ValueError(f"output folder {out_dir} is in use by another training run (PID {holder}); wait for "
                         f"it to end or use another folder") from None
    except OSError as e:  # e.g. a Lustre mount without flock support: run, but say what is not guarded
        warnings.warn(f"cannot lock {out_dir / LOCK_NAME} ({e.strerror or e}); nothing stops a second run from "
                      f"writing to {out_dir} at the same time", stacklevel=3)
    f.seek(0)
    stale = f.read().strip()
    if stale:
        warnings.warn(f"{out_dir / LOCK_NAME}: the run with PID {stale} ended without releasing it (killed?); "
                      f"taking it over", stacklevel=3)
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD_LOCKS[key] = f
    return key, f


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _collective_device() -> torch.device:
    """Where the process group's collectives take tensors: this rank's GPU under nccl, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _any_rank(flag: bool) -> bool:
    """``flag`` of any rank (every rank must call it under torchrun); ``flag`` itself in one process."""
    return _max_over_ranks(float(flag)) > 0


def _max_over_ranks(value: float, device: torch.device | None = None) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device or _collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def load_model(checkpoint_path: str | os.PathLike, backend: str = "auto",
               device: str | torch.device = "cpu") -> tuple[FastVRNN, Normalizer, VRNNConfig]:
    """The trained model (eval mode, on ``device``), its data normalizer and its config from a checkpoint.

    Example::

        model, norm, config = load_model("runs/tiny/checkpoint.pt")
        audio = norm.denormalize(model.sample(4, 160, mean_output=True))   # (4, 160, 200) in [-1, 1] units
    """
    ckpt = read_checkpoint(checkpoint_path)
    config = ckpt["model_config"]
    model = FastVRNN(config, backend=backend)
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"checkpoint {checkpoint_path}: model weights do not fit its config: {e}") from e
    return model.to(device).eval(), ckpt["normalizer"], config


def config_mismatch(expected: VRNNConfig, found: VRNNConfig) -> str:
    """'' when equal, else 'field: expected vs found, ...' (for error messages)."""
    a, b = expected.to_dict(), found.to_dict()
    return ", ".join(f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k])


# ----------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_model(model: FastVRNN, dataset, batch_size: int, n_samples: int = 0, seed: int = 0,
                   device: str | torch.device = "cpu", max_batches: int | None = None,
                   per_frame: Callable[[Tensor, Tensor, Tensor], None] | None = None, workers: int = 0,
                   worker_init_fn=None) -> dict:
    """ELBO (and, with ``n_samples`` > 0, the importance-sampled log-likelihood) of every sequence of a dataset.

    Noise comes from a generator seeded with ``seed`` (the global RNG is untouched), so the numbers are
    reproducible. Returns sums divided per sequence and per unmasked frame: ``elbo_per_sequence``,
    ``elbo_per_frame``, ``kl_per_frame``, ``nll_per_frame`` and, with samples, ``log_likelihood_per_sequence``
    and ``log_likelihood_per_frame``; plus ``sequences``, ``frames``, ``n_samples``. ``per_frame(kl, nll, mask)``,
    if given, gets every batch's terms in order: kl, nll (B, T) float64 and mask (B, T) bool, on the CPU.
    ``workers``: loader processes (:func:`~vrnn_fast.data.loader.loader`). Under ``torch.distributed`` every rank
    must call it: each evaluates its rows of every batch (the same noise draws as one process; ``per_frame`` gets
    those rows) and the sums are all-reduced.
    """
    device = torch.device(device)
    cfg = model.config
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    stream = BatchStream(dataset, batch_size, shuffle=False, stop=max_batches, rank=_rank(), world=_world())
    sums = torch.zeros(6, dtype=torch.float64)  # sequences, frames, elbo, kl, nll, log-likelihood
    for share in loader(stream, workers, device.type == "cuda", worker_init_fn):
        x = share.batch.x.to(device, non_blocking=True)
        mask = share.batch.mask.to(device, non_blocking=True)
        noise = _draw_noise(cfg, (share.size, x.shape[1]), gen, device)
        eps = None
        if n_samples and cfg.has_latent:
            eps = torch.randn(n_samples, share.size, x.shape[1], cfg.z_dim, generator=gen, device=device)
        if share.hi == share.lo:  # no rows here (the noise was drawn all the same, as by the other ranks)
            continue
        noise = None if noise is None else noise[share.lo: share.hi]
        out = model(x, mask=mask, noise=noise)
        if per_frame is not None:
            per_frame(out.kl.double().cpu(), out.nll.double().cpu(), mask.cpu())
        sums[:5] += torch.tensor([share.hi - share.lo, float(mask.sum()), float(out.elbo.double().sum()),
                                  float(out.kl.double().sum()), float(out.nll.double().sum())], dtype=torch.float64)
        if n_samples:
            eps = None if eps is None else eps[:, share.lo: share.hi]
            sums[5] += float(model.log_likelihood(x, mask, n_samples=n_samples, noise=eps).double().sum())
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        sums = sums.to(_collective_device())
        dist.all_reduce(sums)
    seqs, frames, elbo, kl, nll, ll = sums.tolist()
    if seqs == 0:
        raise ValueError("evaluation set is empty: no sequences to evaluate")
    result = {"sequences": int(seqs), "frames": int(frames), "elbo_per_sequence": elbo / seqs,
              "elbo_per_frame": elbo / frames, "kl_per_frame": kl / frames, "nll_per_frame": nll / frames,
              "n_samples": n_samples}
    if n_samples:
        result.update(log_likelihood_per_sequence=ll / seqs, log_likelihood_per_frame=ll / frames)
    return result


def _draw_noise(cfg: VRNNConfig, leading, gen: torch.Generator, device) -> Tensor | None:
    if not cfg.has_latent:
        return None
    return torch.randn(*leading, cfg.z_dim, generator=gen, device=device)


# ----------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Trains a :class:`FastVRNN` on a dataset with the ``iter_batches`` / ``iter_stream_batches`` /
    ``num_frames`` interface of :mod:`vrnn_fast.data`.

    ``valid_data`` (optional) drives evaluation, early stopping and ``best.pt``; ``normalizer`` and
    ``data_info`` (a JSON-able dict: kind, source, audio settings) are stored in checkpoints so a model can
    be used on new data later. Under ``torchrun`` (``torch.distributed`` initialised) the model is wrapped
    in DistributedDataParallel and only rank 0 writes files; every rank must call :meth:`fit`.
    Files in ``out_dir``: ``checkpoint.pt`` (latest), ``best.pt`` (best validation ELBO), ``metrics.jsonl``.
    Construction seeds the global torch, numpy and python RNGs with ``config.seed`` (the initialisation).
    """

    def __init__(self, model_config: VRNNConfig, config: TrainConfig, train_data, valid_data=None,
                 normalizer: Normalizer | None = None, data_info: dict | None = None):
        if not isinstance(model_config, VRNNConfig):
            raise ValueError(f"model_config must be a VRNNConfig, got {type(model_config).__name__}")
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        for name, ds in (("train_data", train_data), ("valid_data", valid_data)):
            if ds is not None and not all(hasattr(ds, a) for a in ("iter_batches", "iter_stream_batches")):
                raise ValueError(f"{name} must be a dataset with iter_batches and iter_stream_batches")
        if train_data is None:
            raise ValueError("train_data is required")
        self.model_config, self.config = model_config, config
        self.train_data, self.valid_data = train_data, valid_data
        self.normalizer = normalizer if normalizer is not None else Normalizer(0.0, 1.0)
        self.data_info = dict(data_info or {})
        self.lr = config.lr if config.lr is not None else model_config.lr
        self.batch_size = config.batch_size if config.batch_size is not None else model_config.batch_size
        self.device = parse_device(config.device, check_available=True)
        self.use_bf16 = config.bf16 and self.device.type == "cuda"
        if config.bf16 and not self.use_bf16:
            warnings.warn("bf16 autocast needs a CUDA device; training in float32 on the CPU", stacklevel=2)

        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.workers = config.workers
        if self.workers is None:  # workers pay off where a batch is read from disk: lazy audio, a frame store
            self.workers = 0 if getattr(train_data, "in_memory", False) else default_workers()
        self.out_dir = Path(config.out_dir)

        torch.manual_seed(config.seed)
        self.model = FastVRNN(model_config, backend=config.backend).to(self.device)
        self.net = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        # fused: one kernel over every parameter (CPU and CUDA), 5x faster than the per-parameter loop on a CPU at
        # cpu-speech-vrnn-gmm (20.6 -> 4.1 ms a step on one thread)
        fused = all(p.device.type in ("cpu", "cuda") for p in self.model.parameters())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-8,
                                          fused=fused or None)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)

        self.step = 0  # updates done
        self.epoch = 0  # current pass over the training data
        self.batch_in_epoch = 0  # batches of the current pass already used
        self.best_valid: float | None = None  # best validation -ELBO per frame
        self.bad_evals = 0
        self.last_valid_step: int | None = None
        self.state: tuple[Tensor, Tensor] | None = None  # carried (h, c) of this rank's rows (tbptt)
        self.bad_updates = 0  # updates in a row with a non-finite loss or gradient norm
        self.saved_step: int | None = None  # step of the last checkpoint.pt written
        self._stop_signal = 0  # the first stop signal received (0: none)

    # -- data --------------------------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int, start: int):
        """This rank's shares of the pass's batches from batch ``start`` on (``workers`` processes read ahead)."""
        c = self.config
        stream = BatchStream(self.train_data, self.batch_size, stream=c.tbptt, seed=c.seed, epoch=epoch,
                             start=start, rank=self.rank, world=self.world)
        return loader(stream, self.workers, self.device.type == "cuda", _init_loader_worker)

    # -- one update ----------------------------------------------------------------------------------------
    def kl_weight(self) -> float:
        """KL weight of the current update: min(1, (step + 1) / kl_warmup_steps), 1 without warm-up."""
        w = self.config.kl_warmup_steps
        return 1.0 if w == 0 else min(1.0, (self.step + 1) / w)

    def _train_step(self, share: Share) -> dict:
        """One update on this rank's share of a global batch of ``share.size`` rows."""
        c, cfg = self.config, self.model_config
        x = share.batch.x.to(self.device, non_blocking=True)
        mask = share.batch.mask.to(self.device, non_blocking=True)
        n, lo, hi = share.size, share.lo, share.hi
        noise_all = _draw_noise(cfg, (n, x.shape[1]), self.noise_gen, self.device)  # the global batch's
        scale = self.world / n
        carry = (c.tbptt and share.batch.carry and self.state is not None
                 and not (c.reset_every and self.step % c.reset_every == 0))
        state = self.state if carry else None
        if hi == lo:  # more ranks than rows: a masked row of zeros, run with weight 0 so that every rank joins
            lo, hi, scale, state = 0, 1, 0.0, None  # the gradient reduction
        noise = None if noise_all is None else noise_all[lo:hi]
        w_kl = self.kl_weight()
        self.model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_bf16):
            out = self.net(x, mask=mask, noise=noise, state=state)
        kl_rows, nll_rows = out.kl.float().sum(1), out.nll.float().sum(1)
        loss = (w_kl * kl_rows + nll_rows).sum() * scale
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm, skipped = self._clip_and_step()
        if c.tbptt:  # an empty share keeps an empty (0, H) state
            self.state = tuple(s.detach()[: 0 if scale == 0 else None] for s in out.state)
        self.step += 1
        self.batch_in_epoch += 1
        sums = torch.tensor([float(kl_rows.detach().sum()), float(nll_rows.detach().sum()), float(mask.sum()),
                             hi - lo], dtype=torch.float64) * (scale != 0)
        if self.distributed:
            sums = sums.to(self.device)
            dist.all_reduce(sums)
        kl_sum, nll_sum, n_frames, rows = sums.tolist()
        return {"loss": (kl_sum + nll_sum) / rows, "kl": kl_sum / rows, "nll": nll_sum / rows,
                "loss_per_frame": (kl_sum + nll_sum) / max(n_frames, 1), "frames": int(n_frames),
                "grad_norm": grad_norm, "kl_weight": w_kl, "skipped": skipped}

    def _clip_and_step(self) -> tuple[float, bool]:
        """Clip, guard against a non-finite gradient norm, step, and (paper_faithful) cap weight columns."""
        c = self.config
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, c.clip if c.clip is not None else math.inf))
        if not math.isfinite(norm):
            if not c.paper_faithful:
                self.optimizer.zero_grad(set_to_none=True)
                return norm, True
            with torch.no_grad():
                for p in params:
                    p.grad.copy_(0.1 * p)
        self.optimizer.step()
        if c.paper_faithful:
            self._cap_columns()
        return norm, False

    @torch.no_grad()
    def _cap_columns(self) -> None:
        """Scale every column of each non-recurrent weight matrix (a torch row: one output unit's input weights)
        down to L2 norm at most 1.9365; the LSTM's recurrent weight_hh is left alone."""
        for name, p in self.model.named_parameters():
            if p.dim() == 2 and not name.endswith("weight_hh"):
                norms = p.norm(dim=1, keepdim=True)
                p.mul_(torch.clamp(PAPER_MAX_COLUMN_NORM / norms.clamp_min(1e-12), max=1.0))

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until ``steps`` / ``epochs`` / early stopping / a stop signal, checkpointing along the way.

        Holds the output folder's :func:`run_lock`. SIGINT (Ctrl-C), SIGTERM or SIGHUP finishes the current
        update, writes a checkpoint and returns (on every rank); a second signal stops at once
        (:class:`Interrupted`; the last checkpoint stays intact). Raises :class:`TrainingDiverged` after
        ``max_skipped_updates`` failed updates in a row or on a non-finite validation ELBO. Returns a summary
        dict with ``step``, ``epoch``, ``stopped`` ("steps" | "epochs" | "early_stopping" | "interrupted"),
        ``signal`` (the stop signal's number, or None), ``best_valid_elbo_per_frame`` and the last ``train``
        metrics.
        """
        from tqdm.auto import tqdm

        bar = tqdm(total=self.config.steps, initial=self.step, unit="step", dynamic_ncols=True, file=_Stderr(),
                   disable=self.rank != 0 or not sys.stderr.isatty())
        previous = self._install_stop_handlers()
        try:
            with run_lock(self.out_dir):
                stopped, last = self._loop(bar)
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        return {"step": self.step, "epoch": self.epoch, "stopped": stopped,
                "signal": self._stop_signal if stopped == "interrupted" else None,
                "best_valid_elbo_per_frame": None if self.best_valid is None else -self.best_valid, "train": last}

    def _loop(self, bar) -> tuple[str, dict]:
        """The updates, evaluations and checkpoints of :meth:`fit`; (why it stopped, last train metrics)."""
        c, last = self.config, {}
        window_frames, window_start = 0, time.perf_counter()
        stopped = self._done()
        while stopped is None:
            used = self.batch_in_epoch  # a resumed pass starts after the batches already used
            for share in self._epoch_batches(self.epoch, used):
                last = self._train_step(share)
                self._count_bad_update(last)
                used += 1
                window_frames += last["frames"]
                if self.step % c.log_every == 0:
                    elapsed = time.perf_counter() - window_start
                    last["frames_per_s"] = window_frames / max(elapsed, 1e-9)
                    self._log({"kind": "train", "step": self.step, "epoch": self.epoch, "lr": self.lr, **last})
                    window_frames, window_start = 0, time.perf_counter()
                    bar.set_postfix(loss=f"{last['loss']:.1f}", fps=f"{last['frames_per_s']:.0f}")
                bar.update(1)
                stopped = self._after_step()
                if self.step % c.checkpoint_every == 0 or stopped is not None:
                    self.save_checkpoint()
                if stopped is not None:
                    break
            else:
                if used == 0:
                    raise ValueError("the training set yields no batches")
                self.epoch += 1
                self.batch_in_epoch = 0
                self.state = None
                stopped = self._done()
                if stopped == "epochs" and self.valid_data is not None and self.last_valid_step != self.step:
                    self._validate()  # the last pass's model is a candidate for best.pt too
        if self.saved_step != self.step:
            self.save_checkpoint()
        return stopped, last

    def _done(self) -> str | None:
        c = self.config
        if c.steps is not None and self.step >= c.steps:
            return "steps"
        if c.epochs is not None and self.epoch >= c.epochs:
            return "epochs"
        return None

    def _after_step(self) -> str | None:
        """Evaluation / early stopping / interruption after an update; the reason to stop, or None."""
        c = self.config
        final = c.steps is not None and self.step >= c.steps
        if self.valid_data is not None and (self.step % c.eval_every == 0 or final):
            self._validate()
            if c.patience is not None and self.bad_evals >= c.patience:
                return "early_stopping"
        if self._stop_flag():
            return "interrupted"
        return "steps" if final else None

    def _count_bad_update(self, metrics: dict) -> None:
        """Divergence check: max_skipped_updates updates in a row with a non-finite loss or gradient norm."""
        bad = metrics["skipped"] or not math.isfinite(metrics["loss"])
        self.bad_updates = self.bad_updates + 1 if bad else 0
        if self.bad_updates >= self.config.max_skipped_updates:
            self._diverged(f"{self.bad_updates} updates in a row had a non-finite loss or gradient norm")

    def _diverged(self, why: str) -> NoReturn:
        self._log({"kind": "diverged", "step": self.step, "reason": why})
        kept = "no checkpoint was written" if self.saved_step is None else \
            f"{self.out_dir / CHECKPOINT_NAME} (step {self.saved_step}) is kept"
        raise TrainingDiverged(f"training diverged at step {self.step}: {why}; {kept}. Try a lower --lr, a "
                               f"--clip or --kl-warmup")

    def _validate(self) -> None:
        """Validation -ELBO per frame of the current model; a new best is saved as best.pt. A non-finite
        ELBO stops the run (TrainingDiverged)."""
        result = self.evaluate(self.valid_data)
        neg = -result["elbo_per_frame"]
        finite = math.isfinite(neg)
        improved = finite and (self.best_valid is None or neg < self.best_valid)
        if improved:
            self.best_valid, self.bad_evals = neg, 0
            self.save_checkpoint(self.out_dir / BEST_NAME)
        else:
            self.bad_evals += 1
        self.last_valid_step = self.step
        self._log({"kind": "valid", "step": self.step, "epoch": self.epoch, "improved": improved, **result})
        if not finite:
            self._diverged(f"the validation ELBO per frame is {result['elbo_per_frame']}")

    def _install_stop_handlers(self) -> dict:
        """SIGINT, SIGTERM and SIGHUP set a flag (ranks agree in _stop_flag); a second one raises Interrupted.
        Returns the previous handlers (none off the main thread, where signals cannot be handled)."""

        def handler(signum, frame):
            if self._stop_signal:
                raise Interrupted(signum)
            self._stop_signal = signum
            _Stderr().write(f"\n{signal.Signals(signum).name}: finishing this update and writing a checkpoint "
                            f"(send it again to stop at once)\n")

        previous = {}
        with contextlib.suppress(ValueError):  # ValueError: not the main thread
            for sig in STOP_SIGNALS:
                previous[sig] = signal.signal(sig, handler)
        return previous

    def _stop_flag(self) -> int:
        """The stop signal received first on any rank (0: none); every rank agrees."""
        if self.distributed:
            self._stop_signal = int(_max_over_ranks(float(self._stop_signal), self.device))
        return self._stop_signal

    def evaluate(self, dataset, n_samples: int = 0, max_batches: int | None = None) -> dict:
        """:func:`evaluate_model` of the current model on ``dataset`` (batches of the training batch size)."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_bf16):
            return evaluate_model(self.model, dataset, self.batch_size, n_samples, seed=self.config.seed,
                                  device=self.device, max_batches=max_batches, workers=self.workers,
                                  worker_init_fn=_init_loader_worker)

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        path = self.out_dir / METRICS_NAME
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({**record, "time": time.time()}) + "\n")
        except OSError as e:
            raise OSError(f"cannot write {path}: {e.strerror or e}") from e

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _global_state(self) -> tuple[Tensor, Tensor] | None:
        """The carried (h, c) of the whole global batch on the CPU (gathered from every rank under DDP)."""
        local = None if self.state is None else tuple(s.detach().cpu() for s in self.state)
        if not self.distributed:
            return local
        parts = [None] * self.world
        dist.all_gather_object(parts, local)
        if any(p is None for p in parts):
            return None
        return tuple(torch.cat([p[i] for p in parts]) for i in range(2))

    def checkpoint_dict(self) -> dict:
        """Everything needed to resume exactly (see the module docstring). Collective under DDP."""
        np_state = np.random.get_state()
        rng = {"torch": torch.get_rng_state(), "noise": self.noise_gen.get_state(),
               "numpy": {"name": np_state[0], "key": torch.from_numpy(np_state[1].astype(np.int64)),
                         "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
               "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model_config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_config": self.config.to_dict(),
            "normalizer": self.normalizer.to_dict(),
            "data": self.data_info,
            "progress": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         "best_valid": self.best_valid, "bad_evals": self.bad_evals, "world_size": self.world},
            "tbptt_state": self._global_state(),
            "rng": rng,
        }

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write the checkpoint atomically with its checksum (default ``out_dir/checkpoint.pt``); only rank 0
        writes. Non-finite weights or optimiser state are never written: TrainingDiverged instead."""
        path = Path(path) if path is not None else self.out_dir / CHECKPOINT_NAME
        bad = _non_finite(self.model.state_dict()) or _non_finite(self.optimizer.state_dict())
        if bad:
            self._diverged(f"{bad} is not finite")
        ckpt = self.checkpoint_dict()
        if self.rank == 0:
            write_checkpoint(ckpt, path)
        if path == self.out_dir / CHECKPOINT_NAME:
            self.saved_step = self.step
        return path

    def load_checkpoint(self, path: str | os.PathLike, restore_training: bool = True) -> dict:
        """Load model weights (and with ``restore_training`` the optimiser, RNG states, progress and the
        carried state) from a checkpoint. ValueError naming the file when it is unreadable or was written
        for another model config."""
        ckpt = read_checkpoint(path)
        diff = config_mismatch(self.model_config, ckpt["model_config"])
        if diff:
            raise ValueError(f"checkpoint {path} was written for another model config ({diff}; this run vs "
                             f"checkpoint)")
        try:
            self.model.load_state_dict(ckpt["model"])
            if restore_training:
                self.optimizer.load_state_dict(ckpt["optimizer"])
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(f"checkpoint {path} does not fit this model: {e}") from e
        self.normalizer = ckpt["normalizer"]
        if not restore_training:
            return ckpt
        try:
            prog, rng = ckpt["progress"], ckpt["rng"]
            self.step, self.epoch, self.batch_in_epoch = prog["step"], prog["epoch"], prog["batch_in_epoch"]
            self.best_valid, self.bad_evals = prog["best_valid"], prog["bad_evals"]
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self.noise_gen.set_state(rng["noise"])
            n = rng["numpy"]
            np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                                 n["cached"]))
            random.setstate(_as_tuple(rng["python"]))
            state = ckpt["tbptt_state"]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"checkpoint {path} is damaged (training state): {type(e).__name__}: {e}") from e
        if Path(path).resolve() == (self.out_dir / CHECKPOINT_NAME).resolve():
            self.saved_step = self.step  # this run's latest checkpoint
        self.state = None
        if state is not None and self.config.tbptt:
            lo, hi = rank_rows(state[0].shape[0], self.rank, self.world)
            self.state = tuple(s[lo:hi].to(self.device) for s in state)
        return ckpt

    def resume(self, path: str | os.PathLike | None = None) -> dict:
        """Continue exactly where the checkpoint (default ``out_dir/checkpoint.pt``) stopped."""
        return self.load_checkpoint(path if path is not None else self.out_dir / CHECKPOINT_NAME)


def _init_loader_worker(worker_id: int) -> None:
    """In a loader worker (a fork of the training process): the main process alone reacts to stop signals, and
    the worker lets go of the run locks it inherited (else a killed run's lock would outlive it in its workers;
    the lock stays held by the main process)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    for f in _HELD_LOCKS.values():
        f.close()
    _HELD_LOCKS.clear()


def _as_tuple(value):
    """Python's random state with lists turned back into tuples (as random.setstate wants)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
