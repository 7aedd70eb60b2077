"""Full-batch gradient descent of finite networks on the paper's cost and clock."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.dynamics import LeastSquares, train_network


class Recorder:
    """A stand-in for `NTKTracker`: remembers the steps it was offered."""

    def __init__(self, every):
        self.every, self.steps = every, []

    def maybe_record(self, step):
        if step % self.every == 0:
            self.steps.append(step)
            return True
        return False


def test_linear_model_follows_discrete_closed_form(rng):
    """A linear model f(x) = w.x + b trained on C = (1/2N) sum (f - y)^2 is kernel gradient descent with
    K(x, x') = x.x' + 1, exactly, step by step (t = lr * steps)."""
    X, Xs, y = rng.standard_normal((9, 3)), rng.standard_normal((4, 3)), rng.standard_normal(9)
    model = nn.Linear(3, 1).double()
    with torch.no_grad():
        f0 = model(torch.from_numpy(X)).numpy()[:, 0]
        fs0 = model(torch.from_numpy(Xs)).numpy()[:, 0]
    tracker = Recorder(every=4)
    history = train_network(model, X, y, lr=0.3, steps=10, probe=Xs, record_every=3, tracker=tracker)
    np.testing.assert_array_equal(history.steps, [0, 3, 6, 9, 10])
    np.testing.assert_allclose(history.times, 0.3 * history.steps)
    assert tracker.steps == [0, 4, 8]
    K, Ks = X @ X.T + 1, Xs @ X.T + 1
    ls = LeastSquares(K, y, f0_train=f0)
    np.testing.assert_allclose(history.train_outputs[:, :, 0].numpy(), ls.train_outputs(steps=history.steps, lr=0.3),
                               atol=1e-12)
    np.testing.assert_allclose(history.probe_outputs[:, :, 0].numpy(),
                               ls.predict(Ks, steps=history.steps, lr=0.3, f0_test=fs0), atol=1e-12)
    expected_loss = 0.5 * ((history.train_outputs[:, :, 0].numpy() - y) ** 2).mean(1)
    np.testing.assert_allclose(history.loss, expected_loss, rtol=1e-12)


def test_network_training_records_and_lowers_the_cost(rng):
    net = nk.MLP(3).network(2, width=64, seed=0, dtype=torch.float64)
    X, y = rng.standard_normal((6, 2)), rng.standard_normal((6, 1))
    history = train_network(net, torch.from_numpy(X), torch.from_numpy(y), lr=1.0, steps=20, record_every=5)
    assert history.train_outputs.shape == (5, 6, 1) and history.probe_outputs is None
    assert np.all(np.diff(history.loss) < 0)                        # gradient descent at a stable step


def test_bad_inputs(rng):
    net = nk.MLP(2).network(2, width=8, seed=0, dtype=torch.float64)
    X, y = rng.standard_normal((5, 2)), rng.standard_normal(5)
    with pytest.raises(ValueError, match="lr"):
        train_network(net, X, y, lr=0.0, steps=3)
    with pytest.raises(ValueError, match="steps"):
        train_network(net, X, y, lr=0.1, steps=-1)
    with pytest.raises(ValueError, match="one row per input"):
        train_network(net, X, y[:3], lr=0.1, steps=3)
    with pytest.raises(ValueError, match="outputs"):
        train_network(net, X, np.ones((5, 2)), lr=0.1, steps=3)
    with pytest.raises(ValueError, match="NaN"):
        train_network(net, np.full((5, 2), np.nan), y, lr=0.1, steps=3)
    with pytest.raises(FloatingPointError, match="too large"):
        train_network(net, X * 100, y, lr=1e8, steps=50)
