"""
MNIST with NTKClassifier
========================

:class:`ntkit.sklearn.NTKClassifier` predicts with an infinitely wide MLP trained to convergence on
centred one-hot targets: kernel regression with :math:`\\Theta^{(L)}_\\infty`. Here it is trained on 2000
real MNIST test digits and tested on 1000 others, against scikit-learn's ``SVC`` with its default RBF
kernel. When the MNIST files are not available (give ``NTKIT_DATA``, a folder of the IDX files), the
example uses scikit-learn's 8x8 digits instead and says so. ``benchmarks/sklearn_mnist.py`` runs the
comparison at 5000 training digits.
"""

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.svm import SVC

from ntkit.data import load_digits
from ntkit.sklearn import NTKClassifier

mnist = load_digits(1, download=False).is_mnist           # MNIST from $NTKIT_DATA, else scikit-learn's digits
n = 3000 if mnist else 1797
digits = load_digits(n, seed=0, download=False)
print("MNIST test digits" if digits.is_mnist else digits.note)
n_train = 2000 if mnist else 1200
X_train, y_train = digits.X[:n_train], digits.labels[:n_train]
X_test, y_test = digits.X[n_train:], digits.labels[n_train:]

scores = {}
for name, model in [("NTKClassifier(depth=2)", NTKClassifier(depth=2)),
                    ("NTKClassifier(depth=4)", NTKClassifier(depth=4)),
                    ("SVC()", SVC())]:
    start = time.perf_counter()
    accuracy = model.fit(X_train, y_train).score(X_test, y_test)
    scores[name] = accuracy
    print(f"{name:24s} accuracy {accuracy:.4f}  ({time.perf_counter() - start:.1f} s fit + predict)")

# %%
# The test digits that ``NTKClassifier(depth=4)`` gets wrong, with its prediction.
clf = NTKClassifier(depth=4).fit(X_train, y_train)
predicted = clf.predict(X_test)
wrong = np.flatnonzero(predicted != y_test)[:10]
fig, axes = plt.subplots(1, max(len(wrong), 1), figsize=(1.2 * max(len(wrong), 1), 1.6))
for ax, i in zip(np.atleast_1d(axes), wrong, strict=False):
    ax.imshow(digits.images[n_train + i], cmap="gray_r")
    ax.set(title=f"{predicted[i]} (is {y_test[i]})", xticks=[], yticks=[])
fig.tight_layout()
