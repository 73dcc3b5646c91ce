"""The fast training path's comparison has teeth.

- ``test_broken_fast_backwards_fail_the_comparison``: the comparison of
  tests/test_models_fast_train.py (``support.models_fast_train.mismatches`` of one
  training step through the plain and the fast path) fails for a BatchNorm backward
  without its mean term, a GELU derivative without ``x·φ(x)``, and a weight gradient of
  the first sample only.
- ``test_a_product_split_that_loses_a_share_fails_the_comparison``: the same comparison
  fails when a product split over the worker pool loses a thread's rows.
- ``test_one_channel_batchnorm_shares_fail_the_bitwise_comparison``: the rule that every
  BatchNorm share holds at least two channels is needed: shares of one channel change
  the statistics' last bits, which the bitwise test of the split catches.
- ``test_a_conv1x1_sample_split_that_loses_a_share_fails_the_bitwise_comparison`` and
  ``test_a_conv1x1_split_backward_with_one_sample_fails_the_bitwise_comparison``: the
  same bitwise test catches a 1x1 convolution split by samples that never runs the
  last share (forward) or sums the weight gradient of the first sample only (backward).
"""

import numpy as np
import pytest
from scipy import special
from support.models_fast_train import bn_split_step, both, mismatches, no_flat_layout

from neocell_ref import _parallel
from neocell_ref import models_fast_train as F


def _bn_backward_without_mean_term(model, desc, grad_y, x, bn_saved):
    mean, inv_std, scale = bn_saved
    x_hat = (x - mean[:, None, None]) * inv_std[:, None, None]
    grad_b = grad_y.sum(axis=(0, 2, 3))
    grad_w = (grad_y * x_hat).sum(axis=(0, 2, 3))
    m = x.shape[0] * x.shape[2] * x.shape[3]
    grad_x = (grad_y - x_hat * (grad_w / m)[:, None, None]) * scale[:, None, None]  # the Σ dy / M term missing
    model.set_grad(desc, "weight", grad_w)
    model.set_grad(desc, "bias", grad_b)
    return grad_x


def _gelu_derivative_without_density_term(h, d):
    cdf = special.ndtr(h)
    d[...] = cdf  # Φ(x) only: x·φ(x) forgotten
    return np.multiply(h, cdf, out=h)


def _first_sample_weight_grad(g3, x3):
    return g3[0] @ x3[0].T  # Σ over samples forgotten


@pytest.mark.parametrize(
    "name, mutant, expected",
    [
        ("_bn_train_backward", _bn_backward_without_mean_term, "grad_x"),
        ("_gelu_with_derivative", _gelu_derivative_without_density_term, "fc_1.weight"),
        ("_weight_grad", _first_sample_weight_grad, "fc_2.weight"),
    ],
)
def test_broken_fast_backwards_fail_the_comparison(monkeypatch, name, mutant, expected):
    no_flat_layout(monkeypatch)  # _weight_grad serves the per-sample layout
    monkeypatch.setattr(F, name, mutant)
    bad = mismatches(*both(np.float64, 3, (32, 32), linear_bias=True), np.float64, exact=False)
    assert any(expected in key for key, _ in bad), f"mutant {name} not caught (mismatches: {bad})"


def test_a_product_split_that_loses_a_share_fails_the_comparison(monkeypatch):
    """The split of the flat layout's products over the worker pool (forced on the small
    model): a split that leaves the last share's rows at zero must fail the comparison."""
    real = F._product

    def lossy(a, b, bias=None):
        out = real(a, b, bias)
        out[-(out.shape[0] // 3 or 1) :] = 0  # the last thread's rows never computed
        return out

    monkeypatch.setenv("NEOCELL_THREADS", "2")
    monkeypatch.setattr(F, "_SPLIT_MACS", 0)
    monkeypatch.setattr(F, "_product", lossy)
    bad = mismatches(*both(np.float64, 3, (32, 32), linear_bias=True), np.float64, exact=False)
    assert any("fc_" in key for key, _ in bad), f"lossy product split not caught (mismatches: {bad})"


def test_one_channel_batchnorm_shares_fail_the_bitwise_comparison(monkeypatch):
    """The comparison of tests/test_models_fast_train.py's
    ``test_batchnorm_and_conv1x1_splits_change_no_bit``, with shares of one channel."""
    whole = bn_split_step(monkeypatch, 1)
    monkeypatch.setattr(F, "_channel_shares", lambda x: _parallel.split(x.shape[1], x.shape[1]))
    split = bn_split_step(monkeypatch, 2)
    bad = mismatches(whole[:2], split[:2], np.float32, exact=True)
    assert any("norm" in key for key, _ in bad), f"one-channel BatchNorm shares not caught (mismatches: {bad})"


def test_one_channel_batchnorm_blocks_fail_the_bitwise_comparison(monkeypatch):
    """The comparison of tests/test_models_fast_train.py's
    ``test_batchnorm_blocks_of_channels_change_no_bit``, with blocks of one channel."""
    whole = bn_split_step(monkeypatch, 1)
    monkeypatch.setattr(F, "_channel_blocks", lambda span, per_channel: [(c, c + 1) for c in range(*span)])
    blocked = bn_split_step(monkeypatch, 1)
    bad = mismatches(whole[:2], blocked[:2], np.float32, exact=True)
    assert any("norm" in key for key, _ in bad), f"one-channel BatchNorm blocks not caught (mismatches: {bad})"


def test_a_conv1x1_sample_split_that_loses_a_share_fails_the_bitwise_comparison(monkeypatch):
    """The same comparison, with the 1x1 convolutions split by samples (forced) and the
    last share's products never run (its outputs left at zero)."""
    from neocell_ref import models_fast

    whole = bn_split_step(monkeypatch, 1)

    def lossy(x, weight, shares):
        n, c_in = x.shape[:2]
        w2 = weight.reshape(weight.shape[:2])
        y = np.zeros((n, w2.shape[0], *x.shape[2:]), x.dtype)
        for lo, hi in shares[:-1]:
            y[lo:hi] = np.matmul(w2, x[lo:hi].reshape(hi - lo, c_in, -1)).reshape(y[lo:hi].shape)
        return y

    monkeypatch.setattr(models_fast, "_SAMPLE_SPLIT_MACS", 0)
    monkeypatch.setattr(F, "conv1x1_samples", lossy)
    split = bn_split_step(monkeypatch, 2)
    bad = mismatches(whole[:2], split[:2], np.float32, exact=True)
    assert any("conv" in key for key, _ in bad), f"lossy conv1x1 sample split not caught (mismatches: {bad})"


def test_a_conv1x1_split_backward_with_one_sample_fails_the_bitwise_comparison(monkeypatch):
    """The same comparison, with the split backward's weight gradient of the first
    sample only (the sum over samples forgotten)."""
    from neocell_ref import models_fast

    whole = bn_split_step(monkeypatch, 1)
    real = F.conv1x1_backward

    def first_sample_only(model, desc, grad, x):
        grad_x = real(model, desc, grad, x)
        w = model.param(desc, "weight")
        g0, x0 = grad[0].reshape(w.shape[0], -1), x[0].reshape(w.shape[1], -1)
        model.set_grad(desc, "weight", (g0 @ x0.T).reshape(w.shape))
        return grad_x

    monkeypatch.setattr(models_fast, "_SAMPLE_SPLIT_MACS", 0)
    monkeypatch.setattr(F, "conv1x1_backward", first_sample_only)
    split = bn_split_step(monkeypatch, 2)
    bad = mismatches(whole[:2], split[:2], np.float32, exact=True)
    assert any(key.endswith("conv.weight") for key, _ in bad), f"one-sample conv1x1 gradient not caught: {bad}"
