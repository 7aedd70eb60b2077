"""Per-sample Jacobians dF_k(x)/dtheta_p of any module, also where torch.func cannot batch it over samples.

The fast way is `vmap(jacrev(F))` over the samples of a block. Some modules have no batching rule, or a wrong
one, for that (nn.GRU, nn.LSTM and nn.RNN raise; nn.PReLU's backward mixes the samples with the outputs and
returns wrong numbers when their counts agree). `jacobian_way` finds out once per problem, on two samples and
two random combinations of the outputs, by comparing the vmapped Jacobian with plain backward passes, and picks:

- "vmap": all samples of a block at once (the fast path, taken wherever it is exact);
- "jacrev": `jacrev(F)` of one sample at a time (exact; no vmap over samples);
- "autograd": one `torch.autograd.grad` per sample and output, where even `jacrev` of one sample fails or is
  not exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jacrev, vmap

from .common import Problem, call, working_memory

#: Errors torch raises for a transform it cannot apply to a model (no batching or derivative rule, a shape
#: mismatch of a wrong batching rule).
TORCH_ERRORS = (RuntimeError, NotImplementedError, ValueError, TypeError, IndexError)


def sample_fn(problem: Problem, fixed: dict[str, torch.Tensor]) -> Callable:
    """F(theta_chunk, x) -> (K,): the model on one sample x, the parameters outside the chunk fixed."""
    model, frozen = problem.model, problem.frozen

    def f(chunk: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return call(model, ({**fixed, **chunk}, frozen), (x.unsqueeze(0),)).reshape(-1)

    return f


def _split(problem: Problem, names: list[str], project: torch.Tensor | None
           ) -> tuple[dict[str, torch.Tensor], Callable]:
    """(the parameters `names`, F(chunk, x) of one sample, or project @ F where a (R, K) projection is given)."""
    chunk = {n: problem.trainable[n] for n in names}
    fixed = {n: v for n, v in problem.trainable.items() if n not in chunk}
    f = sample_fn(problem, fixed)
    return chunk, (f if project is None else lambda c, x: project @ f(c, x))


def _vmapped(problem: Problem, names: list[str], X: torch.Tensor, project: torch.Tensor | None = None
             ) -> dict[str, torch.Tensor]:
    chunk, f = _split(problem, names, project)
    return vmap(jacrev(f), in_dims=(None, 0))(chunk, X)


def _one_by_one(problem: Problem, names: list[str], X: torch.Tensor, way: str,
                project: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The Jacobians of the samples of X one at a time: by jacrev, or by one autograd.grad per output."""
    chunk, f = _split(problem, names, project)
    k = problem.n_outputs if project is None else project.shape[0]
    out = {n: torch.empty((X.shape[0], k, *v.shape), dtype=v.dtype, device=v.device) for n, v in chunk.items()}
    for b in range(X.shape[0]):
        if way == "jacrev":
            jac = jacrev(f)(chunk, X[b])
            for n in names:
                out[n][b] = jac[n]
            continue
        with torch.enable_grad():
            leaves = {n: v.detach().requires_grad_(True) for n, v in chunk.items()}
            y = f(leaves, X[b])
            for index in range(k):
                grads = torch.autograd.grad(y[index], [leaves[n] for n in names], retain_graph=index + 1 < k,
                                            allow_unused=True)
                for n, g in zip(names, grads, strict=True):
                    out[n][b, index] = 0.0 if g is None else g
    return out


def _close(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> bool:
    """Whether two Jacobians agree to rounding (10 sqrt(eps) relative to the largest entry)."""
    for name, r in ref.items():
        g = got[name]
        if g.shape != r.shape:
            return False
        if r.numel() and float((g - r).abs().max()) > 10 * torch.finfo(r.dtype).eps ** 0.5 * max(
                1.0, float(r.abs().max())):
            return False
    return True


def _two_samples(problem: Problem) -> torch.Tensor:
    """Two samples of the problem (the first of X and the last of Y, or of X): (2, ...)."""
    X, cols = problem.X, problem.cols
    second = X[1:2] if X.shape[0] > 1 else cols[-1:] if cols.shape[0] else X[:1]
    return torch.cat([X[:1], second])


def jacobian_way(problem: Problem, names: list[str]) -> str:
    """How this problem's per-sample Jacobians are formed ("vmap", "jacrev" or "autograd"), found on its first
    use from two samples and the parameters `names`, then kept in `problem.jacobian_way`."""
    if problem.jacobian_way is None:
        problem.jacobian_way = _find_way(problem, names)
    return problem.jacobian_way


def _checked_names(problem: Problem, names: list[str]) -> list[str]:
    """Those of `names`, earliest first (their gradients pass back through the most modules), whose Jacobians in
    the check (three of two samples and two projected outputs) fit the working memory beside its backward
    passes; the smallest one where none fits."""
    per_number = 12 * problem.itemsize
    left = working_memory(problem.device) - per_number * problem.activations
    chosen = []
    for name in names:
        need = per_number * problem.trainable[name].numel()
        if need <= left:
            chosen.append(name)
            left -= need
    return chosen or [min(names, key=lambda n: problem.trainable[n].numel())]


def _find_way(problem: Problem, names: list[str]) -> str:
    """Compare the ways on two samples and two random combinations of the outputs (so the check's Jacobians are
    of two rows whatever K is, and vmap still nests over samples and rows as in the full call)."""
    names = _checked_names(problem, names)
    x2 = _two_samples(problem)
    project = torch.randn((2, problem.n_outputs), dtype=problem.dtype, device=problem.device,
                          generator=torch.Generator(problem.device).manual_seed(0))
    reference = _one_by_one(problem, names, x2, "autograd", project)  # plain backward passes: the definition
    try:
        if _close(_vmapped(problem, names, x2, project), reference):
            return "vmap"
    except TORCH_ERRORS:
        pass
    try:  # vmap cannot batch this model over samples: jacrev of one sample, where it is exact
        first = {n: v[:1] for n, v in reference.items()}
        return "jacrev" if _close(_one_by_one(problem, names, x2[:1], "jacrev", project), first) else "autograd"
    except TORCH_ERRORS:
        return "autograd"


def jacobians(problem: Problem, names: list[str], X: torch.Tensor) -> dict[str, torch.Tensor]:
    """name -> dF_k(x)/dtheta (B, K, *shape of the parameter) for the samples of X (B, ...)."""
    way = jacobian_way(problem, names)
    return _vmapped(problem, names, X) if way == "vmap" else _one_by_one(problem, names, X, way)


def jacobian(problem: Problem, names: list[str], X: torch.Tensor) -> torch.Tensor:
    """dF_k(x)/dtheta_p for the samples of X and the parameters `names`: (B, K, P_names)."""
    jac = jacobians(problem, names, X)
    parts = [jac[n].reshape(X.shape[0], problem.n_outputs, -1) for n in names]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
