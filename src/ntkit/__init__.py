"""ntkit: the Neural Tangent Kernel (Jacot, Gabriel and Hongler, NeurIPS 2018) in PyTorch.

    import ntkit as nk
    arch = nk.MLP(depth=4, activation="relu", beta=0.1)     # one description of the paper's network
    net  = arch.network(in_features=2, width=10_000)        # the finite network (Section 2)
    K    = arch.kernel(X, get="ntk")                        # Theta^(L), exact (Theorem 1)
    E    = nk.empirical_ntk(net, X)                         # the finite-width NTK of any module
    gp   = nk.InfiniteWidthGP(arch, X_train, y_train)       # trained infinitely wide nets (Section 5)

scikit-learn kernels and estimators live in `ntkit.sklearn` (needs scikit-learn).
"""

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
    LinearizedModel,
    NTKTracker,
    choose_method,
    empirical_ntk,
    linearize,
    monte_carlo_nngp,
    monte_carlo_ntk,
)
from .layers import (
    ELU,
    GELU,
    Abs,
    Activation,
    AvgPool1d,
    AvgPool2d,
    Conv1d,
    Conv2d,
    Erf,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    LeakyReLU,
    Linear,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    SiLU,
    Softplus,
    Tanh,
    infinite,
)
from .mlp import MLP
from .nets import NTKLinear, NTKNetwork
from .progress import set_progress

__version__ = "0.1.0"

__all__ = [
    "Abs", "Activation", "AvgPool1d", "AvgPool2d", "Conv1d", "Conv2d", "ELU", "EarlyStopping", "Erf", "Flatten",
    "FlowResult", "GELU", "GlobalAvgPool", "IllConditionedWarning", "InfiniteWidthGP", "KernelPCA", "LayerNorm",
    "LeakyReLU", "LeastSquares", "Linear", "LinearizedModel", "MLP", "NTKLinear", "NTKNetwork", "NTKTracker",
    "ReLU", "Residual", "Sequential", "SiLU", "Sigmoid", "Softplus", "Spectrum", "Tanh", "TrainingHistory",
    "choose_method", "converged_fraction", "decompose", "early_stopping_time", "empirical_ntk", "get_activation",
    "gradient_flow", "gram_spectrum", "infinite", "kernel_pca", "leaky_relu", "linearize", "monte_carlo_nngp",
    "monte_carlo_ntk", "set_progress", "steps_from_time", "time_from_steps", "train_network",
]
