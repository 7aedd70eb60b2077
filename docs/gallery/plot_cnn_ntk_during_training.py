"""
The empirical NTK of a small CNN during training
================================================

:func:`ntkit.empirical_ntk` works on any ``torch.nn.Module``: here a small convolutional network on
scikit-learn's 8x8 digits. :class:`ntkit.NTKTracker` records its NTK on 40 probe digits while
:func:`ntkit.train_network` trains it by full-batch gradient descent on centred one-hot targets, for
two channel counts. The NTK moves during training, and moves less for the wider network; the kernel
on the probe digits (sorted by class) gains a block structure as the network learns the classes.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import ntkit as nk

torch.manual_seed(0)
data = load_digits()
order = np.random.default_rng(0).permutation(len(data.target))[:300]
X = torch.tensor(data.data[order] / 16, dtype=torch.float32)     # (300, 64) pixels in [0, 1]
labels = data.target[order]
Y = torch.tensor(np.eye(10)[labels] - 0.1, dtype=torch.float32)  # centred one-hot targets
probe_index = np.argsort(labels[:40], kind="stable")               # 40 probe digits, sorted by class
probe = X[:40][probe_index]


def cnn(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),                     # rows of 64 pixels -> 1 x 8 x 8 images
        nn.Conv2d(1, channels, 3), nn.ReLU(),
        nn.Conv2d(channels, channels, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(channels * 16, 10))


results = {}
for channels in (8, 64):
    model = cnn(channels)
    print(f"{channels} channels: empirical_ntk takes method={nk.choose_method(model, probe, mode='trace')!r}")
    tracker = nk.NTKTracker(model, probe, every=25, mode="trace")
    history = nk.train_network(model, X, Y, lr=0.2, steps=200, tracker=tracker)
    results[channels] = (tracker, history)

# %%
# Left: the relative change :math:`\|\Theta(t) - \Theta(0)\|_F / \|\Theta(0)\|_F` and the training cost.
# Right: the NTK of the 64-channel network on the probe digits at the start and at the end.
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
for channels, color in ((8, "tab:orange"), (64, "tab:blue")):
    tracker, history = results[channels]
    axes[0].plot(tracker.steps, tracker.relative_change(), "o-", color=color, label=f"{channels} channels")
    axes[0].plot(history.steps, history.loss / history.loss[0], ":", color=color)
axes[0].set(xlabel="step", title="NTK change (solid), cost / cost(0) (dotted)")
axes[0].legend()
tracker = results[64][0]
for ax, index, title in ((axes[1], 0, "NTK at step 0"), (axes[2], -1, f"NTK at step {tracker.steps[-1]}")):
    ax.imshow(tracker.kernels[index].numpy(), cmap="viridis")
    ax.set(title=title, xticks=[], yticks=[])
fig.tight_layout()
