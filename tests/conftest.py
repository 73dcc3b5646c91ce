"""Shared pytest configuration: the hypothesis profiles and the shared fixtures.

Profiles (select with the environment variable ``NEOCELL_HYPOTHESIS_PROFILE``):

``default``
    Derandomized (same examples every run) and small, so the whole suite stays
    within a few minutes on 2 cores.
``deep``
    Randomized with many more examples, for a thorough run before a release.
"""

import os

import pytest
from hypothesis import HealthCheck, settings
from support import official_model

settings.register_profile(
    "default",
    derandomize=True,
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "deep",
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("NEOCELL_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="module", params=official_model.STEMS)
def official(request):
    """``(arrays, meta)`` of each official tiny-model data file (``support.official_model``):
    every test using it runs once per file."""
    return official_model.load_official(request.param)
