"""NeoInit's statistical check has teeth: a sigma off by 5 % fails it.

``support.neo_init.check_standard_normal``, which tests/test_init.py runs on the noise
of ``neo_init``, rejects the same draws measured against a sigma 5 % too large.
"""

import numpy as np
import pytest
from support.neo_init import SPECS, check_standard_normal

from neocell_ref import neo_init, skewed_identity


def test_wrong_noise_scale_would_be_detected():
    """The statistical check has teeth: sigma off by 5 % fails for this sample size."""
    wa, _ = neo_init(SPECS[:1], np.random.default_rng(2024))
    with pytest.raises(AssertionError, match="variance"):
        check_standard_normal(wa[0] - skewed_identity(3, 5), 1.05 / np.sqrt(15), "A 5->3 with a wrong sigma")
