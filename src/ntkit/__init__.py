"""ntkit: the Neural Tangent Kernel (Jacot, Gabriel and Hongler, NeurIPS 2018) in PyTorch."""

from .activations import Activation, get_activation, leaky_relu
from .mlp import MLP
from .nets import NTKLinear, NTKNetwork
from .progress import set_progress

__version__ = "0.1.0"

__all__ = ["MLP", "Activation", "NTKLinear", "NTKNetwork", "get_activation", "leaky_relu", "set_progress"]
