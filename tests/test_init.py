"""NeoInit (SPEC 6): the skewed identity written out by hand, the noise checked statistically.

Every expected skewed identity below is typed in from the SPEC text (step =
Python's round, halves to even; ones in blocks of ``step``; columns (tall) or rows
(wide) normalised to sum 1). The noise is checked against its distribution,
``G / sqrt(rows·cols)`` with ``G`` standard normal, with tolerances from the sampling
distribution of the estimators (5 standard errors; the seeds are fixed, so these
tests are deterministic, and 5 standard errors leave a wide margin).
"""

import numpy as np
import pytest
from support.hostile import raises_naming
from support.neo_init import SPECS, check_standard_normal

from neocell_ref import neo_init, neocell_forward, skewed_identity
from neocell_ref.spec import GroupSpec, parse_kernel_code

H, T, Q = 1 / 2, 1 / 3, 1 / 4

HAND = {
    # square: the identity
    (3, 3): np.eye(3),
    (1, 1): [[1]],
    # tall, step = round(4/2) = 2
    (4, 2): [[H, 0], [H, 0], [0, H], [0, H]],
    # wide: the transpose rule, step = round(4/2) = 2, rows normalised
    (2, 4): [[H, H, 0, 0], [0, 0, H, H]],
    # step = round(2.5) = 2 (half to even); row 4 is past the last step and stays zero
    (5, 2): [[H, 0], [H, 0], [0, H], [0, H], [0, 0]],
    # step = round(3.5) = 4; the second column is cut at n = 7 and holds 3 ones -> 1/3
    (7, 2): [[Q, 0], [Q, 0], [Q, 0], [Q, 0], [0, T], [0, T], [0, T]],
    # step = round(4.5) = 4 (half to even), row 8 stays zero
    (9, 2): [[Q, 0], [Q, 0], [Q, 0], [Q, 0], [0, Q], [0, Q], [0, Q], [0, Q], [0, 0]],
    # step = round(1.5) = 2: columns 0..2 take two rows each, column 3 would start at
    # row 6 = n and gets nothing. The official code divides 0 by 0 there (NaN); the
    # reference leaves the column zero (docs/semantics.md).
    (6, 4): [[H, 0, 0, 0], [H, 0, 0, 0], [0, H, 0, 0], [0, H, 0, 0], [0, 0, H, 0], [0, 0, H, 0]],
    # the wide twin of S(6, 4): row 3 empty -> zero
    (4, 6): [[H, H, 0, 0, 0, 0], [0, 0, H, H, 0, 0], [0, 0, 0, 0, H, H], [0, 0, 0, 0, 0, 0]],
    # step = round(1.5) = 2: column 1 keeps a single row -> 1
    (3, 2): [[H, 0], [H, 0], [0, 1]],
    # step = round(5/3) = 2: column 2 keeps only row 4
    (5, 3): [[H, 0, 0], [H, 0, 0], [0, H, 0], [0, H, 0], [0, 0, 1]],
    # the 2 -> 1 down-sampling kernels: A = S(1, 2), B = S(2, 1): 2x2 average pooling
    (1, 2): [[H, H]],
    (2, 1): [[H], [H]],
    (1, 3): [[T, T, T]],
    (3, 1): [[T], [T], [T]],
}


@pytest.mark.parametrize("shape", list(HAND), ids=[f"S{r}x{c}" for r, c in HAND])
def test_skewed_identity_hand_written(shape):
    expected = np.array(HAND[shape], dtype=float)
    got = skewed_identity(*shape)
    assert got.shape == shape and got.dtype == np.float64, f"S{shape}: shape {got.shape} dtype {got.dtype}"
    assert np.all(np.isfinite(got)), f"S{shape} contains NaN/Inf:\n{got}"
    assert np.allclose(got, expected, rtol=0, atol=1e-15), f"S{shape}:\n{got}\nexpected\n{expected}"


def test_empty_column_is_zero_not_nan():
    """S(6, 4): the official code gives a NaN column here; the reference gives zeros."""
    s = skewed_identity(6, 4)
    assert not np.isnan(s).any(), f"NaN in S(6, 4):\n{s}"
    assert np.array_equal(s[:, 3], np.zeros(6)), f"column 3 of S(6, 4) is {s[:, 3]}, expected zeros"
    assert np.array_equal(s.sum(axis=0), [1.0, 1.0, 1.0, 0.0]), f"column sums {s.sum(axis=0)}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_skewed_identity_dtype(dtype):
    got = skewed_identity(7, 2, dtype=dtype)
    assert got.dtype == dtype, f"dtype {got.dtype}, expected {np.dtype(dtype)}"
    assert np.array_equal(got, np.array(HAND[(7, 2)], dtype=dtype)), f"S(7, 2) in {np.dtype(dtype)}:\n{got}"


@pytest.mark.parametrize(
    "args, exc, fragments",
    [
        ((0, 3), ValueError, ["n_rows", "0"]),
        ((3, -1), ValueError, ["n_cols", "-1"]),
        ((2.0, 3), TypeError, ["n_rows", "2.0"]),
        ((3, True), TypeError, ["n_cols", "True"]),
        (("3", 3), TypeError, ["n_rows", "'3'"]),
        ((4, 2, np.int64), TypeError, ["dtype", "int64"]),
        ((4, 2, np.complex128), TypeError, ["dtype", "complex128"]),
        # NumPy's own "data type 'foo' not understood" named no argument.
        ((4, 2, "foo"), TypeError, ["dtype must be a floating NumPy dtype", "'foo'"]),
        ((4, 2, None), TypeError, ["dtype", "None"]),  # not NumPy's default float64
    ],
)
def test_skewed_identity_errors(args, exc, fragments):
    with pytest.raises(exc) as info:
        skewed_identity(*args)
    for fragment in fragments:
        assert fragment in str(info.value), f"message {str(info.value)!r} does not mention {fragment!r}"


# ======================================================================================
# neo_init
# ======================================================================================


def test_without_noise_neo_init_is_the_skewed_identity():
    specs = [
        {"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 3},
        {"kernel_a": 4, "kernel_b": 2, "channels": 2},
    ]
    wa, wb = neo_init(specs, np.random.default_rng(0), noise_scale=0.0)
    assert np.array_equal(wa[0], np.broadcast_to([[H, H]], (3, 1, 2))), f"A of 2->1: {wa[0]}"
    assert np.array_equal(wb[0], np.broadcast_to([[H], [H]], (3, 2, 1))), f"B of 2->1: {wb[0]}"
    assert np.array_equal(wa[1], np.broadcast_to(np.eye(4), (2, 4, 4))), "A of kernel 4 is not the identity"
    assert np.array_equal(wb[1], np.broadcast_to(np.eye(2), (2, 2, 2))), "B of kernel 2 is not the identity"


def test_noise_free_down_sampling_layer_is_average_pooling():
    """SPEC 6: 'the 2 -> 1 down-sampling kernels start as 2x2 average pooling' (mean by reshape)."""
    specs = [{"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 2}]
    wa, wb = neo_init(specs, np.random.default_rng(0), noise_scale=0.0)
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 6))
    y = neocell_forward(x, wa, wb, specs)
    expected = x.reshape(1, 2, 2, 2, 3, 2).mean(axis=(3, 5))
    assert np.allclose(y, expected, rtol=1e-14, atol=1e-15), f"max diff {np.abs(y - expected).max():.3e}"


@pytest.mark.parametrize("noise_scale", [1.0, 0.25])
def test_noise_scale_is_one_over_sqrt_fan(noise_scale):
    """A - S(h_out, h_in) ~ noise_scale · N(0, 1/(h_in·h_out)); B likewise with w_in·w_out."""
    wa, wb = neo_init(SPECS, np.random.default_rng(2024), noise_scale=noise_scale)
    g = GroupSpec(4000, 5, 3, 2, 6)
    check_standard_normal(wa[0] - skewed_identity(3, 5), noise_scale / np.sqrt(15), "A 5->3")
    check_standard_normal(wb[0] - skewed_identity(2, 6), noise_scale / np.sqrt(12), "B 2->6")
    check_standard_normal(wa[1] - np.eye(4), noise_scale / 4, "A kernel 4")
    check_standard_normal(wb[1] - np.eye(4), noise_scale / 4, "B kernel 4")
    assert wa[0].shape == g.shape_a and wb[0].shape == g.shape_b, f"shapes {wa[0].shape}, {wb[0].shape}"


def test_noise_is_independent_across_entries():
    """Neighbouring entries and the A/B pair are uncorrelated (5 standard errors of a correlation)."""
    wa, wb = neo_init(SPECS[1:], np.random.default_rng(7))
    na = (wa[0] - np.eye(4)).reshape(3000, -1)
    nb = (wb[0] - np.eye(4)).reshape(3000, -1)
    bound = 5 / np.sqrt(3000)
    for name, u, v in (
        ("A[0,0] vs A[0,1]", na[:, 0], na[:, 1]),
        ("A[0,0] vs B[0,0]", na[:, 0], nb[:, 0]),
        ("channel c vs c+1", na[:-1, 5], na[1:, 5]),
    ):
        r = np.corrcoef(u, v)[0, 1]
        assert abs(r) <= bound, f"correlation {name} = {r:.4f} exceeds {bound:.4f}"


def test_seeded_calls_are_reproducible():
    specs = [{"kernel": 7, "channels": 3, "shift": 1}, {"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 2}]
    first = neo_init(specs, np.random.default_rng(11))
    second = neo_init(specs, np.random.default_rng(11))
    other = neo_init(specs, np.random.default_rng(12))
    for a, b, c in zip(first[0] + first[1], second[0] + second[1], other[0] + other[1]):
        assert np.array_equal(a, b), "the same seed gave different weights"
        assert not np.array_equal(a, c), "different seeds gave identical weights"


def test_float32_dtype():
    specs = [{"kernel": 4, "channels": 2}, {"h_in": 2, "h_out": 1, "w_in": 1, "w_out": 3, "channels": 1}]
    wa32, wb32 = neo_init(specs, np.random.default_rng(5), dtype=np.float32)
    wa64, wb64 = neo_init(specs, np.random.default_rng(5), dtype=np.float64)
    for w32, w64 in zip(wa32 + wb32, wa64 + wb64):
        assert w32.dtype == np.float32, f"dtype {w32.dtype}"
        assert w64.dtype == np.float64, f"dtype {w64.dtype}"
        # the same draws, rounded once to float32
        assert np.array_equal(w32, w64.astype(np.float32)), "float32 weights are not the rounded float64 ones"


@pytest.mark.parametrize(
    "kwargs, exc, fragments",
    [
        (dict(rng=None), TypeError, ["rng", "None"]),
        (dict(rng=0), TypeError, ["rng", "0"]),
        (dict(rng=np.random.RandomState(0)), TypeError, ["rng", "RandomState"]),
        (dict(noise_scale=float("nan")), ValueError, ["noise_scale", "nan"]),
        (dict(noise_scale=float("inf")), ValueError, ["noise_scale", "inf"]),
        (dict(noise_scale=-0.5), ValueError, ["noise_scale", "-0.5"]),
        (dict(noise_scale="1"), TypeError, ["noise_scale", "'1'"]),
        (dict(noise_scale=True), TypeError, ["noise_scale", "True"]),
        (dict(noise_scale=None), TypeError, ["noise_scale", "None"]),
        (dict(dtype=np.int32), TypeError, ["dtype", "int32"]),
        (dict(dtype=np.float16), TypeError, ["dtype", "float16"]),
        (dict(dtype="foo"), TypeError, ["dtype must be float32 or float64", "'foo'"]),
    ],
)
def test_neo_init_errors(kwargs, exc, fragments):
    args = dict(rng=np.random.default_rng(0)) | kwargs
    rng = args.pop("rng")
    with pytest.raises(exc) as info:
        neo_init([{"kernel": 4, "channels": 2}], rng, **args)
    for fragment in fragments:
        assert fragment in str(info.value), f"message {str(info.value)!r} does not mention {fragment!r}"


@pytest.mark.parametrize(
    "specs, exc, fragments",
    [
        ([{"kernel": 0, "channels": 2}], ValueError, ["kernel", "0"]),
        ([{"kernel": 4, "channels": 2, "shift": 4}], ValueError, ["shift", "4"]),
        ({"kernel": 4, "channels": 2}, TypeError, ["list"]),
        ([], ValueError, ["empty"]),
    ],
)
def test_neo_init_bad_specs(specs, exc, fragments):
    with pytest.raises(exc) as info:
        neo_init(specs, np.random.default_rng(0))
    for fragment in fragments:
        assert fragment in str(info.value), f"message {str(info.value)!r} does not mention {fragment!r}"


# --------------------------------------------------------------------------------------
# hostile input (issue "Verdicts that cannot be fooled", section 5)
# --------------------------------------------------------------------------------------
def test_neo_init_refuses_noise_that_overflows_float32():
    specs = parse_kernel_code("3", channels=2)
    with raises_naming(ValueError, "noise_scale", "weights_a[0]", "float32"):
        neo_init(specs, np.random.default_rng(0), dtype=np.float32, noise_scale=1e300)
    with raises_naming(ValueError, "noise_scale", "Inf"):
        neo_init(parse_kernel_code("1", channels=64), np.random.default_rng(0), noise_scale=1.7e308)
    wa, _ = neo_init(specs, np.random.default_rng(0), dtype=np.float32, noise_scale=1e30)
    assert np.isfinite(wa[0]).all(), (
        f"float32 weights_a[0] {wa[0].shape} with noise_scale 1e30: {np.count_nonzero(~np.isfinite(wa[0]))}"
        f" non-finite entries, first at {np.argwhere(~np.isfinite(wa[0]))[:3].tolist()}"
    )
