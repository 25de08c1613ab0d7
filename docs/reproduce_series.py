"""Regenerate docs/reproduction-series.md: RNNs and VRNNs on public data bundled with aeon and music21.

    pip install -e '.[series-data]'
    python docs/reproduce_series.py                 # write the data, train what is missing, write the document
    python docs/reproduce_series.py --report-only   # rewrite the document from the runs already there

Three experiments, every number from this script (training and test scores through the `vrnn-fast` CLI, run as
`python -m vrnn_fast` with one thread per job; the online anomaly scores through `FastVRNN.step`):
1. aeon's multivariate JapaneseVowels and BasicMotions, aeon's own train/test split: ELBO and the 40-sample
   importance-sampled log-likelihood per time step of the test split, RNN against VRNN (Gauss and GMM outputs);
2. aeon's KDD-TSAD_135 (a heart rate with one labelled anomaly): train on the normal part, score every frame of
   the test series online (kl + nll of each frame), ROC-AUC and PR-AUC against the labels, beside an RNN's
   per-frame NLL and the |z-score| of the raw value;
3. music21's four-part Bach chorales as binary 88-key piano rolls (Bernoulli output): NLL per time step.
Runs are resumable (a run whose test.json exists is not trained again); data and checkpoints stay under --runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import REPO, cli, run_logged, show  # noqa: E402  (docs/ is not a package)

DOCS = REPO / "docs"
DOCUMENT = DOCS / "reproduction-series.md"
RESULTS = DOCS / "reproduction-series.json"

MODELS = {"rnn-gauss": "RNN-Gauss", "vrnn-gauss": "VRNN-Gauss", "rnn-gmm": "RNN-GMM", "vrnn-gmm": "VRNN-GMM"}
# set -> training updates, models, seeds (BasicMotions: 100-step sequences, 5x the cost of an update)
CLASSIFICATION = {"JapaneseVowels": (1000, tuple(MODELS), (0, 1)),
                  "BasicMotions": (500, ("rnn-gauss", "vrnn-gauss"), (0,))}
# anomaly set, training window (steps), updates, noise draws per frame, frames of the causal mean score
ANOMALY, WINDOW, ANOMALY_STEPS, DRAWS, SMOOTH = "KDD-TSAD_135", 100, 800, 16, 10
CHORALE_STEPS, CHORALE_SPLIT = 1500, (0.6, 0.2, 0.2)  # train / valid / test fractions of the chorales
EVAL_SEED = 0


# ---------------------------------------------------------------------------------------------------------
# scores (tested in tests/test_reproduce_series.py)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: the probability that a random positive frame scores above a random negative
    one (ties count 1/2), from the Mann-Whitney rank sum with tied scores given their average rank."""
    s, y = _check_scores(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties averaged
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores, labels) -> float:
    """Area under the precision-recall curve as average precision: sum over the distinct thresholds (highest
    first) of (recall_k - recall_{k-1}) * precision_k (scikit-learn's ``average_precision_score``)."""
    s, y = _check_scores(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last frame of each group of tied scores
    true_pos = np.cumsum(y)[last]
    precision, recall = true_pos / (last + 1), true_pos / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _check_scores(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, np.float64), np.asarray(labels)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores and labels must be 1-D of one length, got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or inf")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 or bool")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("labels need both classes")
    return s, y


def online_scores(model, series: np.ndarray, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """(T,) each frame's -ELBO term kl + nll as the frames arrive: ``model.step`` one frame at a time from the
    zero state, the state carried over the whole series, averaged over ``draws`` independent draws of the latent
    noise (a batch of ``draws`` copies of the series; a model without latent needs one). series (T, D),
    normalised as the model's training data."""
    import torch

    ref = model.rnn.weight_hh
    draws = draws if model.config.has_latent else 1
    x = torch.as_tensor(np.asarray(series), dtype=ref.dtype, device=ref.device)
    generator = torch.Generator(ref.device).manual_seed(seed)
    state, out = model.initial_state(draws), np.empty(len(x))
    for t in range(len(x)):
        noise = (torch.randn(draws, model.config.z_dim, generator=generator, dtype=ref.dtype, device=ref.device)
                 if model.config.has_latent else None)
        step = model.step(x[t].expand(draws, -1), state, noise=noise)
        out[t], state = float((step.kl + step.nll).mean()), step.state
    return out


def zscore_scores(normal: np.ndarray, series: np.ndarray) -> np.ndarray:
    """(T,) the largest |z-score| over the features of each raw frame of series (T, D), against the mean and
    std of the normal part (T0, D)."""
    return np.abs((series - normal.mean(0)) / normal.std(0)).max(1)


# ---------------------------------------------------------------------------------------------------------
# data


def write_data(runs: Path) -> dict:
    """The sets as .npz files under runs/data (train/ valid/ test/ folders give the CLI the split); facts."""
    from vrnn_fast.data import save_npz
    from vrnn_fast.data.public import load_aeon_anomaly, load_aeon_classification, load_bach_chorales

    data, facts = runs / "data", {}
    for name in CLASSIFICATION:
        c = load_aeon_classification(name)
        for split, seqs in (("train", c.train), ("test", c.test)):
            _save(save_npz, data / name / split / f"{name}.npz", seqs)
        facts[name] = dict(train=len(c.train), test=len(c.test), dim=c.train[0].shape[1],
                           lengths=[min(map(len, c.train + c.test)), max(map(len, c.train + c.test))],
                           test_frames=sum(map(len, c.test)))
    a = load_aeon_anomaly(ANOMALY)
    windows = [a.train[i: i + WINDOW] for i in range(0, len(a.train) - WINDOW + 1, WINDOW)]
    _save(save_npz, data / ANOMALY / "normal.npz", windows)
    np.save(data / ANOMALY / "series.npy", a.series)
    np.save(data / ANOMALY / "labels.npy", a.labels)
    at = np.nonzero(a.labels)[0]
    facts[ANOMALY] = dict(normal=len(a.train), windows=len(windows), series=len(a.series),
                          anomalous=int(a.labels.sum()), anomaly_at=[int(at[0]), int(at[-1])])
    daphnet = load_aeon_anomaly("Daphnet_S06R02E0")
    facts["Daphnet_S06R02E0"] = dict(series=len(daphnet.series), dim=daphnet.series.shape[1],
                                     anomalous=int(daphnet.labels.sum()))
    rolls = load_bach_chorales()
    names = sorted(rolls)
    order = np.random.default_rng(0).permutation(len(names))
    n_train, n_valid = (round(f * len(names)) for f in CHORALE_SPLIT[:2])
    parts = {"train": order[:n_train], "valid": order[n_train: n_train + n_valid], "test": order[n_train + n_valid:]}
    for split, idx in parts.items():
        _save(save_npz, data / "chorales" / split / "chorales.npz", [rolls[names[i]] for i in sorted(idx)])
    facts["chorales"] = {split: len(idx) for split, idx in parts.items()}
    facts["chorales"].update(frames={split: int(sum(len(rolls[names[i]]) for i in idx))
                                     for split, idx in parts.items()},
                             notes_per_step=float(np.mean([r.sum(1).mean() for r in rolls.values()])))
    return facts


def _save(save_npz, path: Path, seqs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, seqs)


# ---------------------------------------------------------------------------------------------------------
# runs


def cells() -> list[tuple[str, str, int]]:
    """(set, model, seed) of every training run, longest first."""
    out = [("chorales", m, 0) for m in ("vrnn", "rnn")]
    out += [(name, m, s) for name, (_, models, seeds) in CLASSIFICATION.items() for m in models for s in seeds]
    out += [(ANOMALY, m, 0) for m in ("vrnn-gauss", "rnn-gauss")]
    return out


def commands(runs: Path, data_set: str, model: str, seed: int) -> list[list[str]]:
    """The CLI calls behind one run: train (presets cpu-handwriting-*, --output for the series), evaluate."""
    out, data = runs / data_set / model / f"seed{seed}", runs / "data" / data_set
    if data_set == "chorales":
        preset, output, steps, every = f"cpu-handwriting-{model}-gauss", "bernoulli", CHORALE_STEPS, 100
    elif data_set == ANOMALY:
        preset, output, steps, every = f"cpu-handwriting-{model}", "gauss", ANOMALY_STEPS, 50
        data = data / "normal.npz"
    else:
        preset, output, steps, every = f"cpu-handwriting-{model}", model.split("-")[1], CLASSIFICATION[data_set][0], 50
    return [cli("train", "--data", data, "--kind", "series", "--preset", preset, "--output", output,
                "--steps", steps, "--seed", seed, "--split-seed", 0, "--eval-every", every, "--checkpoint-every", 500,
                "--log-every", 50, "--device", "cpu", "--out", out),
            cli("evaluate", "--checkpoint", out / "best.pt", "--n-samples", 40, "--seed", EVAL_SEED,
                "--json", out / "test.json")]


def run_cell(runs: Path, data_set: str, model: str, seed: int) -> str:
    name = f"{data_set}/{model}/seed{seed}"
    return run_logged(commands(runs, data_set, model, seed), runs / name, name)


def score_anomaly(runs: Path) -> dict:
    """ROC-AUC and PR-AUC of each per-frame score of the test series against its labels."""
    import torch

    from vrnn_fast.train import load_model

    torch.set_num_threads(1)
    data = runs / "data" / ANOMALY
    series, labels = np.load(data / "series.npy"), np.load(data / "labels.npy")
    normal = np.concatenate(list(np.load(data / "normal.npz").values()))
    scores = {"absolute z-score of the raw value": zscore_scores(normal, series)}
    for model in ("rnn-gauss", "vrnn-gauss"):
        net, normalizer, _ = load_model(runs / ANOMALY / model / "seed0" / "best.pt", backend="torch")
        start = time.time()
        scores[f"{MODELS[model]} kl + nll"] = online_scores(net, normalizer.normalize(series), seed=EVAL_SEED)
        print(f"online scoring with {model}: {time.time() - start:.0f} s", flush=True)
    out = {}
    for name, s in scores.items():
        smooth = np.convolve(s, np.ones(SMOOTH) / SMOOTH)[: len(s)]  # mean of the last SMOOTH frames
        out[name] = dict(roc_auc=roc_auc(s, labels), pr_auc=average_precision(s, labels),
                         roc_auc_10=roc_auc(smooth, labels), pr_auc_10=average_precision(smooth, labels),
                         rank_of_peak=int((s > s[labels].max()).sum()) + 1)
    out["_prevalence"] = float(labels.mean())
    return out


# ---------------------------------------------------------------------------------------------------------
# the document


def collect(runs: Path, facts: dict, anomaly: dict) -> dict:
    import torch

    results = {"facts": facts, "anomaly": anomaly, "runs": {}}
    for data_set, model, seed in cells():
        out = runs / data_set / model / f"seed{seed}"
        r = json.loads((out / "test.json").read_text())
        r["checkpoint"] = os.path.relpath(r["checkpoint"], REPO)
        ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
        r["parameters"] = sum(v.numel() for v in ckpt["model"].values())
        r["seconds"] = int((out / "seconds.txt").read_text())
        valid = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"valid"' in line]
        valid = [v for v in valid if v.get("kind") == "valid"]
        r["valid_sequences"] = valid[-1]["sequences"]
        valid = [v["elbo_per_frame"] for v in valid]
        r["valid_best"], r["valid_last"] = max(valid), valid[-1]  # validation ELBO per step: best, at the end
        results["runs"][f"{data_set}/{model}/seed{seed}"] = r
    return results


def verdict(name: str, rnn: list[dict], vrnn: list[dict], kind: str) -> str:
    """One line: does the VRNN's IS-40 log-likelihood beat the RNN's, seed by seed?"""
    gaps = [v["log_likelihood_per_frame"] - r["log_likelihood_per_frame"] for r, v in zip(rnn, vrnn, strict=True)]
    wins = sum(g > 0 for g in gaps)
    return (f"{name}, {kind}: VRNN minus RNN log-likelihood per step {', '.join(f'{g:+.3f}' for g in gaps)} "
            f"(seed by seed): the VRNN is higher in {wins} of {len(gaps)} seed(s).")


def still_improving(rr: dict, sets) -> str:
    """A line naming the runs of these sets whose best validation came at the last update (more would help)."""
    last = [k for k, r in rr.items() if k.split("/")[0] in sets and r["valid_last"] == r["valid_best"]]
    return ("- Runs still improving when their update budget ended (best validation at the last update): "
            f"{', '.join(last) or 'none'}.")


def valid_trend(runs: list[dict]) -> str:
    """Best and last validation ELBO per step of each run: a last far below the best is overfitting."""
    return "; ".join(f"{r['valid_best']:.2f} / {r['valid_last']:.2f}" for r in runs)


def mean_sd(values) -> str:
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")


def write_document(runs: Path, results: dict) -> None:
    facts, rr = results["facts"], results["runs"]

    def cell(key):
        return rr[key]

    minutes = sum(r["seconds"] for r in rr.values()) / 60
    lines = [TEXT["intro"].format(minutes=minutes), "## Commands\n",
             "Every run below is these two commands (shown for seed 0 of each set's VRNN; other runs differ in "
             "`--preset`, `--output`, `--seed` and the paths). "
             "`python docs/reproduce_series.py` writes the data (`runs/series-reproduction/data`, with "
             "`save_npz`), runs them (as `python -m vrnn_fast ...`, OMP_NUM_THREADS=1, two at a time) and "
             "rewrites this document.\n"]
    for data_set, model in (("JapaneseVowels", "vrnn-gauss"), (ANOMALY, "vrnn-gauss"), ("chorales", "vrnn")):
        cmds = commands(runs, data_set, model, 0)
        lines += [f"**{data_set}**\n", "```bash", *(show(c) for c in cmds), "```\n"]

    values = {f"{k}_{f}": v for k in CLASSIFICATION for f, v in facts[k].items()}
    values.update({f"{k}_steps": steps for k, (steps, _, _) in CLASSIFICATION.items()})
    lines.append(TEXT["classification"].format(**values))
    lines += ["| set | model | parameters | test ELBO / step | test log-lik. (IS-40) / step | KL / step | "
              "best-valid update | valid ELBO / step, best / last | seconds (train + eval) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, (_, models, seeds) in CLASSIFICATION.items():
        for m in models:
            rs = [cell(f"{name}/{m}/seed{s}") for s in seeds]
            lines.append(f"| {name} | {MODELS[m]} | {rs[0]['parameters']:,} | "
                         f"{mean_sd([r['elbo_per_frame'] for r in rs])} | "
                         f"{mean_sd([r['log_likelihood_per_frame'] for r in rs])} | "
                         f"{mean_sd([r['kl_per_frame'] for r in rs])} | "
                         f"{' / '.join(str(r['step']) for r in rs)} | "
                         f"{valid_trend(rs)} | "
                         f"{' / '.join(str(r['seconds']) for r in rs)} |")
    lines.append(TEXT["classification_after"])
    for name, (_, models, seeds) in CLASSIFICATION.items():
        for kind in ("gauss", "gmm"):
            if f"vrnn-{kind}" in models:
                lines.append("- " + verdict(name, [cell(f"{name}/rnn-{kind}/seed{s}") for s in seeds],
                                            [cell(f"{name}/vrnn-{kind}/seed{s}") for s in seeds], kind))
    over = [k for k, r in rr.items() if k.split("/")[0] in CLASSIFICATION and r["valid_last"] < r["valid_best"] - 1]
    lines.append("- Runs whose validation ELBO per step ended more than 1 nat below its best (overfitting; the "
                 f"best-validation checkpoint is the one scored): {', '.join(over) or 'none'}.")
    lines.append(still_improving(rr, CLASSIFICATION) + "\n")

    a, fa = results["anomaly"], facts[ANOMALY]
    held = rr[f"{ANOMALY}/vrnn-gauss/seed0"]
    lines.append(TEXT["anomaly"].format(**fa, daphnet=facts["Daphnet_S06R02E0"], window=WINDOW, draws=DRAWS,
                                        n_valid=held["valid_sequences"], n_test=held["sequences"],
                                        steps=ANOMALY_STEPS, prevalence=a["_prevalence"], smooth=SMOOTH))
    lines += [f"| per-frame score | ROC-AUC | PR-AUC | ROC-AUC, mean of {SMOOTH} | PR-AUC, mean of {SMOOTH} | "
              "frames above the anomaly's peak |", "|---|---|---|---|---|---|"]
    for name, s in a.items():
        if not name.startswith("_"):
            lines.append(f"| {name} | {s['roc_auc']:.3f} | {s['pr_auc']:.3f} | {s['roc_auc_10']:.3f} | "
                         f"{s['pr_auc_10']:.3f} | {s['rank_of_peak'] - 1} |")
    lines.append("")
    scored = {k: v for k, v in a.items() if not k.startswith("_")}
    for metric, what in (("roc_auc", "per-frame ROC-AUC"), ("pr_auc", "per-frame PR-AUC"),
                         ("roc_auc_10", f"ROC-AUC of the mean of {SMOOTH}"),
                         ("pr_auc_10", f"PR-AUC of the mean of {SMOOTH}")):
        best = max(scored, key=lambda k: scored[k][metric])
        lines.append(f"- Highest {what}: {best} ({scored[best][metric]:.3f}).")
    vrnn, rnn = scored["VRNN-Gauss kl + nll"], scored["RNN-Gauss kl + nll"]
    beats = all(vrnn[m] > max(v[m] for k, v in scored.items() if k != "VRNN-Gauss kl + nll")
                for m in ("roc_auc", "pr_auc"))
    outcome = ("beats both baselines on both per-frame metrics." if beats else
               "does not beat both baselines on both per-frame metrics "
               f"(ROC-AUC {vrnn['roc_auc']:.3f} against the RNN's {rnn['roc_auc']:.3f}; "
               f"PR-AUC {vrnn['pr_auc']:.3f} against {rnn['pr_auc']:.3f}).")
    lines.append(f"- The VRNN's online score {outcome} One series with one labelled anomaly, one training seed per "
                 "model: a single case, not a general ranking of the two models.\n")

    fc = facts["chorales"]
    lines.append(TEXT["chorales"].format(**{k: v for k, v in fc.items() if k != "frames"},
                                         frames=fc["frames"], steps=CHORALE_STEPS))
    lines += ["| model | parameters | test NLL / step, ELBO bound | test NLL / step, IS-40 | KL / step | "
              "best-valid update | valid ELBO / step, best / last | seconds |", "|---|---|---|---|---|---|---|---|"]
    for m, title in (("rnn", "RNN-Bernoulli"), ("vrnn", "VRNN-Bernoulli")):
        r = cell(f"chorales/{m}/seed0")
        lines.append(f"| {title} | {r['parameters']:,} | {-r['elbo_per_frame']:.3f} | "
                     f"{-r['log_likelihood_per_frame']:.3f} | {r['kl_per_frame']:.3f} | {r['step']} | "
                     f"{valid_trend([r])} | {r['seconds']} |")
    rnn, vrnn = cell("chorales/rnn/seed0"), cell("chorales/vrnn/seed0")
    better = vrnn["log_likelihood_per_frame"] > rnn["log_likelihood_per_frame"]
    lines.append(f"\nThe VRNN's IS-40 NLL ({-vrnn['log_likelihood_per_frame']:.3f}) is "
                 f"{'below' if better else 'not below'} the RNN's exact NLL ({-rnn['log_likelihood_per_frame']:.3f}) "
                 "on these "
                 "held-out chorales (one seed).")
    lines.append(still_improving(rr, ("chorales",)))
    lines.append(TEXT["chorales_after"])
    lines.append(TEXT["licences"])
    DOCUMENT.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {DOCUMENT}")


TEXT = {
    "intro": """# VRNNs on public series, anomalies and music

Beyond the paper's speech and handwriting ([reproduction.md](reproduction.md)): RNNs and VRNNs trained with the
`vrnn-fast` CLI on public data bundled inside the wheels of the `series-data` extra (aeon 1.6, music21 10.5; no
download), at a size a 2-core CPU trains in a minute or two. Every number here is written by
`python docs/reproduce_series.py` from its last run (raw results in
[`reproduction-series.json`](reproduction-series.json); the wall times of its training and test runs add up to
{minutes:.0f} minutes, one thread each, two at a time on a 2-core CPU shared with other work).

**Models.** The CPU handwriting presets, with `--output` set for the data: `cpu-handwriting-vrnn-*` (LSTM 128,
z 16, one ReLU layer per block: phi_x and decoder 128, phi_z, encoder and prior 64) and `cpu-handwriting-rnn-*`
(the same LSTM, no latent, phi_x and decoder widened to 237 (`-gauss`) or 221 (`-gmm`): parameter-matched to the
VRNN on pen strokes; on these data the RNN has about as many parameters as the VRNN, or more: see the parameter
columns).
`-gauss`: diagonal Gaussian output; `-gmm`: 20 diagonal components over the whole frame; music: Bernoulli.
`x_dim` is the data's D. Adam, lr 1e-3, batch 32, gradient clip 5, validation every 50 updates (100 for the
chorales), the best-validation checkpoint scored. The series are z-scored per feature on the training split
(`--normalize auto`), so ELBO and log-likelihood are per time step in those units (nats, not comparable across
sets); the piano rolls are binary and left raw.
""",
    "classification": """## 1. Multivariate series: JapaneseVowels and BasicMotions (aeon)

aeon's own split, kept by writing each split to its own folder (`train/`, `test/`: the CLI holds out about 5% of
all sequences from train for validation). JapaneseVowels: {JapaneseVowels_train} train / {JapaneseVowels_test}
test utterances of 9 speakers, {JapaneseVowels_dim} LPC cepstrum coefficients per step, {JapaneseVowels_lengths[0]}
to {JapaneseVowels_lengths[1]} steps ({JapaneseVowels_test_frames} test steps), whole sequences,
{JapaneseVowels_steps} updates, the four models, seeds 0 and 1 (mean ± sd over the two). BasicMotions:
{BasicMotions_train} / {BasicMotions_test} recordings of {BasicMotions_dim} channels (3-axis accelerometer and
gyroscope of a smart watch), {BasicMotions_lengths[1]} steps at 10 Hz ({BasicMotions_test_frames} test steps),
{BasicMotions_steps} updates (an update costs about 5x one of JapaneseVowels), Gauss models and seed 0 only, to
fit the time. Higher is better for ELBO and log-likelihood; validation every 50 updates picks the checkpoint.
""",
    "classification_after": """
The log-likelihood of a VRNN is the 40-sample importance-sampled bound (at least the ELBO); an RNN's is exact,
so its ELBO and log-likelihood columns agree.
""",
    "anomaly": """## 2. Online anomaly scoring: KDD-TSAD_135 (aeon)

UCR anomaly archive series 135 (InternalBleeding16, from the SIGKDD 2021 anomaly detection competition of Keogh
et al.): a patient's heart rate, 1 feature, {normal} normal training steps, then a test series of {series} steps
with one labelled anomaly of {anomalous} steps (steps {anomaly_at[0]}-{anomaly_at[1]}; prevalence
{prevalence:.4f}, the PR-AUC of a random score). The models train on the normal part cut into {windows} windows
of {window} steps (the CLI holds out {n_valid} for validation and {n_test} for test), {steps} updates, seed 0.
Then every frame of the test series is scored online, one `model.step` at a time from the zero state, the state
carried over all {series} steps (no reset, no look-ahead): the frame's kl + nll (its -ELBO term), for the VRNN
averaged over {draws} noise draws (a batch of {draws} copies); the RNN's kl is 0, so its score is the NLL of the
frame given its past. Baseline without a model: the absolute z-score of the raw value against the normal part's
mean and std. ROC-AUC and PR-AUC (average precision) of the per-frame score against the per-frame labels; also
of the mean of the last {smooth} scores (a smoothed score that still only looks back, as an online detector
must), and how many frames of the test series score above the anomaly's highest frame (0: the anomaly holds the
top score).

Daphnet_S06R02E0, the other anomaly series aeon 1.6 bundles ({daphnet[series]} steps, {daphnet[dim]} channels),
is not used: it has no training part and {daphnet[anomalous]} anomalous steps in the bundled excerpt (aeon
deprecates it for that reason), so there is nothing to detect.
""",
    "anomaly_after": "",
    "chorales": """## 3. Bach chorales as binary piano rolls (music21)

music21's four-part chorales ({train} + {valid} + {test} = all 331 with four parts of its 350 chorale files),
each an 88-key piano roll (MIDI 21-108) on a quarter-note grid (a key is on when one of its notes sounds at the
grid time; a held note looks like a repeated one), {notes_per_step:.2f} notes a step on average, in their
written key (no transposition). Split by chorale, seeded (numpy seed 0): 60/20/20 into `train/`, `valid/`,
`test/` folders ({frames[train]} / {frames[valid]} / {frames[test]} steps), whole chorales, {steps} updates, seed
0, Bernoulli output, NLL in nats per time step (lower is better).
""",
    "chorales_after": """
**Context, not a comparison.** The polyphonic-music literature reports test NLL per time step (nats) on JSB
Chorales: 382 chorales prepared by Boulanger-Lewandowski, Bengio and Vincent (2012, ICML: RNN-RBM, RNN-NADE) from
the MIDI files of Allan & Williams (2005, NIPS), with their train/valid/test split (229/76/77) and quarter-note
steps. Numbers on that split that this project could read in a stored public source:

| source | model | JSB test NLL / step |
|---|---|---|
| Chung et al. 2014, arXiv:1412.3555, Table 2 | tanh-RNN / GRU-RNN / LSTM-RNN (~20k parameters) | 9.10 / 8.54 / 8.67 |
| Krishnan et al. 2017 (AAAI), via Pyro's tutorial | deep Markov model, ELBO bound | 6.93 (also 7.03) |
| Pyro's DMM tutorial, its own runs | deep Markov model, ELBO bound; 1 / 2 IAF flows | 6.87; 6.82 / 6.80 |

How far each was checked: the Pyro numbers are read from the tutorial itself (pyro-ppl/pyro,
`tutorial/source/dmm.ipynb`, which notes that the paper gives both 6.93 and 7.03 for one setup); Krishnan et
al.'s only through it; the 2014 numbers from a public reading note that transcribes the paper's Table 2 with its
page numbers, not from the PDF. The RNN-RBM / RNN-NADE (2012), STORN (Bayer & Osendorfer 2014) and SRNN
(Fraccaro et al. 2016) numbers are left out: no stored source for them was found, and none is quoted from memory.

The data differ, so the numbers above frame ours without ranking them: music21's own encodings of 331 four-part
chorales (Riemenschneider's numbering; not the same selection as the 382), our own random split, our own sampling
of the scores on the quarter-note grid (88 keys, MIDI 21-108), the chorales in their written keys, and models of an
LSTM of 128 units trained for minutes on a CPU.
""",
    "licences": """## Data and licences

- **aeon** 1.6 (BSD-3-Clause) bundles the sets in `aeon/datasets/data/` of its wheel. JapaneseVowels: UCI
  Machine Learning Repository (Kudo, Toyama and Shimbo 1999, "Multidimensional curve classification using
  passing-through regions", Pattern Recognition Letters 20); BasicMotions: a student project (four people, four
  activities, a smart watch), as the headers of the `.ts` files (the UEA/UCR archive's format) say.
  KDD-TSAD_135: the UCR anomaly archive of the SIGKDD 2021 competition (Keogh, Dutta Roy, Naik and Agrawal
  2021), in TimeEval's CSV format; Daphnet_S06R02E0: UCI's Daphnet Freezing of Gait (Roggen, Plotnik
  and Hausdorff 2013, doi:10.24432/C56K78), as aeon's loader docstrings cite them. The wheel carries no licence
  of its own for these data files (aeon's BSD-3 covers its code); each set's terms are those of its origin (the
  UCI repository's page of the set; the UCR anomaly archive), which this document has not checked further.
- **music21** 10.5 (BSD-3-Clause software) ships its corpus with `music21/corpus/license.txt`: the encodings are
  distributed with the encoders' permission, each piece out of US copyright or licensed for use, some with
  restrictions on commercial use (see each file). Bach's chorales themselves are in the public domain.
""",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=str(REPO / "runs" / "series-reproduction"), help="data and checkpoints")
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    p.add_argument("--report-only", action="store_true", help="rewrite the document from the runs there")
    args = p.parse_args(argv)
    runs = Path(args.runs).resolve()
    if args.report_only:
        results = json.loads(RESULTS.read_text())
    else:
        facts = write_data(runs)
        with ThreadPoolExecutor(args.jobs) as pool:
            for message in pool.map(lambda c: run_cell(runs, *c), cells()):
                print(message, flush=True)
        results = collect(runs, facts, score_anomaly(runs))
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_document(runs, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
