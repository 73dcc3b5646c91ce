"""The non-NeoCell layers of neocell_ref.layers, each checked against an independent source.

* every backward passes the package's gradient checker (central finite differences and
  the dot-product test) in float64, property-based over shapes; BatchNorm in both modes,
  GELU near 0, LayerNorm with a tiny variance;
* every forward agrees with an independent formulation written here (explicit loops,
  ``np.einsum``, ``math.erfc``, ``np.var``, hand-computed values);
* the float32 GELU meets its documented accuracy on a dense sample of float32 values;
* matrix products are reported to ``neocell_ref.instrument`` with the right tags and MACs;
* bad input raises a ValueError/TypeError naming the argument;
* deliberately broken backwards are rejected (the checks have teeth):
  tests/meta/test_layers_mutants.py.
"""

import math
import re

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from support.hostile import raises_naming
from support.layers import gradient_report
from support.paths import REPO

from neocell_ref import layers as L
from neocell_ref.instrument import count_macs

EPS32 = float(np.finfo(np.float32).eps)


def _assert_passes(report, what):
    assert report.passed, f"{what}: gradient check failed\n{report}"


def _dims(data, label, low=1, high=5):
    return data.draw(st.integers(low, high), label=label)


# ======================================================================================
# gradient checks, property-based over shapes (float64)
# ======================================================================================
@given(data=st.data())
def test_linear_gradients(data):
    n = _dims(data, "N", 1, 3)
    c_in, c_out = _dims(data, "C_in"), _dims(data, "C_out")
    spatial = tuple(data.draw(st.lists(st.integers(1, 4), min_size=0, max_size=2), label="spatial dims"))
    bias = data.draw(st.booleans(), label="bias")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, *spatial))
    w = rng.standard_normal((c_out, c_in))
    inputs, names = [x, w], ["x", "weight"]
    if bias:
        inputs.append(rng.standard_normal(c_out))
        names.append("bias")
    # without a bias the backward's third gradient is None: keep one per checked input
    report = gradient_report(
        lambda *a: L.linear_forward(*a),
        lambda g, *a: L.linear_backward(g, *a)[: len(a)],
        inputs,
        names,
        rng=np.random.default_rng(seed),
    )
    _assert_passes(report, f"linear x{x.shape} w{w.shape} bias={bias}")


@given(data=st.data())
def test_conv1x1_gradients(data):
    n, c_in, c_out = _dims(data, "N", 1, 3), _dims(data, "C_in"), _dims(data, "C_out")
    h, w_ = _dims(data, "H"), _dims(data, "W")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = rng.standard_normal((n, c_in, h, w_))
    w = rng.standard_normal((c_out, c_in, 1, 1))
    report = gradient_report(L.conv1x1_forward, L.conv1x1_backward, [x, w], ["x", "weight"], rng=rng)
    _assert_passes(report, f"conv1x1 x{x.shape} w{w.shape}")


@given(data=st.data())
def test_batchnorm_gradients_both_modes(data):
    training = data.draw(st.booleans(), label="training")
    n, c = _dims(data, "N", 1, 3), _dims(data, "C", 1, 4)
    h, w_ = _dims(data, "H", 1, 4), _dims(data, "W", 1, 4)
    if training and n * h * w_ < 2:
        h = 2  # training needs two values per channel (tested separately as an error)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = rng.standard_normal((n, c, h, w_)) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)
    weight, bias = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)

    def forward(x_, w_, b_):
        return L.batchnorm_forward(x_, w_, b_, rm, rv, training=training)

    def backward(g, x_, w_, b_):
        return L.batchnorm_backward(g, x_, w_, b_, rm, rv, training=training)[:3]

    report = gradient_report(forward, backward, [x, weight, bias], ["x", "weight", "bias"], rng=rng)
    _assert_passes(report, f"batchnorm training={training} x{x.shape}")


def _layernorm_report(x, weight, bias, rng, **kwargs):
    """The gradient check of LayerNorm with respect to x, weight and bias."""
    return gradient_report(
        lambda *a: L.layernorm_forward(*a),
        lambda g, *a: L.layernorm_backward(g, *a),
        [x, weight, bias],
        ["x", "weight", "bias"],
        rng=rng,
        **kwargs,
    )


@given(data=st.data())
def test_layernorm_gradients(data):
    n, c = _dims(data, "N", 1, 3), _dims(data, "C", 2, 6)
    spatial = tuple(data.draw(st.lists(st.integers(1, 3), min_size=0, max_size=2), label="spatial dims"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = rng.standard_normal((n, c, *spatial)) * 2 + 1
    # A position whose channels nearly coincide (variance ~1e-5, two channels 0.01
    # apart) has third derivatives ~1/σ³: the central difference's truncation error
    # (eps² times that) then exceeds the dot-product tolerance, though the analytic
    # gradient is right (the differences shrink as eps²). That regime has its own test
    # with a fitting step (test_layernorm_gradients_with_tiny_variance).
    assume(x.var(axis=1).min() > 1e-2)
    weight, bias = rng.standard_normal(c), rng.standard_normal(c)
    _assert_passes(_layernorm_report(x, weight, bias, rng), f"layernorm x{x.shape}")


def test_layernorm_gradients_with_nearly_equal_channels():
    """The generic test's excluded regime, at the example the deep profile found: two
    channels 0.013 apart near 2.8 (variance 4.5e-5, beside eps 1e-5). No step makes a
    central difference accurate to the default 1e-8 here: at 1e-6 its truncation error
    (eps² times a curvature of ~1/σ³) is ~1e-7 relative, and a smaller step amplifies
    the rounding of ``x - mean`` (a cancellation of 2.8 to 0.007) instead (1e-7: 5e-7).
    So the directional check is held to 1e-6, still a millionth of the error of a
    missing term."""
    rng = np.random.default_rng(819)
    x = rng.standard_normal((2, 2)) * 2 + 1
    assert x.var(axis=1).min() < 1e-4, f"not the nearly-equal regime: variances {x.var(axis=1)}"
    weight, bias = rng.standard_normal(2), rng.standard_normal(2)
    report = _layernorm_report(x, weight, bias, rng, dot_rtol=1e-6)
    _assert_passes(report, "layernorm with two channels 0.013 apart")


def test_layernorm_gradients_with_tiny_variance():
    """Variance 1e-8 against eps 1e-6: the eps term dominates the normalisation.

    The finite-difference step (1e-7) is scaled to the spread of the values (1e-4), so
    the check probes the function where its curvature lives rather than stepping over
    it; the offset 0.5 keeps the rounding noise of the differences below 1e-9 relative.
    """
    rng = np.random.default_rng(3)
    x = 0.5 + 1e-4 * rng.standard_normal((3, 8))
    weight, bias = rng.standard_normal(8), rng.standard_normal(8)
    report = _layernorm_report(x, weight, bias, rng, eps=1e-7, rtol=1e-5, atol=1e-6)
    _assert_passes(report, "layernorm with variance 1e-8")
    # and the forward is really in the eps-dominated regime: |y - bias| << |weight|
    y = L.layernorm_forward(x, weight, bias)
    assert np.abs(y - bias).max() < 0.1 * np.abs(weight).max(), "tiny-variance case is not eps-dominated"


@given(data=st.data())
def test_gelu_gradients(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3), label="shape"))
    scale = data.draw(st.sampled_from([1e-3, 1.0, 4.0]), label="input scale")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = scale * rng.standard_normal(shape)
    report = gradient_report(lambda x_: L.gelu_forward(x_), L.gelu_backward, [x], ["x"], rng=rng)
    _assert_passes(report, f"gelu scale {scale} shape {shape}")


def test_gelu_gradient_near_zero():
    """At and around 0: GELU'(0) = 1/2 and GELU''(0) = 2φ(0) (a hand value)."""
    x = np.array([0.0, 1e-8, -1e-8, 1e-4, -1e-4, 1e-2, -1e-2])
    report = gradient_report(lambda x_: L.gelu_forward(x_), L.gelu_backward, [x], ["x"], eps=1e-7)
    _assert_passes(report, "gelu near 0")
    (d,) = L.gelu_backward(np.ones(3), np.array([0.0, 1e-3, -1e-3]))
    phi0 = 1.0 / math.sqrt(2 * math.pi)
    expected = np.array([0.5, 0.5 + 2 * phi0 * 1e-3, 0.5 - 2 * phi0 * 1e-3])  # Taylor, error O(1e-9)
    assert np.allclose(d, expected, rtol=0, atol=1e-8), f"GELU' near 0: got {d}, expected {expected}"


@given(data=st.data())
def test_patchify_gradients(data):
    n, c = _dims(data, "N", 1, 2), _dims(data, "C", 1, 3)
    patch = data.draw(st.sampled_from([1, 2, 4]), label="patch")
    h, w = patch * _dims(data, "H tiles", 1, 3), patch * _dims(data, "W tiles", 1, 3)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x = rng.standard_normal((n, c, h, w))
    report = gradient_report(
        lambda x_: L.patchify_forward(x_, patch=patch),
        lambda g, x_: L.patchify_backward(g, x_, patch=patch),
        [x],
        ["x"],
        rng=rng,
    )
    _assert_passes(report, f"patchify {patch} x{x.shape}")


@given(data=st.data())
def test_pool_scale_droppath_residual_gradients(data):
    n, c, h, w = _dims(data, "N", 1, 3), _dims(data, "C"), _dims(data, "H"), _dims(data, "W")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    x, other = rng.standard_normal((n, c, h, w)), rng.standard_normal((n, c, h, w))
    gamma = rng.standard_normal(c)
    scale = rng.choice([0.0, 1.0 / 0.7], size=n)
    checks = {
        "avgpool": (L.avgpool_forward, L.avgpool_backward, [x], ["x"]),
        "layer_scale": (lambda *a: L.layer_scale_forward(*a), L.layer_scale_backward, [x, gamma], ["x", "gamma"]),
        "drop_path": (
            lambda x_: L.drop_path_forward(x_, scale),
            lambda g, x_: L.drop_path_backward(g, x_, scale)[:1],
            [x],
            ["x"],
        ),
        "residual_add": (L.residual_add_forward, L.residual_add_backward, [x, other], ["x", "branch"]),
    }
    for name, (fwd, bwd, inputs, names) in checks.items():
        _assert_passes(gradient_report(fwd, bwd, inputs, names, rng=rng), f"{name} x{x.shape}")


@given(data=st.data())
def test_cross_entropy_gradient(data):
    n, k = _dims(data, "N", 1, 4), _dims(data, "K", 2, 6)
    smoothing = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]), label="smoothing")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    logits = 3 * rng.standard_normal((n, k))
    labels = rng.integers(0, k, n)

    def forward(z):
        return np.array(L.cross_entropy_forward(z, labels, smoothing=smoothing))

    def backward(g, z):
        return [float(g) * L.cross_entropy_backward(z, labels, smoothing=smoothing)]

    _assert_passes(gradient_report(forward, backward, [logits], ["logits"], rng=rng), f"cross-entropy eps={smoothing}")


# ======================================================================================
# forwards against independent formulations
# ======================================================================================
def test_linear_and_conv1x1_against_einsum_and_pixel_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 4))
    w = rng.standard_normal((7, 5))
    b = rng.standard_normal(7)
    y = L.linear_forward(x, w, b)
    expected = np.einsum("oi,nihw->nohw", w, x) + b[None, :, None, None]
    assert np.allclose(y, expected, rtol=1e-13, atol=1e-13), f"linear vs einsum: max diff {np.abs(y - expected).max()}"
    conv = L.conv1x1_forward(x, w[:, :, None, None])
    for n, i, j in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        pixel = w @ x[n, :, i, j]
        assert np.allclose(conv[n, :, i, j], pixel, rtol=1e-13, atol=1e-13), f"conv1x1 pixel ({n},{i},{j})"
    head = L.linear_forward(x[:, :, 0, 0], w, b)
    assert np.allclose(head, x[:, :, 0, 0] @ w.T + b, rtol=1e-13, atol=1e-13), "2-D linear"


def test_patchify_channel_order_by_definition():
    """Channel c·16 + 4·py + px holds pixel (4i+py, 4j+px) of channel c (SPEC 7), by loops."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 12))
    y = L.patchify_forward(x)
    assert y.shape == (2, 48, 2, 3), y.shape
    for n in range(2):
        for c in range(3):
            for py in range(4):
                for px in range(4):
                    for i in range(2):
                        for j in range(3):
                            got, want = y[n, c * 16 + 4 * py + px, i, j], x[n, c, 4 * i + py, 4 * j + px]
                            assert got == want, f"channel {c * 16 + 4 * py + px} at ({i},{j}): {got} != {want}"
    # a hand example: one channel, 4x4 image numbered row by row -> 16 channels of 1 pixel
    tiny = np.arange(16.0).reshape(1, 1, 4, 4)
    assert L.patchify_forward(tiny).ravel().tolist() == list(range(16)), "4x4 patch not in row-major order"
    (back,) = L.patchify_backward(y, x)
    assert np.array_equal(back, x), "patchify_backward is not the inverse permutation"


def test_batchnorm_forward_and_running_update_by_hand():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 2, 5)) * 2 + 1
    w, b = np.array([1.5, -0.5]), np.array([0.1, 0.2])
    rm, rv = np.array([0.3, -0.2]), np.array([2.0, 0.5])
    y = L.batchnorm_forward(x, w, b, rm, rv, training=True)
    for c in range(2):
        values = x[:, c]
        expected = (values - values.mean()) / np.sqrt(np.var(values) + 1e-5) * w[c] + b[c]
        assert np.allclose(y[:, c], expected, rtol=1e-12, atol=1e-12), f"training BN channel {c}"
    y_eval = L.batchnorm_forward(x, w, b, rm, rv, training=False)
    expected = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5) * w[None, :, None, None] + b[
        None, :, None, None
    ]
    assert np.allclose(y_eval, expected, rtol=1e-12, atol=1e-12), "inference BN"
    new_mean, new_var, nbt = L.batchnorm_update_running(x, rm, rv, np.int64(4), momentum=0.1)
    for c in range(2):
        values = x[:, c].ravel()
        assert math.isclose(new_mean[c], 0.9 * rm[c] + 0.1 * values.mean(), rel_tol=1e-13), f"running_mean {c}"
        unbiased = np.var(values, ddof=1)
        assert math.isclose(new_var[c], 0.9 * rv[c] + 0.1 * unbiased, rel_tol=1e-13), f"running_var {c} (unbiased)"
    assert nbt.dtype == np.int64 and nbt.shape == () and int(nbt) == 5, f"num_batches_tracked {nbt!r}"
    assert np.array_equal(rm, [0.3, -0.2]) and np.array_equal(rv, [2.0, 0.5]), "update modified its inputs"


def test_batchnorm_affine_is_the_inference_forward():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 4, 5))
    w, b, rm, rv = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3), rng.uniform(0.1, 2, 3)
    scale, shift = L.batchnorm_affine(w, b, rm, rv, eps=1e-5)
    by_hand = w / np.sqrt(rv + 1e-5)
    d_scale, d_shift = np.abs(scale - by_hand), np.abs(shift - (b - rm * by_hand))
    assert np.allclose(scale, by_hand, rtol=1e-15) and np.allclose(shift, b - rm * by_hand, rtol=1e-14, atol=1e-15), (
        f"batchnorm_affine vs by hand: scale off by up to {d_scale.max()!r} at channel {np.argmax(d_scale)}, "
        f"shift off by up to {d_shift.max()!r} at channel {np.argmax(d_shift)}"
    )
    y = x * scale[None, :, None, None] + shift[None, :, None, None]
    assert np.array_equal(y, L.batchnorm_forward(x, w, b, rm, rv, training=False)), "not the numbers the forward uses"
    with pytest.raises(ValueError, match="var"):
        L.batchnorm_affine(w, b, rm, np.ones(4))
    with pytest.raises(ValueError, match="eps"):
        L.batchnorm_affine(w, b, rm, rv, eps=0)


def test_layernorm_and_avgpool_against_formulas():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6)) * 3 + 2
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    y = L.layernorm_forward(x, w, b)
    for n in range(3):
        expected = (x[n] - x[n].mean()) / math.sqrt(np.var(x[n]) + 1e-6) * w + b
        assert np.allclose(y[n], expected, rtol=1e-12, atol=1e-12), f"layernorm row {n}"
    img = rng.standard_normal((2, 3, 4, 5))
    pooled = L.avgpool_forward(img)
    assert np.allclose(pooled[1, 2], sum(img[1, 2].ravel()) / 20, rtol=1e-13), "avgpool"


def test_gelu_float64_against_math_erfc():
    """x·Φ(x) with Φ(x) = erfc(-x/√2)/2 from the C library (math.erfc), tails included.

    Tolerance: a few ulps, plus the conditioning of the tail: erfc(z) changes by the
    relative amount 2z²·δ when its argument z = -x/√2 is rounded by δ ≈ ε₆₄, and the two
    sides round z differently (multiply by 1/√2 or divide by √2).
    """
    eps64 = float(np.finfo(np.float64).eps)
    xs = np.concatenate([np.linspace(-30, 30, 601), [0.0, 1e-300, -1e-300, 0.5, -0.5]])
    got = L.gelu_forward(xs)
    for x, g in zip(xs, got):
        expected = x * 0.5 * math.erfc(-x / math.sqrt(2))
        tol = (8 + 2 * x * x) * eps64 * abs(expected) + 1e-320
        assert abs(g - expected) <= tol, f"GELU({x!r}) = {g!r}, math.erfc gives {expected!r}"


def test_gelu_float32_documented_accuracy():
    """|y - x·Φ(x)| <= 1.5·ε₃₂·|x| + 2⁻¹⁴⁹ on a dense float32 sample; relative <= 8·ε₃₂ for
    x >= -1 (away from the subnormal range). 2⁻¹⁴⁹ is the smallest float32 subnormal: a
    result below it cannot be represented, whatever the formula."""
    grid = np.linspace(-16, 16, 2_000_001, dtype=np.float32)
    rng = np.random.default_rng(5)
    extra = np.concatenate(
        [
            rng.standard_normal(300_000) * 3,
            rng.standard_normal(20_000) * 1e-3,
            [1e-38, -1e-38, 1e-45, -1e-45, 8.0, -8.0, 12.0, -12.0, 11.99, -11.99, 3e38, -3e38],
        ]
    )
    x32 = np.concatenate([grid, extra.astype(np.float32)])
    got = L.gelu_forward(x32).astype(np.float64)
    x64 = x32.astype(np.float64)
    ref = L.gelu_forward(x64)  # float64 path, itself checked against math.erfc above
    err = np.abs(got - ref)
    tiny = 2.0**-149
    ratio = np.maximum(err - tiny, 0.0) / (EPS32 * np.abs(x64) + 1e-300)
    worst = int(np.argmax(ratio))
    assert ratio[worst] <= 1.5, f"float32 GELU at x={x32[worst]!r}: error {err[worst]:.3g} = {ratio[worst]:.3f} eps|x|"
    near = (x64 >= -1) & (np.abs(x64) > 1e-30)
    rel = err[near] / np.abs(ref[near])
    worst = int(np.argmax(rel))
    assert rel[worst] <= 8 * EPS32, (
        f"float32 GELU relative error {rel[worst] / EPS32:.2f} eps at x={x64[near][worst]!r}"
    )


def test_gelu_float32_special_values_and_derivative():
    specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 100.0, -100.0], dtype=np.float32)
    y = L.gelu_forward(specials)
    assert y.dtype == np.float32, f"gelu_forward of float32 specials returned {y.dtype}"
    assert y[0] == np.inf and y[1] == 0 and np.isnan(y[2]), f"inf/-inf/nan -> {y[:3]}"
    assert y[3] == 0 and y[4] == 0 and y[5] == 100 and y[6] == 0, f"0, -0, ±100 -> {y[3:]}"
    x32 = np.linspace(-10, 10, 200_001, dtype=np.float32)
    (d32,) = L.gelu_backward(np.ones_like(x32), x32)
    (d64,) = L.gelu_backward(np.ones(x32.shape), x32.astype(np.float64))
    assert d32.dtype == np.float32, f"gelu_backward of float32 returned {d32.dtype}"
    err = np.abs(d32 - d64).max()
    assert err <= 4 * EPS32, f"float32 GELU' absolute error {err:.3g} > 4 eps"


def test_gelu_float32_constant_rows_compare_as_the_scalars():
    """The float32 GELU clips with ``minimum(t, row of 12)`` and takes ``maximum(x, row of
    0)`` (NumPy's array-array loops are faster than its array-scalar ones); both must give
    the bits of the scalar comparisons, signed zeros, NaNs, infinities and subnormals included."""
    values = np.array([np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 12.0, -12.0, 11.99, 13.0, 3e38])
    x = np.resize(values.astype(np.float32), L._GELU_CLIP_ROW.size)  # whole SIMD blocks and a ragged end
    for name, got, expected in (
        ("minimum(x, 12)", np.minimum(x, L._GELU_CLIP_ROW), np.minimum(x, np.float32(L.GELU_FLOAT32_CLIP))),
        ("maximum(x, 0)", np.maximum(x, L._ZERO_ROW), np.maximum(x, np.float32(0.0))),
    ):
        differ = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
        assert differ.size == 0, f"{name}: row form differs from the scalar form at x={x[differ[:5]]!r}"
    assert not (L._GELU_CLIP_ROW.flags.writeable or L._ZERO_ROW.flags.writeable), "constant rows are writeable"


def test_gelu_in_place_and_non_contiguous():
    rng = np.random.default_rng(6)
    base = rng.standard_normal((70, 1000)).astype(np.float32)  # > one block of the float32 path
    expected = L.gelu_forward(base.copy())
    view = base[:, ::2]
    assert np.array_equal(L.gelu_forward(view), expected[:, ::2]), "non-contiguous float32 input"
    buf = base.copy()
    out = L.gelu_forward(buf, out=buf)
    assert out is buf and np.array_equal(buf, expected), "in-place float32 GELU differs"
    x64 = rng.standard_normal(10)
    assert np.array_equal(L.gelu_forward(x64.copy(), out=x64.copy()), L.gelu_forward(x64)), "float64 out="


def _out_forwards():
    """The layers taking ``out=``, each as ``(name, call(x, out))`` on an ``(N, C, H, W)`` x."""
    c = 3
    return [
        (
            "batchnorm",
            lambda x, out: L.batchnorm_forward(x, np.ones(c, x.dtype), np.zeros(c, x.dtype), training=True, out=out),
        ),
        ("layer_scale", lambda x, out: L.layer_scale_forward(x, np.full(c, 2.0, x.dtype), out=out)),
        ("drop_path", lambda x, out: L.drop_path_forward(x, np.full(x.shape[0], 2.0, x.dtype), out=out)),
        ("gelu", lambda x, out: L.gelu_forward(x, out=out)),
    ]


@pytest.mark.parametrize("name, call", _out_forwards(), ids=[n for n, _ in _out_forwards()])
def test_out_must_have_the_result_shape_and_compute_dtype(name, call):
    """An ``out`` NumPy would broadcast into (the result's shape changed: (3, 2, 3, 2, 2)
    for (2, 3, 2, 2)) or cast into (float32 for a float64 result, float16 for a float32
    one) is refused naming out, as gelu_forward did; the right out is filled and returned."""
    x = np.arange(24.0).reshape(2, 3, 2, 2) / 10
    bad = [
        (np.zeros((3,) + x.shape), ["out", "(2, 3, 2, 2)", "(3, 2, 3, 2, 2)"]),
        (np.zeros(x.shape, np.float32), ["out", "dtype float64", "float32"]),
        (x.tolist(), ["out", "list"]),
    ]
    read_only = np.zeros(x.shape)
    read_only.flags.writeable = False
    bad.append((read_only, ["out", "read-only"]))
    for out, words in bad:
        with raises_naming(ValueError, *words):
            call(x, out)
    x16 = x.astype(np.float16)  # computes in float32 (compute_dtype): in place would downcast
    with raises_naming(ValueError, "out", "dtype float32", "float16"):
        call(x16, x16)
    expected = call(x, None)  # float64
    out = np.full(x.shape, np.nan)
    assert call(x, out) is out and np.array_equal(out, expected), f"{name}: out= differs from the returned y"
    in_place = x.copy()
    assert call(in_place, in_place) is in_place and np.array_equal(in_place, expected), f"{name}: in place"


def test_cross_entropy_by_hand():
    # two equal logits: softmax = (1/2, 1/2), loss = log 2 whatever the smoothing
    loss = L.cross_entropy_forward(np.zeros((1, 2)), np.array([1]), smoothing=0.3)
    assert math.isclose(loss, math.log(2), rel_tol=1e-15), (
        f"equal logits: loss {loss!r}, expected log 2 = {math.log(2)!r}"
    )
    # logits (0, log 3): p = (1/4, 3/4); label 1, smoothing 0.2 -> q = (0.1, 0.9)
    z = np.array([[0.0, math.log(3)]])
    expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
    loss = L.cross_entropy_forward(z, np.array([1]), smoothing=0.2)
    assert math.isclose(loss, expected, rel_tol=1e-14), f"logits (0, log 3): loss {loss!r}, expected {expected!r}"
    g = L.cross_entropy_backward(z, np.array([1]), smoothing=0.2)
    assert np.allclose(g, [[0.25 - 0.1, 0.75 - 0.9]], rtol=1e-14, atol=1e-15), f"grad {g}"
    # PyTorch's definition: (1-ε)·NLL + ε·mean_k(-log p_k), averaged over the batch
    rng = np.random.default_rng(7)
    z, labels = rng.standard_normal((5, 4)) * 2, rng.integers(0, 4, 5)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    torch_rule = np.mean(0.9 * -logp[np.arange(5), labels] + 0.1 * -logp.mean(axis=1))
    loss = L.cross_entropy_forward(z, labels, smoothing=0.1)
    assert math.isclose(loss, torch_rule, rel_tol=1e-13), (
        f"loss {loss!r}, PyTorch's rule {torch_rule!r}, relative difference {abs(loss - torch_rule) / abs(torch_rule):.3e}"
    )
    # large logits stay finite (log-sum-exp shift)
    loss = L.cross_entropy_forward(np.array([[1000.0, -1000.0]]), np.array([1]))
    assert math.isfinite(loss), f"logits (1000, -1000): loss {loss!r}"


def _cross_entropy_decimal(logits, labels, smoothing):
    """Loss and gradient by PyTorch's rule in 400-digit decimal arithmetic (an exponent
    range far beyond float64's, so no overflow, and digits enough to hold every float64
    difference and 1 + 1e-304 exactly): the independent formulation of the
    extreme-logit test. Each float is converted exactly."""
    import decimal

    with decimal.localcontext() as ctx:
        ctx.prec = 400
        eps = decimal.Decimal(float(smoothing))
        n, k = logits.shape
        losses, grad = [], []
        for row, label in zip(logits.tolist(), labels.tolist()):
            z = [decimal.Decimal(float(v)) for v in row]
            top = max(z)
            tail = sum((v - top).exp() for v in z).ln()  # log Σ exp(z) - max z
            nll = [(top - v) + tail for v in z]  # -log p_k
            losses.append((1 - eps) * nll[label] + eps * sum(nll) / k)
            q = [eps / k + (1 - eps if j == label else 0) for j in range(k)]
            grad.append([float(((-x).exp() - q[j]) / n) for j, x in enumerate(nll)])
        return float(sum(losses) / n), np.array(grad)


@pytest.mark.parametrize(
    "logits, labels, smoothing",
    [
        # z - max overflowed to -Inf: 0·(-Inf) = NaN at ε = 0, the exact loss is 0
        (np.array([[1e308, -1e308]]), [0], 0.0),
        # ε/K·(2e308) = 1e307 at ε = 0.1: finite, though max - z is not
        (np.array([[1e308, -1e308]]), [0], 0.1),
        (np.array([[1e308, -1e308, 1e308], [-1e308, 5.0, -1e308]]), [2, 1], 0.3),
        # float32: 0.1·(4e38)/2 = 2e37 fits float32, but 4e38 did not (Inf before)
        (np.float32([[2e38, -2e38]]), [0], 0.1),
        (np.float32([[3e38, -3e38, 0.0, 0.0]]), [1], 0.0),  # 6e38: finite as a float
        # a tiny loss (e^-700 ≈ 1e-304): log(1 + e^-700) rounds to 0, log1p does not
        (np.array([[0.0, -700.0]]), [0], 0.0),
    ],
    ids=["f64 eps=0", "f64 eps=0.1", "f64 ties", "f32 eps=0.1", "f32 6e38", "tiny loss"],
)
def test_cross_entropy_of_extreme_finite_logits_is_exact(logits, labels, smoothing):
    labels = np.array(labels)
    want_loss, want_grad = _cross_entropy_decimal(logits, labels, smoothing)
    loss = L.cross_entropy_forward(logits, labels, smoothing=smoothing)
    assert math.isfinite(loss) and math.isclose(loss, want_loss, rel_tol=1e-14, abs_tol=0.0), (
        f"loss {loss!r}, exact {want_loss!r}"
    )
    grad = L.cross_entropy_backward(logits, labels, smoothing=smoothing)
    tol = 4 * float(np.finfo(grad.dtype).eps)
    assert grad.dtype == logits.dtype and np.allclose(grad, want_grad, rtol=tol, atol=tol), (
        f"grad {grad} ({grad.dtype}), exact {want_grad} (in {logits.dtype})"
    )


def test_cross_entropy_beyond_float64_is_refused_by_forward_and_backward():
    """The exact loss of logits (1e308, -1e308) with label 1 is 2e308 > the largest
    float64: refused, never returned as Inf; the backward refuses it too (the two agree
    on what is valid), although its gradient would be finite."""
    logits, labels = np.array([[1e308, -1e308]]), np.array([1])
    for name, function in (("forward", L.cross_entropy_forward), ("backward", L.cross_entropy_backward)):
        with raises_naming(ValueError, "too large for float64", "sample 0", "label 1"):
            function(logits, labels, smoothing=0.0)
    # A batch mean that fits: (2e308 + 0)/2 = 1e308 is representable, and returned.
    logits2, labels2 = np.array([[1e308, -1e308], [0.0, -1000.0]]), np.array([1, 0])
    loss = L.cross_entropy_forward(logits2, labels2)
    assert math.isclose(loss, 1e308, rel_tol=1e-15), f"mean of losses 2e308 and ~0: {loss!r}, expected 1e308"


def test_drop_path_scale_statistics_and_determinism():
    rate = 0.3
    scale = L.drop_path_scale(np.random.default_rng(8), 20_000, rate)
    values = set(np.unique(scale).tolist())
    assert values == {0.0, 1.0 / 0.7}, f"drop-path factors {values}"
    kept = float(np.mean(scale > 0))
    sd = math.sqrt(0.7 * 0.3 / 20_000)
    assert abs(kept - 0.7) < 5 * sd, f"kept fraction {kept} vs 0.7 (5 sd = {5 * sd:.4f})"
    assert abs(scale.mean() - 1.0) < 5 * sd / 0.7, "expectation not preserved by 1/(1-rate)"
    again = L.drop_path_scale(np.random.default_rng(8), 20_000, rate)
    assert np.array_equal(scale, again), "same seed gave different masks"
    rng = np.random.default_rng(9)
    state = rng.bit_generator.state
    assert np.array_equal(L.drop_path_scale(rng, 4, 0.0), np.ones(4)), "rate 0 is not the identity"
    assert rng.bit_generator.state == state, "rate 0 consumed random numbers"


# ======================================================================================
# instrumented matrix products
# ======================================================================================
def test_matrix_products_are_counted_with_tags():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 6, 3, 5))
    with count_macs() as counter:
        L.linear_forward(x, rng.standard_normal((4, 6)))
        L.conv1x1_forward(x, rng.standard_normal((4, 6, 1, 1)))
    assert counter.by_tag() == {"linear": 2 * 4 * 6 * 15, "conv1x1": 2 * 4 * 6 * 15}, counter.by_tag()
    with count_macs() as counter:
        L.linear_backward(rng.standard_normal((2, 4, 3, 5)), x, rng.standard_normal((4, 6)))
    # dx and dW each cost N·C_out·C_in·P
    assert counter.by_tag() == {"linear": 2 * (2 * 4 * 6 * 15)}, counter.by_tag()


# ======================================================================================
# float32 computation and dtype rule
# ======================================================================================
def test_float32_in_float32_out_and_promotion():
    rng = np.random.default_rng(11)
    x32 = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    w32 = rng.standard_normal((5, 3)).astype(np.float32)
    dtype = L.linear_forward(x32, w32).dtype
    assert dtype == np.float32, f"linear_forward float32 x float32 returned {dtype}"
    dtype = L.linear_forward(x32, w32.astype(np.float64)).dtype
    assert dtype == np.float64, f"linear_forward float32 x float64 returned {dtype}, expected float64"
    dtype = L.batchnorm_forward(x32, np.ones(3, np.float32), np.zeros(3, np.float32), training=True).dtype
    assert dtype == np.float32, f"batchnorm_forward of float32 returned {dtype}"
    assert L.gelu_forward(np.arange(3)).dtype == np.float64, "integer input computes in float64"


# ======================================================================================
# errors name the argument
# ======================================================================================
@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: L.linear_forward(np.zeros((2, 3)), np.zeros((4, 5))), ValueError, ["weight", "channels"]),
        (lambda: L.linear_forward(np.zeros(3), np.zeros((4, 3))), ValueError, ["x", "2-D"]),
        (lambda: L.linear_forward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(5)), ValueError, ["bias", "(4,)"]),
        (lambda: L.linear_forward(np.zeros((2, 3), bool), np.zeros((4, 3))), TypeError, ["x", "bool"]),
        (lambda: L.linear_forward(np.zeros((2, 3), complex), np.zeros((4, 3))), TypeError, ["x", "complex"]),
        (
            lambda: L.linear_backward(np.zeros((2, 5)), np.zeros((2, 3)), np.zeros((4, 3))),
            ValueError,
            ["grad_y", "(2, 4)"],
        ),
        (
            lambda: L.conv1x1_forward(np.zeros((1, 3, 2, 2)), np.zeros((4, 3, 3, 3))),
            ValueError,
            ["weight", "(out, in, 1, 1)"],
        ),
        (lambda: L.conv1x1_forward(np.zeros((3, 2, 2)), np.zeros((4, 3, 1, 1))), ValueError, ["x", "4-D"]),
        (
            lambda: L.batchnorm_forward(np.zeros((1, 2, 1, 1)), np.ones(2), np.zeros(2), training=True),
            ValueError,
            ["more than 1 value per channel"],
        ),
        (
            lambda: L.batchnorm_forward(np.zeros((2, 2, 2, 2)), np.ones(3), np.zeros(2), training=True),
            ValueError,
            ["weight", "(2,)"],
        ),
        (
            lambda: L.batchnorm_forward(
                np.zeros((2, 2, 2, 2)), np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), training=False, eps=0.0
            ),
            ValueError,
            ["eps", "> 0"],
        ),
        (
            lambda: L.batchnorm_forward(np.zeros((2, 2, 2, 2)), np.ones(2), np.zeros(2), None, None, training=False),
            TypeError,
            ["running_mean"],
        ),
        (
            lambda: L.batchnorm_forward(np.zeros((2, 2, 2, 2)), np.ones(2), np.zeros(2), training="yes"),
            TypeError,
            ["training"],
        ),
        (
            lambda: L.batchnorm_update_running(np.zeros((2, 2, 2, 2)), np.zeros(2), np.ones(2), 1.5),
            TypeError,
            ["num_batches_tracked"],
        ),
        (
            lambda: L.batchnorm_update_running(np.zeros((2, 2, 2, 2)), np.zeros(2), np.ones(2), 0, momentum=2.0),
            ValueError,
            ["momentum"],
        ),
        (
            lambda: L.batchnorm_update_running(np.zeros((2, 2, 2, 2)), np.zeros(3), np.ones(2), 0),
            ValueError,
            ["running_mean", "(2,)"],
        ),
        (
            lambda: L.batchnorm_update_running(np.zeros((1, 2, 1, 1)), np.zeros(2), np.ones(2), 0),
            ValueError,
            ["more than 1 value"],
        ),
        (lambda: L.layernorm_forward(np.zeros((2, 3)), np.ones(4), np.zeros(3)), ValueError, ["weight", "(3,)"]),
        (lambda: L.layernorm_forward(np.zeros((2, 3)), np.ones(3), np.zeros(3), eps=-1.0), ValueError, ["eps"]),
        (lambda: L.gelu_forward(np.zeros(3, complex)), TypeError, ["x", "complex"]),
        (lambda: L.gelu_forward(np.zeros(3), out=np.zeros(4)), ValueError, ["out"]),
        (lambda: L.gelu_backward(np.zeros(4), np.zeros(3)), ValueError, ["grad_y", "(3,)"]),
        (lambda: L.patchify_forward(np.zeros((1, 3, 6, 8))), ValueError, ["multiples of 4", "6x8"]),
        (lambda: L.patchify_forward(np.zeros((1, 3, 8, 8)), patch=0), ValueError, ["patch"]),
        (lambda: L.avgpool_forward(np.zeros((2, 3))), ValueError, ["x", "4-D"]),
        (lambda: L.layer_scale_forward(np.zeros((2, 3, 1, 1)), np.ones(2)), ValueError, ["gamma", "(3,)"]),
        (lambda: L.drop_path_scale(np.random.default_rng(0), 4, 1.0), ValueError, ["rate", "< 1"]),
        (lambda: L.drop_path_scale(None, 4, 0.5), TypeError, ["rng"]),
        (lambda: L.drop_path_scale(np.random.default_rng(0), 0, 0.5), ValueError, ["n"]),
        # An integer dtype truncated 1/(1 - 0.3) to 1; "foo" failed inside NumPy unnamed.
        (lambda: L.drop_path_scale(np.random.default_rng(0), 5, 0.3, dtype=int), TypeError, ["dtype", "int64"]),
        (lambda: L.drop_path_scale(np.random.default_rng(0), 5, 0.0, dtype=np.int8), TypeError, ["dtype", "int8"]),
        (
            lambda: L.drop_path_scale(np.random.default_rng(0), 5, 0.3, dtype="foo"),
            TypeError,
            ["dtype must be a floating NumPy dtype", "'foo'"],
        ),
        (lambda: L.drop_path_forward(np.zeros((2, 3)), np.ones(3)), ValueError, ["scale", "(2,)"]),
        (lambda: L.residual_add_forward(np.zeros((2, 3)), np.zeros((2, 4))), ValueError, ["branch"]),
        (lambda: L.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 3])), ValueError, ["labels[1]", "[0, 3)"]),
        (lambda: L.cross_entropy_forward(np.zeros((2, 3)), np.array([0.0, 1.0])), TypeError, ["labels", "integer"]),
        (lambda: L.cross_entropy_forward(np.zeros((2, 3)), np.array([0])), ValueError, ["labels", "(2,)"]),
        (lambda: L.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 1]), smoothing=1.5), ValueError, ["smoothing"]),
        (lambda: L.cross_entropy_forward(np.zeros(3), np.array([0])), ValueError, ["logits", "2-D"]),
        # A NaN loss is never an answer; -Inf (a masked class) would give 0·(-Inf) = NaN.
        (
            lambda: L.cross_entropy_forward(np.array([[0.0, np.nan]]), np.array([0])),
            ValueError,
            ["logits[0, 1]", "finite"],
        ),
        (
            lambda: L.cross_entropy_backward(np.array([[np.inf, 0.0]]), np.array([0])),
            ValueError,
            ["logits[0, 0]", "finite"],
        ),
        (
            lambda: L.cross_entropy_forward(np.array([[0.0, -np.inf]]), np.array([0])),
            ValueError,
            ["logits[0, 1]", "finite"],
        ),
        (lambda: L.check_targets(np.array([[0, 1]]), 3, 0.0), ValueError, ["labels", "(N,)"]),
        (  # the masked label 7 would be trained on
            lambda: L.check_targets(np.ma.masked_array([0, 7], mask=[False, True]), 3, 0.0),
            TypeError,
            ["labels is a masked array"],
        ),
    ],
)
def test_errors_name_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"error message {message!r} does not mention {word!r}"


def test_gelu_float32_coefficients_come_from_the_documented_fit():
    """docs/model.md lists the fit that produced GELU_FLOAT32_COEFFICIENTS; re-run it."""

    page = (REPO / "docs" / "model.md").read_text(encoding="utf-8")
    listing = re.findall(r"```python\n(import numpy as np\nfrom scipy import linalg, special\n.*?)```", page, re.S)
    assert len(listing) == 1, "the fitting listing was not found in docs/model.md"
    namespace = {}
    exec(listing[0], namespace)
    fitted = namespace["fit_gelu32"]()
    stored = np.array(L.GELU_FLOAT32_COEFFICIENTS)
    rel = np.abs(fitted - stored) / np.abs(stored)
    assert rel.max() < 1e-4, f"coefficients differ from the documented fit by {rel.max():.2e} (index {rel.argmax()})"


# --------------------------------------------------------------------------------------
# hostile input (issue "Verdicts that cannot be fooled", section 5)
# --------------------------------------------------------------------------------------
def test_negative_or_nonfinite_running_variance_is_refused():
    x, w, b, m = np.ones((1, 2, 2, 2)), np.ones(2), np.zeros(2), np.zeros(2)
    with raises_naming(ValueError, "running_var", ">= 0", "-1.0"):
        L.batchnorm_forward(x, w, b, m, np.array([1.0, -1.0]), training=False)
    with raises_naming(ValueError, "running_var", ">= 0"):
        L.batchnorm_backward(x, x, w, b, m, np.array([-1.0, 1.0]), training=False)
    with raises_naming(ValueError, "running_mean", "NaN"):
        L.batchnorm_forward(x, w, b, np.array([np.nan, 0.0]), np.ones(2), training=False)
    with raises_naming(ValueError, "var", ">= 0"):
        L.batchnorm_affine(w, b, m, np.array([-1.0, 1.0]))
    # training mode ignores the running statistics, as before
    y = L.batchnorm_forward(np.arange(8.0).reshape(1, 2, 2, 2), w, b, None, None, training=True)
    assert np.isfinite(y).all(), f"training-mode batchnorm without running statistics: y {y.ravel()}"


def test_batchnorm_update_running_refuses_nonfinite_x_and_overflowing_count():
    x = np.ones((2, 2, 2, 2))
    x[0, 0, 0, 0] = np.nan
    with raises_naming(ValueError, "x contains NaN or Inf"):
        L.batchnorm_update_running(x, np.zeros(2), np.ones(2), 0)
    with raises_naming(ValueError, "num_batches_tracked", "int64"):
        L.batchnorm_update_running(np.ones((2, 2, 2, 2)), np.zeros(2), np.ones(2), np.int64(2**63 - 1))


def test_layer_averages_over_empty_axes_are_refused():
    with raises_naming(ValueError, "x", "(1, 1, 0, 3)", "average"):
        L.avgpool_forward(np.ones((1, 1, 0, 3)))
    with raises_naming(ValueError, "x", "average"):
        L.avgpool_backward(np.ones((1, 1)), np.ones((1, 1, 3, 0)))
    with raises_naming(ValueError, "x", "LayerNorm"):
        L.layernorm_forward(np.ones((2, 0)), np.ones(0), np.ones(0))
    with raises_naming(ValueError, "x", "batch statistic"):
        L.batchnorm_stats(np.ones((0, 2, 1, 1)))


@pytest.mark.parametrize("shape", [(0, 6, 2, 2), (0, 6), (0, 6, 5), (0, 0, 2, 2)], ids=str)
def test_linear_of_an_empty_batch_is_empty_and_its_weight_gradient_zero(shape):
    """N = 0 samples: y is (0, C_out, *S), dx is x's shape, and dW = Σ_n dy xᵀ, db = Σ_n dy
    are empty sums, zero (as every other layer of the module returns for N = 0). The
    reshape by -1 failed inside NumPy ("cannot reshape array of size 0")."""
    c_in = shape[1]
    weight, bias = np.ones((3, c_in)), np.ones(3)
    x = np.zeros(shape)
    y = L.linear_forward(x, weight, bias)
    assert y.shape == (0, 3, *shape[2:]) and y.dtype == np.float64, (y.shape, y.dtype)
    grad_x, grad_w, grad_b = L.linear_backward(np.zeros(y.shape), x, weight, bias)
    assert grad_x.shape == shape, grad_x.shape
    assert np.array_equal(grad_w, np.zeros((3, c_in))) and np.array_equal(grad_b, np.zeros(3)), (grad_w, grad_b)
    x32 = x.astype(np.float32)
    dtype = L.linear_forward(x32, weight.astype(np.float32)).dtype
    assert dtype == np.float32, f"linear_forward of an empty float32 batch returned {dtype}"
    if len(shape) == 4:
        y = L.conv1x1_forward(x, weight[:, :, None, None])
        assert y.shape == (0, 3, *shape[2:]), y.shape
        grad_x, grad_w = L.conv1x1_backward(np.zeros(y.shape), x, weight[:, :, None, None])
        assert grad_x.shape == shape and np.array_equal(grad_w, np.zeros((3, c_in, 1, 1))), (grad_x.shape, grad_w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_at_infinity_takes_its_limits_in_both_dtypes(dtype):
    """GELU(-inf) = 0 and GELU(+inf) = +inf; the derivative tends to 0 and 1 (float64 gave
    NaN for -inf·Φ(-inf), both dtypes NaN for ±inf·φ(±inf)), without warnings; NaN stays NaN."""
    import warnings

    x = np.array([-np.inf, np.inf, np.nan], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = L.gelu_forward(x)
        (g,) = L.gelu_backward(np.array([3.0, 3.0, 3.0], dtype=dtype), x)
    assert y[0] == 0 and y[1] == np.inf and np.isnan(y[2]), f"{dtype.__name__} GELU(-inf, inf, nan) = {y}"
    assert g[0] == 0 and g[1] == 3 and np.isnan(g[2]), f"{dtype.__name__} dGELU at (-inf, inf, nan), dy 3: {g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_in_place_at_minus_infinity_and_on_zero_d_input(dtype):
    """In place, GELU(-inf) is still 0 (float64 read -inf back from the overwritten array
    and wrote NaN); 0-d input keeps its shape both ways (float64 raised TypeError, the
    float32 backward returned shape (1,))."""
    x = np.array([-np.inf, -1.0, np.inf], dtype=dtype)
    expected = L.gelu_forward(x.copy())
    got = L.gelu_forward(x, out=x)
    assert got is x and np.array_equal(x, expected), f"{dtype.__name__} in place: {x}, out of place {expected}"
    for value in (dtype(1.5), np.array(-np.inf, dtype=dtype)):
        y = L.gelu_forward(value)
        (g,) = L.gelu_backward(np.ones((), dtype=dtype), value)
        want_y = L.gelu_forward(np.reshape(value, 1))[0]
        want_g = L.gelu_backward(np.ones(1, dtype=dtype), np.reshape(value, 1))[0][0]
        assert y.shape == () and g.shape == (), f"{dtype.__name__} 0-d: shapes {y.shape}, {g.shape}"
        assert y == want_y and g == want_g, f"{dtype.__name__} 0-d at {value}: {y}, {g} against {want_y}, {want_g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_into_an_out_that_partly_overlaps_x(dtype):
    """``out`` shifted one value against ``x`` in the same buffer: the result is that of
    a separate ``out`` (the float32 path works block by block and read values an earlier
    block had overwritten: 1.7e-4 off beyond the first block)."""
    size = 3 * L._GELU_CHUNK + 7
    for x_part, out_part in ((np.s_[:-1], np.s_[1:]), (np.s_[1:], np.s_[:-1])):
        buffer = np.linspace(-5, 5, size).astype(dtype)
        expected = L.gelu_forward(buffer[x_part].copy())
        got = L.gelu_forward(buffer[x_part], out=buffer[out_part])
        worst = np.max(np.abs(got - expected))
        assert np.array_equal(got, expected), f"{dtype.__name__}, x {x_part}: worst difference {worst:.3g}"


@pytest.mark.parametrize("dtype, big", [(np.float32, 1e20), (np.float64, 1e160)])
def test_a_variance_that_overflows_from_finite_x_is_refused_not_zeroed(dtype, big):
    """Finite x whose squared deviations overflow: BatchNorm (training) and LayerNorm
    returned all zeros (1/sqrt(inf)) and the running update an infinite variance, each
    silently. Now a ValueError naming the overflow, without a RuntimeWarning first;
    NaN in x still propagates as in every layer."""
    import warnings

    x = np.array([big, -big, 0.0, big / 2], dtype=dtype).reshape(4, 1, 1, 1)
    one, zero = np.ones(1, dtype), np.zeros(1, dtype)
    calls = {
        "batchnorm_forward": lambda: L.batchnorm_forward(x, one, zero, training=True),
        "batchnorm_backward": lambda: L.batchnorm_backward(np.ones_like(x), x, one, zero, training=True),
        "batchnorm_update_running": lambda: L.batchnorm_update_running(x, zero, one, 0),
        "layernorm_forward": lambda: L.layernorm_forward(x.reshape(1, 4), np.ones(4, dtype), np.zeros(4, dtype)),
        "layernorm_backward": lambda: L.layernorm_backward(
            np.ones((1, 4), dtype), x.reshape(1, 4), np.ones(4, dtype), np.zeros(4, dtype)
        ),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, call in calls.items():
            with pytest.raises(ValueError, match="overflowed") as info:
                call()
            assert dtype.__name__ in str(info.value), (
                f"{name}: the message does not name {dtype.__name__}: {info.value}"
            )
        finite = x / big  # the same shape of data, well inside the range: normalised as usual
        y = L.batchnorm_forward(finite, one, zero, training=True)
        assert np.all(np.isfinite(y)) and np.any(y != 0), f"{dtype.__name__}: ordinary input gave {y.ravel()}"
    with_nan = np.array([np.nan, 1.0, 2.0, 3.0], dtype=dtype).reshape(4, 1, 1, 1)
    with np.errstate(invalid="ignore"):
        y = L.batchnorm_forward(with_nan, one, zero, training=True)
    assert np.isnan(y).all(), f"NaN in x should propagate, got {y.ravel()}"


def test_a_running_update_that_overflows_is_refused():
    """Batch and running variance each finite, their update beyond float32 (from ``x`` the
    sum of squares overflows first: only given statistics get this far)."""
    big = np.full(1, 3.0e38, dtype=np.float32)
    zero = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="running statistics overflow float32"):
        L.batchnorm_running_from_stats(zero, big, 2, zero, big, 0, momentum=0.5)
