"""The model's fused inference path (neocell_ref/models_fast.py) equals the layer-by-layer one.

``forward(cache=False)`` runs each block's tail on blocks of pixels; it must give the
logits, the executed products and, in training mode, the buffers of the plain path.
tests/test_models.py draws random small models and compares both paths too.
"""

import numpy as np
import pytest
from support.models import tiny, tiny_input

from neocell_ref import models_fast
from neocell_ref.instrument import count_macs
from neocell_ref.verify.tolerances import relative_error


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_path_matches_the_layer_by_layer_path(monkeypatch, dtype):
    """cache=False runs BatchNorm (inference), fc_1, GELU, fc_2, layer scale and the skip
    addition on blocks of pixels: blocks of 3 columns here, so that samples split into
    several blocks with a short last one (64 = 21·3 + 1). Training mode too (there only
    fc_1, GELU, fc_2 are blocked)."""
    model = tiny(dtype, linear_bias=True, layer_scale_init_value=0.5)
    rng = np.random.default_rng(8)
    for key in model.params:  # non-trivial biases, BatchNorm affine and gamma
        if key.endswith(("bias", "norm.weight", "gamma")):
            model.params[key] = (1 + rng.standard_normal(model.params[key].shape)).astype(dtype)
    for key in model.buffers:
        if key.endswith("running_mean"):
            model.buffers[key] = rng.standard_normal(model.buffers[key].shape).astype(dtype)
        elif key.endswith("running_var"):
            model.buffers[key] = rng.uniform(0.5, 2, model.buffers[key].shape).astype(dtype)
    monkeypatch.setattr(models_fast, "_MLP_BLOCK", 16 * 3)  # stage 1: 16 hidden channels -> 3 columns
    x = tiny_input(3).astype(dtype)
    with count_macs() as fused_count:
        fused = model.forward(x, cache=False)
    with count_macs() as plain_count:
        plain = model.forward(x, cache=True)
    tol = 1e-13 if dtype == np.float64 else 1e-6
    err = relative_error(fused, plain)
    assert err <= tol, f"fast inference path differs from the layer-by-layer path: {err:.3e}"
    assert fused_count.by_tag() == plain_count.by_tag(), (fused_count.by_tag(), plain_count.by_tag())
    twin = tiny(dtype, linear_bias=True, layer_scale_init_value=0.5)
    twin.load_state_dict(model.state_dict())
    fast_train = model.forward(x, training=True, cache=False)
    plain_train = twin.forward(x, training=True)
    err = relative_error(fast_train, plain_train)
    assert err <= tol, f"training-mode fast path differs: {err:.3e}"
    for key in model.buffers:  # later BatchNorms see inputs that differ by rounding
        assert np.allclose(model.buffers[key], twin.buffers[key], rtol=tol, atol=0), f"{key} differs"
