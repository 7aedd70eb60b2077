"""
Posterior mean and bands of an infinite network at several t
============================================================

An infinitely wide network at initialization is a Gaussian process :math:`\\mathcal{GP}(0, \\Sigma^{(L)})`;
trained by gradient descent for time :math:`t` it is still Gaussian (Section 5).
:meth:`ntkit.InfiniteWidthGP.predict` gives its mean and standard deviation at any times at once. Early in
training the mean is still near 0 and the band is the prior's; as :math:`t` grows the mean fits the data,
first along the components of large eigenvalue, and the band closes on the training points.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

import ntkit as nk

rng = np.random.default_rng(0)
x_train = np.sort(rng.uniform(-3, 3, 12))
y_train = np.sin(1.5 * x_train) + 0.3 * x_train
x_test = np.linspace(-4, 4, 200)

arch = nk.MLP(depth=3, activation="erf", beta=0.5, W_std=1.5)
gp = nk.InfiniteWidthGP(arch, x_train[:, None], y_train)
times = [0.1, 1.0, 10.0, np.inf]
mean, std = gp.predict(x_test[:, None], t=times, return_std=True)    # (4, 200) each

# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2), sharey=True)
for ax, t, m, s in zip(axes, times, mean, std, strict=True):
    ax.fill_between(x_test, m - 2 * s, m + 2 * s, color="tab:blue", alpha=0.25, label="mean +- 2 std")
    ax.plot(x_test, m, color="tab:blue", label="mean")
    ax.plot(x_train, y_train, "k.", label="training points")
    ax.set(title="t = inf" if np.isinf(t) else f"t = {t:g}", xlabel="x")
axes[0].legend(fontsize=8, loc="lower right")
fig.tight_layout()

# %%
# The largest standard deviation on the training points, at each time: it vanishes as t grows.
_, std_train = gp.predict(x_train[:, None], t=times, return_std=True)
for t, s in zip(times, std_train, strict=True):
    print(f"t = {t:>5}: max std on the data {s.max():.2e}")
