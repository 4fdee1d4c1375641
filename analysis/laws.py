"""The published scaling laws, in one registry, each with its paper and the table or equation of its constants.

Every law answers the same questions under C = 6 N D (C in FLOPs, N parameters, D tokens):
`compute_optimal(C) -> (N, D)`, `tokens_for_params(N)`, `flops_for_params(N)`, and `loss(N, D)` where the
law predicts a loss (None otherwise). Each states the parameter-counting convention of its source.

Loss values are nats per token on the source's own data and tokenizer (each law's `data`), so losses
compare as numbers only between laws of the same data; across corpora only their trends compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

from scaling.errors import UserError

from analysis import allocation

HOFFMANN_2022 = "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, arXiv:2203.15556"
BESIROGLU_2024 = "Besiroglu et al. 2024, Chinchilla Scaling: A replication attempt, arXiv:2404.10102"
KAPLAN_2020 = "Kaplan et al. 2020, Scaling Laws for Neural Language Models, arXiv:2001.08361"

PF_DAY_FLOPS = 8.64e19  # one petaflop/s-day, 1e15 * 24 * 3600 FLOPs, Kaplan et al.'s unit of compute (section 1.3)


class Law(Protocol):
    """A published law: compute-optimal allocation, and a loss where the law has one."""

    key: str  # short registry name, used by `scaling ask --law`
    name: str  # human-readable name; the constants are in `citation`
    citation: str  # paper, and the table or equation holding the constants
    convention: str  # how its source counts N: "total" or "non_embedding"
    data: str  # the corpus and tokenizer its losses are measured on; "" for a law that predicts no loss

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


MASSIVETEXT = "MassiveText, SentencePiece tokens (Hoffmann et al. 2022)"
WEBTEXT2 = "WebText2, GPT-2 byte-pair tokens (Kaplan et al. 2020)"


def exp_or_inf(value: float) -> float:
    """Return e**value, or infinity where that exceeds the largest float."""
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def power_or_inf(base: float, exponent: float) -> float:
    """Return base**exponent for base > 0, or infinity where that exceeds the largest float."""
    try:
        return math.pow(base, exponent)
    except OverflowError:
        return math.inf


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
    data: str = MASSIVETEXT

    @classmethod
    def from_logs(cls, key: str, name: str, citation: str, *, log_a: float, log_b: float, log_e: float,
                  alpha: float, beta: float, convention: str = "total", data: str = MASSIVETEXT) -> ParametricLaw:
        """Build the law from natural logs of A, B and E (the parameterisation of the log-sum-exp fit).

        A log too large for a float (a bootstrap replicate far from the data) gives an infinite coefficient.
        """
        return cls(key, name, citation, exp_or_inf(log_e), exp_or_inf(log_a), exp_or_inf(log_b), alpha, beta,
                   convention, data)

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        params = float(allocation.optimal_params(flops, self.a_coef, self.b_coef, self.alpha, self.beta))
        return params, flops / (allocation.FLOPS_PER_PARAM_TOKEN * params)

    def tokens_for_params(self, params: float) -> float:
        return float(allocation.tokens_for_params(params, self.a_coef, self.b_coef, self.alpha, self.beta))

    def flops_for_params(self, params: float) -> float:
        return float(allocation.flops_for_params(params, self.a_coef, self.b_coef, self.alpha, self.beta))

    def loss(self, params: float, tokens: float) -> float | None:
        # numpy powers: a fitted exponent of tens makes N^alpha overflow, which numpy turns into a vanishing
        # term where a Python float power would raise OverflowError.
        with np.errstate(over="ignore"):
            value = (self.e_coef + self.a_coef / np.power(np.asarray(params, dtype=float), self.alpha)
                     + self.b_coef / np.power(np.asarray(tokens, dtype=float), self.beta))
        return float(value) if np.ndim(value) == 0 else value

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
    data: str = ""

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        params = math.sqrt(flops / (allocation.FLOPS_PER_PARAM_TOKEN * self.tokens_per_param))
        return params, self.tokens_per_param * params

    def tokens_for_params(self, params: float) -> float:
        return self.tokens_per_param * params

    def flops_for_params(self, params: float) -> float:
        return allocation.FLOPS_PER_PARAM_TOKEN * params * self.tokens_for_params(params)

    def loss(self, params: float, tokens: float) -> float | None:
        return None


@dataclass(frozen=True)
class PowerLawAllocation:
    """N_opt(C) = coefficient * C^exponent (C in FLOPs) and D_opt = C / (6 N_opt). It predicts no loss."""

    key: str
    name: str
    citation: str
    exponent: float  # a in N_opt proportional to C^a
    coefficient: float  # parameters per FLOPs^a
    convention: str = "total"
    data: str = ""

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        params = self.coefficient * power_or_inf(flops, self.exponent)
        if not 0 < params < math.inf:
            # Far from the fitted budgets a fitted power law can leave the floats, either way.
            raise ValueError(f"N_opt(C) = {self.coefficient:.3g} C^{self.exponent:.3g} gives N = {params:.3g} at "
                             f"C = {flops:.3g}, beyond floating point")
        return params, flops / (allocation.FLOPS_PER_PARAM_TOKEN * params)

    def flops_for_params(self, params: float) -> float:
        if not self.exponent > 0:
            # A fitted exponent <= 0 means N_opt does not grow with compute: no budget makes N optimal.
            raise ValueError(f"N_opt(C) exponent {self.exponent:.3g} is not positive")
        try:
            return (params / self.coefficient) ** (1.0 / self.exponent)
        except OverflowError:
            # A small fitted exponent puts the budget for a large N beyond floating point.
            raise ValueError(f"the budget for N = {params:.3g} overflows with N_opt(C) exponent "
                             f"{self.exponent:.3g}") from None

    def tokens_for_params(self, params: float) -> float:
        return self.flops_for_params(params) / (allocation.FLOPS_PER_PARAM_TOKEN * params)

    def loss(self, params: float, tokens: float) -> float | None:
        return None


@dataclass(frozen=True)
class KaplanJointLaw:
    """Kaplan et al.'s joint loss L(N, D) and their compute-efficient allocation.

    The loss is their equation 1.5, L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D, with N
    non-embedding parameters, D tokens of WebText2 and L in nats/token at early stopping. The allocation is
    their table 6, N_opt = N_e C_min^p_N with C_min in PF-days. Training at the critical batch size spends
    C = 2 C_min (their equation 6.7), and this registry's C = 6ND is that C.
    """

    key: str
    name: str
    citation: str
    alpha_n: float  # exponent of N in L(N) = (N_c / N)^alpha_N
    alpha_d: float  # exponent of D in L(D) = (D_c / D)^alpha_D
    n_c: float  # N_c, non-embedding parameters
    d_c: float  # D_c, tokens
    n_e: float  # compute-efficient N at C_min = 1 PF-day, non-embedding parameters
    p_n: float  # exponent of C_min in N_opt
    convention: str = "non_embedding"
    data: str = WEBTEXT2

    def loss(self, params: ArrayLike, tokens: ArrayLike) -> float | np.ndarray:
        """Return L(N, D) in nats/token for `params` non-embedding parameters and `tokens` tokens."""
        params = np.asarray(params, dtype=float)
        tokens = np.asarray(tokens, dtype=float)
        value = ((self.n_c / params) ** (self.alpha_n / self.alpha_d) + self.d_c / tokens) ** self.alpha_d
        return float(value) if value.ndim == 0 else value

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        params = self.n_e * power_or_inf(flops / (2 * PF_DAY_FLOPS), self.p_n)
        return params, flops / (allocation.FLOPS_PER_PARAM_TOKEN * params)

    def flops_for_params(self, params: float) -> float:
        return 2 * PF_DAY_FLOPS * power_or_inf(params / self.n_e, 1.0 / self.p_n)

    def tokens_for_params(self, params: float) -> float:
        return self.flops_for_params(params) / (allocation.FLOPS_PER_PARAM_TOKEN * params)


@dataclass(frozen=True)
class SingleVariableLaw:
    """Kaplan et al.'s one-variable form L(x) = (x_c / x)^exponent, in nats/token on their WebText2 tokens."""

    key: str
    name: str
    citation: str
    variable: str  # "params" (non-embedding N, to convergence), "tokens" (D, early stopping) or "flops" (C_min)
    scale: float  # x_c: N_c in parameters, D_c in tokens or C_c in FLOPs
    exponent: float

    def loss(self, value: float) -> float:
        """Return L at N = `value` parameters, D = `value` tokens or C = `value` FLOPs, depending on `variable`."""
        return (self.scale / value) ** self.exponent


TOKENS_20 = TokensPerParamLaw(
    key="tokens-20",
    name="20 tokens per parameter",
    citation=(
        f"{HOFFMANN_2022}: rule of thumb from table 3 (approach 1 projections of 20.0 to 22.4 tokens per "
        "parameter) and Chinchilla itself (70B parameters trained on 1.4T tokens, section 4)"
    ),
    tokens_per_param=20.0,
)

HOFFMANN_A3_PRINTED = ParametricLaw(
    key="hoffmann-a3-printed",
    name="Hoffmann 2022 approach 3, as printed",
    citation=(
        f"{HOFFMANN_2022}, appendix D.2: approach 3 fit as printed, "
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

# Table 3 of Hoffmann et al. lists approach 1's projections, table A3 (appendix D.3) approach 2's, as
# (parameters, FLOPs, tokens) rows. Neither prints the power law's coefficient, so these constants are a
# least-squares fit of ln N on ln C through the rows from 400M to 10T parameters, leaving out the 67B row,
# whose token count is rounded to two digits. The fitted exponents agree with the paper's table 2
# (a = 0.50 and 0.49), and the fits reproduce every other row's FLOPs within 0.6% (tested).
HOFFMANN_A1 = PowerLawAllocation(
    key="hoffmann-a1",
    name="Hoffmann 2022 approach 1 (training-curve envelope)",
    citation=(
        f"{HOFFMANN_2022}, table 3 (approach 1 projections), fitted as N_opt = 0.0993487 C^0.498092; "
        "table 2 gives a = 0.50"
    ),
    exponent=0.498092,
    coefficient=0.0993487,
)

HOFFMANN_A2 = PowerLawAllocation(
    key="hoffmann-a2",
    name="Hoffmann 2022 approach 2 (IsoFLOP profiles)",
    citation=(
        f"{HOFFMANN_2022}, table A3 (approach 2 projections), fitted as N_opt = 0.145574 C^0.489927; "
        "table 2 gives a = 0.49"
    ),
    exponent=0.489927,
    coefficient=0.145574,
)

# Table 2 of Kaplan et al. refits all four constants of equation 1.5 jointly, so alpha_D and both scales
# differ from equations 1.1 and 1.2 below (alpha_D 0.103 against 0.095). Table 6's allocation with C = 2 C_min
# gives 4.68B parameters at 1e21 FLOPs, the value Hoffmann et al. use for Kaplan in their appendix D.4.
KAPLAN_2020_JOINT = KaplanJointLaw(
    key="kaplan-2020",
    name="Kaplan 2020 L(N, D), compute-efficient N_opt proportional to C^0.73",
    citation=(
        f"{KAPLAN_2020}: loss from equation 1.5 with the joint fit of table 2 (alpha_N 0.076, alpha_D 0.103, "
        "N_c 6.4e13 non-embedding parameters, D_c 1.8e13 tokens); allocation from table 6, N_opt = "
        "1.3e9 C_min^0.73 with C_min in PF-days and C = 6ND = 2 C_min (equation 6.7)"
    ),
    alpha_n=0.076,
    alpha_d=0.103,
    n_c=6.4e13,
    d_c=1.8e13,
    n_e=1.3e9,
    p_n=0.73,
)

# Kaplan et al. 2020, equations 1.1 and 1.2: L(N) for models trained to convergence (N non-embedding
# parameters), L(D) for large models trained with early stopping (D tokens).
KAPLAN_2020_PARAMS = SingleVariableLaw(
    key="kaplan-2020-params",
    name="Kaplan 2020 L(N) = (N_c / N)^alpha_N",
    citation=f"{KAPLAN_2020}, equation 1.1: alpha_N 0.076, N_c 8.8e13 non-embedding parameters",
    variable="params",
    scale=8.8e13,
    exponent=0.076,
)

KAPLAN_2020_TOKENS = SingleVariableLaw(
    key="kaplan-2020-tokens",
    name="Kaplan 2020 L(D) = (D_c / D)^alpha_D",
    citation=f"{KAPLAN_2020}, equation 1.2: alpha_D 0.095, D_c 5.4e13 tokens",
    variable="tokens",
    scale=5.4e13,
    exponent=0.095,
)

# Kaplan et al. 2020, equation 1.3: L(C_min) along the compute-efficient frontier, C_min in PF-days.
KAPLAN_2020_COMPUTE = SingleVariableLaw(
    key="kaplan-2020-compute",
    name="Kaplan 2020 L(C_min) = (C_c / C_min)^alpha_C",
    citation=f"{KAPLAN_2020}, equation 1.3: alpha_C^min 0.050, C_c^min 3.1e8 PF-days",
    variable="flops",
    scale=3.1e8 * PF_DAY_FLOPS,
    exponent=0.050,
)

# The published law of each variable, shown beside the exponents a user fits (analysis.fit_kaplan).
KAPLAN_2020_BY_VARIABLE: dict[str, SingleVariableLaw] = {
    law.variable: law for law in (KAPLAN_2020_PARAMS, KAPLAN_2020_TOKENS, KAPLAN_2020_COMPUTE)
}

_REGISTRY: tuple[Law, ...] = (
    TOKENS_20, HOFFMANN_A1, HOFFMANN_A2, HOFFMANN_A3_PRINTED, HOFFMANN_A3_UNROUNDED, EPOCH_2024,
    KAPLAN_2020_JOINT,
)
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
