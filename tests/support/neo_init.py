"""NeoInit's noise, checked statistically: the layer sizes drawn and the normality check.

``check_standard_normal`` is run by tests/test_init.py on NeoInit's noise and by
tests/meta/test_init_mutants.py on a wrong sigma, which it must reject.
"""

import numpy as np


def check_standard_normal(residual, sigma, what):
    """``residual / sigma`` must look standard normal: mean, variance and the 1-sigma mass.

    Bounds are 5 standard errors of each estimator for n independent draws:
    mean: 1/sqrt(n); variance (normal data): sqrt(2/(n-1)); P(|z| < 1): sqrt(p(1-p)/n).
    """
    z = residual.ravel() / sigma
    n = z.size
    mean, var = z.mean(), z.var(ddof=1)
    inside = np.mean(np.abs(z) < 1.0)
    p = 0.6826894921370859  # P(|Z| < 1) for a standard normal
    assert abs(mean) <= 5 / np.sqrt(n), f"{what}: mean of noise/sigma {mean:.4f}, n={n}"
    assert abs(var - 1) <= 5 * np.sqrt(2 / (n - 1)), (
        f"{what}: variance of noise/sigma {var:.4f} (expected 1 ± {5 * np.sqrt(2 / (n - 1)):.4f}), n={n}"
    )
    assert abs(inside - p) <= 5 * np.sqrt(p * (1 - p) / n), f"{what}: P(|z|<1) = {inside:.4f}, expected {p:.4f}"


SPECS = [{"h_in": 5, "h_out": 3, "w_in": 2, "w_out": 6, "channels": 4000}, {"kernel": 4, "channels": 3000, "shift": 1}]
