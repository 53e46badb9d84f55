"""The threshold search's acceptance rules, without torch (the command line reads them).

See :mod:`velcro.sw.locality.search` for what each rule admits.
"""

from __future__ import annotations

import math

RULES = ("strict", "mcnemar")
#: The McNemar rule's default significance level.
LEVEL = 0.05


def mcnemar_p(b: int, c: int) -> float:
    """Exact one-sided McNemar p-value: ``P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)``,
    the chance of at least ``b`` losses among ``b + c`` flips if the candidate were as
    accurate as the model (1.0 without a loss)."""
    n = b + c
    if b <= 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(b, n + 1)) / 2 ** n
