"""Shared by the hostile-input reproducers of several test modules.

The reproducers of issue "Verdicts that cannot be fooled", section 5 (every call an
adversary found that broadcast silently, looped, returned garbage or crashed deep in
NumPy) are tests of the function they call, in that function's module's tests; what
they share is here: ``raises_naming`` (the error type and every word that must name
the argument), a small model and a small shifted layer.
"""

import re

import numpy as np
import pytest

from neocell_ref.init import neo_init
from neocell_ref.spec import parse_kernel_code

TINY_MODEL = dict(per_stage_layers=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=4, kernel_spec="2+3", resolution=32)


def raises_naming(exc, *words):
    """``pytest.raises`` requiring every word (a regex-escaped substring) in the message."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words))


def small_layer():
    """A shifted kernel-3 layer of two channels and a 6 x 6 input: ``(specs, wa, wb, x)``."""
    specs = parse_kernel_code("3", channels=2, shift=1)
    wa, wb = neo_init(specs, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6))
    return specs, wa, wb, x
