"""The named nonlinearities without a closed form: their maps by Gaussian quadrature of the torch function
(`quadrature.py`), registered under their names (`registry.py`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .registry import quadrature, register


def _elu(module: nn.ELU) -> dict | None:
    return {} if module.alpha == 1.0 else None


def _softplus(module: nn.Softplus) -> dict | None:
    return {} if (module.beta, module.threshold) == (1.0, 20.0) else None


register("tanh", quadrature(torch.tanh, "tanh"), closed_form=False, layer="Tanh", torch_module=nn.Tanh,
         doc="tanh(x) (quadrature).")
register("sigmoid", quadrature(torch.sigmoid, "sigmoid"), closed_form=False, layer="Sigmoid",
         torch_module=nn.Sigmoid, doc="1 / (1 + exp(-x)) (quadrature).")
register("softplus", quadrature(F.softplus, "softplus"), closed_form=False, layer="Softplus",
         torch_module=nn.Softplus, from_torch=_softplus, doc="log(1 + exp(x)) (quadrature).")
register("elu", quadrature(F.elu, "elu"), closed_form=False, layer="ELU", torch_module=nn.ELU, from_torch=_elu,
         doc="x for x > 0, exp(x) - 1 otherwise (quadrature).")
register("selu", quadrature(F.selu, "selu"), closed_form=False, doc="selu(x) (quadrature).")
register("silu", quadrature(F.silu, "silu"), closed_form=False, layer="SiLU", torch_module=nn.SiLU,
         doc="x sigmoid(x) (quadrature).")
register("swish", quadrature(F.silu, "swish"), closed_form=False, doc="x sigmoid(x), named swish (quadrature).")
register("mish", quadrature(F.mish, "mish"), closed_form=False, doc="x tanh(softplus(x)) (quadrature).")
register("softsign", quadrature(F.softsign, "softsign"), closed_form=False, doc="x / (1 + |x|) (quadrature).")
