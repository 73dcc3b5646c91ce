"""The layer gradient checks have teeth: broken backwards are rejected.

The gradient check that tests/test_layers.py runs on every layer
(``support.layers.gradient_report``) rejects a BatchNorm backward without its
``-Σdy/M`` term, a GELU backward without the ``x·φ(x)`` term and a linear backward
with a 1e-4 relative error in ``dW``.
"""

import numpy as np
import pytest
from support.layers import gradient_report

from neocell_ref import layers as L


def _bn_backward_without_mean_term(grad_y, x, weight, bias, rm, rv, *, training, eps=1e-5):
    gx, gw, gb, _, _ = L.batchnorm_backward(grad_y, x, weight, bias, rm, rv, training=training, eps=eps)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    _, var = L.batchnorm_stats(x)
    gx = gx + (gb / m * weight / np.sqrt(var + eps))[None, :, None, None]  # forgets -Σdy/M
    return gx, gw, gb, None, None


def _gelu_backward_without_density(grad_y, x):
    from scipy.special import ndtr

    return (grad_y * ndtr(x),)  # the x·φ(x) term is missing


def _linear_backward_scaled(grad_y, x, weight, bias=None):
    gx, gw, gb = L.linear_backward(grad_y, x, weight, bias)
    return gx, gw * 1.0001, gb  # a 1e-4 relative error in dW


@pytest.mark.parametrize("mutant", ["batchnorm", "gelu", "linear"])
def test_broken_backwards_are_rejected(mutant):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 2, 2))
    if mutant == "batchnorm":
        w, b, rm, rv = rng.standard_normal(3), rng.standard_normal(3), np.zeros(3), np.ones(3)
        report = gradient_report(
            lambda x_: L.batchnorm_forward(x_, w, b, rm, rv, training=True),
            lambda g, x_: _bn_backward_without_mean_term(g, x_, w, b, rm, rv, training=True)[:1],
            [x],
            ["x"],
            rng=rng,
        )
    elif mutant == "gelu":
        report = gradient_report(lambda x_: L.gelu_forward(x_), _gelu_backward_without_density, [x], ["x"], rng=rng)
    else:
        w = rng.standard_normal((4, 3))
        report = gradient_report(
            lambda *a: L.linear_forward(*a),
            lambda g, *a: _linear_backward_scaled(g, *a)[:2],
            [x, w],
            ["x", "weight"],
            rng=rng,
        )
    assert not report.passed, f"the broken {mutant} backward was accepted\n{report}"
