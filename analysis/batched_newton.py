"""Batched damped Newton for the approach-3 objective: every start (and every bootstrap) at once.

A plain loop of scipy L-BFGS-B calls spends most of its time in Python overhead, one small problem at a time.
Here the objective, its gradient and its 5x5 Hessian are computed for all problems in one set of numpy array
operations, and each problem takes its own Levenberg-Marquardt-damped Newton step:

    step = -V diag(1 / (|w| + lambda max|w|)) V^T g,   with H = V diag(w) V^T

Taking |w| keeps the step a descent direction where the Hessian is indefinite (far from the optimum, where
the Huber loss is linear in most residuals). A step that does not lower the objective is rejected and its
problem's lambda grows; an accepted one shrinks it. Problems leave the batch once converged or stuck.

Model and objective as in `analysis.fit_parametric`: theta = (log_a, log_b, log_e, alpha, beta), residual
r = LSE(log_a - alpha log N, log_b - beta log D, log_e) - log L, objective sum_i weight_i Huber_delta(r_i).
The Hessian uses d2 LSE = sum_k s_k g_k g_k^T - grad r grad r^T, where s is the softmax of the three terms
and g_k the (constant) gradient of term k in theta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_STEP = 5.0  # largest change of any theta component in one step; keeps trial points finite


@dataclass(frozen=True)
class NewtonResult:
    """End points of a batch of problems, all arrays with the problems on axis 0."""

    theta: np.ndarray  # (problems, 5)
    objective: np.ndarray  # (problems,), unscaled sum of weighted Huber losses
    gradient_norm: np.ndarray  # (problems,), max |gradient| of objective / scale
    iterations: np.ndarray  # (problems,)


class _Data:
    """Centred log-space points shared by every problem, per-problem weights and objective scales."""

    def __init__(self, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float,
                 weights: np.ndarray | None, scale: np.ndarray):
        self.log_n = log_n[None, :]
        self.log_d = log_d[None, :]
        self.log_l = log_l[None, :]
        self.delta = delta
        self.weights = weights  # (problems, points) or None
        self.scale = scale  # (problems,): objective divisor so a typical objective is of order 1
        # Per-point factors of every gradient and Hessian sum: [1, x, y, x^2, y^2, x y], x = log N, y = log D.
        self.factors = np.stack([np.ones_like(log_n), log_n, log_d, log_n**2, log_d**2, log_n * log_d], axis=1)

    def subset(self, rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        return (None if self.weights is None else self.weights[rows]), self.scale[rows]


def _residuals(theta: np.ndarray, data: _Data) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the residual, the three exponentials (shifted by their max) and their sum, each (problems, points)."""
    term_n = theta[:, 0:1] - theta[:, 3:4] * data.log_n
    term_d = theta[:, 1:2] - theta[:, 4:5] * data.log_d
    term_e = theta[:, 2:3]
    top = np.maximum(np.maximum(term_n, term_d), term_e)
    exp_n = np.exp(term_n - top)
    exp_d = np.exp(term_d - top)
    exp_e = np.exp(term_e - top)
    total = exp_n + exp_d + exp_e
    residual = top + np.log(total) - data.log_l
    return residual, exp_n, exp_d, exp_e, total


def _huber(residual: np.ndarray, delta: float) -> np.ndarray:
    size = np.abs(residual)
    return np.where(size <= delta, 0.5 * residual**2, delta * (size - 0.5 * delta))


def objective(theta: np.ndarray, data: _Data, weights: np.ndarray | None, scale: np.ndarray) -> np.ndarray:
    """Return the scaled objective of each problem, shape (problems,)."""
    residual = _residuals(theta, data)[0]
    huber = _huber(residual, data.delta)
    if weights is not None:
        huber = huber * weights
    return huber.sum(axis=1) / scale


def objective_gradient_hessian(theta: np.ndarray, data: _Data, weights: np.ndarray | None,
                               scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the scaled objective (P,), gradient (P, 5) and exact Hessian (P, 5, 5) of each problem.

    With s the softmax of the three terms, grad r = (s_n, s_d, s_e, -s_n x, -s_d y) and
    Hessian = sum_i (Huber'' - Huber') grad r grad r^T + Huber' sum_k s_k g_k g_k^T. Every entry is a sum over
    points of one of nine per-point weights times one of six per-point factors [1, x, y, x^2, y^2, x y],
    so all of them come from a single matrix product with the point axis contracted.
    """
    residual, exp_n, exp_d, exp_e, total = _residuals(theta, data)
    delta = data.delta
    inside = np.abs(residual) <= delta
    huber = np.where(inside, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta))
    slope = np.where(inside, residual, delta * np.sign(residual))  # Huber'(r)
    bend = inside - slope  # Huber''(r) - Huber'(r)
    if weights is not None:
        huber = huber * weights
        slope = slope * weights
        bend = bend * weights
    inverse = 1.0 / total
    soft_n = exp_n * inverse
    soft_d = exp_d * inverse
    soft_e = exp_e * inverse

    bend_n = bend * soft_n
    bend_d = bend * soft_d
    stacked = np.stack([
        bend_n * soft_n, bend_d * soft_d, bend * soft_e * soft_e,
        bend_n * soft_d, bend_n * soft_e, bend_d * soft_e,
        slope * soft_n, slope * soft_d, slope * soft_e,
    ])
    sums = np.matmul(stacked, data.factors)  # (9, problems, 6): columns 1, x, y, x^2, y^2, xy
    nn, dd, ee, nd, ne, de, sn, sd, se = sums
    one, x, y, xx, yy, xy = range(6)

    gradient = np.stack([sn[:, one], sd[:, one], se[:, one], -sn[:, x], -sd[:, y]], axis=1)
    hessian = np.empty((theta.shape[0], 5, 5))
    entries = {
        (0, 0): nn[:, one] + sn[:, one], (0, 1): nd[:, one], (0, 2): ne[:, one],
        (0, 3): -nn[:, x] - sn[:, x], (0, 4): -nd[:, y],
        (1, 1): dd[:, one] + sd[:, one], (1, 2): de[:, one], (1, 3): -nd[:, x],
        (1, 4): -dd[:, y] - sd[:, y],
        (2, 2): ee[:, one] + se[:, one], (2, 3): -ne[:, x], (2, 4): -de[:, y],
        (3, 3): nn[:, xx] + sn[:, xx], (3, 4): nd[:, xy],
        (4, 4): dd[:, yy] + sd[:, yy],
    }
    for (row, column), value in entries.items():
        hessian[:, row, column] = value
        hessian[:, column, row] = value

    scale_column = scale[:, None]
    return huber.sum(axis=1) / scale, gradient / scale_column, hessian / scale_column[:, :, None]


def minimize_batch(theta0: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float,
                   weights: np.ndarray | None = None, *, max_iterations: int = 500, gradient_tolerance: float = 1e-9,
                   max_damping: float = 1e12) -> NewtonResult:
    """Minimise the approach-3 objective from every row of `theta0` (shape (problems, 5)) at once.

    `weights` is None, (points,) or (problems, points). The objective is scaled per problem by the total
    weight times delta^2. A problem stops when its scaled gradient's max norm is below
    `gradient_tolerance`, when its damping exceeds `max_damping` (no step lowers the objective any more),
    or after `max_iterations`.

    Internally log N and log D are centred (log_a' = log_a - alpha mean(log N), likewise log_b'), which
    decorrelates log_a from alpha and log_b from beta. The damping then acts on comparable directions.
    Results are returned in the original parameters.
    """
    center_n, center_d = float(log_n.mean()), float(log_d.mean())
    theta = _to_centred(np.array(theta0, dtype=float, copy=True), center_n, center_d)
    problems = theta.shape[0]
    if weights is not None:
        weights = np.broadcast_to(np.asarray(weights, dtype=float), (problems, log_n.size))
        scale = weights.sum(axis=1) * delta**2
    else:
        scale = np.full(problems, log_n.size * delta**2)
    data = _Data(log_n - center_n, log_d - center_d, log_l, delta, weights, scale)

    value, gradient, hessian = objective_gradient_hessian(theta, data, weights, scale)
    damping = np.full(problems, 1e-3)
    growth = np.full(problems, 2.0)
    iterations = np.zeros(problems, dtype=int)
    active = np.flatnonzero(np.max(np.abs(gradient), axis=1) > gradient_tolerance)

    for _ in range(max_iterations):
        if active.size == 0:
            break
        step, predicted = _damped_step(gradient[active], hessian[active], damping[active])
        trial = theta[active] + step
        active_weights, active_scale = data.subset(active)
        trial_value = objective(trial, data, active_weights, active_scale)
        actual = value[active] - trial_value
        ratio = np.where(predicted > 0, actual / np.maximum(predicted, 1e-300), -1.0)
        accepted = np.isfinite(trial_value) & (actual > 0)
        iterations[active] += 1

        moved = active[accepted]
        if moved.size:
            theta[moved] = trial[accepted]
            moved_weights, moved_scale = data.subset(moved)
            value[moved], gradient[moved], hessian[moved] = objective_gradient_hessian(
                theta[moved], data, moved_weights, moved_scale)
        # Nielsen's update: shrink the damping by how well the quadratic model predicted the decrease.
        good = ratio[accepted]
        damping[moved] *= np.maximum(1 / 3, 1 - (2 * np.minimum(good, 1.0) - 1) ** 3)
        damping[moved] = np.maximum(damping[moved], 1e-15)
        growth[moved] = 2.0
        rejected = active[~accepted]
        damping[rejected] *= growth[rejected]
        growth[rejected] *= 2

        done = (np.max(np.abs(gradient[active]), axis=1) <= gradient_tolerance) | (damping[active] > max_damping)
        active = active[~done]

    return NewtonResult(_from_centred(theta, center_n, center_d), value * scale,
                        np.max(np.abs(_gradient_from_centred(gradient, center_n, center_d)), axis=1), iterations)


def _to_centred(theta: np.ndarray, center_n: float, center_d: float) -> np.ndarray:
    theta[:, 0] -= theta[:, 3] * center_n
    theta[:, 1] -= theta[:, 4] * center_d
    return theta


def _from_centred(theta: np.ndarray, center_n: float, center_d: float) -> np.ndarray:
    theta = theta.copy()
    theta[:, 0] += theta[:, 3] * center_n
    theta[:, 1] += theta[:, 4] * center_d
    return theta


def _gradient_from_centred(gradient: np.ndarray, center_n: float, center_d: float) -> np.ndarray:
    # a' = a - alpha c, so d/dalpha (original) = d/dalpha' - c d/da'; d/da is unchanged.
    gradient = gradient.copy()
    gradient[:, 3] -= center_n * gradient[:, 0]
    gradient[:, 4] -= center_d * gradient[:, 1]
    return gradient


def _damped_step(gradient: np.ndarray, hessian: np.ndarray, damping: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the damped Newton step and the decrease the quadratic model with |eigenvalues| predicts."""
    eigenvalues, vectors = np.linalg.eigh(hessian)
    size = np.abs(eigenvalues)
    floor = damping[:, None] * np.maximum(size.max(axis=1, keepdims=True), 1e-12)
    projected = np.einsum("pji,pj->pi", vectors, gradient)
    step_projected = -projected / (size + floor)
    largest = np.max(np.abs(step_projected), axis=1, keepdims=True)
    step_projected = step_projected * np.minimum(1.0, MAX_STEP / np.maximum(largest, 1e-300))
    predicted = -(np.sum(projected * step_projected, axis=1) + 0.5 * np.sum(size * step_projected**2, axis=1))
    return np.einsum("pij,pj->pi", vectors, step_projected), predicted
