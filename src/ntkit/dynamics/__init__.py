"""Training dynamics in function space: Sections 3 and 5 of the paper.

- `LeastSquares`: the closed form of least-squares kernel gradient descent at any time t (continuous,
  gradient descent steps, t = inf), on training and new points, from one eigendecomposition.
- `InfiniteWidthGP`: the Gaussian of infinitely wide trained networks at time t (mean, std, covariance),
  training all layers (Theta) or the last one (Sigma); the Bayesian NNGP posterior.
- `kernel_pca`, `KernelPCA`, `decompose`: kernel principal components and the Figure 3 decomposition.
- `gradient_flow`: kernel gradient descent for general losses (cross-entropy, ...), by ODE integration.
- `train_network`: full-batch gradient descent of finite networks on the paper's clock t = lr * steps.
- `early_stopping_time`, `converged_fraction`: early stopping along the closed-form trajectory.
- `time_from_steps`, `steps_from_time`: converting between steps and time.
"""

from . import solver_cg, solver_cholesky, solver_nystrom  # noqa: F401  (each registers its solver)
from .early_stopping import EarlyStopping, converged_fraction, early_stopping_time
from .flow import FlowResult, gradient_flow
from .gaussian import InfiniteWidthGP
from .least_squares import LeastSquares
from .pca import KernelPCA, decompose, kernel_pca
from .spectrum import IllConditionedWarning, Spectrum, gram_spectrum
from .time import steps_from_time, time_from_steps
from .training import TrainingHistory, train_network

__all__ = ["EarlyStopping", "FlowResult", "IllConditionedWarning", "InfiniteWidthGP", "KernelPCA", "LeastSquares",
           "Spectrum", "TrainingHistory", "converged_fraction", "decompose", "early_stopping_time", "gradient_flow",
           "gram_spectrum", "kernel_pca", "steps_from_time", "time_from_steps", "train_network"]
