"""
Finite transformers approach the infinite-attention kernel
==========================================================

A transformer encoder block (:class:`ntkit.layers.SelfAttention` with softmax attention and linear scaling,
:class:`ntkit.layers.TokenLinear` MLP layers, residuals and LayerNorm) described once: its exact infinite-width NTK
(Hron et al. 2020, "Infinite attention") and finite transformers in the NTK parametrization whose width (channels,
keys and values per head) grows. The relative Frobenius distance between the empirical NTK of 3 random networks per
width and the kernel, on 6 random sequences of 8 features and 6 positions, shrinks like :math:`1/\\sqrt{n}`.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import ntkit as nk
from ntkit.layers import SelfAttention, TokenLinear

block = [nk.Residual(SelfAttention(n_heads=2, b_std=0.1, pos_emb_type="sum")), nk.LayerNorm(),
         nk.Residual(TokenLinear(b_std=0.1), nk.ReLU(), TokenLinear(b_std=0.1)), nk.LayerNorm()]
encoder = nk.Sequential(TokenLinear(b_std=0.1), *block, nk.GlobalAvgPool(), nk.Linear())
X = torch.as_tensor(np.random.default_rng(0).standard_normal((6, 8, 6)))
limit = encoder.kernel(X).numpy()

widths = [16, 32, 64, 128, 256]
errors = np.empty((len(widths), 3))
for i, width in enumerate(widths):
    for seed in range(errors.shape[1]):
        net = encoder.network(in_shape=(8, 6), width=width, seed=seed, dtype=torch.float64)
        E = nk.empirical_ntk(net, X, mode="trace").numpy()
        errors[i, seed] = np.linalg.norm(E - limit) / np.linalg.norm(limit)

slope = np.polyfit(np.log(widths), np.log(errors.mean(1)), 1)[0]
print(f"fitted slope of log(error) against log(width): {slope:.2f} (Theorem 1: -0.5)")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for seed in range(errors.shape[1]):
    ax.loglog(widths, errors[:, seed], "o", color="tab:purple", alpha=0.5, ms=4)
ax.loglog(widths, errors.mean(1), "-", color="tab:purple", label="mean over 3 transformers")
ax.loglog(widths, errors.mean(1)[0] * np.sqrt(widths[0] / np.array(widths)), "k--", label=r"$\propto 1/\sqrt{n}$")
ax.set(xlabel="width n (channels, keys and values per head)",
       ylabel=r"$\|\Theta_n - \Theta_\infty\|_F / \|\Theta_\infty\|_F$")
ax.legend()
fig.tight_layout()
