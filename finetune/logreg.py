"""Multinomial logistic regression for a grid of L2 strengths, on features too large to copy.

Each head s minimises sklearn's objective (lbfgs, no penalty on the intercept) divided by
C_s N: mean cross-entropy + ||W_s||^2 / (2 C_s N), so its optimum is sklearn's. Heads fitted
together are one (S, D, K) tensor: one pass over the features feeds every head as one large
matrix product. The optimiser is L-BFGS run per head but batched (own history, step size
and stopping test per head); a head that has converged leaves the batch, so it costs
nothing after.

Memory: the features stay where they are (a memory-mapped .npy, float32 or float16) and are
read a block of rows at a time (`Rows`), straight from the file with plain reads, so the
pages do not count towards this process's memory; loss and gradient are accumulated block by
block. Nothing of size N x D is ever held: the fit's own memory is the heads' state (about
20 tensors of D x K per head) plus one block.

Why few iterations suffice: the heads are parametrised in the eigenbasis of the features'
covariance, centred (exact: the intercept absorbs the mean, the rotation leaves ||W||
unchanged), and each head's weights scaled per direction by 1/sqrt(lambda_i/K + 1/(C N)),
the diagonal of its Hessian at the start (softmax curvature ~1/K times the feature variance
lambda_i, plus the L2 term): every head starts from a problem of condition number near 1,
whatever C and the spectrum of the features. Centring, rotation and scaling are folded into
the parameters (w = basis @ (scale * u)), not applied to the data: only the mean and the
D x D covariance are computed from it, in one blocked pass. Features of at most
ROTATED_BYTES (a CUB-sized set) are the exception: kept centred and rotated, they save
rotating every head twice an evaluation (2 D^2 K flops each, ~40 % of a CUB evaluation).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CHUNK_FLOATS = 1 << 24    # logits held at once (heads x rows x K): 64 MiB in float32
BLOCK_FLOATS = 1 << 21    # features read at once (rows x D): 8 MiB in float32; larger blocks only add to the peak
ROTATED_BYTES = 1 << 28   # features up to 256 MiB are kept centred and rotated (a CUB-sized set: 50 MB)
DEVICE_SHARE = 0.5        # on a GPU, blocks stay on the device when they fit in this share of its free memory
HISTORY = 8               # L-BFGS curvature pairs kept per head
ARMIJO = 1e-4             # sufficient decrease of the backtracking line search
MAX_HALVINGS = 30
IDLE_STEPS = 5            # a head stalls after this many steps in a row without progress
GAP = 1e-3                # a converged head expects to lower its objective by at most this share


@dataclass
class Heads:
    weight: torch.Tensor      # (S, D, K) in the original feature space
    bias: torch.Tensor        # (S, K)
    iterations: list[int]     # L-BFGS iterations each head took
    converged: list[bool]     # the stopping test passed (`settled`)
    stalled: list[bool]       # stopped short of the test: its steps no longer made progress

    def logits(self, x: torch.Tensor, s: int) -> torch.Tensor:
        return x @ self.weight[s] + self.bias[s]


def c_grid(c_min: float, c_max: float, steps: int) -> list[float]:
    return np.logspace(math.log10(c_min), math.log10(c_max), steps).tolist()


class Rows:
    """The rows `rows` (sorted; default all) of (N, D) features with their labels, read a
    block at a time as float32 on `device`. A whole-file memmap (np.load(mmap_mode="r")) is
    read with plain file reads, so its pages do not stay in this process; any other array is
    indexed a block at a time."""

    def __init__(self, features, labels, rows: np.ndarray | None = None, device: torch.device | str = "cpu"):
        self.x, self.device = features, torch.device(device)
        self.rows = np.arange(len(features)) if rows is None else np.asarray(rows)
        self.y = torch.as_tensor(np.asarray(labels)[self.rows]).long().to(self.device)
        self.n, self.d = len(self.rows), features.shape[1]
        self.path = whole_file(features)
        # On a GPU, every row is read once into one device tensor when it fits; blocks of any
        # size are then slices of it (a cache per block size would hold several copies).
        self.keep = (self.device.type == "cuda"
                     and self.n * self.d * 4 <= DEVICE_SHARE * torch.cuda.mem_get_info(self.device)[0])
        self.on_device: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.n

    def blocks(self, rows_per_block: int):
        """(features (n, D) float32, labels (n,)) of consecutive blocks of at most that many rows."""
        size = max(1, min(rows_per_block, BLOCK_FLOATS // self.d))
        for lo in range(0, self.n, size):
            hi = min(self.n, lo + size)
            yield self.block(lo, hi), self.y[lo:hi]

    def block(self, lo: int, hi: int) -> torch.Tensor:
        if not self.keep:
            return self.load(lo, hi)
        if self.on_device is None:
            self.on_device = torch.empty(self.n, self.d, device=self.device)
            step = max(1, BLOCK_FLOATS // self.d)
            for a in range(0, self.n, step):
                self.on_device[a:a + step] = self.load(a, min(self.n, a + step))
        return self.on_device[lo:hi]

    def load(self, lo: int, hi: int) -> torch.Tensor:
        return torch.from_numpy(self.read(self.rows[lo:hi])).to(self.device).float()

    def read(self, rows: np.ndarray) -> np.ndarray:
        if self.path is None:
            return np.asarray(self.x[rows])
        first, last = int(rows[0]), int(rows[-1]) + 1   # the span holding the rows, in one read
        row_bytes = self.d * self.x.dtype.itemsize
        span = np.empty((last - first, self.d), self.x.dtype)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.x.offset + first * row_bytes)
            f.readinto(memoryview(span).cast("B"))
        return span if len(rows) == len(span) else span[rows - first]


def whole_file(x) -> str | None:
    """The file of a C-ordered memmap that spans its whole file from its offset, else None."""
    if not isinstance(x, np.memmap) or not x.filename or not x.flags.c_contiguous:
        return None
    return x.filename if x.offset + x.nbytes == os.path.getsize(x.filename) else None


class Problem:
    """The features' mean and eigenbasis (one blocked pass), and the heads' objectives in
    centred, rotated, rescaled parameters: a head is one (D+1, K) tensor u, its last row the
    intercept; its weights in the rotated basis are w = scale * u."""

    def __init__(self, data: Rows, num_classes: int, like: Problem | None = None):
        """`like`: a problem on other rows of the same features, whose mean and basis serve
        (any mean and orthogonal basis are exact; close ones precondition as well)."""
        if data.n == 0 or data.y.min() < 0 or data.y.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}) and features be non-empty")
        self.data, self.n, self.k = data, data.n, num_classes
        if like is None:
            self.mean, covariance = moments(data)
            self.variance, basis = torch.linalg.eigh(covariance)
            self.basis = basis.float()
        else:
            self.mean, self.variance, self.basis = like.mean, like.variance, like.basis
        self.rotated = None   # small features are kept centred and rotated: no rotation of the heads per evaluation
        if data.n * data.d * 4 <= ROTATED_BYTES:
            self.rotated = torch.empty(data.n, data.d, device=data.device)
            done = 0
            for x, _ in data.blocks(data.n):
                self.rotated[done:done + len(x)] = (x - self.mean) @ self.basis
                done += len(x)

    def preconditioner(self, cs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, l2), each (S, D+1). The intercept is not penalised; its curvature is the
        softmax's alone, ~1/K, hence its scale sqrt(K)."""
        device = self.basis.device
        l2 = 1.0 / (torch.tensor(cs, dtype=torch.float64, device=device) * self.n)
        scale = (self.variance.clamp(min=0)[None, :] / self.k + l2[:, None]).rsqrt().float()
        intercept, zeros = torch.full((len(cs), 1), self.k ** 0.5, device=device), torch.zeros(len(cs), 1, device=device)
        return torch.cat([scale, intercept], 1), torch.cat([l2.float()[:, None].expand_as(scale), zeros], 1)

    def __call__(self, scale: torch.Tensor, l2: torch.Tensor, u: torch.Tensor):
        """(objective (A,), gradient wrt u (A, D+1, K), max |gradient wrt w| (A,)) of heads
        with these (A, D+1) scale and l2, at their u."""
        scale, l2 = scale[:, :, None], l2[:, :, None]
        w = scale * u
        rotated = self.rotated is not None
        weight, intercept = w[:, :-1] if rotated else torch.matmul(self.basis, w[:, :-1]), w[:, -1:]
        grad = torch.zeros_like(w)
        loss = torch.zeros(len(u), dtype=torch.float64, device=u.device)
        for x, y in self.blocks(CHUNK_FLOATS // (len(u) * self.k)):
            logp = F.log_softmax(torch.matmul(x, weight) + intercept, dim=2)        # (A, n, K)
            index = y[None, :, None].expand(len(u), -1, 1)
            loss -= logp.gather(2, index).squeeze(2).sum(1, dtype=torch.float64)
            p = logp.exp_().scatter_add_(2, index, -torch.ones(1, device=u.device).expand_as(index))
            grad[:, :-1] += torch.matmul(x.T, p)
            grad[:, -1] += p.sum(1)
        if not rotated:
            grad[:, :-1] = torch.matmul(self.basis.T, grad[:, :-1])
        raw = grad / self.n + l2 * w
        loss = loss / self.n + 0.5 * (l2 * w * w).sum((1, 2), dtype=torch.float64)
        return loss, scale * raw, raw.abs().amax((1, 2))

    def blocks(self, rows: int):
        """(centred features, rotated when kept so, labels) block by block."""
        if self.rotated is not None:
            rows = max(1, rows)
            yield from ((self.rotated[i:i + rows], self.data.y[i:i + rows]) for i in range(0, self.n, rows))
        else:
            yield from ((x - self.mean, y) for x, y in self.data.blocks(rows))

    def heads(self, scale: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (S, D, K), bias (S, K)) on the original features."""
        w = scale[:, :, None] * u
        weight = torch.matmul(self.basis, w[:, :-1])
        return weight, w[:, -1] - torch.matmul(self.mean, weight)

    def parameters(self, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """u of heads with these weights and biases (the inverse of `heads`)."""
        w = torch.matmul(self.basis.T, weight)
        return torch.cat([w, (bias + torch.matmul(self.mean, weight))[:, None]], 1) / scale[:, :, None]


def moments(data: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,) float32, covariance (D, D) float64), block by block. Products are taken
    about the first block's mean, so float32 loses nothing to a large common offset."""
    shift = total = product = None
    for x, _ in data.blocks(BLOCK_FLOATS // data.d):
        if shift is None:
            shift = x.mean(0)
            total = torch.zeros(data.d, dtype=torch.float64, device=x.device)
            product = torch.zeros(data.d, data.d, dtype=torch.float64, device=x.device)
        x = x - shift
        total += x.sum(0, dtype=torch.float64)
        product += x.T @ x   # in place: no float64 copy of the D x D product
    offset = total / data.n
    return (shift.double() + offset).float(), product.div_(data.n).sub_(torch.outer(offset, offset))


def fit(features, labels, num_classes: int, cs: list[float], max_iter: int = 100,
        device: torch.device | str = "cpu", tolerance: float = 1e-4, rows: np.ndarray | None = None,
        start: Heads | None = None) -> Heads:
    """One head per C in `cs`, trained on the `rows` (default all) of (N, D) features and
    (N,) int labels, from zero or from `start`'s heads (warm start); see `solve`."""
    return solve(Problem(Rows(features, labels, rows, device), num_classes), cs, max_iter, tolerance, start)


def solve(problem: Problem, cs: list[float], max_iter: int = 100, tolerance: float = 1e-4,
          start: Heads | None = None) -> Heads:
    """Each head converges when its largest gradient entry is at most `tolerance` (sklearn's
    `tol`) and the decrease its L-BFGS model still expects is at most GAP of its objective
    (`settled`). It stops short of that, not converged, after `max_iter` iterations, or
    stalled (the test out of float32's reach): when its line search fails, or once
    IDLE_STEPS steps in a row lowered neither its objective (by more than float32 resolves)
    nor its largest gradient entry."""
    scale, l2 = problem.preconditioner(cs)
    device = scale.device
    if start is None:
        u = torch.zeros(len(cs), problem.basis.shape[0] + 1, problem.k, device=device)
    else:
        u = problem.parameters(scale, start.weight.to(device), start.bias.to(device))
    iterations, converged, stalled = [0] * len(cs), [False] * len(cs), [False] * len(cs)
    active = torch.arange(len(cs), device=device)
    loss, grad, biggest = problem(scale, l2, u)
    lowest, idle = biggest.clone(), torch.zeros(len(cs), dtype=torch.long, device=device)
    history: list[list[torch.Tensor]] = []      # [s, y, rho] per step, rows aligned with `active`
    for it in range(max_iter + 1):
        du = direction(grad, history)
        slope = dot(grad, du).double()
        done = settled(loss, slope, biggest, tolerance)
        leave = done | (idle >= IDLE_STEPS)
        if leave.any():   # these heads leave the batch, and their history with them
            for h, ok in zip(active[leave].tolist(), done[leave].tolist()):
                converged[h], stalled[h] = ok, not ok
            keep = ~leave
            active, loss, grad, du, slope = active[keep], loss[keep], grad[keep], du[keep], slope[keep]
            lowest, idle = lowest[keep], idle[keep]
            history = [[t[keep] for t in pair] for pair in history]
        if len(active) == 0 or it == max_iter:
            break
        begin = u[active]
        step, new, failed = line_search(problem, scale[active], l2[active], begin, du, loss, slope)
        move = step[:, None, None] * du
        u[active] = begin + move
        new_loss, new_grad, biggest = new
        change = new_grad - grad
        curvature = dot(move, change)
        # a pair without positive curvature would break the update: weight 0 leaves it out
        history.append([move, change, torch.where(curvature > 1e-10, 1.0 / curvature, torch.zeros_like(curvature))])
        history = history[-HISTORY:]
        # progress: a decrease of the objective float32 resolves, or a new lowest gradient
        progress = (loss - new_loss > 1e-9 * new_loss.abs().clamp(min=1)) | (biggest < lowest)
        idle = torch.where(failed, IDLE_STEPS, torch.where(progress, 0, idle + 1))
        lowest = torch.minimum(lowest, biggest)
        loss, grad = new_loss, new_grad
        for h in active.tolist():
            iterations[h] = it + 1
    weight, bias = problem.heads(scale, u)
    return Heads(weight, bias, iterations, converged, stalled)


def line_search(problem: Problem, scale: torch.Tensor, l2: torch.Tensor, begin: torch.Tensor, du: torch.Tensor,
                loss: torch.Tensor, slope: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """(step (A,), [objective, gradient, max |gradient|] there, failed (A,)): each head's step
    along du, halved from 1 until Armijo's sufficient decrease; failed: not found in
    MAX_HALVINGS halvings (the decrease asked for is below float32's resolution)."""
    step = torch.ones(len(begin), device=begin.device)
    new = list(problem(scale, l2, begin + du))
    for halvings in range(MAX_HALVINGS + 1):
        bad = new[0] > loss + ARMIJO * step.double() * slope
        if not bad.any() or halvings == MAX_HALVINGS:
            break
        step[bad] *= 0.5
        rows = bad.nonzero().squeeze(1)
        for whole, piece in zip(new, problem(scale[rows], l2[rows], begin[rows] + step[rows, None, None] * du[rows])):
            whole[rows] = piece
    return step, new, bad


def settled(loss: torch.Tensor, slope: torch.Tensor, biggest: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The stopping test, per head. sklearn's gradient test alone stops far above the optimum
    at large C, where the objective is small and flat (up to 4x the optimum's); the L-BFGS
    model's expected decrease, -slope / 2 along its direction (the Newton decrement), bounds
    the remaining gap relative to the objective, whatever its size."""
    return (biggest <= tolerance) & (-0.5 * slope <= GAP * loss)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-head inner product of (A, ...) tensors."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


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


def logit_rows(weight: torch.Tensor) -> int:
    """Rows per block whose logits, (S, rows, K) for heads (S, D, K), fit in CHUNK_FLOATS."""
    return max(1, CHUNK_FLOATS // (weight.shape[0] * weight.shape[2]))


def scores(weight: torch.Tensor, bias: torch.Tensor, data: Rows) -> torch.Tensor:
    """(S, N, K) logits of heads (S, D, K), (S, K) on every row, block by block."""
    weight, bias = weight.to(data.device), bias.to(data.device)
    parts = [torch.matmul(x, weight) + bias[:, None] for x, _ in data.blocks(logit_rows(weight))]
    return torch.cat(parts, 1)


def accuracy(heads: Heads, features, labels, device: torch.device | str = "cpu",
             rows: np.ndarray | None = None) -> list[float]:
    """Top-1 accuracy of every head on the `rows` (default all) of (N, D) features."""
    return accuracy_on(heads, Rows(features, labels, rows, device))


def accuracy_on(heads: Heads, data: Rows) -> list[float]:
    right = torch.zeros(len(heads.weight), device=data.device)
    weight, bias = heads.weight.to(data.device), heads.bias.to(data.device)
    for x, y in data.blocks(logit_rows(weight)):
        right += ((torch.matmul(x, weight) + bias[:, None]).argmax(2) == y).sum(1)
    return (right / data.n).tolist()
