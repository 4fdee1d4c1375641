"""Compute-optimal allocation for the parametric law L(N, D) = E + A / N^alpha + B / D^beta.

Training compute is C = 6 N D FLOPs (N parameters, D tokens). Minimising L along C = 6 N D gives
(Hoffmann et al. 2022, arXiv:2203.15556, equation 4):

    G = (alpha A / (beta B))^(1 / (alpha + beta))
    N_opt(C) = G (C / 6)^(beta / (alpha + beta))
    D_opt(C) = G^-1 (C / 6)^(alpha / (alpha + beta)) = (C / 6) / N_opt(C)

E does not enter the allocation. All functions accept floats or numpy arrays.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D: forward (2) plus backward (4) FLOPs per parameter and token


def allocation_constant(a_coef: float, b_coef: float, alpha: float, beta: float) -> float:
    """Return G = (alpha A / (beta B))^(1 / (alpha + beta)), in parameters per (FLOPs/6)^(beta/(alpha+beta))."""
    _check_exponents(alpha, beta)
    # In numpy rather than Python floats: a fitted A or B far from the data makes G overflow, which a
    # Python power raises as OverflowError and numpy returns as infinity (or 0) for the caller to report.
    with np.errstate(over="ignore", divide="ignore", under="ignore"):
        return float(np.power(np.float64(alpha) * a_coef / (np.float64(beta) * b_coef), 1.0 / (alpha + beta)))


def optimal_params(flops: ArrayLike, a_coef: float, b_coef: float, alpha: float, beta: float) -> np.ndarray:
    """Return N_opt(C) in parameters for training compute `flops` (FLOPs)."""
    g = allocation_constant(a_coef, b_coef, alpha, beta)
    return g * (np.asarray(flops, dtype=float) / FLOPS_PER_PARAM_TOKEN) ** (beta / (alpha + beta))


def optimal_tokens(flops: ArrayLike, a_coef: float, b_coef: float, alpha: float, beta: float) -> np.ndarray:
    """Return D_opt(C) in tokens for training compute `flops` (FLOPs)."""
    flops = np.asarray(flops, dtype=float)
    return flops / FLOPS_PER_PARAM_TOKEN / optimal_params(flops, a_coef, b_coef, alpha, beta)


def flops_for_params(params: ArrayLike, a_coef: float, b_coef: float, alpha: float, beta: float) -> np.ndarray:
    """Return the compute C (FLOPs) for which `params` parameters are compute-optimal: the inverse of N_opt(C)."""
    g = allocation_constant(a_coef, b_coef, alpha, beta)
    params = np.asarray(params, dtype=float)
    return FLOPS_PER_PARAM_TOKEN * (params / g) ** ((alpha + beta) / beta)


def tokens_for_params(params: ArrayLike, a_coef: float, b_coef: float, alpha: float, beta: float) -> np.ndarray:
    """Return D (tokens) that makes `params` parameters compute-optimal: D = C / (6 N) at N = N_opt(C)."""
    params = np.asarray(params, dtype=float)
    return flops_for_params(params, a_coef, b_coef, alpha, beta) / (FLOPS_PER_PARAM_TOKEN * params)


def allocation_exponents(alpha: float, beta: float) -> tuple[float, float]:
    """Return (a, b) of N_opt proportional to C^a and D_opt proportional to C^b: a = beta/(alpha+beta), b = 1 - a."""
    _check_exponents(alpha, beta)
    return beta / (alpha + beta), alpha / (alpha + beta)


def _check_exponents(alpha: float, beta: float) -> None:
    # The closed form needs a minimum along C = 6ND, which exists only when both terms decay.
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"alpha={alpha} and beta={beta} must both be > 0 for a compute-optimal allocation to exist")
