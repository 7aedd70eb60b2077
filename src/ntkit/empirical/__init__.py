"""The finite-width NTK of any PyTorch model, how it moves in training, and its limit.

- `empirical_ntk(model, X, Y)`: Theta(theta) = sum_p dF/dtheta_p (x) dF/dtheta_p (Section 4),
  exact per-layer Gram products for fully-connected stacks, torch.func for any module.
- `choose_method`: which method `empirical_ntk(method="auto")` takes (per layer with per_layer=True).
- `empirical_kernel_tiles`: the same kernel as a `gram.KernelTiles`, for stores, Dask and the solvers;
  `EmpiricalKernel`: with an architecture's interface, for `InfiniteWidthGP`'s mean and its solvers.
- `monte_carlo_ntk`, `monte_carlo_nngp`: averages over random initializations (Theorem 1 and
  Proposition 1 at finite width), with standard errors.
- `NTKTracker`: Theta on a probe set during training and its relative change (Theorem 2, Figure 1).
- `linearize`: the first-order Taylor expansion of a model, whose NTK is constant.
"""

from .api import choose_method, empirical_ntk
from .kernel import EmpiricalKernel
from .linearize import LinearizedModel, linearize
from .montecarlo import monte_carlo_nngp, monte_carlo_ntk
from .tiles import empirical_kernel_tiles
from .tracker import NTKTracker

__all__ = ["EmpiricalKernel", "LinearizedModel", "NTKTracker", "choose_method", "empirical_kernel_tiles",
           "empirical_ntk", "linearize", "monte_carlo_nngp", "monte_carlo_ntk"]
