"""finetune/logreg.py: the logistic-regression sweep on separable features, and sklearn's optimum."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import separable

from finetune import logreg


def test_logreg_sweep_reaches_100_percent_on_separable_features():
    x, y = separable(40, 5, 16, 0)
    vx, vy = separable(20, 5, 16, 0)   # same centres, new noise draws
    vx = vx + np.random.default_rng(1).normal(0, 0.5, vx.shape).astype(np.float32)
    heads = logreg.fit(x, y, 5, logreg.c_grid(1e-2, 1e2, 5), max_iter=100)
    accuracy = logreg.accuracy(heads, vx, vy)
    assert max(accuracy) == 1.0 and accuracy[-1] == 1.0


@pytest.mark.slow
def test_logreg_reaches_sklearns_optimum():
    """The same objective as sklearn's lbfgs (C x summed cross-entropy + ||W||^2 / 2): ours ends
    at least as low, and both predict alike."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 1, (300, 12)) * np.linspace(0.2, 4, 12) + 3).astype(np.float32)
    y = (x[:, 0] + rng.normal(0, 1, 300) > 3).astype(int) + (x[:, 5] > 3)
    cs = [0.01, 1.0]
    heads = logreg.fit(x, y, 3, cs, max_iter=500, tolerance=1e-7)

    def objective(weight, bias, c):
        logits = torch.as_tensor(x, dtype=torch.float64) @ torch.as_tensor(weight, dtype=torch.float64)
        ce = torch.nn.functional.cross_entropy(logits + torch.as_tensor(bias, dtype=torch.float64),
                                               torch.as_tensor(y), reduction="sum")
        return (c * ce + 0.5 * (torch.as_tensor(weight, dtype=torch.float64) ** 2).sum()).item()

    for s, c in enumerate(cs):
        ref = sklearn.LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(x, y)
        ours = objective(heads.weight[s].numpy(), heads.bias[s].numpy(), c)
        assert ours <= objective(ref.coef_.T, ref.intercept_, c) * (1 + 1e-5), f"C={c}"
        assert np.allclose(heads.weight[s].numpy(), ref.coef_.T, atol=0.05), f"C={c}"
        predicted = heads.logits(torch.as_tensor(x), s).argmax(1).numpy()
        assert (predicted == ref.predict(x)).mean() > 0.99
