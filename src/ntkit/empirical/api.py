"""`empirical_ntk`: the finite-width NTK of any torch model or function of parameters, and `choose_method`.

    Theta_{k k'}(x, y) = sum_p dF_k(x; theta)/dtheta_p  dF_k'(y; theta)/dtheta_p     (Section 4)

summed over the model's trainable parameters, at its current parameters (or at `params`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .._checks import all_finite, check_choice, check_positive_int, to_output
from .attention import plain_attention
from .common import MODES, Problem, Selector, count_flops, make_problem, no_fused_attention, working_memory_limit
from .generic import jacobian_ntk, ntk_vp_ntk
from .jacobians import TORCH_ERRORS, jacobian_way
from .layerwise import describe_plan, layerwise_ntk, make_plan
from .structured import NotStructured, check_inputs, parse, structured_ntk

METHODS = ("auto", "structured", "jacobian", "ntk_vp")
Array = torch.Tensor | np.ndarray


def empirical_ntk(model: nn.Module | Callable, X: Array, Y: Array | None = None, *, mode: str = "full",
                  method: str = "auto", block_size: int | None = None,
                  params: Mapping[str, torch.Tensor] | None = None, output: Selector = None,
                  memory: int | None = None, progress: bool | None = None) -> Array:
    """The empirical NTK Theta(theta) of `model` between the samples of X and of Y (default X).

    Args:
        model: any torch.nn.Module mapping a batch (B, ...) to outputs (B, ...); the outputs of a
            sample, flattened, are its K outputs. BatchNorm and Dropout must be in eval mode. Or a
            function f(params, X) of a dict of parameter tensors and a batch (then `params` gives the
            values, all differentiated): the NTK of any quantity derived from a network (a PDE residual
            built with torch.func derivatives in x, a loss, a logit difference).
        X: (N, ...) inputs, batch first (a 1-D array is one sample). Y: (M, ...) or None.
        mode: "full" -> (N, M, K, K), Theta_{k k'}(x_i, y_j); "trace" -> (N, M), the mean over
            k of Theta_{k k}; "diagonal" -> (N, M, K), Theta_{k k}.
        method: "structured" (per-layer rules, no Jacobian: per-layer Gram products for fully-connected
            stacks; for any module, the rules for nn.Linear (also on sequences), nn.Conv1d/2d/3d,
            nn.Embedding, nn.MultiheadAttention's projections, affine LayerNorm / BatchNorm and biases,
            with the Jacobian for the parameters of other modules), "jacobian" (Jacobian contraction),
            "ntk_vp" (NTK-vector products), or "auto": "structured" where a rule applies, else the
            cheaper generic method, each taken only once it has run on two of the samples;
            `choose_method` tells which one it takes (per layer with per_layer=True). Models torch.func
            cannot vmap over samples (nn.GRU, nn.LSTM, nn.PReLU) get their Jacobians one sample at a time.
        block_size: samples per block of X and of Y; by default the largest blocks whose
            intermediates fit the working memory (1 GiB on a CPU, a quarter of the free GPU memory).
        params: parameter values to evaluate Theta at instead of the model's own (names as in
            `model.named_parameters()`, any subset). Theta always sums over the parameters that
            require a gradient in the model.
        output: for a model returning a tuple, list or dict: which output to take (an index or a key),
            or a function of the model's output returning one tensor.
        memory: working memory in bytes for the intermediate blocks (default 1 GiB on a CPU, a quarter
            of the free GPU memory): blocks are sized to it, and a MemoryError naming it and an option
            that fits is raised before any allocation when one sample (or the given block_size) needs more.
        progress: show a progress bar over blocks (None: the global setting).

    Returns: Theta in the parameters' dtype, on their device; a NumPy array when X is NumPy.
    With Y None each pair of blocks is computed once and the result is exactly symmetric.
    """
    check_choice(mode, "mode", MODES)
    check_choice(method, "method", METHODS)
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    if memory is not None:
        memory = check_positive_int(memory, "memory")
    problem, numpy_in = make_problem(model, X, Y, mode, params, output)
    if problem.X.shape[0] == 0 or problem.cols.shape[0] == 0:   # an empty batch: an empty NTK
        return to_output(_empty(problem), numpy_in)
    with working_memory_limit(memory):
        chosen = _resolve(problem, method)  # auto's checks run within the budget too
        with no_fused_attention(), plain_attention(problem.model):
            theta = _run(problem, chosen, block_size, progress)
    if not all_finite(theta):
        dtype = str(theta.dtype).removeprefix("torch.")
        wider = "use float64, or " if theta.dtype != torch.float64 else ""
        raise ValueError(f"the empirical NTK has NaN or infinite entries: the model's outputs or their derivatives "
                         f"are not finite at these parameters and inputs, or the NTK exceeds the {dtype} range "
                         f"(about {torch.finfo(theta.dtype).max:.2g}): {wider}inputs of smaller norm or smaller "
                         f"parameters")
    return to_output(theta, numpy_in)


def choose_method(model: nn.Module | Callable, X: Array, Y: Array | None = None, *, mode: str = "full",
                  params: Mapping[str, torch.Tensor] | None = None, output: Selector = None,
                  per_layer: bool = False) -> str | dict[str, str]:
    """The method `empirical_ntk(..., method="auto")` uses for these arguments.

    "structured" whenever a per-layer rule applies to some of the model's layers (exact, and cheaper
    than forming their Jacobians); otherwise "jacobian" or "ntk_vp", whichever `estimate_costs` finds
    cheaper; a method that fails inside torch on two of the samples is passed over. With per_layer=True:
    a dict from each layer with a rule to what the structured path does with it ("structured conv
    (jacobian order)", "structured linear (positions order)", or "jacobian: " and why its rule is not
    used), plus "(other parameters)" for those no rule covers; or {"(whole model)": ...} saying why the
    structured passes cannot run on it and which method is taken instead.
    """
    check_choice(mode, "mode", MODES)
    problem, _ = make_problem(model, X, Y, mode, params, output)
    if per_layer:
        if _fully_connected(problem):
            return {"(whole model)": "structured fully-connected stack (per-layer Gram products)"}
        try:
            with no_fused_attention():
                return describe_plan(make_plan(problem))
        except TORCH_ERRORS as exc:  # torch cannot run the structured passes on this model
            return {"(whole model)": f"{_resolve(problem, 'auto')}: the structured passes fail inside torch"
                                     f"{failing_module(problem.model, exc)}: {exc}"}
    chosen = _resolve(problem, "auto")
    return "structured" if chosen == "stack" else chosen


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


def _fully_connected(problem: Problem) -> bool:
    try:
        check_inputs(parse(problem), problem.X)
        return True
    except NotStructured:
        return False


def _resolve(problem: Problem, method: str) -> str:
    """The method to run: "stack" (the fully-connected fast path), "structured", "jacobian" or "ntk_vp".

    For "auto": the structured path where a rule applies, else the cheaper generic method, each taken only
    once it has run on two of the samples (a method torch cannot apply to the model is passed over)."""
    if method in ("structured", "auto") and _fully_connected(problem):
        return "stack"
    if method != "auto":
        return method
    failures: dict[str, BaseException] = {}
    too_big = None  # the first method that runs but whose one sample exceeds the working memory
    for candidate in _candidates(problem, failures):
        failure = _check_runs(problem, candidate)
        if failure is None:
            return candidate
        if isinstance(failure, MemoryError):
            too_big = too_big or candidate
        else:
            failures[candidate] = failure
    if too_big is not None:
        return too_big  # its own call raises the MemoryError that names the budget and what fits
    raise RuntimeError(f"no method computes the empirical NTK of {type(problem.model).__name__}: "
                       + "; ".join(f"method={m!r} failed{failing_module(problem.model, e)}: {e}"
                                   for m, e in failures.items()))


def _candidates(problem: Problem, failures: dict[str, BaseException]) -> list[str]:
    """The methods `auto` tries, in order: "structured" where a rule applies, then the generic ones by cost
    (but "jacobian" first where torch.func cannot batch the model: ntk_vp then pushes one vector at a time)."""
    costs = estimate_costs(problem)
    generic = sorted(costs, key=costs.__getitem__)
    if generic[0] == "ntk_vp" and problem.X.shape[0] and _unbatchable(problem):
        generic.reverse()
    if not problem.X.shape[0]:
        return generic
    try:
        with no_fused_attention():
            problem.plan = make_plan(problem)
    except TORCH_ERRORS as exc:  # the plan's own passes fail inside torch: the generic methods remain
        problem.plan, failures["structured"] = None, exc
        return generic
    return (["structured"] if problem.plan.sites else []) + generic


def _unbatchable(problem: Problem) -> bool:
    """Whether per-sample Jacobians are formed one sample at a time (`jacobians.jacobian_way`)."""
    try:
        with no_fused_attention(), plain_attention(problem.model):
            return jacobian_way(problem, list(problem.trainable)) != "vmap"
    except TORCH_ERRORS:  # not even autograd runs: the checks of the methods will say why
        return False


def _check_runs(problem: Problem, method: str) -> BaseException | None:
    """None when `method` computes Theta between two of the samples, else the error torch raised (or the
    MemoryError of a working memory too small for one sample). The way per-sample Jacobians are formed, found
    on the way, is kept for the whole problem."""
    small = replace(problem, X=problem.X[:2], Y=None)
    try:
        with no_fused_attention(), plain_attention(problem.model):
            _RUNS[method](small, None, False)
    except (MemoryError, *TORCH_ERRORS) as exc:
        return exc
    finally:
        problem.jacobian_way = small.jacobian_way
    return None


def failing_module(model: nn.Module, exc: BaseException) -> str:
    """Where in `model` the error arose, as text to insert in a message: ", in its submodule 'name' (Type)"
    for the innermost submodule whose forward it passed through (from its traceback), "" when it arose
    outside every forward (in a backward pass)."""
    names = {id(m): n for n, m in model.named_modules()}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            found = owner
        tb = tb.tb_next
    if found is None:
        return ""
    name = names[id(found)]
    return f", in its submodule {name!r} ({type(found).__name__})" if name else ", in its forward"


def _run(problem: Problem, chosen: str, block_size: int | None, show: bool | None) -> torch.Tensor:
    """Run a method; a failure inside torch names the submodule and a method checked to run on the model."""
    try:
        return _RUNS[chosen](problem, block_size, show)
    except (NotImplementedError, RuntimeError) as exc:
        if "memory" in str(exc).lower():
            raise
        name = "structured" if chosen == "stack" else chosen
        where = failing_module(problem.model, exc)
        works = next((m for m in _candidates(problem, {}) if m != name and _check_runs(problem, m) is None), None)
        advice = (f"method={works!r} was checked to run on this model: pass method={works!r} (or method='auto')"
                  if works else "no other method runs on it either")
        raise RuntimeError(f"method={name!r} failed inside torch on {type(problem.model).__name__}{where}: "
                           f"{str(exc).rstrip('.')}. {advice}") from exc


_RUNS = {"stack": structured_ntk, "structured": layerwise_ntk, "jacobian": jacobian_ntk, "ntk_vp": ntk_vp_ntk}
