"""ntkit: the Neural Tangent Kernel (Jacot, Gabriel and Hongler, NeurIPS 2018) in PyTorch.

    import ntkit as nk
    arch = nk.MLP(depth=4, activation="relu", beta=0.1)     # one description of the paper's network
    net  = arch.network(in_features=2, width=10_000)        # the finite network (Section 2)
    K    = arch.kernel(X, get="ntk")                        # Theta^(L), exact (Theorem 1)
    E    = nk.empirical_ntk(net, X)                         # the finite-width NTK of any module
    gp   = nk.InfiniteWidthGP(arch, X_train, y_train)       # trained infinitely wide nets (Section 5)

scikit-learn kernels and estimators live in `ntkit.sklearn` (needs scikit-learn).
"""

from ._range import KernelOverflowError, KernelRangeError, KernelUnderflowError, KernelUnderflowWarning
from .activations import get_activation, leaky_relu
from .dynamics import (
    EarlyStopping,
    FlowResult,
    IllConditionedWarning,
    InfiniteWidthGP,
    KernelPCA,
    LeastSquares,
    Spectrum,
    TrainingHistory,
    converged_fraction,
    decompose,
    early_stopping_time,
    gradient_flow,
    gram_spectrum,
    kernel_pca,
    steps_from_time,
    time_from_steps,
    train_network,
)
from .empirical import (
    EmpiricalKernel,
    LinearizedModel,
    NTKTracker,
    choose_method,
    empirical_kernel_tiles,
    empirical_ntk,
    linearize,
    monte_carlo_nngp,
    monte_carlo_ntk,
)
from .layers import (
    Activation,
    Aggregate,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalSumPool,
    LayerNorm,
    Linear,
    Mask,
    Parallel,
    Residual,
    SelfAttention,
    Sequential,
    SumPool1d,
    SumPool2d,
    SumPool3d,
    TokenLinear,
    Unflatten,
    graphs,
    infinite,
)
from .layers.activation import SHORT_FORMS
from .mlp import MLP
from .nets import NTKLinear, NTKNetwork
from .progress import set_progress

__version__ = "0.1.0"

#: the short forms of the registered nonlinearities (nk.ReLU, nk.Erf, nk.Tanh, ...: `ntkit.activations.registry`)
globals().update(SHORT_FORMS)

__all__ = [
    "Activation", "Aggregate", "AvgPool1d", "AvgPool2d", "AvgPool3d", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
    "ConvTranspose2d", "Dropout", "EarlyStopping", "EmpiricalKernel", "Flatten", "FlowResult", "GlobalAvgPool",
    "GlobalSumPool", "IllConditionedWarning", "InfiniteWidthGP", "KernelOverflowError", "KernelPCA", "KernelRangeError",
    "KernelUnderflowError", "KernelUnderflowWarning", "LayerNorm", "LeastSquares", "Linear", "LinearizedModel", "MLP",
    "Mask", "NTKLinear", "NTKNetwork", "NTKTracker", "Parallel", "Residual", "SelfAttention", "Sequential", "Spectrum",
    "SumPool1d", "SumPool2d", "SumPool3d", "TokenLinear", "Unflatten", "TrainingHistory", "choose_method",
    "converged_fraction",
    "decompose", "early_stopping_time", "empirical_kernel_tiles", "empirical_ntk", "get_activation", "gradient_flow",
    "gram_spectrum", "graphs", "infinite", "kernel_pca", "leaky_relu", "linearize", "monte_carlo_nngp",
    "monte_carlo_ntk", "set_progress", "steps_from_time", "time_from_steps", "train_network", *sorted(SHORT_FORMS),
]
