"""The published scaling laws, in one registry, each with its paper and the table or equation of its constants.

Every law answers the same questions under C = 6 N D (C in FLOPs, N parameters, D tokens):
`compute_optimal(C) -> (N, D)`, `tokens_for_params(N)`, `flops_for_params(N)`, and `loss(N, D)` where the
law predicts a loss (None otherwise). Each states the parameter-counting convention of its source.

Loss values are nats per token on the source's own data and tokenizer, so they compare only with each
other's trends, never as absolute numbers with a different corpus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from scaling.errors import UserError

from analysis import allocation

HOFFMANN_2022 = "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, arXiv:2203.15556"
BESIROGLU_2024 = "Besiroglu et al. 2024, Chinchilla Scaling: A replication attempt, arXiv:2404.10102"


class Law(Protocol):
    """A published law: compute-optimal allocation, and a loss where the law has one."""

    key: str  # short registry name, used by `scaling ask --law`
    name: str  # human-readable name; the constants are in `citation`
    citation: str  # paper, and the table or equation holding the constants
    convention: str  # how its source counts N: "total" or "non_embedding"

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """Return (N parameters, D tokens) minimising loss for a budget of `flops` FLOPs."""
        ...

    def tokens_for_params(self, params: float) -> float:
        """Return the compute-optimal D (tokens) for a model of `params` parameters."""
        ...

    def flops_for_params(self, params: float) -> float:
        """Return the compute C = 6 N D (FLOPs) at which `params` parameters are compute-optimal."""
        ...

    def loss(self, params: float, tokens: float) -> float | None:
        """Return the predicted loss (nats/token) of N parameters trained on D tokens, or None."""
        ...


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta, with its closed-form compute-optimal allocation."""

    key: str
    name: str
    citation: str
    e_coef: float  # irreducible loss E, nats/token
    a_coef: float  # A, nats/token times parameters^alpha
    b_coef: float  # B, nats/token times tokens^beta
    alpha: float  # exponent of N
    beta: float  # exponent of D
    convention: str = "total"

    @classmethod
    def from_logs(cls, key: str, name: str, citation: str, *, log_a: float, log_b: float, log_e: float,
                  alpha: float, beta: float, convention: str = "total") -> ParametricLaw:
        """Build the law from natural logs of A, B and E (the parameterisation of the log-sum-exp fit)."""
        return cls(key, name, citation, math.exp(log_e), math.exp(log_a), math.exp(log_b), alpha, beta, convention)

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        params = float(allocation.optimal_params(flops, self.a_coef, self.b_coef, self.alpha, self.beta))
        return params, flops / (allocation.FLOPS_PER_PARAM_TOKEN * params)

    def tokens_for_params(self, params: float) -> float:
        return float(allocation.tokens_for_params(params, self.a_coef, self.b_coef, self.alpha, self.beta))

    def flops_for_params(self, params: float) -> float:
        return float(allocation.flops_for_params(params, self.a_coef, self.b_coef, self.alpha, self.beta))

    def loss(self, params: float, tokens: float) -> float | None:
        return self.e_coef + self.a_coef / params**self.alpha + self.b_coef / tokens**self.beta

    def parameters(self) -> dict[str, float]:
        """Return the five constants by name: E, A, B, alpha, beta."""
        return {"E": self.e_coef, "A": self.a_coef, "B": self.b_coef, "alpha": self.alpha, "beta": self.beta}


@dataclass(frozen=True)
class TokensPerParamLaw:
    """A fixed ratio D = k N; under C = 6 N D this gives N = sqrt(C / (6 k)). It predicts no loss."""

    key: str
    name: str
    citation: str
    tokens_per_param: float
    convention: str = "total"

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        params = math.sqrt(flops / (allocation.FLOPS_PER_PARAM_TOKEN * self.tokens_per_param))
        return params, self.tokens_per_param * params

    def tokens_for_params(self, params: float) -> float:
        return self.tokens_per_param * params

    def flops_for_params(self, params: float) -> float:
        return allocation.FLOPS_PER_PARAM_TOKEN * params * self.tokens_for_params(params)

    def loss(self, params: float, tokens: float) -> float | None:
        return None


TOKENS_20 = TokensPerParamLaw(
    key="tokens-20",
    name="20 tokens per parameter",
    citation=(
        f"{HOFFMANN_2022}: rule of thumb from Chinchilla itself (70B parameters trained on 1.4T tokens, "
        "section 4)"
    ),
    tokens_per_param=20.0,
)

HOFFMANN_A3_PRINTED = ParametricLaw(
    key="hoffmann-a3-printed",
    name="Hoffmann 2022 approach 3, as printed",
    citation=(
        f"{HOFFMANN_2022}, section 3.3 and appendix D.2: approach 3 fit as printed, "
        "E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28"
    ),
    e_coef=1.69,
    a_coef=406.4,
    b_coef=410.7,
    alpha=0.34,
    beta=0.28,
)

# The rounding of the printed constants moves the 7B answer from 2.96e11 to 4.68e11 tokens, so both are kept.
HOFFMANN_A3_UNROUNDED = ParametricLaw.from_logs(
    key="hoffmann-a3-unrounded",
    name="Hoffmann 2022 approach 3, unrounded",
    citation=(
        f"{HOFFMANN_2022}, approach 3 fit unrounded from the paper's TeX source, as quoted by {BESIROGLU_2024}: "
        "log A 6.0073404, log B 6.0179186, log E 0.5267228, alpha 0.33917084, beta 0.2849083"
    ),
    log_a=6.0073404,
    log_b=6.0179186,
    log_e=0.5267228,
    alpha=0.33917084,
    beta=0.2849083,
)

EPOCH_2024 = ParametricLaw(
    key="epoch-2024",
    name="Epoch 2024 refit",
    citation=(
        f"{BESIROGLU_2024}: re-estimate of the approach 3 law on 240 points digitised from Hoffmann et al.'s "
        "figure 4 (Huber likelihood fit), E 1.8172, A 482.01, B 2085.43, alpha 0.3478, beta 0.3658"
    ),
    e_coef=1.8172,
    a_coef=482.01,
    b_coef=2085.43,
    alpha=0.3478,
    beta=0.3658,
)

_REGISTRY: tuple[Law, ...] = (TOKENS_20, HOFFMANN_A3_PRINTED, HOFFMANN_A3_UNROUNDED, EPOCH_2024)
LAWS: dict[str, Law] = {law.key: law for law in _REGISTRY}


def get_law(key: str) -> Law:
    """Return the registered law named `key`; raise UserError listing the known keys otherwise."""
    try:
        return LAWS[key]
    except KeyError:
        raise UserError(f"unknown law {key!r}; known laws are: {', '.join(LAWS)}") from None


def all_laws() -> list[Law]:
    """Return every registered law, in registry order."""
    return list(LAWS.values())
