"""scikit-learn integration: the infinite-width kernels as scikit-learn kernels, and estimators that
predict with an infinitely wide network trained by gradient descent (Section 5 of the paper).

    from ntkit.sklearn import NTK, NNGP, NTKRegressor, NTKClassifier
"""

from .empirical import EmpiricalNTKClassifier, EmpiricalNTKRegressor
from .estimators import NTKClassifier, NTKRegressor
from .kernels import NNGP, NTK

__all__ = ["NNGP", "NTK", "EmpiricalNTKClassifier", "EmpiricalNTKRegressor", "NTKClassifier", "NTKRegressor"]
