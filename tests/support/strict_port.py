"""A correct NeoCell port whose module sets ``np.seterr(all="raise")`` when imported,
as a strict test suite's conftest does (tests/verify/test_golden.py).

Importing it changes NumPy's error state for the rest of the thread: load it only in
a test that restores the state (``np.errstate`` around the import, or
``np.seterr(**saved)`` after).
"""

import numpy as np

import neocell_ref as nr

np.seterr(all="raise")


def forward(x, weights_a, weights_b, specs):
    with np.errstate(under="ignore"):  # the port's own choice, inside its strict state
        return nr.neocell_forward(x, weights_a, weights_b, specs)
