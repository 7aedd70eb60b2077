"""
Figure 1: the NTK converges as the width grows
==============================================

The paper's Figure 1 at a small size. For networks of depth :math:`L = 4` (ReLU, :math:`\\beta = 0.1`)
the NTK :math:`\\Theta(x_0, x)` between :math:`x_0 = (1, 0)` and the points :math:`x = (\\cos\\gamma,
\\sin\\gamma)` of the unit circle, at initialization and after 100 steps of gradient descent
(:math:`t = \\eta \\times \\text{steps} = 100`) on :math:`f^*(x) = x_1 x_2`, for two widths a decade
apart, against the limit :math:`\\Theta^{(4)}_\\infty` (Theorem 1). The wider networks vary less around the
limit and move less in training (Theorem 2). The paper uses widths 500 and 10000 and 200 steps;
``ntkit reproduce fig1 --full`` runs those sizes.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import ntkit as nk

arch = nk.MLP(depth=4, activation="relu", beta=0.1)
gamma = np.linspace(-np.pi, np.pi, 101)
X = np.stack([np.cos(gamma), np.sin(gamma)], axis=1)
center = 50                                        # gamma = 0: x0 = (1, 0)
limit = arch.kernel(X[[center]], X, get="ntk")[0]  # Theta^(4)_inf(x0, x), exact

probe = torch.tensor(X, dtype=torch.float32)
widths, inits, steps = (50, 500), 4, 100
curves = {}                                        # (width, time) -> list of Theta(x0, .) rows
for width in widths:
    for init in range(inits):
        net = arch.network(in_features=2, width=width, seed=init)
        tracker = nk.NTKTracker(net, probe, mode="trace")
        tracker.record(0)
        data = torch.Generator().manual_seed(1000 + init)
        for _ in range(steps):                     # a fresh batch of N(0, I_2) inputs each step
            x = torch.randn(100, 2, generator=data)
            nk.train_network(net, x, x[:, :1] * x[:, 1:], lr=1.0, steps=1)
        tracker.record(steps)
        for step, kernel in zip(tracker.steps, tracker.kernels, strict=True):
            curves.setdefault((width, step), []).append(kernel[center].numpy())

# %%
# The NTK at :math:`t = 0` (left) and :math:`t = 100` (right): solid lines for the wider networks,
# dotted for the narrower ones, and the limit dashed.
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
colors = {widths[0]: "tab:orange", widths[1]: "tab:blue"}
for ax, step in zip(axes, (0, steps), strict=True):
    for width in widths:
        for i, row in enumerate(curves[(width, step)]):
            ax.plot(gamma, row, color=colors[width], lw=1, ls="-" if width == widths[1] else ":",
                    label=f"n = {width}" if i == 0 else None)
    ax.plot(gamma, limit, "k--", lw=1.5, label=r"$\Theta^{(4)}_\infty$")
    ax.set(title=f"t = {step}", xlabel=r"$\gamma$")
axes[0].set_ylabel(r"$\Theta(x_0, x)$")
axes[0].legend()
fig.tight_layout()

# %%
# How far each width's NTK moved during training, on the whole circle, relative to its start:
for width in widths:
    moved = [np.linalg.norm(a - b) / np.linalg.norm(a)
             for a, b in zip(curves[(width, 0)], curves[(width, steps)], strict=True)]
    print(f"width {width:4d}: relative change of Theta(x0, .) {np.mean(moved):.3f}")
