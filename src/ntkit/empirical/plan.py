"""The plan of the structured path: which layers take a rule, where their batch is, and their checks.

`make_plan` finds every layer with a rule (`rules.py`, `attention.py`), runs the model on one and on two samples
with hooks that record each layer's input and output shape (calls per sample, the batch dimension), checks each
rule on one sample against autograd (the gradient of v . F for a random v), and picks each weight's order from
the cost estimates. `instrumented` installs the hooks; `inputs` and `cotangents` are the two passes a block of
samples needs: one forward pass capturing the layers' inputs, and reverse passes giving their output cotangents
(derivatives with respect to a zero shift added to each layer's output).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jacrev, vmap

from . import attention, factored, rules
from .common import Problem, call
from .jacobians import jacobian_way


class Injector:
    """What the hooks do: record each site's input ("capture"), add a shift to its output ("inject"), or
    record the gradient that reaches its output in a reverse pass ("tap", and capture)."""

    def __init__(self) -> None:
        self.mode = "off"
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.out_shapes: dict[str, list[tuple[int, ...]]] = {}
        self.deltas: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.anchor: torch.Tensor | None = None

    def capture(self, key: str, x: torch.Tensor) -> None:
        if self.mode in ("capture", "tap"):
            self.inputs.setdefault(key, []).append(x.detach())

    def shift(self, key: str, z: torch.Tensor) -> torch.Tensor:
        if self.mode == "capture":
            self.out_shapes.setdefault(key, []).append(tuple(z.shape))
        elif self.mode == "inject" and key in self.deltas:
            return z + self.deltas[key]
        elif self.mode == "tap":
            return self._tap(key, z)
        return z

    def _tap(self, key: str, z: torch.Tensor) -> torch.Tensor:
        """z, in the graph, with a hook that keeps dF/dz. A site whose output does not yet depend on the zero
        scalar `anchor` (the first sites: the parameters are detached) gets anchor added, which costs one copy;
        every later site is tapped as it is. A hook set before an in-place change of z (an in-place ReLU) still
        receives the gradient with respect to z's value before the change."""
        if not z.requires_grad:
            z = z + self.anchor
        z.register_hook(lambda grad: self.grads.__setitem__(key, grad))
        return z

    def reset(self, mode: str) -> None:
        self.mode, self.inputs, self.out_shapes = mode, {}, {}


@dataclass
class Plan:
    sites: list[rules.Site]
    fallback: list[str]       # trainable parameters no site covers: their Jacobian is formed
    dropped: dict[str, str]   # module -> why its rule is not used
    attention: dict[str, nn.MultiheadAttention]
    injector: Injector
    batched: bool = False     # samples do not interact: cotangents from one batched pass (else one per sample)
    chunk: int = 1 << 30      # samples per reverse pass (its intermediates are K times the activations)


# ------------------------------------------------------------------------------ candidates
def _param(problem: Problem, name: str, attr: str, rows: slice | None = None) -> tuple[str, slice | None] | None:
    full = f"{name}.{attr}" if name else attr
    return (full, rows) if full in problem.trainable else None


def candidate_sites(problem: Problem) -> tuple[list[rules.Site], dict[str, nn.MultiheadAttention], dict[str, str]]:
    """Every layer with a rule and trainable parameters (before the checks of `make_plan`)."""
    sites: list[rules.Site] = []
    attn: dict[str, nn.MultiheadAttention] = {}
    dropped: dict[str, str] = {}
    skip: set[str] = set()
    for name, module in problem.model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in skip):
            continue
        kind = {nn.Linear: "linear", nn.Embedding: "embedding"}.get(type(module))
        kind = "conv" if type(module) in rules.CONVS else "norm" if type(module) in rules.NORMS else kind
        if type(module) is nn.MultiheadAttention:
            skip.add(name)
            if not attention.supported(module):
                dropped[name] = "MultiheadAttention with bias_k, add_zero_attn or separate q/k/v weights"
                continue
            e = module.embed_dim
            attn[name] = module
            for index, slot in enumerate("qkv"):
                rows = slice(index * e, (index + 1) * e)
                sites.append(rules.Site(f"{name}.{slot}", "linear", module,
                                        _param(problem, name, "in_proj_weight", rows),
                                        _param(problem, name, "in_proj_bias", rows)))
            out = f"{name}.out_proj" if name else "out_proj"
            sites.append(rules.Site(f"{name}.out", "linear", module.out_proj, _param(problem, out, "weight"),
                                    _param(problem, out, "bias")))
            continue
        if kind is None:
            continue
        if kind == "embedding" and (module.max_norm is not None or module.scale_grad_by_freq):
            dropped[name] = "Embedding with max_norm or scale_grad_by_freq"
            continue
        site = rules.Site(name, kind, module, _param(problem, name, "weight"), _param(problem, name, "bias"))
        if kind == "norm" and not isinstance(module, nn.LayerNorm):
            site.shapes["running"] = (problem.all_values()[f"{name}.running_mean" if name else "running_mean"],
                                      problem.all_values()[f"{name}.running_var" if name else "running_var"])
        sites.append(site)
    sites = [s for s in sites if s.param_names()]
    return sites, attn, dropped


def shared_names(model: nn.Module) -> set[str]:
    """Names of parameters registered in more than one place (tied weights)."""
    count = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    return {n for n, p in model.named_parameters(remove_duplicate=False) if count[id(p)] > 1}


@contextmanager
def instrumented(plan: Plan, problem: Problem) -> Iterator[Injector]:
    """Hooks on every site's module, attention written out, torch's fused attention fast path off."""
    injector = plan.injector
    handles = []
    for site in plan.sites:
        if site.module in plan.attention.values() or site.key.endswith(".out") and site.key[:-4] in plan.attention:
            continue

        def hook(_m: nn.Module, args: tuple, output: torch.Tensor, key: str = site.key) -> torch.Tensor:
            if args and isinstance(args[0], torch.Tensor):  # else no capture: the site is dropped
                injector.capture(key, args[0])
            return injector.shift(key, output)

        handles.append(site.module.register_forward_hook(hook))
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with attention.patched(plan.attention, injector):
            yield injector
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        for handle in handles:
            handle.remove()
        injector.reset("off")


def _batch_dim(one: tuple[int, ...], two: tuple[int, ...]) -> int | None:
    """The dimension that holds the batch: size 1 for one sample and 2 for two."""
    if len(one) != len(two):
        return None
    diffs = [i for i, (a, b) in enumerate(zip(one, two, strict=True)) if a != b]
    return diffs[0] if len(diffs) == 1 and one[diffs[0]] == 1 and two[diffs[0]] == 2 else None


def _capture(problem: Problem, injector: Injector, X: torch.Tensor) -> torch.Tensor:
    injector.reset("capture")
    with torch.no_grad():
        out = call(problem.model, problem.all_values(), (X,))
    injector.mode = "off"
    return out


def make_plan(problem: Problem) -> Plan:
    """The sites whose rules apply (each called once per sample, batch dimension found, checked on one
    sample), their orders, and the parameters left to the Jacobian."""
    sites, attn, dropped = candidate_sites(problem)
    probe: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    tied = shared_names(problem.model)
    for site in list(sites):
        if tied & set(site.param_names()):
            dropped[site.key] = "its parameters are shared with another module"
            sites.remove(site)
    plan = Plan(sites, [], dropped, {n: m for n, m in attn.items()
                                     if any(s.key.startswith(n + ".") for s in sites)}, Injector())
    if sites and problem.X.shape[0]:
        with instrumented(plan, problem) as injector:
            x1 = problem.X[:1]
            alone = _capture(problem, injector, x1)
            one = ({k: [tuple(t.shape) for t in v] for k, v in injector.inputs.items()}, dict(injector.out_shapes))
            x2 = torch.cat([x1, problem.cols[-1:] if problem.X.shape[0] < 2 else problem.X[1:2]])
            pair = _capture(problem, injector, x2)
            two = ({k: [tuple(t.shape) for t in v] for k, v in injector.inputs.items()}, dict(injector.out_shapes))
        # samples independent (eval mode): the first output does not depend on the second sample
        plan.batched = bool(torch.allclose(alone.reshape(-1), pair[:1].reshape(-1), rtol=1e-5, atol=1e-6)) \
            if pair.shape[:1] == (2,) else False
        for site in list(sites):
            why = _locate(site, one, two)
            if why:
                dropped[site.key] = why
                sites.remove(site)
        probe = _self_check(plan, problem)
    covered = {s.weight[0] for s in plan.sites if s.weight} | {s.bias[0] for s in plan.sites if s.bias}
    plan.fallback = [n for n in problem.trainable if n not in covered]
    plan.attention = {n: m for n, m in plan.attention.items() if any(s.key.startswith(n + ".") for s in plan.sites)}
    n, m = problem.X.shape[0], problem.cols.shape[0]
    for site in plan.sites:
        if site.weight is not None and site.kind in ("linear", "conv", "embedding"):
            cost = rules.costs(site, n, m, problem.n_outputs, problem.mode)
            site.order = min(cost, key=cost.__getitem__)
        if site.key in probe and factored.eligible(site, problem.n_outputs) \
                and factored.features(site, *probe[site.key]).w is not None:
            site.order = "factored"  # its cotangents factor over the outputs on the probe sample
    return plan


def _locate(site: rules.Site, one: tuple, two: tuple) -> str | None:
    """Fill the site's batch dimensions and shapes from the captures of one and two samples; or say why not."""
    calls = len(one[0].get(site.key, []))
    if calls != 1 or len(one[1].get(site.key, [])) != 1:
        return f"called {calls} times in one forward pass (the rule needs exactly one call)"
    in1, in2 = one[0][site.key][0], two[0][site.key][0]
    out1, out2 = one[1][site.key][0], two[1][site.key][0]
    bi, bo = _batch_dim(in1, in2), _batch_dim(out1, out2)
    if bi is None or bo is None:
        return "its input or output has no batch dimension"
    site.batch_in, site.batch_out, site.out_shape = bi, bo, out1
    rest_in = in1[:bi] + in1[bi + 1:]
    site.shapes.update({"in": math.prod(rest_in), "out": math.prod(out1)})
    if site.kind == "conv":
        p = rules.patches(site.module, torch.zeros((1, *rest_in), dtype=site.module.weight.dtype))
        site.shapes.update(S=p.shape[1], G=p.shape[2], I=p.shape[3], O=site.module.out_channels // site.module.groups)
    elif site.kind == "embedding":
        d = site.module.embedding_dim
        site.shapes.update(S=max(1, int(torch.tensor(rest_in).prod())), G=1, I=d, O=d)
    elif site.kind == "linear":
        i, o = rest_in[-1] if rest_in else 1, out1[-1]
        site.shapes.update(S=max(1, int(torch.tensor(rest_in[:-1]).prod())), G=1, I=i, O=o)
    return None


# ------------------------------------------------------------------------------- features


def shifted_forward(plan: Plan, problem: Problem, X: torch.Tensor, injector: Injector
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(site -> input (B, ...), outputs (B, K) with their graph): one forward pass of the whole batch with the
    sites' outputs tapped, for `output_cotangents`."""
    b = X.shape[0]
    injector.reset("tap")
    injector.anchor = torch.zeros((), dtype=problem.dtype, device=problem.device, requires_grad=True)
    try:
        with torch.enable_grad():
            out = call(problem.model, problem.all_values(), (X,)).reshape(b, problem.n_outputs)
    finally:
        injector.mode = "off"
    return {s.key: injector.inputs[s.key][0].movedim(s.batch_in, 0) for s in plan.sites}, out


def output_cotangents(plan: Plan, out: torch.Tensor, injector: Injector, index: int) -> dict[str, torch.Tensor]:
    """site -> dF_index(x_b)/dz_b (B, *out without batch) from one reverse pass: samples do not interact, so
    d(sum_b F_index(x_b))/dz_b = dF_index(x_b)/dz_b, which the taps of `shifted_forward` keep (zero for a
    site that does not reach the outputs). The graph is freed after the last output."""
    b = out.shape[0]
    injector.grads = {}
    if out.requires_grad:
        with torch.enable_grad():
            torch.autograd.backward(out[:, index].sum(), inputs=[injector.anchor],
                                    retain_graph=index < out.shape[1] - 1)
    grads, injector.grads = injector.grads, {}
    cots = {}
    for site in plan.sites:
        grad = grads.get(site.key)
        if grad is None:
            shape = list(site.out_shape)
            shape[site.batch_out] = b
            grad = torch.zeros(shape, dtype=out.dtype, device=out.device)
        cots[site.key] = grad.movedim(site.batch_out, 0)
    return cots


def _batched(plan: Plan, problem: Problem, X: torch.Tensor, injector: Injector
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(site -> input (B, ...), site -> cotangents (B, K, *out without batch)): one forward pass, one backward
    pass per output, written into (B, K, ...) buffers."""
    inputs, out = shifted_forward(plan, problem, X, injector)
    b, k = X.shape[0], problem.n_outputs
    cots = {s.key: torch.empty((b, k, *(n for i, n in enumerate(s.out_shape) if i != s.batch_out)),
                               dtype=problem.dtype, device=problem.device) for s in plan.sites}
    for index in range(k):
        for key, grad in output_cotangents(plan, out, injector, index).items():
            cots[key][:, index] = grad
    return inputs, cots


def passes(plan: Plan, problem: Problem, X: torch.Tensor, injector: Injector
           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
    """(site -> input (B, ...), site -> cotangents (B, K, ...), fallback Jacobian (B, K, P_f) or None)."""
    if plan.batched and plan.sites:
        inputs, cots = _batched(plan, problem, X, injector)
        if not plan.fallback:
            return inputs, cots, None
        from .generic import jacobian

        return inputs, cots, jacobian(problem, plan.fallback, X)
    inputs = layer_inputs(plan, problem, X, injector) if plan.sites else {}
    return (inputs, *cotangents(plan, problem, X, injector))


def cotangents(plan: Plan, problem: Problem, X: torch.Tensor, injector: Injector
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(site -> cotangents (B, K, *out without batch), fallback Jacobian (B, K, P_f) or None), from one
    reverse pass per sample (vmapped where torch.func batches the model exactly)."""
    trainable, frozen, model = problem.trainable, problem.frozen, problem.model
    chunk = {n: trainable[n] for n in plan.fallback}
    fixed = {n: v for n, v in trainable.items() if n not in chunk}
    deltas = {s.key: torch.zeros(s.out_shape, dtype=problem.dtype, device=problem.device) for s in plan.sites}

    def f(deltas_: dict[str, torch.Tensor], chunk_: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        injector.deltas, injector.mode = deltas_, "inject"
        try:
            return call(model, ({**fixed, **chunk_}, frozen), (x.unsqueeze(0),)).reshape(-1)
        finally:
            injector.mode, injector.deltas = "off", {}

    per_sample = jacrev(f, argnums=(0, 1))
    if jacobian_way(problem, list(problem.trainable)) == "vmap":
        cot, jac = vmap(per_sample, in_dims=(None, None, 0))(deltas, chunk, X)
    else:  # a model torch.func cannot batch over samples (jacobians.py): one sample at a time
        parts = [per_sample(deltas, chunk, x) for x in X]
        cot = {key: torch.stack([c[key] for c, _ in parts]) for key in deltas}
        jac = {name: torch.stack([j[name] for _, j in parts]) for name in chunk}
    b, k = X.shape[0], problem.n_outputs
    cots = {s.key: cot[s.key].squeeze(2 + s.batch_out) for s in plan.sites}
    parts = [jac[n].reshape(b, k, -1) for n in plan.fallback]
    return cots, (torch.cat(parts, 2) if len(parts) > 1 else parts[0] if parts else None)


def layer_inputs(plan: Plan, problem: Problem, X: torch.Tensor, injector: Injector) -> dict[str, torch.Tensor]:
    _capture(problem, injector, X)
    return {s.key: injector.inputs[s.key][0].movedim(s.batch_in, 0) for s in plan.sites}


def _self_check(plan: Plan, problem: Problem) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Drop every site whose rule disagrees with autograd on one sample (gradient of v . F, v random);
    returns each kept site's (input, cotangents) on that sample."""
    if not plan.sites:
        return {}
    x = problem.X[:1]
    with instrumented(plan, problem) as injector:
        inputs = layer_inputs(plan, problem, x, injector)
        saved, plan.fallback = plan.fallback, []
        cots, _ = cotangents(plan, problem, x, injector)
        plan.fallback = saved
    v = torch.randn(problem.n_outputs, dtype=problem.dtype, device=problem.device,
                    generator=torch.Generator(problem.device).manual_seed(0))
    values = {n: t.clone().requires_grad_(True) for n, t in problem.trainable.items()}
    with torch.enable_grad():
        out = call(problem.model, (values, problem.frozen), (x,)).reshape(-1)
        names = sorted({n for s in plan.sites for n in s.param_names()})
        grads = dict(zip(names, torch.autograd.grad(out @ v, [values[n] for n in names], allow_unused=True),
                         strict=True))
    tol = 1e-9 if problem.dtype == torch.float64 else 2e-3
    for site in list(plan.sites):
        mine = rules.per_sample_grads(site, inputs[site.key], cots[site.key], with_weight=True)
        got = torch.cat([torch.einsum("k,kp->p", v, g[0]) for g in mine])
        refs = []
        for name, rows in (p for p in (site.weight, site.bias) if p is not None):
            ref = grads[name]
            ref = torch.zeros_like(values[name]) if ref is None else ref.detach()
            refs.append((ref if rows is None else ref[rows]).reshape(-1))
        ref = torch.cat(refs)  # the site's parameters together (a key bias alone has a zero gradient)
        if got.shape != ref.shape or float((got - ref).norm()) > tol * (float(ref.norm()) + tol):
            plan.dropped[site.key] = "its rule disagreed with autograd (parameters used outside the module?)"
            plan.sites.remove(site)
    return {s.key: (inputs[s.key], cots[s.key]) for s in plan.sites}


# ------------------------------------------------------------------------------- driving
def describe_plan(plan: Plan) -> dict[str, str]:
    """Per layer: the rule and order it takes, or why it goes to the Jacobian."""
    report = {}
    for site in plan.sites:
        order = "positions" if site.positions else "factored" if site.order == "factored" else "jacobian"
        report[site.key] = f"structured {site.kind} ({order} order)"
    for key, why in plan.dropped.items():
        report[key] = f"jacobian: {why}"
    if plan.fallback:
        report["(other parameters)"] = f"jacobian: {', '.join(plan.fallback)}"
    return report
