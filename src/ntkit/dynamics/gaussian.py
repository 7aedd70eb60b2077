"""The Gaussian that an infinitely wide network follows after training for time t (Section 5).

At initialization f_0 ~ GP(0, Sigma) with Sigma = Sigma^(L) (Proposition 1); training all layers
by least-squares gradient descent moves f along the constant kernel K = Theta^(L) (Theorem 2):

    f_t(x) = f_0(x) + K(x, X) A_t (y* - f_0(X)),   A_t = V diag((1 - exp(-lambda t)) / (N lambda)) V^T

with K(X, X) / N = V diag(lambda) V^T. So f_t is Gaussian, with (writing k_x = K(X, x), s_x = Sigma(X, x))

    mean_t(x)     = k_x^T A_t y*
    cov_t(x, x')  = Sigma(x, x') - k_x^T A_t s_x' - s_x^T A_t k_x' + k_x^T A_t Sigma(X, X) A_t k_x'

which at t = inf (A = K^-1) is the paper's formula (docs/paper.md, Section 5): the mean is kernel
regression with Theta and the covariance vanishes on the training points. With a ridge (weight decay,
see `LeastSquares`) the rates lambda become lambda + ridge / N and A_inf = (K + ridge I)^-1. Training only the last
layer (`trained="last"`) is the same with K = Sigma^(L) (the gradient kernel of the last layer);
at t = inf it coincides with the Bayesian NNGP posterior (`posterior`), which also takes
observation noise.

Computation. t = inf (the default, and all that kernel regression needs) takes one Cholesky
factorization L L^T = K + ridge I, on the first such prediction (N^3 / 3): A = (K + ridge I)^-1 is applied by
two triangular solves and the covariance is the direct formula above (M N^2 per test set, plus M^2 N for the
covariance). Any finite time needs the eigendecomposition K / N = V diag(lambda) V^T (several times the cost
of the Cholesky factorization), computed on first use and kept (`spectrum`); it is also used at t = inf when
K + ridge I has no well-conditioned Cholesky factor, where its eigenvalues give the exact error (singular)
or warning (ill-conditioned). The std at all T times at once uses the low rank of the decays over time
(`_lowrank_time`; it agrees with the covariance path to about 5e-12 relative); the covariance uses a Cholesky factor
of Sigma(X, X) in the eigenbasis, so its NNGP-posterior part does not depend on t. The formulas, and the rest of
this algebra on Grams in memory, are in `gaussian_algebra.py`. Per model: one eigendecomposition, one change of
basis and one Cholesky factorization (N^3). Per test set: M N^2. Per time, for the covariance: M N^2 / 2 + M^2 N / 2
multiply-adds; for the mean O(N T + M T).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._checks import as_matrix, as_tensor, check_choice, check_real, to_output
from ..solvers import cg
from ..solvers.cholesky import cholesky_in_place, condition_estimate, largest_eigenvalue
from . import large_n
from ._blocked import congruence, default_block
from ._cholesky import cholesky, cholesky_solve, limit_factor
from ._lowrank_time import time_quadratic_forms
from .gaussian_algebra import covariances, last_layer_spread, nngp_posterior, spread, std
from .least_squares import check_cross_gram, check_targets, shape_output
from .spectrum import ILL_CONDITIONED, Spectrum, check_gram, check_ridge, gram_spectrum
from .time import check_times, integrated_decay

TRAINED = ("all", "last")
Array = torch.Tensor | np.ndarray


class InfiniteWidthGP:
    """The distribution of infinitely wide networks of `arch` trained on (X_train, y_train).

    Args:
        arch: the architecture (an `MLP`, or anything with the same `kernel`/`kernel_diag` methods).
        X_train: (N, n0) training inputs; y_train: (N,) or (N, k) targets (outputs are independent
            and share one covariance, the limit kernel being Theta (x) Id).
        trained: "all" (every layer, kernel Theta^(L), the paper) or "last" (only the last layer,
            kernel Sigma^(L)).
        ridge: >= 0, weight decay towards the initialization (see `LeastSquares`); at t = inf the
            mean is kernel ridge regression.
        dtype: precision of all the linear algebra (float64 by default).
        progress: show progress bars (None: follow `ntkit.set_progress`).
        solver: "cholesky" (the default: exact, everything below), "cg", "nystrom", any other registered solver, or
            "auto" (`large_n.py`: the first that fits the memory budget): the iterative solvers reach N far beyond
            memory and give the mean; "nystrom" at t = inf only.
        n_centers, centers: Nystrom's centres (count; "uniform" or "rpcholesky"). tol, max_iter: the iterative
            solvers' relative residual (None: 1e-10 in float64, 1e-5 in float32) and iteration cap.
        memory_budget: bytes the solvers may use (None: 80% of the device's free memory); "cholesky" beyond it
            raises MemoryError at once, "auto" then takes "nystrom", or "cg" when even Nystrom's centres do not
            fit; "cg" streams the Gram's tiles.
        client: a dask.distributed.Client: Grams and solver passes run on its workers.

    With solver="cholesky" construction computes Theta(X, X) only (Sigma(X, X) when a std or covariance first needs
    it); the first t = inf prediction factors Theta in its own storage (peak: the Gram's bytes plus O(N k)).
    Construction computes the Grams; the factorizations are computed on first use and kept: the Cholesky
    factor of K + ridge I for t = inf, the eigendecomposition `spectrum` for finite times (see the module
    docstring). A Gram that is not positive semi-definite is therefore rejected by the first prediction.
    Use `from_grams` over precomputed Grams. NumPy inputs give NumPy outputs.
    """

    def __init__(self, arch: Any, X_train: Array, y_train: Array, *, trained: str = "all", ridge: float = 0.0,
                 dtype: torch.dtype = torch.float64, progress: bool | None = None, solver: str = "cholesky",
                 n_centers: int | None = None, centers: str = "uniform", tol: float | None = None,
                 max_iter: int = cg.DEFAULT_MAX_ITER, memory_budget: float | None = None, client: Any = None):
        check_choice(trained, "trained", TRAINED)
        Xt, numpy_in = as_matrix(X_train, "X_train", dtype=dtype)
        self.arch, self.X_train, self._progress, self._client = arch, Xt, progress, client
        tol, max_iter = cg.check_solver_options(tol, max_iter, dtype)  # for every solver, "auto" included
        get = "ntk" if trained == "all" else "nngp"
        self._setup(None, None, y_train, trained, ridge, dtype, numpy_in, checked=True, n=Xt.shape[0])
        problem = large_n.Problem(arch, Xt, self.y_train, get, self.ridge, tol, max_iter, n_centers, centers,
                                  large_n.memory_budget(memory_budget, Xt.device), client, progress)
        chosen = large_n.resolve_solver(solver, problem)
        chosen.check(problem)
        if not chosen.finite_times:  # solved for t = inf now (the others refuse a singular K at a t = inf prediction)
            large_n.check_interpolable(Xt, self.y_train, self.ridge)
        self.solver, self._iterative = chosen.name, None
        if chosen.spread:   # the exact algebra below: Theta only (Sigma(X, X) when a std or covariance needs it)
            self._K = self._kernel(Xt, get=get).detach().to(dtype)
            self._Sigma = None if trained == "all" else self._K
            self._owns_K = trained == "all"          # free to factor in place (recomputed if needed again)
            return
        self._iterative = chosen(problem)

    def _kernel(self, X: torch.Tensor, Y: torch.Tensor | None = None, get: Any = "ntk",
                progress: bool | None = None) -> Any:
        """arch.kernel, on Dask workers when a client was given."""
        kwargs = {} if self._client is None else {"client": self._client}
        show = self._progress if progress is None else progress
        return self.arch.kernel(X, Y, get=get, progress=show, **kwargs)

    @classmethod
    def from_grams(cls, Theta_train: Array | None, Sigma_train: Array, y_train: Array, *, trained: str = "all",
                   ridge: float = 0.0, dtype: torch.dtype = torch.float64) -> InfiniteWidthGP:
        """The same model over precomputed Grams Theta(X, X) and Sigma(X, X), both (N, N) (Theta may be
        None for trained="last"). Predict with `predict_from_grams`."""
        check_choice(trained, "trained", TRAINED)
        self = cls.__new__(cls)
        if trained == "all" and Theta_train is None:
            raise ValueError("Theta_train is required for trained='all'")
        self._setup(Theta_train if trained == "all" else None, Sigma_train, y_train, trained, ridge, dtype,
                    not isinstance(Sigma_train, torch.Tensor))
        self.arch, self.X_train, self._progress, self._client = None, None, None, None
        self.solver, self._owns_K, self._iterative = "cholesky", False, None
        return self

    def _setup(self, Theta: Any, Sigma: Any, y: Any, trained: str, ridge: float, dtype: torch.dtype,
               numpy_in: bool, checked: bool = False, n: int | None = None) -> None:
        """`checked`: the Grams come from the architecture's `kernel` (exactly symmetric and finite). Sigma may be
        None (computed from the architecture on first use); both may be None for the iterative solvers (n given)."""
        self.trained, self.ridge, self._numpy, self._dtype = trained, check_ridge(ridge), numpy_in, dtype
        def gram(G: Any, name: str) -> torch.Tensor:
            return G.detach().to(dtype) if checked else check_gram(G, name, dtype=dtype)[0]

        self._Sigma = None if Sigma is None else gram(Sigma, "Sigma_train")
        Theta_t = None if Theta is None else gram(Theta, "Theta_train")
        if Theta_t is not None and self._Sigma is not None and Theta_t.shape != self._Sigma.shape:
            raise ValueError(f"Theta_train and Sigma_train must have the same shape, got "
                             f"{tuple(Theta_t.shape)} and {tuple(self._Sigma.shape)}")
        # the dynamics kernel: Theta^(L) when every layer trains, Sigma^(L) for the last layer alone
        self._K = Theta_t if trained == "all" else self._Sigma
        self._K_name = "Theta_train" if trained == "all" else "Sigma_train"
        n = self._K.shape[0] if self._K is not None else n
        if n == 0:
            raise ValueError("X_train must have at least one training point, got none (N = 0)")
        device = self._K.device if self._K is not None else self.X_train.device
        self._vector = (y.ndim if isinstance(y, torch.Tensor) else np.ndim(y)) == 1
        self.y_train = check_targets(y, n, "y_train", dtype, device)
        self._spectrum: Spectrum | None = None
        self._y_hat: torch.Tensor | None = None                  # V^T y*, (N, k), with the spectrum
        self._S: torch.Tensor | None = None                      # V^T Sigma(X, X) V, when needed
        self._root: torch.Tensor | bool | None = None            # its Cholesky factor (False: not PD)
        self._limit: torch.Tensor | bool | None = None           # t = inf: Cholesky factor of K + ridge I
        self._alpha: torch.Tensor | None = None                  # (K + ridge I)^-1 y*, with it

    @property
    def Sigma_train(self) -> torch.Tensor:
        """Sigma^(L)(X, X) (N, N), computed from the architecture on first use (std, covariance, trained="last")."""
        if self._Sigma is None:
            self._Sigma = self._kernel(self.X_train, get="nngp").detach().to(self._dtype)
        return self._Sigma

    def _dynamics_gram(self) -> torch.Tensor:
        """K(X, X) of the dynamics, recomputed when the lean t = inf path has factored it in place."""
        if self._K is None:
            self._K = self._kernel(self.X_train, get="ntk").detach().to(self._dtype)
        return self._K

    def _limit_factor(self) -> torch.Tensor | None:
        """L with L L^T = K + ridge I, computed on the first t = inf prediction and kept; None when K + ridge I
        is singular or ill-conditioned (then the spectrum's exact checks give the error or the warning). When the
        model owns its Gram (built from an architecture, trained="all") the factor overwrites the Gram in place
        (`solvers.cholesky`): no second N x N array; a later finite time recomputes the Gram."""
        if self._limit is None:
            if self._owns_K and self._K is not None:
                A = self._K
                top = largest_eigenvalue(A) + self.ridge
                self._K = None                                        # A is overwritten by its factor
                ok = cholesky_in_place(A, self.ridge) and condition_estimate(A, top) <= ILL_CONDITIONED
                L = A if ok else None
            else:
                L = limit_factor(self._dynamics_gram(), self.ridge)
            self._limit = False if L is None else L
            self._alpha = None if L is None else cholesky_solve(L, self.y_train)
        return None if self._limit is False else self._limit

    @property
    def spectrum(self) -> Spectrum:
        """K(X, X) / N = V diag(lambda) V^T of the dynamics kernel K (Theta, or Sigma for trained="last"),
        eigenvalues (N,) and eigenvectors (N, N) in `dtype`: computed on first use (a finite time) and kept."""
        return self._decompose()

    def _decompose(self) -> Spectrum:
        if self._spectrum is None:
            K = self._dynamics_gram()
            self._spectrum = gram_spectrum(K, self._K_name, dtype=K.dtype, checked=True)
            self._y_hat = self._spectrum.eigenvectors.T @ self.y_train
        return self._spectrum

    @property
    def iterations(self) -> int:
        """Iterations of the t = inf solve of an iterative solver (for "cg" run on first access), or 1 for
        "cholesky"."""
        return 1 if self._iterative is None else self._iterative.iterations

    @property
    def n_train(self) -> int:
        return self.y_train.shape[0]

    def _sigma_in_basis(self) -> torch.Tensor:
        if self._S is None:
            V = self.spectrum.eigenvectors
            self._S = congruence(V, self.Sigma_train, default_block(self.n_train))
        return self._S

    # ---------------------------------------------------------------------------- predictions
    def predict(self, X_test: Array, t: Any = np.inf, *, return_std: bool = False, return_cov: bool = False,
                progress: bool | None = None) -> Array | tuple[Array, Array]:
        """Mean (and std or covariance) of f_t on X_test (M, n0) at time(s) t.

        t: a time >= 0, np.inf (the default: the end of training), or a 1-D array of T times.
        Returns mean of shape (M[, k]) or (T, M[, k]); with return_std also std (M,) or (T, M);
        with return_cov also cov (M, M) or (T, M, M) (symmetric positive semi-definite).
        """
        if self.arch is None:
            raise ValueError("this model was built from Grams: use predict_from_grams")
        Xs, numpy_in = as_matrix(X_test, "X_test", dtype=self.y_train.dtype, device=self.y_train.device)
        if Xs.shape[1] != self.X_train.shape[1]:
            raise ValueError(f"X_test must have {self.X_train.shape[1]} features like X_train, got {Xs.shape[1]}")
        show = self._progress if progress is None else progress
        if self._iterative is not None:
            if return_std or return_cov:
                raise ValueError(f"return_std and return_cov need the exact solver: solver={self.solver!r} gives "
                                 "the mean only. Use solver='cholesky' (the Gram in memory) for the spread")
            times, scalar = check_times(t)
            mean = self._iterative.mean(Xs, times)
            return _convert((shape_output(mean, scalar, self._vector),), numpy_in)
        spread = return_std or return_cov
        if self.trained == "all" and spread:
            Sigma_cross, Theta_cross = self._kernel(Xs, self.X_train, get=("nngp", "ntk"), progress=show)
        elif self.trained == "all":     # the mean needs Theta(X*, X) only
            Sigma_cross, Theta_cross = None, self._kernel(Xs, self.X_train, get="ntk", progress=show)
        else:
            Sigma_cross, Theta_cross = self._kernel(Xs, self.X_train, get="nngp", progress=show), None
        Sigma_test = None
        if return_cov:
            Sigma_test = self._kernel(Xs, get="nngp", progress=show)
        elif return_std:
            Sigma_test = self.arch.kernel_diag(Xs, get="nngp")
        result = self._predict(Theta_cross, Sigma_cross, Sigma_test, t, return_std, return_cov, show)
        return _convert(result, numpy_in)

    def predict_from_grams(self, Theta_test_train: Array | None, Sigma_test_train: Array,
                           Sigma_test: Array | None = None, t: Any = np.inf, *, return_std: bool = False,
                           return_cov: bool = False, progress: bool | None = None) -> Array | tuple[Array, Array]:
        """`predict` over precomputed Grams: Theta(X*, X) and Sigma(X*, X), both (M, N) (Theta may be None
        for trained="last"), and Sigma(X*, X*): the (M, M) matrix, or its diagonal (M,) when only the
        standard deviation is wanted. Returns NumPy when Sigma_test_train is NumPy."""
        n, dtype, device = self.n_train, self.y_train.dtype, self.y_train.device
        Sigma_cross = check_cross_gram(Sigma_test_train, n, "Sigma_test_train", dtype, device)
        Theta_cross = None
        if self.trained == "all":
            if Theta_test_train is None:
                raise ValueError("Theta_test_train is required for trained='all'")
            Theta_cross = check_cross_gram(Theta_test_train, n, "Theta_test_train", dtype, device)
            if Theta_cross.shape != Sigma_cross.shape:
                raise ValueError(f"Theta_test_train and Sigma_test_train must have the same shape, got "
                                 f"{tuple(Theta_cross.shape)} and {tuple(Sigma_cross.shape)}")
        Sigma_t = None
        if return_std or return_cov:
            if Sigma_test is None:
                raise ValueError("Sigma_test (the test Gram, or its diagonal for return_std) is required for "
                                 "return_std or return_cov")
            Sigma_t, _ = as_tensor(Sigma_test, "Sigma_test", ndim=(1, 2), dtype=dtype, device=device)
            m = Sigma_cross.shape[0]
            if tuple(Sigma_t.shape) != (m, m) and (return_cov or tuple(Sigma_t.shape) != (m,)):
                raise ValueError(f"Sigma_test must have shape {(m, m)}" + ("" if return_cov else f" or {(m,)}") +
                                 f", got {tuple(Sigma_t.shape)}")
        result = self._predict(Theta_cross, Sigma_cross, Sigma_t, t, return_std, return_cov, progress)
        return _convert(result, not isinstance(Sigma_test_train, torch.Tensor))

    def _predict(self, Theta_cross: torch.Tensor | None, Sigma_cross: torch.Tensor, Sigma_test: torch.Tensor | None,
                 t: Any, return_std: bool, return_cov: bool, show: bool | None) -> tuple[torch.Tensor, ...]:
        if return_std and return_cov:
            raise ValueError("return_std and return_cov cannot both be True (the std is the sqrt of the "
                             "covariance's diagonal)")
        times, scalar = check_times(t)
        K_cross = Theta_cross if self.trained == "all" else Sigma_cross
        if Sigma_test is not None and Sigma_test.ndim == 2:
            Sigma_test = (Sigma_test + Sigma_test.T) / 2
        if np.isinf(times).all() and self._limit_factor() is not None:   # t = inf: the Cholesky factor suffices
            limit = [x[None].repeat(len(times), *[1] * x.ndim)             # the same at each of the T times
                     for x in self._predict_limit(K_cross, Sigma_cross, Sigma_test, return_std, return_cov)]
            mean = shape_output(limit[0], scalar, self._vector)
            if not (return_std or return_cov):
                return (mean,)
            return mean, std(limit[1], scalar) if return_std else (limit[1][0] if scalar else limit[1])
        if np.isinf(times).any():
            self.spectrum.check_invertible(self.ridge, self._K_name)
        V, lam, n = self.spectrum.eigenvectors, self.spectrum.eigenvalues, self.n_train
        rates = self.spectrum.rates(self.ridge).cpu().numpy()
        D = torch.as_tensor(integrated_decay(rates, times) / n, dtype=V.dtype, device=V.device)   # (T, N): A_t
        m, k, n_t = K_cross.shape[0], self.y_train.shape[1], len(times)
        weights = V @ (D.T[:, :, None] * self._y_hat[:, None, :]).reshape(n, -1)           # A_t y* for all t
        mean = shape_output((K_cross @ weights).reshape(m, n_t, k).transpose(0, 1), scalar, self._vector)
        if not (return_std or return_cov):
            return (mean,)
        P = K_cross @ V                                                        # K(X*, X) V, (M, N)
        diag = None if Sigma_test is None or return_cov else \
            (Sigma_test.diagonal() if Sigma_test.ndim == 2 else Sigma_test)
        if self.trained == "last":
            return mean, last_layer_spread(P, D, lam, Sigma_test, diag, return_std, scalar, show)
        Q = Sigma_cross @ V                                                    # Sigma(X*, X) V, (M, N)
        if return_std:
            # var_t(x) = Sigma(x, x) - 2 sum_i d_i P_xi Q_xi + sum_ij d_i P_xi S_ij P_xj d_j, S = V^T Sigma(X, X) V:
            # the last term for all T times at once by the low rank of D in time (`_lowrank_time`)
            quad = time_quadratic_forms(P, self._sigma_in_basis(), D, progress=show)
            return mean, std(diag - 2 * (Q.mul_(P) @ D.T).T + quad, scalar)              # Q is not needed after
        root = self._sigma_root()
        cov = covariances(P, Q, D, Sigma_test, root, self._sigma_in_basis() if root is None else None, show)
        return mean, cov[0] if scalar else cov

    def _predict_limit(self, K_cross: torch.Tensor, Sigma_cross: torch.Tensor, Sigma_test: torch.Tensor | None,
                       return_std: bool, return_cov: bool) -> tuple[torch.Tensor, ...]:
        """t = inf from L L^T = K + ridge I (A = (K + ridge I)^-1, docs/paper.md, Section 5): the mean (M, k)
        K(X*, X) A y*, and the variances (M,) or covariance (M, M) of the direct formula with G = K(X*, X) A."""
        mean = K_cross @ self._alpha
        if not (return_std or return_cov):
            return (mean,)
        G = cholesky_solve(self._limit_factor(), K_cross.T).T                  # k_x^T (K + ridge I)^-1, (M, N)
        return mean, spread(G, Sigma_cross, self.Sigma_train, Sigma_test, return_std)

    def _sigma_root(self) -> torch.Tensor | None:
        """Lower-triangular R with R R^T = V^T Sigma(X, X) V, or None if Sigma(X, X) is not positive definite."""
        if self._root is None:
            S = self._sigma_in_basis()
            root = cholesky((S + S.T) / 2)
            self._root = False if root is None else root
        return None if self._root is False else self._root

    # ------------------------------------------------------------------ Bayesian NNGP posterior
    def posterior(self, X_test: Array, *, noise: float = 0.0, return_std: bool = False,
                  return_cov: bool = False) -> Array | tuple[Array, Array]:
        """The Bayesian posterior of the NNGP prior f ~ GP(0, Sigma^(L)) given y_train = f(X_train) + N(0, noise):

            mean(x) = Sigma(x, X) (Sigma(X, X) + noise I)^-1 y,
            cov(x, x') = Sigma(x, x') - Sigma(x, X) (Sigma(X, X) + noise I)^-1 Sigma(X, x').

        With noise = 0 it equals `predict(t=inf)` of trained="last" (ridge=0). Shapes as in `predict`
        for one time. Computed by a Cholesky factorization, independently of the eigendecomposition.
        """
        if self.arch is None:
            raise ValueError("this model was built from Grams: use posterior_from_grams")
        Xs, numpy_in = as_matrix(X_test, "X_test", dtype=self.y_train.dtype, device=self.y_train.device)
        Sigma_cross = self.arch.kernel(Xs, self.X_train, get="nngp")
        Sigma_test = self.arch.kernel(Xs, get="nngp") if return_cov else \
            (self.arch.kernel_diag(Xs, get="nngp") if return_std else None)
        return _convert(self._posterior(Sigma_cross, Sigma_test, noise, return_std, return_cov), numpy_in)

    def posterior_from_grams(self, Sigma_test_train: Array, Sigma_test: Array | None = None, *, noise: float = 0.0,
                             return_std: bool = False, return_cov: bool = False) -> Array | tuple[Array, Array]:
        """`posterior` over precomputed Grams Sigma(X*, X) (M, N) and Sigma(X*, X*) ((M, M), or (M,) for std)."""
        dtype, device = self.y_train.dtype, self.y_train.device
        Sigma_cross = check_cross_gram(Sigma_test_train, self.n_train, "Sigma_test_train", dtype, device)
        Sigma_t = None if Sigma_test is None else as_tensor(Sigma_test, "Sigma_test", ndim=(1, 2), dtype=dtype,
                                                            device=device)[0]
        if (return_std or return_cov) and Sigma_t is None:
            raise ValueError("Sigma_test is required for return_std or return_cov")
        if return_cov and Sigma_t.ndim != 2:
            raise ValueError("return_cov needs the full (M, M) Sigma_test, not its diagonal")
        result = self._posterior(Sigma_cross, Sigma_t, noise, return_std, return_cov)
        return _convert(result, not isinstance(Sigma_test_train, torch.Tensor))

    def _posterior(self, Sigma_cross: torch.Tensor, Sigma_test: torch.Tensor | None, noise: float,
                   return_std: bool, return_cov: bool) -> tuple[torch.Tensor, ...]:
        if return_std and return_cov:
            raise ValueError("return_std and return_cov cannot both be True")
        noise = float(check_real(noise, "noise", minimum=0.0))
        mean, spread = nngp_posterior(self.Sigma_train, Sigma_cross, Sigma_test, self.y_train, noise, return_std,
                                      return_cov)
        mean = shape_output(mean[None], True, self._vector)
        return (mean,) if spread is None else (mean, spread)


def _convert(result: tuple[torch.Tensor, ...], numpy_out: bool) -> Any:
    converted = tuple(to_output(r, numpy_out) for r in result)
    return converted[0] if len(converted) == 1 else converted
