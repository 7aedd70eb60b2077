"""
Figure 2: trained networks follow the Gaussian of the NTK
=========================================================

The paper's Figure 2 at a small size. Networks of depth :math:`L = 4` are trained by gradient descent on
four points of the unit circle, and their functions :math:`f(\\sin\\gamma, \\cos\\gamma)` are compared with
the :math:`t \\to \\infty` Gaussian of infinitely wide networks (Section 5): its mean (kernel regression
with :math:`\\Theta^{(4)}_\\infty`) and its 10th and 90th percentiles, from
:class:`ntkit.InfiniteWidthGP`. The paper trains widths 50 and 1000 for 1000 steps; here 400 steps,
which is as converged (the slowest direction decays as :math:`e^{-0.038 t}`).
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import ntkit as nk

arch = nk.MLP(depth=4, activation="relu", beta=0.1)
train_gamma = np.array([-2.194, -0.931, 0.963, 2.226])    # the authors' points (not printed in the paper)
y_train = np.array([-0.4, -0.2, 0.3, 0.3])
X_train = np.stack([np.sin(train_gamma), np.cos(train_gamma)], axis=1)
gamma = np.linspace(-np.pi, np.pi, 201)
X_test = np.stack([np.sin(gamma), np.cos(gamma)], axis=1)

gp = nk.InfiniteWidthGP(arch, X_train, y_train)
mean, std = gp.predict(X_test, t=np.inf, return_std=True)
z90 = 1.2815515655446004                                   # the 90th percentile of N(0, 1)

functions = {}
for width in (50, 500):
    for seed in range(5):
        net = arch.network(in_features=2, width=width, seed=seed)
        nk.train_network(net, X_train, y_train, lr=1.0, steps=400)
        with torch.no_grad():
            functions.setdefault(width, []).append(net(torch.tensor(X_test, dtype=torch.float32))[:, 0].numpy())

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for width, color in ((50, "tab:orange"), (500, "tab:blue")):
    for i, f in enumerate(functions[width]):
        ax.plot(gamma, f, color=color, lw=0.8, alpha=0.8, label=f"n = {width}" if i == 0 else None)
ax.plot(gamma, mean, "k-", lw=1.5, label="limit: mean")
ax.plot(gamma, mean - z90 * std, "k--", lw=1, label="limit: 10th and 90th percentiles")
ax.plot(gamma, mean + z90 * std, "k--", lw=1)
ax.plot(train_gamma, y_train, "ro", label="training points")
ax.set(xlabel=r"$\gamma$", ylabel=r"$f(\sin\gamma, \cos\gamma)$")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# The share of trained networks' values inside the 10-90% band of the limit, per width (0.8 if they
# follow the limiting Gaussian):
for width in (50, 500):
    inside = np.mean([(np.abs(f - mean) <= z90 * std + 1e-9).mean() for f in functions[width]])
    print(f"width {width}: {inside:.2f} of the curve inside the band")
