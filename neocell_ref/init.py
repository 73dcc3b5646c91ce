"""NeoInit (SPEC section 6): skewed identity plus scaled Gaussian noise."""

from __future__ import annotations

import numpy as np

from .spec import parse_specs
from .validation import as_int, check_nbytes, floating_dtype, real_number

__all__ = ["skewed_identity", "neo_init"]


def skewed_identity(n_rows: int, n_cols: int, dtype=np.float64) -> np.ndarray:
    """The skewed identity ``S(n, m)`` of SPEC section 6.

    * ``n == m``: the identity.
    * ``m < n`` (tall): ``step = round(n / m)`` with Python's round (halves to even);
      column ``i`` has ones in rows ``i*step ... min((i+1)*step, n) - 1``; each
      column is then divided by its sum.
    * ``m > n`` (wide): the transpose rule along rows.

    Rows (tall) or columns (wide) past the last step stay zero. A column (tall) or
    row (wide) that the rule leaves empty stays zero; the official code divides by
    zero there and produces NaN (for example ``S(6, 4)``). This is a documented
    divergence.

    Parameters
    ----------
    n_rows, n_cols : int
        Shape, both >= 1.
    dtype : floating dtype, default float64

    Returns
    -------
    ndarray, shape (n_rows, n_cols)
    """
    n, m = as_int(n_rows, "n_rows", 1), as_int(n_cols, "n_cols", 1)
    dtype = floating_dtype(dtype)  # the entries are fractions such as 1/2 and 1/3
    check_nbytes((n, m), dtype, "skewed_identity")
    if n == m:
        return np.eye(n, dtype=dtype)
    if m > n:
        return skewed_identity(m, n, dtype).T.copy()
    step = round(n / m)  # Python's round: 2.5 -> 2, 3.5 -> 4
    s = np.zeros((n, m), dtype=dtype)
    for i in range(m):
        s[i * step : min((i + 1) * step, n), i] = 1.0
    sums = s.sum(axis=0)
    # Leave empty columns at zero instead of dividing 0 by 0.
    return np.divide(s, sums, out=np.zeros_like(s), where=sums > 0)


def neo_init(specs, rng=None, *, dtype=np.float64, noise_scale=1.0):
    """NeoInit weights for every group of a layer.

    ``A = S(h_out, h_in) + noise_scale * G / sqrt(h_in * h_out)`` and
    ``B = S(w_in, w_out) + noise_scale * G / sqrt(w_in * w_out)``, ``G`` standard
    normal, drawn per group in the order ``A`` then ``B``.

    Parameters
    ----------
    specs : list of dict or GroupSpec
    rng : numpy.random.Generator
        Source of the noise. Required to be explicit for reproducibility; ``None``
        raises.
    dtype : float32 or float64
    noise_scale : float, default 1.0
        Multiplies the noise (1 is NeoInit; 0 gives the bare skewed identity).
        Must be finite and >= 0, and small enough that every weight is finite in
        ``dtype`` (a ``ValueError`` names the group otherwise).

    Returns
    -------
    weights_a : list of ndarray, ``weights_a[g]`` shape (channels_g, h_out, h_in)
    weights_b : list of ndarray, ``weights_b[g]`` shape (channels_g, w_in, w_out)
    """
    specs = parse_specs(specs)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(0)), got {rng!r}")
    dtype = floating_dtype(dtype, allowed=(np.float32, np.float64))
    noise_scale = real_number(noise_scale, "noise_scale", 0.0, type_error=True)
    # Refuse before drawing anything: the noise is drawn in float64 whatever ``dtype`` is.
    for spec in specs:
        for shape, name in ((spec.shape_a, "weight_a"), (spec.shape_b, "weight_b")):
            check_nbytes(shape, np.float64, f"neo_init: {name} noise")
    weights_a, weights_b = [], []
    for g, spec in enumerate(specs):
        for (rows, cols), out, name in (
            ((spec.h_out, spec.h_in), weights_a, "weights_a"),
            ((spec.w_in, spec.w_out), weights_b, "weights_b"),
        ):
            noise = rng.standard_normal((spec.channels, rows, cols))
            with np.errstate(over="ignore"):  # overflow is detected and named just below
                w = skewed_identity(rows, cols) + noise * (noise_scale / np.sqrt(rows * cols))
                w = w.astype(dtype)
            if not np.isfinite(w).all():
                raise ValueError(
                    f"noise_scale={noise_scale!r} makes {name}[{g}] overflow to Inf in {dtype}; "
                    "use a smaller noise_scale"
                )
            out.append(w)
    return weights_a, weights_b
