"""
Figure 3: convergence along a kernel principal component
========================================================

The paper's Figure 3 at a small size, on real MNIST digits when they are available (otherwise
scikit-learn's 8x8 digits, and the output says so). The first kernel principal components
:math:`f^{(i)}` of :math:`\\Theta^{(5)}_\\infty` on the digits (:func:`ntkit.kernel_pca`); networks are
trained towards :math:`f^* = f_\\theta(0) + 0.5 f^{(2)}`, and their error is split into its part
:math:`g_t` along :math:`f^{(2)}` and the rest :math:`h_t` (:func:`ntkit.decompose`). In the limit
:math:`\\|g_t\\| = 0.5\\, e^{-\\lambda_2 t}` and :math:`h_t = 0`; wider networks stay closer to both.
The paper uses 512 digits, widths 100 to 10000 and t up to 4000; here 256 digits, widths 30 and 300,
and 400 steps at learning rate 5 (t = 2000).
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import ntkit as nk
from ntkit.data import load_digits

digits = load_digits(256, seed=0, download=False)     # MNIST from $NTKIT_DATA, else scikit-learn's digits
print("MNIST test digits" if digits.is_mnist else digits.note)

arch = nk.MLP(depth=5, activation="relu", beta=0.1)
K = arch.kernel(digits.X, get="ntk")
pca = nk.kernel_pca(K, 3)
print("lambda_1, lambda_2, lambda_3 =", np.array2string(pca.eigenvalues, precision=4))
direction, lam = pca.components[:, 1], pca.eigenvalues[1]

X = torch.tensor(digits.X, dtype=torch.float32)
curves = {}
for width in (30, 300):
    net = arch.network(in_features=X.shape[1], width=width, seed=0)
    with torch.no_grad():
        f0 = net(X)[:, 0].double().numpy()
    f_star = f0 + 0.5 * direction
    history = nk.train_network(net, X, f_star[:, None], lr=5.0, steps=400, record_every=8)
    outputs = history.train_outputs[:, :, 0].double().numpy()
    curves[width] = (history.times, *nk.decompose(outputs, f_star, direction))

# %%
# (a) the digits at coordinates :math:`(f^{(2)}(x), f^{(3)}(x))`; (b) :math:`\|h_t\|`; (c)
# :math:`\|g_t\|` with the limit :math:`0.5\, e^{-\lambda_2 t}`.
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
points = axes[0].scatter(pca.components[:, 1], pca.components[:, 2], c=digits.labels, cmap="tab10", s=8)
axes[0].set(xlabel="$f^{(2)}$", ylabel="$f^{(3)}$", title="(a) digits")
fig.colorbar(points, ax=axes[0], ticks=range(10))
for width, color in ((30, "tab:orange"), (300, "tab:blue")):
    times, g, h = curves[width]
    axes[1].plot(times, h, color=color, label=f"n = {width}")
    axes[2].plot(times, g, color=color, label=f"n = {width}")
times = curves[300][0]
axes[2].plot(times, 0.5 * np.exp(-lam * times), "k--", label="limit")
axes[1].set(xlabel="t", title=r"(b) $\|h_t\|$")
axes[2].set(xlabel="t", title=r"(c) $\|g_t\|$")
axes[1].legend()
axes[2].legend()
fig.tight_layout()
