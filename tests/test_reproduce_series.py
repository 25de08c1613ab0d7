"""The scoring helpers of docs/reproduce_series.py (ROC-AUC, average precision, the online anomaly score loop, the
z-score baseline) on tiny synthetic data: none needs the series-data extra (the comparison with scikit-learn, which
comes with it, skips without it)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model import small_config

from vrnn_fast import FastVRNN

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def rs():
    sys.path.insert(0, str(DOCS))
    try:
        spec = importlib.util.spec_from_file_location("reproduce_series", DOCS / "reproduce_series.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(DOCS))


def test_auc_of_hand_worked_cases(rs):
    y = [0, 0, 1, 1]
    assert rs.roc_auc([0.1, 0.2, 0.8, 0.9], y) == 1.0 and rs.average_precision([0.1, 0.2, 0.8, 0.9], y) == 1.0
    assert rs.roc_auc([0.9, 0.8, 0.2, 0.1], y) == 0.0
    # scores 0.1 0.4 0.35 0.8 for labels 0 0 1 1: pairs (pos > neg) 3 of 4; precision at the recalls 1/2, 1: 1, 2/3
    assert rs.roc_auc([0.1, 0.4, 0.35, 0.8], y) == 0.75
    assert rs.average_precision([0.1, 0.4, 0.35, 0.8], y) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # every score tied: ROC-AUC 1/2, average precision = the prevalence
    assert rs.roc_auc([3.0] * 5, [0, 1, 0, 0, 0]) == 0.5
    assert rs.average_precision([3.0] * 5, [0, 1, 0, 0, 0]) == pytest.approx(0.2)


def test_auc_matches_scikit_learn_with_ties(rs):
    metrics = pytest.importorskip("sklearn.metrics")
    g = np.random.default_rng(0)
    for n, p in ((50, 0.3), (997, 0.01), (200, 0.5)):
        y = g.random(n) < p
        y[:2] = [True, False]
        s = np.round(g.normal(size=n) + y, 1)  # rounded: many ties
        assert rs.roc_auc(s, y) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
        assert rs.average_precision(s, y) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("scores, labels, fragment", [
    ([0.1, np.nan], [0, 1], "NaN"), ([0.1, 0.2], [1, 1], "both classes"), ([0.1, 0.2], [0, 2], "0/1"),
    ([0.1, 0.2, 0.3], [0, 1], "one length")])
def test_auc_refuses_bad_input(rs, scores, labels, fragment):
    for f in (rs.roc_auc, rs.average_precision):
        with pytest.raises(ValueError, match=fragment):
            f(scores, labels)


@pytest.mark.parametrize("model", ["vrnn", "rnn"])
def test_online_scores_are_the_forward_terms_averaged_over_draws(rs, model):
    """The step loop over a whole series gives, frame by frame, the mean over the draws of kl + nll of one
    whole-sequence forward of the draws-many copies with the same noise (float64)."""
    torch.manual_seed(0)
    net = FastVRNN(small_config(model, "gauss", x_dim=2), backend="torch").double().eval()
    series = np.random.default_rng(1).normal(size=(23, 2))
    draws = 3
    got = rs.online_scores(net, series, draws=draws, seed=5)
    g = torch.Generator().manual_seed(5)
    n = draws if model == "vrnn" else 1
    noise = torch.stack([torch.randn(n, net.config.z_dim, generator=g, dtype=torch.float64) for _ in series], 1)
    x = torch.as_tensor(series)[None].expand(n, -1, -1)
    with torch.no_grad():
        out = net(x, noise=noise if model == "vrnn" else None)
    np.testing.assert_allclose(got, (out.kl + out.nll).mean(0).numpy(), rtol=1e-10, atol=1e-10)


def test_zscore_baseline_takes_the_largest_feature(rs):
    normal = np.array([[0.0, 10.0], [2.0, 10.0], [0.0, 14.0], [2.0, 14.0]])  # mean (1, 12), std (1, 2)
    np.testing.assert_allclose(rs.zscore_scores(normal, np.array([[1.0, 12.0], [4.0, 12.0], [1.0, 4.0]])),
                               [0.0, 3.0, 4.0])
