"""Reliability of training runs (issue 11): stop signals, the output-folder lock, divergence, checkpoint
checksums and field checks, full disks, and fault injection: runs SIGKILLed at random points (inside saves too,
one process and two gloo ranks) lose nothing they reported saved and end where an uninterrupted run ends."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import ArrayDataset, assert_params_close, make_data, params, small_config, train

import vrnn_fast.train as train_module
from vrnn_fast.data import Normalizer
from vrnn_fast.train import (
    CHECKPOINT_NAME,
    LOCK_NAME,
    Interrupted,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    atomic_save,
    checkpoint_digest,
    read_checkpoint,
    run_lock,
    write_checkpoint,
)

TESTS = Path(__file__).parent


# ----------------------------------------------------------------------------------------------------------
# Stop signals


def _signalling(data: ArrayDataset, at: int, sig: int, times: int = 1) -> ArrayDataset:
    """data whose shuffled batches send ``sig`` ``times`` times to this process before batch number ``at``."""
    batches = data.iter_batches

    def iter_batches(*args, **kw):
        for k, batch in enumerate(batches(*args, **kw)):
            for _ in range(times if k == at else 0):
                os.kill(os.getpid(), sig)
            yield batch

    data.iter_batches = iter_batches
    return data


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_finish_the_update_and_checkpoint(tmp_path, sig):
    data = _signalling(make_data(), 2, sig)
    trainer = Trainer(small_config(), TrainConfig(steps=50, out_dir=str(tmp_path)), data)
    before = {s: signal.getsignal(s) for s in train_module.STOP_SIGNALS}
    summary = trainer.fit()
    assert summary["stopped"] == "interrupted" and summary["signal"] == sig and summary["step"] == 3
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME)["progress"]["step"] == 3
    assert {s: signal.getsignal(s) for s in train_module.STOP_SIGNALS} == before


def test_sighup_with_the_terminal_gone_still_checkpoints(tmp_path, monkeypatch):
    class GoneTerminal:
        def write(self, text):
            raise OSError(errno.EIO, "Input/output error")

        def flush(self):
            raise OSError(errno.EIO, "Input/output error")

        def isatty(self):
            return True  # the progress bar is on

    monkeypatch.setattr(sys, "stderr", GoneTerminal())
    trainer = Trainer(small_config(), TrainConfig(steps=50, out_dir=str(tmp_path)),
                      _signalling(make_data(), 2, signal.SIGHUP))
    summary = trainer.fit()
    assert summary["signal"] == signal.SIGHUP and summary["step"] == 3
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME)["progress"]["step"] == 3


def test_a_second_signal_stops_at_once(tmp_path):
    data = _signalling(make_data(), 1, signal.SIGTERM, times=2)
    trainer = Trainer(small_config(), TrainConfig(steps=50, out_dir=str(tmp_path), checkpoint_every=1), data)
    with pytest.raises(Interrupted) as e:
        trainer.fit()
    assert e.value.signum == signal.SIGTERM
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME)["progress"]["step"] == 1  # the last whole checkpoint


# ----------------------------------------------------------------------------------------------------------
# The output-folder lock


def test_run_lock_is_exclusive_reentrant_and_taken_over_when_stale(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from vrnn_fast.train import run_lock
        with run_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        trainer = Trainer(small_config(), TrainConfig(steps=1, out_dir=str(out)), make_data())
        with pytest.raises(ValueError, match=rf"in use by another training run \(PID {holder.pid}\)"):
            trainer.fit()
    finally:
        holder.kill()  # SIGKILL: no cleanup, the lock file still names the dead holder
        holder.wait()
    assert (out / LOCK_NAME).read_text().strip() == str(holder.pid)
    with pytest.warns(UserWarning, match=f"PID {holder.pid} ended without releasing it"), run_lock(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())  # stale: taken over
        assert trainer.fit()["step"] == 1  # the Trainer's own lock is re-entrant
    assert (out / LOCK_NAME).read_text() == ""  # released cleanly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.fit()  # no warning after a clean release


def test_filesystem_without_locks_warns_and_runs(tmp_path, monkeypatch):
    def no_locks(f, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(train_module.fcntl, "flock", no_locks)
    trainer = Trainer(small_config(), TrainConfig(steps=1, out_dir=str(tmp_path)), make_data())
    with pytest.warns(UserWarning, match="cannot lock .*No locks available.*second run"):
        assert trainer.fit()["step"] == 1


# ----------------------------------------------------------------------------------------------------------
# Divergence


def test_exploding_data_stops_after_max_skipped_updates(tmp_path):
    huge = ArrayDataset([np.full((4, 5), 1e20, np.float32) for _ in range(8)])  # NLL overflows float32
    cfg = TrainConfig(steps=50, out_dir=str(tmp_path), checkpoint_every=2, max_skipped_updates=3)
    with pytest.raises(TrainingDiverged, match=r"at step 3: 3 updates in a row .* \(step 2\) is kept"):
        Trainer(small_config(), cfg, huge).fit()
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME)["progress"]["step"] == 2


def test_nonfinite_validation_elbo_stops_without_touching_best(tmp_path, monkeypatch):
    scores = iter([-5.0, float("nan")])
    monkeypatch.setattr(Trainer, "evaluate", lambda self, ds, **kw: {"elbo_per_frame": next(scores)})
    trainer = Trainer(small_config(), TrainConfig(steps=10, eval_every=2, checkpoint_every=3,
                                                  out_dir=str(tmp_path)), make_data(), make_data(3, seed=1))
    with pytest.raises(TrainingDiverged, match="at step 4: the validation ELBO per frame is nan"):
        trainer.fit()
    assert read_checkpoint(tmp_path / "best.pt")["progress"]["step"] == 2
    assert read_checkpoint(tmp_path / "best.pt")["progress"]["best_valid"] == 5.0


def test_nonfinite_weights_are_never_saved(tmp_path):
    trainer = train(tmp_path, "w", 2)
    path = tmp_path / "w" / CHECKPOINT_NAME
    before = path.read_bytes()
    with torch.no_grad():
        trainer.model.rnn.bias[0] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"rnn.bias is not finite.*\(step 2\) is kept"):
        trainer.save_checkpoint()
    assert path.read_bytes() == before


def test_real_divergence_from_a_huge_learning_rate(tmp_path):
    """lr = 10 (the largest allowed) blows a tiny model up within a few updates: an error, not a NaN model."""
    cfg = TrainConfig(steps=200, lr=10.0, clip=None, out_dir=str(tmp_path), checkpoint_every=1, eval_every=5,
                      max_skipped_updates=2)
    data = ArrayDataset([np.random.default_rng(i).normal(size=(6, 5)).astype(np.float32) * 50 for i in range(8)])
    with pytest.raises(TrainingDiverged):
        Trainer(small_config(), cfg, data, make_data(3, seed=1)).fit()
    for name in (CHECKPOINT_NAME, "best.pt"):
        if (tmp_path / name).exists():
            read_checkpoint(tmp_path / name)  # finite, whole, checksum verified


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files: checksum, field checks, full disks


def test_checksum_covers_every_field_and_survives_a_round_trip(tmp_path):
    trainer = train(tmp_path, "c", 2)
    ckpt = trainer.checkpoint_dict()
    digest = checkpoint_digest(ckpt)
    write_checkpoint(ckpt, tmp_path / "x.pt")
    loaded = torch.load(tmp_path / "x.pt", weights_only=True)
    assert loaded["checksum"] == digest == checkpoint_digest(loaded)
    loaded["rng"]["python"] = (3, (*loaded["rng"]["python"][1][:-1], 0), None)
    assert checkpoint_digest(loaded) != digest
    old = {**ckpt, "format": "vrnn_fast-checkpoint-1"}  # written before checksums: still read
    atomic_save(old, tmp_path / "old.pt")
    assert read_checkpoint(tmp_path / "old.pt")["progress"]["step"] == 2


@pytest.mark.parametrize("change, match", [
    (lambda p: p.update(step=-1), "progress.step must be an integer >= 0"),
    (lambda p: p.update(epoch=1.5), "progress.epoch"),
    (lambda p: p.update(best_valid=float("nan")), "progress.best_valid"),
    (lambda p: p.pop("batch_in_epoch"), "batch_in_epoch"),
])
def test_progress_fields_are_validated(tmp_path, change, match):
    trainer = train(tmp_path, "p", 1)
    ckpt = trainer.checkpoint_dict()
    change(ckpt["progress"])
    write_checkpoint(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=f"bad.pt is damaged: .*{match}"):
        read_checkpoint(tmp_path / "bad.pt")


def test_nonfinite_optimizer_state_is_refused(tmp_path):
    ckpt = train(tmp_path, "o", 1).checkpoint_dict()
    ckpt["optimizer"]["state"][0]["exp_avg_sq"].fill_(float("inf"))
    write_checkpoint(ckpt, tmp_path / "inf.pt")
    with pytest.raises(ValueError, match=r"non-finite optimizer values .*state.0.exp_avg_sq"):
        read_checkpoint(tmp_path / "inf.pt")


@pytest.mark.parametrize("fail_after", [0, 3])
def test_full_disk_removes_the_tmp_and_keeps_the_previous_file(tmp_path, monkeypatch, fail_after):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(3)}, path)

    class FullDisk(io.FileIO):
        writes = 0

        def write(self, b):
            FullDisk.writes += 1
            if FullDisk.writes > fail_after:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(b)

    monkeypatch.setattr(train_module, "open", lambda p, mode="r", **kw: FullDisk(p, "w"), raising=False)
    with pytest.raises(OSError, match=r"cannot write .*x.pt: No space left on device \(the previous x.pt"):
        atomic_save({"a": torch.zeros(100_000)}, path)
    assert os.listdir(tmp_path) == ["x.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))


def test_full_disk_on_fsync_or_rename(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(3)}, path)
    monkeypatch.setattr(train_module.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EROFS, "Read"
                                                                                               "-only file system")))
    with pytest.raises(OSError, match="Read-only file system"):
        atomic_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["x.pt"]


# ----------------------------------------------------------------------------------------------------------
# Fault injection


WORKER = """
import os, sys, time
sys.path.insert(0, {tests!r})
import torch.distributed as dist
import torch.multiprocessing as mp
from test_train import make_data, small_config
from vrnn_fast.data import Normalizer
from vrnn_fast.train import TrainConfig, Trainer

def say(text):  # one write per line: the ranks share stdout
    os.write(1, (text + "\\n").encode())


STEPS, WORLD, OUT, INIT = {steps}, {world}, {out!r}, {init!r}


def config():
    return TrainConfig(steps=STEPS, out_dir=OUT, checkpoint_every=1, eval_every=3, log_every=1, clip=None)


def main(rank):
    if WORLD > 1:
        dist.init_process_group("gloo", init_method="file://" + INIT, rank=rank, world_size=WORLD)
    say(f"pid {{rank}} {{os.getpid()}}")
    replace, save = os.replace, Trainer.save_checkpoint

    def slow_replace(a, b):  # widen each save so that random kills land inside saves too
        say(f"saving {{os.path.basename(b)}}")
        time.sleep(0.01)
        replace(a, b)

    def reporting_save(self, path=None):
        written = save(self, path)
        if self.rank == 0:
            say(f"saved {{written.name}} {{self.step}}")
        return written

    os.replace, Trainer.save_checkpoint = slow_replace, reporting_save
    trainer = Trainer(small_config(batch_size=5), config(), make_data(12), make_data(3, seed=1), Normalizer(0, 1))
    if os.path.exists(os.path.join(OUT, "checkpoint.pt")):
        trainer.resume()
    summary = trainer.fit()
    say(f"done {{rank}} {{summary['step']}} {{summary['stopped']}} {{summary['signal']}}")
    if WORLD > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    if WORLD > 1:
        mp.start_processes(main, nprocs=WORLD, start_method="fork")  # no second torch import per rank
    else:
        main(0)
"""


class Worker:
    """A training process (group) whose stdout lines are collected by a thread."""

    def __init__(self, tmp_path: Path, out: Path, steps: int, world: int, attempt: int):
        script = tmp_path / f"worker{attempt}.py"
        script.write_text(WORKER.format(tests=str(TESTS), steps=steps, world=world, out=str(out),
                                        init=str(tmp_path / f"init{attempt}")))
        self.proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")))
        self.thread.start()

    def wait_for(self, prefix: str, after: int = 0, timeout: float = 120) -> bool:
        """Wait until a line starting with ``prefix`` appears at index >= after; False if the process ended."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(s.startswith(prefix) for s in self.lines[after:]):
                return True
            if self.proc.poll() is not None and not self.thread.is_alive():
                return False
            time.sleep(0.005)
        raise AssertionError(f"no {prefix!r} line within {timeout} s: {self.lines}")

    def finish(self, kill: bool = False) -> int:
        if kill:
            with contextlib.suppress(ProcessLookupError):  # it may have ended just before
                os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait(timeout=120)
        self.thread.join()
        return code

    def saved(self, name: str) -> int | None:
        steps = [int(s.split()[2]) for s in self.lines if s.startswith(f"saved {name} ")]
        return steps[-1] if steps else None


def _check_nothing_saved_is_lost(out: Path, worker: Worker) -> int:
    """Every file is whole (checksum verified) and at least as new as the last save the run reported."""
    step = read_checkpoint(out / CHECKPOINT_NAME)["progress"]["step"]
    assert step >= (worker.saved(CHECKPOINT_NAME) or 0)
    if (out / "best.pt").exists():
        best = read_checkpoint(out / "best.pt")["progress"]["step"]
        assert best >= (worker.saved("best.pt") or 0)
    return step


@pytest.mark.parametrize("world, kills", [(1, 3), (2, 1)], ids=["one-process", "two-gloo-ranks"])
def test_random_kills_lose_nothing_saved(tmp_path, world, kills):
    """SIGKILL at random points (the first inside a save, then anywhere), resume, repeat; then a graceful
    SIGTERM (two ranks: to rank 1 only; every rank stops). The run ends where an uninterrupted one does."""
    rng = random.Random(world)
    out = tmp_path / "run"
    for attempt in range(kills + 1):
        worker = Worker(tmp_path, out, 1000, world, attempt)
        assert worker.wait_for("saved checkpoint.pt")  # each run makes progress before it is stopped
        if attempt < kills:
            if attempt == 0:
                worker.wait_for("saving", after=len(worker.lines))
                time.sleep(rng.uniform(0, 0.012))
            else:
                time.sleep(rng.uniform(0, 0.15))
            worker.finish(kill=True)
            _check_nothing_saved_is_lost(out, worker)
    # ranks share stdout and print writes the text and its newline separately, so lines may run together
    pid = int(re.search(rf"pid {world - 1} (\d+)", "\n".join(worker.lines)).group(1))
    os.kill(pid, signal.SIGTERM)
    assert worker.finish() == 0, worker.lines
    stops = [s.split()[1:] for s in worker.lines if s.startswith("done")]
    step = worker.saved(CHECKPOINT_NAME)
    assert sorted(stops) == [[str(r), str(step), "interrupted", str(int(signal.SIGTERM))] for r in range(world)]
    assert _check_nothing_saved_is_lost(out, worker) == step
    straight = Trainer(small_config(batch_size=5), TrainConfig(steps=step, out_dir=str(tmp_path / "straight"),
                                                               eval_every=3, clip=None, checkpoint_every=1000),
                       make_data(12), make_data(3, seed=1), Normalizer(0, 1))
    straight.fit()
    assert_params_close(params(straight.model), read_checkpoint(out / CHECKPOINT_NAME)["model"],
                        atol=1e-6 if world == 1 else 1e-4)
