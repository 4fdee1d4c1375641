"""How many tokens should a 7B-parameter model be trained on? Chinchilla's answer through the public API.

Hoffmann et al. 2022 (arXiv:2203.15556) fit L(N, D) = E + A / N^alpha + B / D^beta and minimise it
under a compute budget C = 6 N D (equation 4 of the paper):

    N_opt(C) = G (C / 6)^(beta / (alpha + beta)),  G = (alpha A / (beta B))^(1 / (alpha + beta))

Inverting N_opt gives the budget C at which 7B parameters are compute-optimal, and D = C / (6 N).
The script does that with `analysis.allocation`, then lists the answer of every published law in
`analysis.laws`, because they disagree: the printed, rounded constants of approach 3 alone move D by
more than half.

Run: python examples/chinchilla_7b.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from analysis import allocation  # noqa: E402
from analysis.laws import all_laws, get_law  # noqa: E402

PARAMS = 7e9


def main() -> None:
    law = get_law("hoffmann-a3-unrounded")
    constants = law.parameters()
    a_coef, b_coef, alpha, beta = constants["A"], constants["B"], constants["alpha"], constants["beta"]

    flops = float(allocation.flops_for_params(PARAMS, a_coef, b_coef, alpha, beta))
    tokens = float(allocation.tokens_for_params(PARAMS, a_coef, b_coef, alpha, beta))
    n_exponent, d_exponent = allocation.allocation_exponents(alpha, beta)
    print(f"{law.name}")
    print(f"  source: {law.citation}")
    print(f"  N_opt grows as C^{n_exponent:.3f} and D_opt as C^{d_exponent:.3f}")
    print(f"  7B parameters are compute-optimal at C = {flops:.3e} FLOPs, trained on D = {tokens:.3e} tokens "
          f"({tokens / PARAMS:.1f} tokens per parameter)")
    print(f"  predicted loss there: {law.loss(PARAMS, tokens):.3f} nats/token on the paper's own data and tokenizer")

    print("\nEvery registered law, same question (N counted as each law's source counts it):")
    print(f"  {'law':<74} {'tokens':>10} {'tokens/param':>12} {'FLOPs':>10}")
    for each in all_laws():
        tokens = each.tokens_for_params(PARAMS)
        print(f"  {each.name:<74} {tokens:10.3e} {tokens / PARAMS:12.1f} {6 * PARAMS * tokens:10.3e}"
              f"  ({each.convention})")


if __name__ == "__main__":
    main()
