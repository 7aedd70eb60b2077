"""`empirical_ntk`: the finite-width NTK of any torch model, and `choose_method` for method="auto".

    Theta_{k k'}(x, y) = sum_p dF_k(x; theta)/dtheta_p  dF_k'(y; theta)/dtheta_p     (Section 4)

summed over the model's trainable parameters, at its current parameters (or at `params`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .._checks import all_finite, check_choice, check_positive_int, to_output
from .common import MODES, Problem, count_flops, make_problem
from .generic import jacobian_ntk, ntk_vp_ntk
from .structured import NotStructured, check_inputs, parse, structured_ntk

METHODS = ("auto", "structured", "jacobian", "ntk_vp")
Array = torch.Tensor | np.ndarray


def empirical_ntk(model: nn.Module, X: Array, Y: Array | None = None, *, mode: str = "full",
                  method: str = "auto", block_size: int | None = None,
                  params: Mapping[str, torch.Tensor] | None = None,
                  progress: bool | None = None) -> Array:
    """The empirical NTK Theta(theta) of `model` between the samples of X and of Y (default X).

    Args:
        model: any torch.nn.Module mapping a batch (B, ...) to outputs (B, ...); the outputs of a
            sample, flattened, are its K outputs. BatchNorm and Dropout must be in eval mode.
        X: (N, ...) inputs, batch first (a 1-D array is one sample). Y: (M, ...) or None.
        mode: "full" -> (N, M, K, K), Theta_{k k'}(x_i, y_j); "trace" -> (N, M), the mean over
            k of Theta_{k k}; "diagonal" -> (N, M, K), Theta_{k k}.
        method: "structured" (exact per-layer Gram products; nn.Sequential of nn.Linear / NTKLinear
            and elementwise activations only), "jacobian" (Jacobian contraction), "ntk_vp"
            (NTK-vector products), or "auto": the cheapest by an estimate of the floating-point
            work; `choose_method` tells which one it takes.
        block_size: samples per block of X and of Y; by default the largest blocks whose
            intermediates fit the working memory (1 GiB on a CPU, a quarter of the free GPU memory).
        params: parameter values to evaluate Theta at instead of the model's own (names as in
            `model.named_parameters()`, any subset). Theta always sums over the parameters that
            require a gradient in the model.
        progress: show a progress bar over blocks (None: the global setting).

    Returns: Theta in the parameters' dtype, on their device; a NumPy array when X is NumPy.
    With Y None each pair of blocks is computed once and the result is exactly symmetric.
    """
    check_choice(mode, "mode", MODES)
    check_choice(method, "method", METHODS)
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    problem, numpy_in = make_problem(model, X, Y, mode, params)
    if problem.X.shape[0] == 0 or problem.cols.shape[0] == 0:   # an empty batch: an empty NTK
        return to_output(_empty(problem), numpy_in)
    chosen = _resolve(problem, method)
    run = {"structured": structured_ntk, "jacobian": jacobian_ntk, "ntk_vp": ntk_vp_ntk}[chosen]
    theta = run(problem, block_size, progress)
    if not all_finite(theta):
        dtype = str(theta.dtype).removeprefix("torch.")
        wider = "use float64, or " if theta.dtype != torch.float64 else ""
        raise ValueError(f"the empirical NTK has NaN or infinite entries: the model's outputs or their derivatives "
                         f"are not finite at these parameters and inputs, or the NTK exceeds the {dtype} range "
                         f"(about {torch.finfo(theta.dtype).max:.2g}): {wider}inputs of smaller norm or smaller "
                         f"parameters")
    return to_output(theta, numpy_in)


def choose_method(model: nn.Module, X: Array, Y: Array | None = None, *, mode: str = "full",
                  params: Mapping[str, torch.Tensor] | None = None) -> str:
    """The method `empirical_ntk(..., method="auto")` uses for these arguments.

    "structured" whenever the model is a fully-connected nn.Sequential it can take (it is exact
    and the cheapest); otherwise "jacobian" or "ntk_vp", whichever `estimate_costs` finds cheaper.
    """
    check_choice(mode, "mode", MODES)
    problem, _ = make_problem(model, X, Y, mode, params)
    return _resolve(problem, "auto")


def _empty(problem: Problem) -> torch.Tensor:
    """The NTK of N = 0 or M = 0 samples: zeros of the mode's shape, in the parameters' dtype and device."""
    n, m, k = problem.X.shape[0], problem.cols.shape[0], problem.n_outputs
    shape = {"full": (n, m, k, k), "trace": (n, m), "diagonal": (n, m, k)}[problem.mode]
    like = next(iter(problem.trainable.values()), problem.X)
    return torch.zeros(shape, dtype=like.dtype, device=like.device)


def estimate_costs(problem: Problem) -> dict[str, float]:
    """Floating-point work of the generic methods (Novak et al. 2022, "Fast finite width NTK").

    With N, M samples, K outputs, P parameters and FP forward flops per sample (a backward or
    jvp pass costs about 2 FP more):
      jacobian: 3 K FP (N + M) to build the Jacobians, 2 N M P K^2 (K in trace/diagonal mode) to contract;
      ntk_vp:   3 K FP N for the vjps, 3 K FP N M for the jvps.
    """
    n, m = problem.X.shape[0], problem.cols.shape[0]
    k, p, fp = problem.n_outputs, problem.n_params, count_flops(problem)
    outputs = k * k if problem.mode == "full" else k
    return {"jacobian": 3.0 * k * fp * (n + m) + 2.0 * n * m * p * outputs,
            "ntk_vp": 3.0 * k * fp * n + 3.0 * k * fp * n * m}


def _resolve(problem: Problem, method: str) -> str:
    if method in ("structured", "auto"):
        try:
            check_inputs(parse(problem), problem.X)
            return "structured"
        except NotStructured as exc:
            if method == "structured":
                raise ValueError(f"method='structured' cannot take this model: {exc}. Use method='jacobian' "
                                 "or method='ntk_vp' (any module), or method='auto'") from None
    if method != "auto":
        return method
    costs = estimate_costs(problem)
    return min(costs, key=costs.__getitem__)
