"""
NTK versus width
================

Theorem 1 says the NTK of a random network converges to :math:`\\Theta^{(L)}_\\infty` as the width
:math:`n` grows; the fluctuations shrink like :math:`1/\\sqrt{n}`. Here the relative Frobenius distance
between the empirical NTK (:func:`ntkit.empirical_ntk`) of networks of depth 3 and the exact limit
(:meth:`ntkit.MLP.kernel`), on 20 points of the unit circle, for widths 32 to 2048 and 4 initializations
each.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

import ntkit as nk

arch = nk.MLP(depth=3, activation="relu", beta=0.1)
gamma = np.linspace(-np.pi, np.pi, 20, endpoint=False)
X = np.stack([np.cos(gamma), np.sin(gamma)], axis=1)
limit = arch.kernel(X, get="ntk")

widths = [32, 64, 128, 256, 512, 1024, 2048]
errors = np.empty((len(widths), 4))
for i, width in enumerate(widths):
    for seed in range(errors.shape[1]):
        net = arch.network(in_features=2, width=width, seed=seed)
        E = nk.empirical_ntk(net, X, mode="trace")
        errors[i, seed] = np.linalg.norm(E - limit) / np.linalg.norm(limit)

slope = np.polyfit(np.log(widths), np.log(errors.mean(1)), 1)[0]
print(f"fitted slope of log(error) against log(width): {slope:.2f} (Theorem 1: -0.5)")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for seed in range(errors.shape[1]):
    ax.loglog(widths, errors[:, seed], "o", color="tab:blue", alpha=0.5, ms=4)
ax.loglog(widths, errors.mean(1), "-", color="tab:blue", label="mean over 4 networks")
ax.loglog(widths, errors.mean(1)[0] * np.sqrt(widths[0] / np.array(widths)), "k--",
          label=r"$\propto 1/\sqrt{n}$")
ax.set(xlabel="width n", ylabel=r"$\|\Theta_n - \Theta_\infty\|_F / \|\Theta_\infty\|_F$")
ax.legend()
fig.tight_layout()
