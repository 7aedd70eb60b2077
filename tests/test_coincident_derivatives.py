"""Derivatives of kernels in the inputs at identical inputs, for smooth activations.

The maps of smooth activations are smooth at coincident pairs (x = y, where the angle is 0), but a formula that
takes the square root of s^2 = q1 q2 - c^2 and squares it again has a zero derivative there (d s / d c is infinite
at s = 0). The mixed second derivatives d^2 K(x, y) / dx_a dy_b at y = x (the diagonal of a physics-informed
network's K_rr, the Hessians of Gaussian-process regression with derivative observations) are checked here against
central finite differences refined by one Richardson step (error O(h^4) + rounding eps K / h^2, about 1e-9 of the
scale at h = 1e-3 in float64).
"""

from __future__ import annotations

import pytest
import torch

import ntkit as nk

f64 = torch.float64
SMOOTH = ("erf", "gelu", "gaussian", "sin", "cos", "exp", "rbf", "tanh")


def _arch(name: str) -> nk.Sequential:
    act = nk.Activation(name)
    return nk.Sequential(nk.Linear(W_std=1.2, b_std=0.3), act, nk.Linear(), act, nk.Linear())


def _mixed_autograd(arch, x0, get):
    x, y = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    gx, = torch.autograd.grad(arch.kernel(x[None], y[None], get=get)[0, 0], x, create_graph=True)
    return torch.stack([torch.autograd.grad(gx[a], y, retain_graph=True)[0] for a in range(len(x0))])


def _mixed_differences(arch, x0, get, h):
    d = len(x0)
    step = torch.eye(d, dtype=f64) * h
    X = torch.stack([x0 + step[a] * sign for a in range(d) for sign in (1, -1)])
    K = arch.kernel(X, X, get=get).reshape(d, 2, d, 2)
    return (K[:, 0, :, 0] - K[:, 0, :, 1] - K[:, 1, :, 0] + K[:, 1, :, 1]) / (4 * h * h)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("name", SMOOTH)
def test_mixed_second_derivatives_at_identical_inputs(name, get):
    x0 = torch.tensor([0.4, -0.9, 0.3], dtype=f64)
    arch = _arch(name)
    exact = _mixed_autograd(arch, x0, get)
    coarse, fine = _mixed_differences(arch, x0, get, 2e-3), _mixed_differences(arch, x0, get, 1e-3)
    richardson = (4 * fine - coarse) / 3
    scale = float(richardson.abs().max())
    assert scale > 0
    torch.testing.assert_close(exact, richardson, rtol=0, atol=1e-7 * scale)
