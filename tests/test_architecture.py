"""The description of the network (neocell_ref/architecture.py).

A network too deep to describe is refused at once, naming the field and the limit,
while the calculator still counts it. The description's parameter and buffer names
and shapes are tested against the built model in tests/test_models.py, its layer
kinds in tests/test_registry.py.
"""

import pytest

import neocell_ref as nr
from neocell_ref.models import NeoNeXt


def test_a_million_blocks_are_refused_at_once_and_still_counted():
    """``NeoNeXt(per_stage_layers=(10**6, ...))`` used to spend minutes describing the
    network before any check ran; it is refused at once, naming the field and the limit,
    while the calculator still counts it (in closed form)."""
    import time

    from neocell_ref.architecture import MAX_BLOCKS, NeoNeXtConfig

    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"per_stage_layers=\(1000000, 1, 1, 1\).*MAX_BLOCKS=10000"):
        NeoNeXt(per_stage_layers=(10**6, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=10)
    assert time.perf_counter() - start < 1.0
    assert MAX_BLOCKS >= 36  # NeoNeXt-XL stays describable
    assert nr.model_complexity(NeoNeXtConfig(per_stage_layers=(10**6, 1, 1, 1)), 224).num_layer_rows > 10**6
