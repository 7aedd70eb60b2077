"""Linear algebra on a kernel given as an operator (a Gram in memory, or tiles recomputed from X).

- `cholesky`: the lean exact path, (K + ridge I)^-1 by Cholesky in the Gram's own storage.
- `cg`: preconditioned conjugate gradients, with randomly pivoted Cholesky or uniform Nystrom preconditioners
  (`preconditioners`).
- `nystrom`: Falkon-style Nystrom kernel ridge regression.
- `lanczos`: functions of the kernel (the decays of the training dynamics at any time t) applied to vectors.

A solver never knows which architecture made its kernel: it sees a `KernelOperator` or a `gram.KernelTiles`.
"""

from ..memory import available_bytes
from .cg import CGResult, ConvergenceWarning, conjugate_gradient
from .operator import KernelOperator

__all__ = ["CGResult", "ConvergenceWarning", "KernelOperator", "available_bytes", "conjugate_gradient"]
