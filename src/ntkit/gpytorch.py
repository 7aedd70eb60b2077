"""The infinite-width kernels of any ntkit architecture as GPyTorch kernels, for GPyTorch models and BoTorch.

    from botorch.models import SingleTaskGP
    from gpytorch.kernels import ScaleKernel
    from ntkit.gpytorch import NTKKernel
    model = SingleTaskGP(X, y, covar_module=ScaleKernel(NTKKernel(nk.MLP(depth=3))))

`NTKKernel(arch)` is the limiting Neural Tangent Kernel Theta (Theorem 1) and `NNGPKernel(arch)` the limiting
covariance Sigma (Proposition 1) of `arch` (`nk.MLP`, `nk.Sequential`, `nk.infinite(model)`; `in_shape=` reshapes
each row of features into an image or a sequence). Their hyperparameters are the weight scale W_std and the bias
scale b_std of every weight layer, stored as raw parameters under GPyTorch's Positive constraint (one value per
batch element with `batch_shape`); put the kernel in a `ScaleKernel` for an output scale. Only b_std is learnt by
default: W_std's overall scale and the ScaleKernel's outputscale trade off (for a ReLU network with small biases,
W_std -> c W_std scales the kernel by about c^(2L)), so learning both lets them drift together without end
(`learn=("W_std", "b_std")` learns both, e.g. without a ScaleKernel). Needs the optional extra:
`pip install "ntkit[gpytorch]"`.
"""

from __future__ import annotations

from typing import Any

import gpytorch
import torch
from gpytorch.constraints import Interval, Positive

from .sklearn._arch import check_arch, check_in_shape, on_rows, scales, with_scales


class _ArchKernel(gpytorch.kernels.Kernel):
    """The kernel `get` of an architecture with learnable W_std and b_std (shared by every weight layer).

    Args:
        arch: an ntkit architecture (default: `nk.MLP(depth=2)`, the paper's ReLU network).
        in_shape: the shape of one example, e.g. (1, 8, 8): each row of the inputs (..., n, d) is reshaped to it.
        W_std, b_std: initial values (default: the architecture's, which must then be shared by its weight layers).
        W_std_constraint, b_std_constraint: GPyTorch constraints (default Positive()).
        learn: the hyperparameters to learn (default ("b_std",): the ScaleKernel around it carries the scale); the
            others keep their values (their raw parameters do not require gradients).
        batch_shape and the other keyword arguments: as for `gpytorch.kernels.Kernel`.

    Inputs are (..., n, d) tensors; outputs (..., n, m) in their dtype (float64 recommended, as BoTorch uses).
    """

    _get = "ntk"
    has_lengthscale = False

    def __init__(self, arch: Any = None, *, in_shape: Any = None, W_std: float | None = None,
                 b_std: float | None = None, W_std_constraint: Interval | None = None,
                 b_std_constraint: Interval | None = None, learn: tuple[str, ...] = ("b_std",), **kwargs: Any):
        super().__init__(**kwargs)
        from .mlp import MLP

        self.arch = check_arch(MLP(2) if arch is None else arch)
        self.in_shape = in_shape
        learn = (learn,) if isinstance(learn, str) else tuple(learn)
        if not set(learn) <= {"W_std", "b_std"}:
            raise ValueError(f"learn must name hyperparameters among 'W_std' and 'b_std', got {learn!r}")
        for name, value in (("W_std", W_std), ("b_std", b_std)):
            if value is None:
                own = scales(self.arch, name)
                if not bool((own == own[0]).all()):
                    raise ValueError(f"the weight layers of arch have different {name} ({list(own)}); give one "
                                     f"initial {name}= shared by all of them")
                value = float(own[0])
            constraint = Positive() if locals()[f"{name}_constraint"] is None else locals()[f"{name}_constraint"]
            self.register_parameter(f"raw_{name}", torch.nn.Parameter(torch.zeros(*self.batch_shape, 1, 1)))
            self.register_constraint(f"raw_{name}", constraint)
            self.initialize(**{name: value})
            getattr(self, f"raw_{name}").requires_grad_(name in learn)

    @property
    def W_std(self) -> torch.Tensor:
        """The weight scale, shape (*batch_shape, 1, 1)."""
        return self.raw_W_std_constraint.transform(self.raw_W_std)

    @W_std.setter
    def W_std(self, value: Any) -> None:
        self._set("W_std", value)

    @property
    def b_std(self) -> torch.Tensor:
        """The bias scale (the paper's beta), shape (*batch_shape, 1, 1)."""
        return self.raw_b_std_constraint.transform(self.raw_b_std)

    @b_std.setter
    def b_std(self, value: Any) -> None:
        self._set("b_std", value)

    def _set(self, name: str, value: Any) -> None:
        raw = getattr(self, f"raw_{name}")
        value = torch.as_tensor(value, dtype=raw.dtype, device=raw.device)
        if not bool(torch.isfinite(value).all()) or bool((value <= 0).any()):
            raise ValueError(f"{name} must be finite and > 0, got {value}")
        constraint = getattr(self, f"raw_{name}_constraint")
        self.initialize(**{f"raw_{name}": constraint.inverse_transform(value.expand_as(raw))})

    def _kernel(self, X: torch.Tensor, Y: torch.Tensor | None, W: torch.Tensor, b: torch.Tensor,
                diag: bool) -> torch.Tensor:
        """K(X, Y) (n, m), or its diagonal (n,), for 2-D X, Y and 0-d scales."""
        arch = on_rows(with_scales(self.arch, W.to(X.dtype), b.to(X.dtype)), check_in_shape(self.in_shape, X.shape[-1]))
        if diag:
            return arch.kernel_diag(X, get=self._get)
        return arch.kernel(X, Y, get=self._get, progress=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, last_dim_is_batch: bool = False,
                **params: Any) -> torch.Tensor:
        if last_dim_is_batch:
            raise ValueError("NTKKernel and NNGPKernel do not support last_dim_is_batch")
        same = x1.shape == x2.shape and torch.equal(x1, x2)
        W, b = self.W_std[..., 0, 0], self.b_std[..., 0, 0]
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2], W.shape)
        n, m, d = x1.shape[-2], x2.shape[-2], x1.shape[-1]
        if diag and not same:
            full = self.forward(x1, x2, **params)
            return full.diagonal(dim1=-2, dim2=-1)
        if W.numel() == 1:   # one set of scales: stack the batches into one kernel call where the data allow
            W, b = W.reshape(()), b.reshape(())
            if diag:
                return self._kernel(x1.reshape(-1, d), None, W, b, True).reshape(*x1.shape[:-1]).expand(*batch, n)
            flat2 = x2.reshape(-1, m, d)
            if bool((flat2 == flat2[:1]).all()):   # the same second inputs in every batch (e.g. training data)
                K = self._kernel(x1.reshape(-1, d), None if same and x1.dim() == 2 else flat2[0], W, b, False)
                return K.reshape(*x1.shape[:-1], m).expand(*batch, n, m)
        x1b, x2b = x1.expand(*batch, n, d).reshape(-1, n, d), x2.expand(*batch, m, d).reshape(-1, m, d)
        Wb, bb = W.expand(batch).reshape(-1), b.expand(batch).reshape(-1)
        out = [self._kernel(p, None if same else q, w, c, diag) for p, q, w, c in zip(x1b, x2b, Wb, bb, strict=True)]
        return torch.stack(out).reshape(*batch, n) if diag else torch.stack(out).reshape(*batch, n, m)


class NTKKernel(_ArchKernel):
    """The limiting Neural Tangent Kernel Theta of `arch` (Theorem 1) as a GPyTorch kernel; see `_ArchKernel`."""

    _get = "ntk"


class NNGPKernel(_ArchKernel):
    """The limiting covariance Sigma of `arch` at initialization (Proposition 1) as a GPyTorch kernel (for a ReLU
    MLP, BoTorch's `InfiniteWidthBNNKernel`); see `_ArchKernel`."""

    _get = "nngp"
