"""Layers: one description of an architecture, its finite torch network and its exact infinite-width kernels.

    arch = nk.Sequential(nk.Conv2d(3), nk.ReLU(), nk.AvgPool2d(2), nk.Conv2d(3), nk.ReLU(),
                         nk.GlobalAvgPool(), nk.Linear())
    net = arch.network(in_shape=(1, 16, 16), width=128, seed=0)     # NTK parametrization
    K = arch.kernel(X, get="ntk")                                     # Theta, channel counts infinite

Each layer has a shape rule, a kernel map on the `Record` (Sigma, Theta and the spatial covariance the rest
of the network needs) and a finite module; `Sequential` composes them and tiles the Gram through
`ntkit.gram`; `infinite(module)` translates a torch `nn.Sequential`.
"""

from .activation import SHORT_FORMS, Activation
from .aggregate import Aggregate, graphs
from .attention import SelfAttention
from .base import Layer, LayerError
from .conv import Conv1d, Conv2d, Conv3d, NTKConv
from .conv_transpose import ConvTranspose1d, ConvTranspose2d
from .dropout import Dropout
from .flatten import Flatten
from .infinite import infinite
from .linear import Linear
from .masking import Mask
from .normalization import LayerNorm
from .parallel import Parallel
from .pooling import AvgPool1d, AvgPool2d, AvgPool3d, GlobalAvgPool
from .record import Record
from .residual import Residual
from .sequential import Sequential
from .sum_pooling import GlobalSumPool, SumPool1d, SumPool2d, SumPool3d
from .tokenwise import TokenLinear
from .unflatten import Unflatten

#: the short forms of the registered nonlinearities (nk.ReLU, nk.Erf, nk.Tanh, ...: `ntkit.activations.registry`)
globals().update(SHORT_FORMS)

__all__ = ["Activation", "Aggregate", "AvgPool1d", "AvgPool2d", "AvgPool3d", "Conv1d", "Conv2d", "Conv3d",
           "ConvTranspose1d", "ConvTranspose2d", "Dropout", "Flatten", "GlobalAvgPool", "GlobalSumPool", "Layer",
           "LayerError", "LayerNorm", "Linear", "Mask", "NTKConv", "Parallel", "Record", "Residual", "SelfAttention",
           "Sequential", "SumPool1d", "SumPool2d", "SumPool3d", "TokenLinear", "Unflatten", "graphs", "infinite",
           *SHORT_FORMS]
