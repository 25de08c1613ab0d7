"""Trainer tests: exact resume, DDP (2 gloo processes) vs one process, one update vs a hand-written update,
the paper-faithful scheme, early stopping, Ctrl-C and kills during a save, checkpoint errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from vrnn_fast import VRNNConfig
from vrnn_fast.data import Batch, Normalizer, StrokeDataset
from vrnn_fast.model import FastVRNN
from vrnn_fast.train import (
    PAPER_MAX_COLUMN_NORM,
    TrainConfig,
    Trainer,
    atomic_save,
    load_model,
    read_checkpoint,
)

D = 5


def small_config(**kw) -> VRNNConfig:
    sizes = dict(x_dim=D, z_dim=3, h_dim=7, phi_x_dim=6, phi_x_layers=1, phi_z_dim=4, phi_z_layers=1, enc_dim=6,
                 enc_layers=2, prior_dim=5, prior_layers=1, dec_dim=6, dec_layers=1, batch_size=4, lr=1e-2)
    return VRNNConfig(**{**sizes, **kw})


class ArrayDataset:
    """In-memory sequences with the data API's dataset interface (shuffled batches, per-row streams)."""

    def __init__(self, seqs: list[np.ndarray], stream_steps: int = 3):
        self.seqs, self.stream_steps = seqs, stream_steps

    @property
    def num_sequences(self) -> int:
        return len(self.seqs)

    @property
    def num_frames(self) -> int:
        return sum(len(s) for s in self.seqs)

    @staticmethod
    def _collate(pieces, carry):
        t = max(len(p) for p in pieces)
        x, mask = torch.zeros(len(pieces), t, D), torch.zeros(len(pieces), t, dtype=torch.bool)
        for b, p in enumerate(pieces):
            x[b, : len(p)], mask[b, : len(p)] = torch.from_numpy(p), True
        return Batch(x, mask, carry)

    def iter_batches(self, batch_size, shuffle=True, seed=0, epoch=0, drop_last=False):
        n = len(self.seqs)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        for s in range(0, n, batch_size):
            yield self._collate([self.seqs[i] for i in order[s: s + batch_size]], False)

    def iter_stream_batches(self, batch_size, seed=0, epoch=0):
        order = np.random.default_rng([seed, epoch]).permutation(len(self.seqs))
        rows = min(batch_size, len(self.seqs))
        streams = [np.concatenate([self.seqs[i] for i in order[r::rows]]) for r in range(rows)]
        for k in range(math.ceil(max(len(s) for s in streams) / self.stream_steps)):
            chunk = [s[k * self.stream_steps: (k + 1) * self.stream_steps] for s in streams]
            chunk = [c if len(c) else np.zeros((0, D), np.float32) for c in chunk]
            batch = self._collate([c if len(c) else np.zeros((1, D), np.float32) for c in chunk], k > 0)
            for b, c in enumerate(chunk):  # a finished stream is masked out
                batch.mask[b, len(c):] = False
            yield batch


def make_data(n=10, seed=0, lo=2, hi=7) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset([rng.normal(size=(int(rng.integers(lo, hi)), D)).astype(np.float32) for _ in range(n)])


def strokes(n: int, seed: int) -> StrokeDataset:
    """n handwriting-like sequences of 3-8 rows [pen, dx, dy] as the data API's own (planned) dataset, TBPTT
    chunks of 4 steps."""
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(int(rng.integers(3, 9)), 3)).astype(np.float32) for _ in range(n)]
    for s in seqs:
        s[:, 0] = rng.random(len(s)) < 0.3
    ds = StrokeDataset(seqs, [f"s{i}" for i in range(n)], ["f"] * n)
    ds.stream_steps = 4
    return ds


def params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_params_close(a: dict, b: dict, atol=1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def train(tmp_path, name, steps, data=None, valid=None, resume=False, model_config=None, **kw) -> Trainer:
    cfg = TrainConfig(steps=steps, out_dir=str(tmp_path / name), **{"checkpoint_every": 1000, **kw})
    trainer = Trainer(model_config or small_config(), cfg, data or make_data(), valid, Normalizer(0.5, 2.0))
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer


# ----------------------------------------------------------------------------------------------------------
# Exact resume


@pytest.mark.parametrize("options", [
    dict(),
    dict(tbptt=True, reset_every=3, paper_faithful=True, kl_warmup_steps=5),
    dict(model_config=small_config(model="rnn", output="gmm", n_mix=2)),
], ids=["plain", "tbptt-paper-warmup", "rnn-gmm"])
def test_resume_equals_straight_run(tmp_path, options):
    """N updates straight == k updates, a new process-like Trainer resumed from the checkpoint, N - k more."""
    valid = make_data(4, seed=1)
    opts = dict(eval_every=2, log_every=1, **options)
    straight = train(tmp_path, "straight", 7, valid=valid, **opts)
    first = train(tmp_path, "split", 4, valid=valid, **opts)
    assert first.step == 4
    if not options.get("tbptt"):
        assert (first.epoch, first.batch_in_epoch) == (1, 1)  # stopped mid-pass (3 batches a pass)
    torch.manual_seed(1234)  # the resumed run must not depend on the global RNG it starts with
    resumed = train(tmp_path, "split", 7, valid=valid, resume=True, **opts)
    assert resumed.step == straight.step == 7 and resumed.epoch == straight.epoch
    log = [json.loads(s) for s in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 8))  # 4 updates, then 3 more
    assert_params_close(params(straight.model), params(resumed.model))
    for a, b in zip(straight.optimizer.state.values(), resumed.optimizer.state.values(), strict=True):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], atol=1e-9, rtol=0)
    if options.get("tbptt"):  # the carried state was restored, not dropped
        torch.testing.assert_close(straight.state[0], resumed.state[0])


@pytest.mark.parametrize("limit, expected", [(dict(steps=5), [2, 4, 5]), (dict(steps=None, epochs=2), [2, 4, 6]),
                                             (dict(steps=None, epochs=1), [2, 3])])
def test_last_update_is_validated(tmp_path, limit, expected):
    """Validation runs every eval_every updates and after the last one, so best.pt can be the final model."""
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), eval_every=2, checkpoint_every=1000, **limit)
    Trainer(small_config(), cfg, make_data(), make_data(4, seed=1), Normalizer(0.5, 2.0)).fit()
    log = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "valid"] == expected  # 3 batches a pass
    best = [r["step"] for r in log if r["kind"] == "valid" and r["improved"]][-1]
    assert read_checkpoint(tmp_path / "run" / "best.pt")["progress"]["step"] == best


def test_tbptt_state_is_carried_and_reset(tmp_path, monkeypatch):
    """State goes in on carry batches, except every reset_every updates and on a pass's first batch."""
    seen = []
    forward = FastVRNN.forward

    def spy(self, x, mask=None, noise=None, state=None, **kw):
        seen.append(state is not None)
        return forward(self, x, mask, noise, state, **kw)

    monkeypatch.setattr(FastVRNN, "forward", spy)
    data = make_data(4, lo=6, hi=7)  # 4 rows of 6 steps in chunks of 3: two batches per pass
    train(tmp_path, "t", 6, data=data, tbptt=True, reset_every=4)
    # steps 0..5: pass starts at 0, 2, 4 (no state); step 4 is also a reset; carried at 1, 3, 5
    assert seen == [False, True, False, True, False, True]


# ----------------------------------------------------------------------------------------------------------
# One update against a hand-written one


@pytest.mark.parametrize("warmup", [0, 4])
def test_first_update_matches_manual_adam_step(tmp_path, warmup):
    data = make_data(4)
    cfg = TrainConfig(steps=1, out_dir=str(tmp_path / "run"), seed=3, clip=0.5, kl_warmup_steps=warmup)
    trainer = Trainer(small_config(), cfg, data, None)
    model = FastVRNN(small_config())
    model.load_state_dict(trainer.model.state_dict())
    trainer.fit()

    batch = next(data.iter_batches(4, shuffle=True, seed=3, epoch=0))
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(*batch.x.shape[:2], 3, generator=gen)
    out = model(batch.x, batch.mask, noise=noise)
    w = 1.0 if warmup == 0 else 1.0 / warmup
    loss = (w * out.kl.sum(1) + out.nll.sum(1)).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    torch.optim.Adam(model.parameters(), lr=1e-2).step()
    assert_params_close(params(model), params(trainer.model), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Distributed: 2 gloo processes == 1 process on the same global batch


def ddp_trainer(name: str, out_dir, kw: dict) -> Trainer:
    """The Trainer of a DDP config: the data API's own datasets for "planned" (each rank gathers only its rows,
    in a loader worker), else ArrayDataset (read whole in the training process, then cut to the rank's rows)."""
    model, train, valid = (small_config(x_dim=3, batch_size=5), strokes(12, 0), strokes(7, 1)) if name == "planned" \
        else (small_config(batch_size=5), make_data(12), make_data(3, seed=1))
    return Trainer(model, TrainConfig(out_dir=str(out_dir), **kw), train, valid, Normalizer(0.0, 1.0))


def _ddp_worker(rank, world, init_file, out_dir, configs):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name, kw in configs:
            trainer = ddp_trainer(name, f"{out_dir}/{name}", kw)
            summary = trainer.fit()
            if rank == 0:
                grads = {k: p.grad.clone() for k, p in trainer.model.named_parameters()}  # the last update's
                torch.save({"params": params(trainer.model), "grads": grads, "summary": summary},
                           f"{out_dir}/{name}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


# No clipping: the all-reduced gradients themselves are compared (Adam's updates hide a wrong scale).
DDP_CONFIGS = [("plain", dict(steps=4, clip=None, eval_every=2, checkpoint_every=2)),
               ("tbptt", dict(steps=5, clip=None, tbptt=True, reset_every=None, eval_every=10, checkpoint_every=3)),
               ("one-row", dict(steps=2, clip=None, batch_size=1, tbptt=True)),  # rank 0 gets no rows
               ("planned", dict(steps=3, clip=None, eval_every=2, workers=1))]


def test_ddp_two_gloo_processes_equal_one_process(tmp_path):
    """Global batch 5 -> shares of 2 and 3 rows (and a last batch of 2 -> 1 + 1): DDP must weight them right."""
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp"), DDP_CONFIGS), nprocs=2)
    for name, kw in DDP_CONFIGS:
        single = ddp_trainer(name, tmp_path / "one" / name, kw)
        summary = single.fit()
        ddp = torch.load(tmp_path / "ddp" / f"{name}.pt", weights_only=False)
        assert ddp["summary"]["step"] == summary["step"] == kw["steps"]
        assert math.isclose(ddp["summary"]["train"]["loss"], summary["train"]["loss"], rel_tol=1e-5)
        # validation: each rank evaluates its rows, the sums are all-reduced
        assert math.isclose(ddp["summary"]["best_valid_elbo_per_frame"], summary["best_valid_elbo_per_frame"],
                            rel_tol=1e-6)
        # relative error of the whole gradient vector: a wrong share weighting or scale gives O(0.1-1)
        mine = torch.cat([p.grad.flatten() for p in single.model.parameters()])
        theirs = torch.cat([ddp["grads"][k].flatten() for k, _ in single.model.named_parameters()])
        assert (theirs - mine).norm() / mine.norm() < 1e-4
        # Adam turns float-rounding differences of near-zero gradient entries into ~1e-5 parameter differences
        assert_params_close(params(single.model), ddp["params"], atol=1e-4)
        # rank 0 wrote the checkpoint; it holds the whole global batch's carried state
        ckpt = read_checkpoint(tmp_path / "ddp" / name / "checkpoint.pt")
        assert ckpt["progress"]["world_size"] == 2 and ckpt["progress"]["step"] == kw["steps"]
        if kw.get("tbptt"):
            mine = read_checkpoint(tmp_path / "one" / name / "checkpoint.pt")["tbptt_state"]
            assert ckpt["tbptt_state"][0].shape == (kw.get("batch_size", 5), 7)
            torch.testing.assert_close(ckpt["tbptt_state"][0], mine[0], atol=1e-5, rtol=0)
    assert not (tmp_path / "ddp" / "plain" / "checkpoint.pt.tmp").exists()


# ----------------------------------------------------------------------------------------------------------
# Optimisation options


def test_paper_faithful_caps_columns_and_replaces_nonfinite_grads(tmp_path):
    trainer = train(tmp_path, "pf", 3, paper_faithful=True, lr=1.0)  # big steps push weights past the cap
    for name, p in trainer.model.named_parameters():
        if p.dim() == 2 and not name.endswith("weight_hh"):
            assert p.norm(dim=1).max() <= PAPER_MAX_COLUMN_NORM + 1e-5, name
    assert trainer.model.rnn.weight_hh.norm(dim=1).max() > PAPER_MAX_COLUMN_NORM  # recurrent weights untouched

    before = params(trainer.model)
    for p in trainer.model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    norm, skipped = trainer._clip_and_step()
    assert math.isnan(norm) and not skipped
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.grad, 0.1 * before[name])
        assert torch.isfinite(p).all()


def test_nonfinite_gradient_skips_update_by_default(tmp_path):
    trainer = train(tmp_path, "skip", 1)
    before = params(trainer.model)
    for p in trainer.model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    norm, skipped = trainer._clip_and_step()
    assert skipped and not math.isfinite(norm)
    assert_params_close(before, params(trainer.model), atol=0)


def test_kl_warmup_weights_in_metrics(tmp_path):
    train(tmp_path, "w", 6, kl_warmup_steps=4, log_every=1)
    lines = [json.loads(s) for s in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kl_weight"] for r in lines if r["kind"] == "train"] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert all(r["frames_per_s"] > 0 and math.isfinite(r["loss"]) for r in lines)


def test_epochs_limit_and_early_stopping(tmp_path, monkeypatch):
    t = train(tmp_path, "ep", None, epochs=2)  # 10 sequences in batches of 4: 3 batches a pass
    assert (t.step, t.epoch) == (6, 2)

    scores = iter([-5.0, -4.0, -4.5, -4.2, -4.1, -3.0])  # valid ELBO per frame: best at the 2nd evaluation
    monkeypatch.setattr(Trainer, "evaluate", lambda self, ds, **kw: {"elbo_per_frame": next(scores)})
    trainer = Trainer(small_config(), TrainConfig(steps=100, eval_every=2, patience=3, out_dir=str(tmp_path / "es")),
                      make_data(), make_data(3, seed=1))
    summary = trainer.fit()
    assert summary["stopped"] == "early_stopping" and summary["step"] == 10
    assert summary["best_valid_elbo_per_frame"] == -4.0
    assert read_checkpoint(tmp_path / "es" / "best.pt")["progress"]["step"] == 4
    assert read_checkpoint(tmp_path / "es" / "checkpoint.pt")["progress"]["step"] == 10


def test_bf16_on_cpu_warns_and_trains_in_float32(tmp_path):
    with pytest.warns(UserWarning, match="bf16"):
        trainer = Trainer(small_config(), TrainConfig(steps=1, bf16=True, out_dir=str(tmp_path)), make_data())
    assert not trainer.use_bf16
    trainer.fit()
    assert trainer.model.rnn.weight_hh.dtype == torch.float32


def test_evaluate_is_reproducible_and_leaves_global_rng_alone(tmp_path):
    trainer = Trainer(small_config(), TrainConfig(steps=1, out_dir=str(tmp_path)), make_data())
    data = make_data(5, seed=2)
    state = torch.get_rng_state()
    a, b = trainer.evaluate(data, n_samples=3), trainer.evaluate(data, n_samples=3)
    assert torch.equal(state, torch.get_rng_state())
    assert a == b and a["sequences"] == 5 and a["frames"] == data.num_frames
    assert a["log_likelihood_per_sequence"] >= a["elbo_per_sequence"] - 1.0  # IS bound is tighter (3 samples)
    assert math.isclose(a["elbo_per_frame"], -(a["kl_per_frame"] + a["nll_per_frame"]), rel_tol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: contents, errors, interruption


def test_checkpoint_contents_and_load_model(tmp_path):
    trainer = train(tmp_path, "c", 2)
    path = tmp_path / "c" / "checkpoint.pt"
    ckpt = read_checkpoint(path)
    assert set(ckpt) >= {"model_config", "model", "optimizer", "train_config", "normalizer", "progress", "rng"}
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python", "noise"}
    assert ckpt["progress"]["step"] == 2 and ckpt["normalizer"] == Normalizer(0.5, 2.0)
    assert not list(path.parent.glob("checkpoint.pt.tmp*"))
    model, norm, config = load_model(path, backend="torch")
    assert config == small_config() and norm == Normalizer(0.5, 2.0) and not model.training
    assert_params_close(params(model), params(trainer.model), atol=0)


def test_bad_checkpoints_raise_value_errors_naming_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match="checkpoint not found: .*nope.pt"):
        read_checkpoint(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read checkpoint .*garbage.pt"):
        load_model(garbage)
    train(tmp_path, "ok", 1)
    good = (tmp_path / "ok" / "checkpoint.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cannot read checkpoint .*cut.pt"):
        read_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="other.pt is not a vrnn_fast checkpoint"):
        read_checkpoint(other)
    wrong = Trainer(small_config(h_dim=9), TrainConfig(steps=1, out_dir=str(tmp_path / "ok")), make_data())
    with pytest.raises(ValueError, match=r"another model config \(h_dim: 9 vs 7"):
        wrong.resume()


def test_interrupt_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    trainer = train(tmp_path, "k", 2)
    path = tmp_path / "k" / "checkpoint.pt"

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    trainer.step = 99
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert read_checkpoint(path)["progress"]["step"] == 2


def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    """A process saving large checkpoints in a loop is SIGKILLed: checkpoint.pt is always whole."""
    path = tmp_path / "ckpt.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        from vrnn_fast.train import atomic_save
        for i in range(10_000):
            atomic_save({{"i": i, "big": torch.full((4_000_000,), float(i))}}, {str(path)!r})
            if i == 0:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(3):  # kill at some point during the stream of saves
            torch.load(path, weights_only=True)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    obj = torch.load(path, weights_only=True)
    assert obj["big"].numel() == 4_000_000 and bool((obj["big"] == obj["i"]).all())  # one whole save


def test_ctrl_c_finishes_the_update_and_checkpoints(tmp_path):
    data = make_data()
    batches = data.iter_batches

    def interrupting(*args, **kw):
        for k, batch in enumerate(batches(*args, **kw)):
            if k == 2:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    data.iter_batches = interrupting
    trainer = Trainer(small_config(), TrainConfig(steps=50, out_dir=str(tmp_path)), data)
    handler = signal.getsignal(signal.SIGINT)
    summary = trainer.fit()
    assert summary["stopped"] == "interrupted" and summary["step"] == 3
    assert read_checkpoint(tmp_path / "checkpoint.pt")["progress"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler


# ----------------------------------------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize("kw, match", [
    (dict(steps=None, epochs=None), "steps or epochs"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(lr=-1.0), r"lr must be a finite number in \(0, 10\]"),
    (dict(lr=1e300), "lr"),
    (dict(clip=float("nan")), "clip"),
    (dict(backend="cuda"), "backend"),
    (dict(device="gpu0"), "not a torch device"),
    (dict(device="meta"), "device 'meta' is not supported"),
    (dict(kl_warmup_steps=-1), "kl_warmup_steps"),
    (dict(max_skipped_updates=0), "max_skipped_updates"),
    (dict(workers=-1), "workers must be an integer >= 0 or None, got -1"),
])
def test_train_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_trainer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="train_data must be a dataset"):
        Trainer(small_config(), TrainConfig(out_dir=str(tmp_path)), [1, 2, 3])
    with pytest.raises(ValueError, match="model_config must be a VRNNConfig"):
        Trainer({"x_dim": 5}, TrainConfig(out_dir=str(tmp_path)), make_data())
    with pytest.raises(ValueError, match="yields no batches"):
        Trainer(small_config(), TrainConfig(out_dir=str(tmp_path)), ArrayDataset([])).fit()


def test_atomic_save_replaces_only_when_complete(tmp_path):
    path = tmp_path / "sub" / "x.pt"
    atomic_save({"a": torch.ones(2)}, path)
    atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert os.listdir(path.parent) == ["x.pt"]


FAULTS_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from vrnn_fast import FastVRNN, VRNNConfig
    from vrnn_fast.train import reuse_freed_memory
    took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
    torch.manual_seed(0)
    model = FastVRNN(VRNNConfig.preset("tiny"), backend="torch")
    x, mask = torch.randn(32, 40, 200), torch.arange(40) < torch.randint(20, 41, (32, 1))
    def step():
        model(x, mask).loss.backward()
    for _ in range(3):  # the heap grows to its high-water mark
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(6):
        step()
    print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_reusing_freed_memory_stops_the_page_faults_of_each_step():
    """Six training steps of tiny in a fresh process, after three: with glibc's defaults each step's few-MB buffers
    are unmapped when freed and faulted in again (hundreds of faults a step); with reuse_freed_memory() they stay
    mapped."""
    runs = {}
    for mode in ("default", "reuse"):
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        took, faults = out.stdout.split()
        runs[mode] = (took, int(faults))
    if runs["reuse"][0] != "True":
        pytest.skip("mallopt did not take (not glibc)")
    assert runs["reuse"][1] * 3 < runs["default"][1], runs
