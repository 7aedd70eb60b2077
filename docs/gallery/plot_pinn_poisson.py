"""
The infinitely wide physics-informed network on the 1-D Poisson equation
=========================================================================

A physics-informed network trains u(x) = net(x) so that u'' = g on [0, 1] and u = h at 0 and 1. In the
infinite-width limit this is kernel gradient descent with the blocks K_uu = Theta(X_b, X_b),
K_ur = d^2/dy^2 Theta(X_b, X_r) and K_rr = d^2/dx^2 d^2/dy^2 Theta(X_r, X_r) (:mod:`ntkit.pinn`, computed
exactly from the architecture). Here u = sin(pi x) + x: the infinitely wide tanh network's mean at t = inf
against the exact solution, two finite networks trained by gradient descent beside its mean at the same time
t = lr * steps, and the eigenvalues of K_rr against K_uu: K_rr's are larger by orders of magnitude, so the
residual is fitted long before the boundary values (the stiffness that Wang, Yu and Perdikaris 2022 explain).
"""

# %%
import math

import matplotlib.pyplot as plt
import torch

import ntkit as nk
from ntkit import pinn

torch.manual_seed(0)
arch = nk.MLP(depth=3, activation="tanh", W_std=1.0, b_std=0.5)
Xb = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
Xr = torch.linspace(0, 1, 14, dtype=torch.float64)[1:-1, None]


def exact(x):
    return torch.sin(math.pi * x) + x


def rhs(x):
    return -math.pi**2 * torch.sin(math.pi * x)


model = pinn.PhysicsInformed(arch, pinn.derivative(0, 0), Xb, exact(Xb[:, 0]), Xr, rhs(Xr[:, 0]), ridge=1e-8)
Xt = torch.linspace(0, 1, 101, dtype=torch.float64)[:, None]
u_inf = model.predict(Xt)
print(f"infinite width, t = inf: max error {float((u_inf - exact(Xt[:, 0])).abs().max()):.2e}")

# %%
# Finite networks of width 256 in the NTK parametrization, trained by full-batch gradient descent on
# (1/2) sum_b (u - h)^2 + (1/2) sum_r (u'' - g)^2; the learning rate is below 2 / the largest eigenvalue of K.
K = torch.cat([torch.cat([model.K_uu, model.K_ur], 1), torch.cat([model.K_ur.T, model.K_rr], 1)])
lr = 1.0 / float(torch.linalg.eigvalsh(K)[-1])
steps = 600
t_final = lr * steps


def second_derivative(net, x):
    x = x.clone().requires_grad_(True)
    u = net(x)
    (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), x, create_graph=True)
    return d2u[:, 0]


finite = []
for seed in range(2):
    net = arch.network(in_features=1, width=256, seed=seed, dtype=torch.float64)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * ((net(Xb)[:, 0] - exact(Xb[:, 0])) ** 2).sum() \
            + 0.5 * ((second_derivative(net, Xr) - rhs(Xr[:, 0])) ** 2).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        finite.append(net(Xt)[:, 0])
u_t = model.predict(Xt, t=t_final)

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
left.plot(Xt[:, 0], exact(Xt[:, 0]), "k", lw=3, alpha=0.3, label="exact")
left.plot(Xt[:, 0], u_inf, "C0", label="infinite width, t = inf")
left.plot(Xt[:, 0], u_t, "C1--", label=f"infinite width (mean), t = {t_final:.2g}")
for i, u in enumerate(finite):
    left.plot(Xt[:, 0], u, "C2", lw=0.8, alpha=0.8, label="width 256, gradient descent" if i == 0 else None)
left.scatter(Xr[:, 0], exact(Xr[:, 0]), s=10, c="k", zorder=3, label="residual points")
left.set_xlabel("x")
left.set_title("u'' = g on [0, 1], u(0) = 0, u(1) = 1")
left.legend(fontsize=8)
right.semilogy(torch.linalg.eigvalsh(model.K_rr).flip(0), "o-", label="K_rr")
right.semilogy(torch.linalg.eigvalsh(model.K_uu).flip(0), "s-", label="K_uu")
right.set_xlabel("index")
right.set_title("eigenvalues")
right.legend()
fig.tight_layout()
plt.show()
