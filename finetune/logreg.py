"""Multinomial logistic regression for a whole grid of L2 strengths at once.

Each head s minimises sklearn's objective (lbfgs, no penalty on the intercept) divided by
C_s N: mean cross-entropy + ||W_s||^2 / (2 C_s N), so its optimum is sklearn's. All heads
are one (S, D, K) tensor: one pass over the features feeds every head as one large matrix
product. The optimiser is L-BFGS run per head but batched (own history, step size and
stopping test per head; sklearn's test: max |gradient| <= tol); a head that has converged
leaves the batch, so it costs nothing after.

Why few iterations suffice: the features are centred and rotated onto the eigenvectors of
their covariance (exact: the intercept absorbs the mean, the rotation leaves ||W||
unchanged), and each head's weights are scaled per direction by 1/sqrt(lambda_i/K + 1/(C N)),
the diagonal of its Hessian at the start (softmax curvature ~1/K times the feature
variance lambda_i, plus the L2 term). Every head then starts from a problem of condition
number near 1, whatever C and the spectrum of the features.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CHUNK_FLOATS = 1 << 25    # logits held at once (heads x rows x K): 128 MiB in float32
HISTORY = 8               # L-BFGS curvature pairs kept per head
ARMIJO = 1e-4             # sufficient decrease of the backtracking line search
MAX_HALVINGS = 30


@dataclass
class Heads:
    weight: torch.Tensor      # (S, D, K) in the original feature space
    bias: torch.Tensor        # (S, K)
    iterations: list[int]     # L-BFGS iterations each head took

    def logits(self, x: torch.Tensor, s: int) -> torch.Tensor:
        return x @ self.weight[s] + self.bias[s]


def c_grid(c_min: float, c_max: float, steps: int) -> list[float]:
    return np.logspace(math.log10(c_min), math.log10(c_max), steps).tolist()


def as_tensor(x, device: torch.device) -> torch.Tensor:
    """A copy: the features are often a read-only memmap, which torch must not alias."""
    return torch.as_tensor(np.array(x), device=device)


class Problem:
    """The heads' objectives in rotated, rescaled coordinates. A head is one (D+1, K) tensor
    u, its last row the intercept; its weights are w = scale * u."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, cs: list[float]):
        n = len(x)
        self.mean = x.mean(0)
        x = x - self.mean
        variance, self.basis = torch.linalg.eigh((x.T @ x).double() / n)
        ones = torch.ones(n, 1, device=x.device)
        self.z, self.y, self.n, self.k = torch.cat([x @ self.basis.float(), ones], 1), y, n, num_classes
        l2 = 1.0 / (torch.tensor(cs, dtype=torch.float64, device=x.device) * n)
        scale = (variance.clamp(min=0)[None, :] / num_classes + l2[:, None]).rsqrt().float()   # (S, D)
        self.scale = torch.cat([scale, torch.ones(len(cs), 1, device=x.device)], 1)             # intercept: 1
        self.l2 = torch.cat([l2.float()[:, None].expand_as(scale), torch.zeros(len(cs), 1, device=x.device)], 1)

    def __call__(self, heads: torch.Tensor, u: torch.Tensor):
        """(objective (A,), gradient wrt u (A, D+1, K), max |gradient wrt w| (A,)) of the
        heads indexed by `heads`, at their u."""
        scale, l2 = self.scale[heads][:, :, None], self.l2[heads][:, :, None]
        w = scale * u
        grad = torch.zeros_like(w)
        loss = torch.zeros(len(heads), dtype=torch.float64, device=u.device)
        rows = max(1, CHUNK_FLOATS // (len(heads) * self.k))
        for start in range(0, self.n, rows):
            z, y = self.z[start:start + rows], self.y[start:start + rows]
            logp = F.log_softmax(torch.matmul(z, w), dim=2)                        # (A, n, K)
            index = y[None, :, None].expand(len(heads), -1, 1)
            loss -= logp.gather(2, index).squeeze(2).sum(1, dtype=torch.float64)
            p = logp.exp_().scatter_add_(2, index, -torch.ones(1, device=u.device).expand_as(index))
            grad += torch.matmul(z.T, p)
        raw = grad / self.n + l2 * w
        loss = loss / self.n + 0.5 * (l2 * w * w).sum((1, 2), dtype=torch.float64)
        return loss, scale * raw, raw.abs().amax((1, 2))


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-head inner product of (A, ...) tensors."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


def fit(features, labels, num_classes: int, cs: list[float], max_iter: int = 100,
        device: torch.device | str = "cpu", tolerance: float = 1e-4) -> Heads:
    """One head per C in `cs`, trained on (N, D) features and (N,) int labels; each stops
    when its largest gradient entry is below `tolerance` (sklearn's `tol`) or after `max_iter`."""
    device = torch.device(device)
    x, y = as_tensor(features, device).float(), as_tensor(labels, device).long()
    if len(x) == 0 or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}) and features be non-empty")
    problem = Problem(x, y, num_classes, cs)
    del x
    u = torch.zeros(len(cs), problem.z.shape[1], num_classes, device=device)
    iterations = [0] * len(cs)
    active = torch.arange(len(cs), device=device)
    loss, grad, biggest = problem(active, u)
    history: list[list[torch.Tensor]] = []      # [s, y, rho] per step, rows aligned with `active`
    for it in range(max_iter):
        keep = biggest > tolerance
        if not keep.all():   # converged heads leave the batch, and their history with them
            active, loss, grad = active[keep], loss[keep], grad[keep]
            history = [[t[keep] for t in pair] for pair in history]
        if len(active) == 0:
            break
        du = direction(grad, history)
        slope = dot(grad, du).double()
        step = torch.ones(len(active), device=device)
        start = u[active]
        new = list(problem(active, start + du))
        for _ in range(MAX_HALVINGS):   # backtrack the heads whose step did not decrease enough
            bad = new[0] > loss + ARMIJO * step.double() * slope
            if not bad.any():
                break
            step[bad] *= 0.5
            rows = bad.nonzero().squeeze(1)
            for whole, piece in zip(new, problem(active[rows], start[rows] + step[rows, None, None] * du[rows])):
                whole[rows] = piece
        move = step[:, None, None] * du
        u[active] = start + move
        new_loss, new_grad, biggest = new
        change = new_grad - grad
        curvature = dot(move, change)
        # a pair without positive curvature would break the update: weight 0 leaves it out
        history.append([move, change, torch.where(curvature > 1e-10, 1.0 / curvature, torch.zeros_like(curvature))])
        history = history[-HISTORY:]
        stalled = (loss - new_loss).abs() <= 1e-9 * new_loss.abs().clamp(min=1)
        biggest = torch.where(stalled, torch.zeros_like(biggest), biggest)
        loss, grad = new_loss, new_grad
        for h in active.tolist():
            iterations[h] = it + 1
    w = problem.scale[:, :-1, None] * u[:, :-1]
    weight = problem.basis.float() @ w                                          # back to the original features
    bias = u[:, -1] - torch.einsum("d,sdk->sk", problem.mean, weight)
    return Heads(weight, bias, iterations)


def direction(grad: torch.Tensor, history: list[list[torch.Tensor]]) -> torch.Tensor:
    """L-BFGS two-loop recursion (Nocedal & Wright, Alg. 7.4), each head with its own pairs."""
    q = grad.clone()
    alphas = []
    for s, y, rho in reversed(history):
        alpha = rho * dot(s, q)
        q -= alpha[:, None, None] * y
        alphas.append(alpha)
    if history:   # initial Hessian scale from the newest pair (their eq. 7.20)
        s, y, rho = history[-1]
        q *= torch.where(rho > 0, dot(s, y) / dot(y, y).clamp(min=1e-30), torch.ones_like(rho))[:, None, None]
    for (s, y, rho), alpha in zip(history, reversed(alphas)):
        beta = rho * dot(y, q)
        q += (alpha - beta)[:, None, None] * s
    return -q


def accuracy(heads: Heads, features, labels, device: torch.device | str = "cpu") -> list[float]:
    """Top-1 accuracy of every head on (N, D) features."""
    x = as_tensor(features, device).float()
    y = as_tensor(labels, device).long()
    return [(heads.logits(x, s).argmax(1) == y).float().mean().item() for s in range(len(heads.weight))]
