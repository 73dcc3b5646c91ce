"""Group specifications (SPEC sections 2 and 4): parsing, sub-groups, sizes, and every error.

Expected values are written by hand from the SPEC text, never produced by the code
under test. Every error must be a ValueError or TypeError whose message names the
offending field and value, raised before any arithmetic (checked by counting the
matrix products executed while the error is raised).
"""

import itertools
import math
import time
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.hostile import raises_naming
from support.layer_counts import FAST_SECONDS

from neocell_ref import neocell_backward, neocell_forward
from neocell_ref.expansion import expand
from neocell_ref.instrument import count_macs
from neocell_ref.spec import (
    MAX_GROUPS,
    GroupSpec,
    channel_shifts,
    check_input_size,
    output_size,
    parse_group,
    parse_kernel_code,
    parse_specs,
    shift_segments,
)
from neocell_ref.verify.testing import group_specs, kernel_codes

METHODS = ("loop", "patchwise", "blockdiag")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _weights(specs, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    groups = parse_specs(specs)
    return (
        [rng.standard_normal(g.shape_a).astype(dtype) for g in groups],
        [rng.standard_normal(g.shape_b).astype(dtype) for g in groups],
    )


@contextmanager
def raises_before_arithmetic(exc, *fragments):
    """Expect ``exc`` whose message contains every fragment, with no matrix product executed.

    Fragments are literal substrings (the field name and the offending value).
    """
    with count_macs() as counter:
        with pytest.raises(exc) as info:
            yield info
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"error message {message!r} does not mention {fragment!r}"
    assert counter.calls == [], (
        f"{len(counter.calls)} matrix product(s) ran before the error {message!r}: {counter.calls[:3]}"
    )


K4 = [{"kernel": 4, "channels": 2}]


# ======================================================================================
# parsing: the three dict forms and GroupSpec agree
# ======================================================================================
@pytest.mark.parametrize(
    "group, expected",
    [
        ({"kernel": 5, "channels": 3, "shift": 2}, GroupSpec(3, 5, 5, 5, 5, 2, 2)),
        ({"kernel_a": 5, "kernel_b": 5, "channels": 3, "shift": 2}, GroupSpec(3, 5, 5, 5, 5, 2, 2)),
        (
            {"h_in": 5, "h_out": 5, "w_in": 5, "w_out": 5, "channels": 3, "shift_a": 2, "shift_b": 2},
            GroupSpec(3, 5, 5, 5, 5, 2, 2),
        ),
        ({"kernel": 7, "channels": 1}, GroupSpec(1, 7, 7, 7, 7, 0, 0)),  # missing shift = 0
        ({"kernel_a": 4, "kernel_b": 7, "channels": 2, "shift_a": 1, "shift_b": 3}, GroupSpec(2, 4, 4, 7, 7, 1, 3)),
        (
            {"h_in": 2, "h_out": 1, "w_in": 1, "w_out": 3, "channels": 6},
            GroupSpec(channels=6, h_in=2, h_out=1, w_in=1, w_out=3),
        ),
        ({"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 6, "shift": 0}, GroupSpec(6, 2, 1, 2, 1, 0, 0)),
        ({"kernel": np.int64(4), "channels": np.int32(2), "shift": np.int16(1)}, GroupSpec(2, 4, 4, 4, 4, 1, 1)),
    ],
    ids=[
        "kernel",
        "kernel_a_b",
        "general",
        "no_shift",
        "kernel_a_b_shift_pair",
        "general_resample",
        "general_shift0",
        "numpy_ints",
    ],
)
def test_dict_forms_parse_to_hand_written_groupspec(group, expected):
    got = parse_group(group)
    assert got == expected, f"parse_group({group!r}) = {got!r}, expected {expected!r}"
    assert parse_group(got) is got, "a GroupSpec must pass through parse_group unchanged"
    assert parse_group(got.to_dict()) == got, f"to_dict() of {got!r} does not round-trip"


def test_equivalent_forms_give_identical_results():
    """The three forms of one group compute the same operator (not just the same object)."""
    forms = [
        [{"kernel": 3, "channels": 4, "shift": 1}],
        [{"kernel_a": 3, "kernel_b": 3, "channels": 4, "shift_a": 1, "shift_b": 1}],
        [{"h_in": 3, "h_out": 3, "w_in": 3, "w_out": 3, "channels": 4, "shift": 1}],
        [GroupSpec(4, 3, 3, 3, 3, 1, 1)],
    ]
    wa, wb = _weights(forms[0])
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 6))
    ref = neocell_forward(x, wa, wb, forms[0])
    for specs in forms[1:]:
        got = neocell_forward(x, wa, wb, specs)
        assert np.array_equal(got, ref), f"{specs!r} computes differently from {forms[0]!r}"


@given(data=st.data())
def test_group_specs_strategy_draws_valid_groups_in_every_form(data):
    form = data.draw(st.sampled_from(["kernel", "kernel_a/kernel_b", "h_in/h_out/w_in/w_out"]), label="form")
    group = data.draw(group_specs(form=form), label="group")
    first_key = {"kernel": "kernel", "kernel_a/kernel_b": "kernel_a", "h_in/h_out/w_in/w_out": "h_in"}[form]
    assert isinstance(group, dict) and first_key in group, f"form {form!r} not honoured: {group!r}"
    spec = parse_group(group)  # must not raise
    assert parse_group(spec.to_dict()) == spec, f"round trip failed for {group!r}"


def test_parse_specs_accepts_lists_of_mixed_representations():
    specs = parse_specs([{"kernel": 4, "channels": 2}, GroupSpec(3, 7, 7, 7, 7)])
    assert specs == (GroupSpec(2, 4, 4, 4, 4), GroupSpec(3, 7, 7, 7, 7)), f"got {specs!r}"


def test_parse_specs_refuses_an_endless_iterable_after_max_groups_items():
    """``itertools.repeat(group)`` looped forever; now MAX_GROUPS + 1 items are read, no
    more (the generator below fails the test if asked for one more), and refused."""
    group = {"kernel": 3, "channels": 1}

    def endless():
        for _ in range(MAX_GROUPS + 1):
            yield group
        raise AssertionError(f"parse_specs read more than MAX_GROUPS + 1 = {MAX_GROUPS + 1} groups")

    with raises_before_arithmetic(ValueError, "specs", "more than MAX_GROUPS", f"{MAX_GROUPS:,}"):
        parse_specs(endless())
    with raises_before_arithmetic(ValueError, "specs", "more than MAX_GROUPS", "repeat"):
        parse_specs(itertools.repeat(group))
    with raises_before_arithmetic(ValueError, "specs", f"list of {MAX_GROUPS + 1:,} groups"):
        parse_specs([GroupSpec(1, 3, 3, 3, 3)] * (MAX_GROUPS + 1))
    n = len(parse_specs([GroupSpec(1, 3, 3, 3, 3)] * MAX_GROUPS))  # the cap itself is accepted
    assert n == MAX_GROUPS, f"a list of MAX_GROUPS = {MAX_GROUPS} groups parsed to {n} groups"
    got = parse_specs(iter([group, group]))  # a finite iterator still reads
    assert got == (GroupSpec(1, 3, 3, 3, 3),) * 2, f"iterator of two groups parsed to {got}"


def test_parse_specs_reads_the_sequence_protocol_and_keeps_a_generators_error():
    """What iter() accepts is read (an object with only __getitem__ and __len__ was
    refused when the bound came in), and a TypeError raised inside the caller's
    generator propagates as it is, not as "specs must be a list"."""

    class Groups:
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    group = {"kernel": 3, "channels": 1}
    got = parse_specs(Groups([group, group]))
    assert got == (GroupSpec(1, 3, 3, 3, 3),) * 2, f"sequence-like of two groups parsed to {got}"

    def broken():
        yield group
        raise TypeError("a bug in the caller's generator")

    with pytest.raises(TypeError, match="a bug in the caller's generator"):
        parse_specs(broken())


def test_parse_specs_refuses_unordered_groups():
    """A set of groups has no group order (which group's channels come first)."""
    with raises_before_arithmetic(TypeError, "specs must be a list of group specs", "set"):
        parse_specs({GroupSpec(1, 3, 3, 3, 3), GroupSpec(2, 4, 4, 4, 4)})


# ======================================================================================
# kernel codes
# ======================================================================================
@pytest.mark.parametrize(
    "code, channels, shift, expected",
    [
        ("7", 5, 0, [GroupSpec(5, 7, 7, 7, 7)]),
        ("4+7", 10, 1, [GroupSpec(5, 4, 4, 4, 4, 1, 1), GroupSpec(5, 7, 7, 7, 7, 1, 1)]),
        # 9 // 2 = 4 channels each, the remainder goes to the last group: 4 and 5
        ("4+7", 9, 1, [GroupSpec(4, 4, 4, 4, 4, 1, 1), GroupSpec(5, 7, 7, 7, 7, 1, 1)]),
        ("4+7", 3, 0, [GroupSpec(1, 4, 4, 4, 4), GroupSpec(2, 7, 7, 7, 7)]),
        # the code's order is kept: 7 first here
        ("7+4", 5, 0, [GroupSpec(2, 7, 7, 7, 7), GroupSpec(3, 4, 4, 4, 4)]),
        # 10 // 3 = 3, last takes 10 - 2*3 = 4
        (
            "3+5+7",
            10,
            2,
            [GroupSpec(3, 3, 3, 3, 3, 2, 2), GroupSpec(3, 5, 5, 5, 5, 2, 2), GroupSpec(4, 7, 7, 7, 7, 2, 2)],
        ),
        ("4+4", 2, 0, [GroupSpec(1, 4, 4, 4, 4), GroupSpec(1, 4, 4, 4, 4)]),
        (" 4 + 7 ", 2, 0, [GroupSpec(1, 4, 4, 4, 4), GroupSpec(1, 7, 7, 7, 7)]),
    ],
)
def test_parse_kernel_code_hand_written(code, channels, shift, expected):
    got = parse_kernel_code(code, channels, shift)
    assert got == expected, f"parse_kernel_code({code!r}, {channels}, {shift}) = {got!r}, expected {expected!r}"


@given(data=st.data())
def test_parse_kernel_code_split_rule(data):
    """D // m channels per group in code order, remainder in the last group (SPEC 2)."""
    code = data.draw(kernel_codes(), label="code")
    sizes = [int(k) for k in code.split("+")]
    m = len(sizes)
    channels = data.draw(st.integers(m, 40), label="channels")
    groups = parse_kernel_code(code, channels)
    expected = [channels // m] * (m - 1) + [channels - (m - 1) * (channels // m)]
    assert [g.channels for g in groups] == expected, f"{code!r}, D={channels}: channels {groups!r}"
    assert [g.h_in for g in groups] == sizes, f"{code!r}: kernel order {groups!r}"
    assert all(g.h_in == g.h_out == g.w_in == g.w_out for g in groups), f"{code!r}: not square {groups!r}"


@pytest.mark.parametrize(
    "code, channels, fragments",
    [
        ("4+7", 1, ["'4+7'", "channels=1"]),  # one group would get no channels
        ("3+5+7", 2, ["'3+5+7'", "channels=2"]),
        ("", 4, ["''"]),
        ("4+", 4, ["'4+'"]),
        ("+7", 4, ["'+7'"]),
        ("4++7", 4, ["'4++7'"]),
        ("a", 4, ["'a'"]),
        ("4.5", 4, ["'4.5'"]),
        ("4,7", 4, ["'4,7'"]),
        ("4_7", 4, ["'4_7'"]),  # int() would read this as 47
        ("0", 4, ["'0'"]),
        ("4+-1", 4, ["'4+-1'"]),
        ("٤", 4, ["'٤'"]),  # a non-ASCII digit that int() accepts
        ("9" * 5000, 4, ["5000 digits", "4300"]),  # past Python's 4300-digit limit of int()
        ("0" * 5000, 4, ["kernel size < 1", "(5002 characters)"]),  # leading zeros are no digits; repr adds quotes
    ],
)
def test_parse_kernel_code_errors(code, channels, fragments):
    with raises_before_arithmetic(ValueError, *fragments):
        parse_kernel_code(code, channels)


def test_a_kernel_code_longer_than_max_groups_is_refused_before_building_groups():
    code = "+".join(["7"] * (MAX_GROUPS + 1))
    start = time.perf_counter()
    with raises_naming(ValueError, f"{MAX_GROUPS + 1:,} kernel sizes", f"MAX_GROUPS = {MAX_GROUPS:,}"):
        parse_kernel_code(code, 10 * MAX_GROUPS, 0)
    elapsed = time.perf_counter() - start
    assert elapsed < FAST_SECONDS, f"refusing took {elapsed:.2f} s: the groups were built first"
    assert len(parse_kernel_code("+".join(["7"] * MAX_GROUPS), MAX_GROUPS, 0)) == MAX_GROUPS, (
        "the limit itself is allowed"
    )


@pytest.mark.parametrize("size", [9 * 10**18, 2**63, 10**30, int("9" * 4300)])
def test_a_kernel_code_takes_any_size_a_kernel_takes(size):
    """A code names the same kernel sizes as ``kernel=``: past int64 too (the calculator
    counts exactly at any size), up to the 4300 digits int() reads."""
    (group,) = parse_kernel_code(str(size), 4)
    (expected,) = parse_specs([{"kernel": size, "channels": 4}])
    assert group == expected, f"code {str(size)[:30]}...: {group} != kernel= {expected}"


@pytest.mark.parametrize(
    "code, channels, shift, exc, fragments",
    [
        (47, 4, 0, TypeError, ["47"]),
        ("4+7", 0, 0, ValueError, ["channels", "0"]),
        ("4+7", 4.0, 0, TypeError, ["channels", "4.0"]),
        ("4+7", True, 0, TypeError, ["channels", "True"]),
        ("4+7", 4, 4, ValueError, ["shift", "4"]),  # shift 4 is not smaller than kernel 4
        ("4+7", 4, -1, ValueError, ["shift", "-1"]),
        ("4+7", 4, 1.0, TypeError, ["shift", "1.0"]),
    ],
)
def test_parse_kernel_code_argument_errors(code, channels, shift, exc, fragments):
    with raises_before_arithmetic(exc, *fragments):
        parse_kernel_code(code, channels, shift)


# ======================================================================================
# shifted sub-groups (SPEC 4), expectations written out by hand
# ======================================================================================
@pytest.mark.parametrize(
    "group, expected_segments",
    [
        # kernel 4, shift 1: n = (4-1)//1 + 1 = 4 sub-groups of 10 // 4 = 2 channels, the last
        # also takes the remainder: 2, 2, 2, 4 channels with shifts 0, 1, 2, 3
        (GroupSpec(10, 4, 4, 4, 4, 1, 1), [(0, 2, 0, 0), (2, 4, 1, 1), (4, 6, 2, 2), (6, 10, 3, 3)]),
        # kernel 7, shift 1: n = 7 sub-groups but only 3 channels: 3 // 7 = 0, so all three
        # fall into the last sub-group (j = 6) and use shift 6
        (GroupSpec(3, 7, 7, 7, 7, 1, 1), [(0, 3, 6, 6)]),
        # kernel 7, shift 3: n = 6//3 + 1 = 3, shifts 0, 3, 6; 7 channels -> 2, 2, 3
        (GroupSpec(7, 7, 7, 7, 7, 3, 3), [(0, 2, 0, 0), (2, 4, 3, 3), (4, 7, 6, 6)]),
        # kernel 4, shift 2: n = 3//2 + 1 = 2, shifts 0, 2; 1 channel -> last sub-group
        (GroupSpec(1, 4, 4, 4, 4, 2, 2), [(0, 1, 2, 2)]),
        # kernel 5, shift_a 2 / shift_b 1 (the official case k5_shifta2_shiftb1):
        #   A: n = 4//2 + 1 = 3 sub-groups of 7//3 = 2: shifts 0 0 2 2 4 4 4
        #   B: n = 4//1 + 1 = 5 sub-groups of 7//5 = 1: shifts 0 1 2 3 4 4 4
        (GroupSpec(7, 5, 5, 5, 5, 2, 1), [(0, 1, 0, 0), (1, 2, 0, 1), (2, 3, 2, 2), (3, 4, 2, 3), (4, 7, 4, 4)]),
        # unshifted A, shifted B: kernel_b 2, shift_b 1: n = 2; 3 channels -> 1, 2
        (GroupSpec(3, 3, 3, 2, 2, 0, 1), [(0, 1, 0, 0), (1, 3, 0, 1)]),
        # no shift at all: one segment
        (GroupSpec(5, 2, 1, 2, 1), [(0, 5, 0, 0)]),
    ],
    ids=["10ch_k4_s1", "3ch_k7_s1", "7ch_k7_s3", "1ch_k4_s2", "k5_sa2_sb1", "b_only", "unshifted"],
)
def test_shift_segments_hand_written(group, expected_segments):
    got = shift_segments(group)
    assert got == expected_segments, f"shift_segments({group!r}) = {got}, expected {expected_segments}"


@pytest.mark.parametrize(
    "channels, shift, subgroups, expected",
    [
        (10, 1, 4, [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]),
        (3, 1, 7, [6, 6, 6]),
        (7, 1, 7, [0, 1, 2, 3, 4, 5, 6]),
        (8, 1, 7, [0, 1, 2, 3, 4, 5, 6, 6]),
        (5, 2, 2, [0, 0, 2, 2, 2]),
        (4, 0, 1, [0, 0, 0, 0]),
    ],
)
def test_channel_shifts_hand_written(channels, shift, subgroups, expected):
    got = channel_shifts(channels, shift, subgroups).tolist()
    assert got == expected, f"channel_shifts({channels}, {shift}, {subgroups}) = {got}, expected {expected}"


@pytest.mark.parametrize(
    "kernel, shift, subgroups, max_shift",
    [
        (7, 1, 7, 6),
        (7, 2, 4, 6),
        (7, 3, 3, 6),
        (7, 4, 2, 4),
        (7, 5, 2, 5),
        (7, 6, 2, 6),
        (4, 1, 4, 3),
        (4, 2, 2, 2),
        (4, 3, 2, 3),
        (2, 1, 2, 1),
        (5, 0, 1, 0),
    ],
)
def test_subgroup_count_and_largest_shift(kernel, shift, subgroups, max_shift):
    """n = (k - 1) // s + 1 and largest used shift (n - 1)·s, tabulated by hand."""
    g = GroupSpec(1, kernel, kernel, kernel, kernel, shift, shift)
    assert (g.subgroups_a, g.subgroups_b) == (subgroups, subgroups), f"{g!r}: {g.subgroups_a} sub-groups"
    assert (g.max_shift_a, g.max_shift_b) == (max_shift, max_shift), f"{g!r}: largest shift {g.max_shift_a}"


# ======================================================================================
# output size (SPEC 2) and the shift-size rule (SPEC 4)
# ======================================================================================
@pytest.mark.parametrize(
    "group, size, expected",
    [
        (GroupSpec(1, 2, 1, 2, 1), (8, 8), (4, 4)),
        (GroupSpec(1, 2, 1, 2, 1), (5, 7), (2, 3)),  # floor(5/2), floor(7/2)
        (GroupSpec(1, 1, 3, 1, 2), (4, 5), (12, 10)),
        (GroupSpec(1, 2, 3, 2, 3), (5, 1), (7, 1)),  # floor(7.5) = 7, floor(1.5) = 1
        (GroupSpec(1, 3, 2, 3, 2), (4, 2), (2, 1)),  # floor(8/3) = 2, floor(4/3) = 1
        (GroupSpec(1, 7, 7, 4, 4), (10, 3), (10, 3)),  # square kernels keep the size
        (GroupSpec(1, 7, 7, 7, 7), (1, 1), (1, 1)),
    ],
)
def test_output_size_floor_rule(group, size, expected):
    got = check_input_size([group], *size)
    assert got == expected, f"{group!r} on {size}: output {got}, expected {expected}"
    y = neocell_forward(np.ones((1, 1) + size), *_weights([group]), [group])
    assert y.shape[2:] == expected, f"forward output shape {y.shape} does not end with {expected}"


@pytest.mark.parametrize(
    "size, h_in, h_out, expected",
    [
        (41, 5, 15, 123),  # 41·15/5 = 123 exactly; (41/5)·15 = 122.999... in float64
        (49, 3, 15, 245),  # 49·5 = 245
        (61, 7, 14, 122),  # 61·2 = 122
        (82, 10, 15, 123),  # 82·3/2 = 123
    ],
)
def test_output_size_is_exact_where_floating_point_falls_short(size, h_in, h_out, expected):
    """SPEC 2.4: floor(H·h_out/h_in) in exact arithmetic. The official code's
    floor((H/h_in)·h_out) in float64 is one short at these sizes (checked here, so that
    each case really separates the two), and a port copying it would fail."""
    assert math.floor((size / float(h_in)) * h_out) == expected - 1, "not a case where float64 falls short"
    group = GroupSpec(1, h_in, h_out, h_in, h_out)
    got = check_input_size([group], size, size)
    assert got == (expected, expected), f"{h_in}->{h_out} on {size}x{size}: output {got}, expected {expected}"


def test_check_input_size_reads_specs_as_written():
    """Dicts as well as GroupSpecs (an official dict gave AttributeError: no max_shift_a);
    the shift rule is applied to the dict's sub-groups: shift 1 of kernel 7 uses 6."""
    written = [{"kernel": 7, "channels": 4, "shift": 1}]
    got = check_input_size(written, 6, 9)
    assert got == (6, 9), f"check_input_size(dicts) on 6x9 gave {got}, expected (6, 9)"
    with raises_naming(ValueError, "group 0", "largest used shift_a 6", "H=5"):
        check_input_size(written, 5, 9)
    with raises_naming(TypeError, "specs must be a list of group specs", "'7'"):
        check_input_size("7", 8, 8)


@pytest.mark.parametrize(
    "args, error, words",
    [
        (("x", 1, 2), TypeError, ["channels must be an integer", "'x'"]),  # was int()'s unnamed ValueError
        ((4, -1, 2), ValueError, ["shift must be >= 0", "-1"]),  # was used as given: shifts 0, -1
        ((4, 2.5, 2), TypeError, ["shift must be an integer", "2.5"]),  # was float shifts 0.0, 2.5
        ((4, 1, 0), ValueError, ["subgroups must be >= 1", "0"]),
        ((5, 2**62, 3), ValueError, ["shift 4611686018427387904 with 3 sub-groups", "does not fit"]),  # wrapped
    ],
)
def test_channel_shifts_refuses_bad_arguments_by_name(args, error, words):
    with raises_naming(error, *words):
        channel_shifts(*args)


def test_groups_with_different_ratios_that_agree_are_accepted():
    """3->2 and 2->1 both give floor(...) = 1 row at H = 2: allowed (and the official code agrees)."""
    specs = [GroupSpec(1, 3, 2, 1, 1), GroupSpec(1, 2, 1, 1, 1)]
    got = check_input_size(specs, 2, 4)
    assert got == (1, 4), f"check_input_size on 2x4 gave {got}, expected (1, 4)"


@pytest.mark.parametrize(
    "group, size",
    [
        (GroupSpec(1, 4, 4, 4, 4, 1, 1), (3, 3)),  # largest shift 3 == H == W: allowed
        (GroupSpec(1, 7, 7, 7, 7, 3, 3), (6, 6)),  # 6 == 6
        (GroupSpec(1, 2, 2, 2, 2, 1, 1), (1, 1)),  # 1 == 1
        (GroupSpec(1, 4, 4, 7, 7, 2, 6), (2, 6)),
    ],
)
def test_largest_shift_equal_to_size_is_allowed(group, size):
    got = check_input_size([group], *size)
    assert got == size, f"{group} on {size}: check_input_size gave {got}, expected {size}"


# ======================================================================================
# errors: group specs
# ======================================================================================
@pytest.mark.parametrize(
    "group, exc, fragments",
    [
        # unknown keys
        ({"kernel": 4, "channels": 2, "kernal": 4}, ValueError, ["kernal"]),
        ({"kernel": 4, "channels": 2, "stride": 1}, ValueError, ["stride"]),
        # conflicting size forms
        ({"kernel": 4, "kernel_a": 4, "kernel_b": 4, "channels": 2}, ValueError, ["kernel", "kernel_a"]),
        ({"kernel": 4, "h_in": 4, "h_out": 4, "w_in": 4, "w_out": 4, "channels": 2}, ValueError, ["kernel", "h_in"]),
        (
            {"kernel_a": 4, "kernel_b": 4, "h_in": 4, "h_out": 4, "w_in": 4, "w_out": 4, "channels": 2},
            ValueError,
            ["kernel_a", "h_in"],
        ),
        # incomplete forms, missing keys
        ({"kernel_a": 4, "channels": 2}, ValueError, ["kernel_b"]),
        ({"h_in": 2, "h_out": 1, "w_in": 2, "channels": 2}, ValueError, ["w_out"]),
        ({"channels": 2}, ValueError, ["kernel"]),
        ({"kernel": 4}, ValueError, ["channels"]),
        # conflicting shift keys
        ({"kernel": 4, "channels": 2, "shift": 1, "shift_a": 1, "shift_b": 1}, ValueError, ["shift", "shift_a"]),
        ({"kernel": 4, "channels": 2, "shift": 1, "shift_a": 1}, ValueError, ["shift", "shift_a"]),
        ({"kernel": 4, "channels": 2, "shift_a": 1}, ValueError, ["shift_a", "shift_b"]),
        ({"kernel": 4, "channels": 2, "shift_b": 1}, ValueError, ["shift_b", "shift_a"]),
        # non-positive sizes and channels
        ({"kernel": 0, "channels": 2}, ValueError, ["kernel", "0"]),
        ({"kernel": -3, "channels": 2}, ValueError, ["kernel", "-3"]),
        ({"kernel": 4, "channels": 0}, ValueError, ["channels", "0"]),
        ({"kernel_a": 4, "kernel_b": 0, "channels": 1}, ValueError, ["kernel_b", "0"]),
        ({"h_in": 2, "h_out": 0, "w_in": 2, "w_out": 1, "channels": 1}, ValueError, ["h_out", "0"]),
        ({"kernel": 4, "channels": 2, "shift": -1}, ValueError, ["shift", "-1"]),
        ({"kernel": 4, "channels": 2, "shift_a": 0, "shift_b": -2}, ValueError, ["shift_b", "-2"]),
        # bool or float where an int is needed
        ({"kernel": 7.0, "channels": 2}, TypeError, ["kernel", "7.0"]),
        ({"kernel": True, "channels": 2}, TypeError, ["kernel", "True"]),
        ({"kernel": 4, "channels": 2.0}, TypeError, ["channels", "2.0"]),
        ({"kernel": 4, "channels": np.True_}, TypeError, ["channels", "True"]),
        ({"kernel": 4, "channels": 2, "shift": 1.0}, TypeError, ["shift", "1.0"]),
        ({"kernel": 4, "channels": 2, "shift": None}, TypeError, ["shift", "None"]),
        ({"kernel": "4", "channels": 2}, TypeError, ["kernel", "'4'"]),
        ({"h_in": 2, "h_out": 1.5, "w_in": 2, "w_out": 1, "channels": 1}, TypeError, ["h_out", "1.5"]),
        # shift on a non-square kernel
        (
            {"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 1, "shift": 1},
            ValueError,
            ["shift_a=1", "square"],
        ),
        (
            {"h_in": 3, "h_out": 3, "w_in": 1, "w_out": 2, "channels": 1, "shift_a": 1, "shift_b": 1},
            ValueError,
            ["shift_b=1", "square"],
        ),
        # shift >= kernel
        ({"kernel": 4, "channels": 2, "shift": 4}, ValueError, ["shift", "4", "smaller"]),
        ({"kernel_a": 7, "kernel_b": 2, "channels": 2, "shift_a": 1, "shift_b": 2}, ValueError, ["shift_b=2", "2"]),
        ({"kernel": 1, "channels": 2, "shift": 1}, ValueError, ["shift", "1"]),
    ],
)
def test_group_spec_errors(group, exc, fragments):
    with raises_before_arithmetic(exc, *fragments):
        parse_group(group)
    # The operator refuses it the same way, before touching any array.
    with raises_before_arithmetic(exc, *fragments):
        neocell_forward(np.zeros((1, 2, 8, 8)), [np.zeros((2, 4, 4))], [np.zeros((2, 4, 4))], [group])


@pytest.mark.parametrize(
    "specs, exc, fragments",
    [
        ([], ValueError, ["empty"]),
        ({"kernel": 4, "channels": 2}, TypeError, ["list"]),  # a single group is not a layer
        (GroupSpec(2, 4, 4, 4, 4), TypeError, ["list"]),
        ("4+7", TypeError, ["'4+7'"]),
        (None, TypeError, ["None"]),
        (7, TypeError, ["7"]),
        ([7], TypeError, ["7"]),
        ([[("kernel", 4)]], TypeError, ["list"]),
    ],
)
def test_specs_container_errors(specs, exc, fragments):
    with raises_before_arithmetic(exc, *fragments):
        parse_specs(specs)


@pytest.mark.parametrize(
    "kwargs, exc, fragments",
    [
        (dict(channels=1, h_in=2, h_out=1, w_in=2, w_out=1, shift_a=1), ValueError, ["shift_a=1", "square"]),
        (dict(channels=1, h_in=4, h_out=4, w_in=4, w_out=4, shift_b=4), ValueError, ["shift_b=4"]),
        (dict(channels=0, h_in=4, h_out=4, w_in=4, w_out=4), ValueError, ["channels", "0"]),
        (dict(channels=1, h_in=4.0, h_out=4, w_in=4, w_out=4), TypeError, ["h_in", "4.0"]),
        (dict(channels=1, h_in=4, h_out=4, w_in=4, w_out=False), TypeError, ["w_out", "False"]),
    ],
)
def test_groupspec_constructor_errors(kwargs, exc, fragments):
    with raises_before_arithmetic(exc, *fragments):
        GroupSpec(**kwargs)


# ======================================================================================
# errors: input sizes against the groups
# ======================================================================================
@pytest.mark.parametrize(
    "specs, size, fragments",
    [
        # largest used shift larger than the spatial size: kernel 4 shift 1 uses shift 3
        ([GroupSpec(2, 4, 4, 4, 4, 1, 1)], (2, 8), ["shift_a", "3", "H=2"]),
        ([GroupSpec(2, 4, 4, 4, 4, 1, 1)], (8, 2), ["shift_b", "3", "W=2"]),
        # kernel 7 shift 4: n = 2, largest 4 > 3
        ([GroupSpec(1, 7, 7, 7, 7, 4, 0)], (3, 9), ["shift_a", "4", "H=3"]),
        # even a group whose channels all sit in sub-group 0 would not exist: with 3 channels and
        # kernel 7 shift 1 all channels use shift 6
        ([GroupSpec(3, 7, 7, 7, 7, 1, 1)], (5, 9), ["shift_a", "6", "H=5"]),
        # the second group is the culprit, and the message says which
        ([GroupSpec(1, 3, 3, 3, 3), GroupSpec(1, 5, 5, 5, 5, 0, 2)], (9, 3), ["group 1", "shift_b", "4", "W=3"]),
        # groups disagree on the output size
        ([GroupSpec(1, 2, 1, 2, 1), GroupSpec(1, 4, 4, 4, 4)], (8, 8), ["disagree", "group 0", "(4, 4)", "(8, 8)"]),
        # 3->2 gives floor(10/3) = 3 rows at H = 5, 2->1 gives floor(5/2) = 2
        ([GroupSpec(1, 3, 2, 1, 1), GroupSpec(1, 2, 1, 1, 1)], (5, 4), ["disagree", "(3, 4)", "(2, 4)"]),
        # output size 0
        ([GroupSpec(1, 2, 1, 2, 1)], (1, 8), ["0x4", "1x8"]),
        ([GroupSpec(1, 1, 1, 3, 2)], (4, 1), ["4x0", "4x1"]),
    ],
)
def test_input_size_errors(specs, size, fragments):
    with raises_before_arithmetic(ValueError, *fragments):
        check_input_size(specs, *size)
    channels = sum(g.channels for g in specs)
    wa, wb = _weights(specs)
    for method in METHODS:
        with raises_before_arithmetic(ValueError, *fragments):
            neocell_forward(np.zeros((1, channels) + size), wa, wb, specs, method=method)
    with raises_before_arithmetic(ValueError, *fragments):
        expand(wa, wb, specs, size)


@pytest.mark.parametrize(
    "size, exc, fragments",
    [
        ((0, 4), ValueError, ["H", "0"]),
        ((4, -1), ValueError, ["W", "-1"]),
        ((4.0, 4), TypeError, ["H", "4.0"]),
    ],
)
def test_check_input_size_argument_errors(size, exc, fragments):
    with raises_before_arithmetic(exc, *fragments):
        check_input_size(parse_specs(K4), *size)


def test_output_size_refuses_disagreement_directly():
    with raises_before_arithmetic(ValueError, "disagree"):
        output_size([GroupSpec(1, 2, 1, 2, 1), GroupSpec(1, 1, 1, 1, 1)], 4, 4)


# ======================================================================================
# errors: arrays given to the operator
# ======================================================================================
def _good():
    specs = [{"kernel": 4, "channels": 2, "shift": 1}, {"h_in": 2, "h_out": 2, "w_in": 1, "w_out": 1, "channels": 1}]
    wa, wb = _weights(specs)
    x = np.ones((2, 3, 6, 5))
    gy = np.ones((2, 3, 6, 5))
    return specs, x, wa, wb, gy


def test_good_arguments_work():
    """The baseline of the error tests below is itself accepted."""
    specs, x, wa, wb, gy = _good()
    for method in METHODS:
        shape = neocell_forward(x, wa, wb, specs, method=method).shape
        assert shape == (2, 3, 6, 5), f"{method}: y shape {shape}, expected (2, 3, 6, 5)"
        gx, ga, gb = neocell_backward(gy, x, wa, wb, specs, method=method, check_finite=True)
        assert gx.shape == x.shape and [a.shape for a in ga] == [w.shape for w in wa], (
            f"{method}: grad_x shape {gx.shape} (x {x.shape}), grad_a shapes {[a.shape for a in ga]} "
            f"(weights {[w.shape for w in wa]})"
        )


def _mutations():
    specs, x, wa, wb, gy = _good()
    nan_a = [wa[0].copy(), wa[1]]
    nan_a[0][1, 2, 3] = np.nan
    inf_b = [wb[0], wb[1].copy()]
    inf_b[1][0, 0, 0] = -np.inf
    cases = {
        # channel count
        "channels_sum": (dict(x=np.ones((2, 4, 6, 5))), ValueError, ["x.shape[1]", "4", "3"]),
        # x not 4-D
        "x_3d": (dict(x=np.ones((3, 6, 5))), ValueError, ["x", "4-D", "(3, 6, 5)"]),
        "x_5d": (dict(x=np.ones((1, 2, 3, 6, 5))), ValueError, ["x", "4-D", "(1, 2, 3, 6, 5)"]),
        "x_empty_batch": (dict(x=np.ones((0, 3, 6, 5)), gy=np.ones((0, 3, 6, 5))), ValueError, ["x", "(0, 3, 6, 5)"]),
        # complex / non-numeric x
        "x_complex": (dict(x=np.ones((2, 3, 6, 5), dtype=complex)), TypeError, ["x", "complex128"]),
        "x_str": (dict(x=np.full((2, 3, 6, 5), "a")), TypeError, ["x", "<U1"]),
        "x_object": (dict(x=np.full((2, 3, 6, 5), None, dtype=object)), TypeError, ["x", "object"]),
        "x_bool": (dict(x=np.ones((2, 3, 6, 5), dtype=bool)), TypeError, ["x", "bool"]),
        "x_ragged": (dict(x=[[1.0], [1.0, 2.0]]), TypeError, ["x"]),
        # weights: shapes, counts, types, values
        "wa_shape": (
            dict(wa=[wa[0].transpose(0, 2, 1)[:, :3], wa[1]]),
            ValueError,
            ["weights_a[0]", "(2, 3, 4)", "(2, 4, 4)"],
        ),
        "wb_shape": (dict(wb=[wb[0], np.ones((1, 2, 1))]), ValueError, ["weights_b[1]", "(1, 2, 1)", "(1, 1, 1)"]),
        "wa_channels": (dict(wa=[wa[0][:1], wa[1]]), ValueError, ["weights_a[0]", "(1, 4, 4)"]),
        "wa_count": (dict(wa=[wa[0]]), ValueError, ["weights_a", "1", "2 groups"]),
        "wb_count": (dict(wb=wb + [wb[1]]), ValueError, ["weights_b", "3", "2 groups"]),
        "wa_array": (dict(wa=np.ones((2, 4, 4))), TypeError, ["weights_a", "list"]),
        "wa_complex": (dict(wa=[wa[0] + 0j, wa[1]]), TypeError, ["weights_a[0]", "complex128"]),
        "wa_nan": (dict(wa=nan_a), ValueError, ["weights_a[0]", "NaN"]),
        "wb_inf": (dict(wb=inf_b), ValueError, ["weights_b[1]", "Inf"]),
        # grad_y
        "gy_shape": (dict(gy=np.ones((2, 3, 5, 6))), ValueError, ["grad_y", "(2, 3, 5, 6)", "(2, 3, 6, 5)"]),
        "gy_complex": (dict(gy=np.ones((2, 3, 6, 5), dtype=complex)), TypeError, ["grad_y", "complex128"]),
        # method
        "method": (dict(method="fast"), ValueError, ["method", "'fast'"]),
        "method_none": (dict(method=None), ValueError, ["method", "None"]),
    }
    return specs, x, wa, wb, gy, cases


_MUTATIONS = _mutations()[-1]
# grad_y is not an argument of the forward, so its mutations are checked on the backward only.
_OPERATOR_ERROR_CASES = [
    (name, which)
    for name in sorted(_MUTATIONS)
    for which in ("forward", "backward")
    if not (which == "forward" and set(_MUTATIONS[name][0]) == {"gy"})
]


@pytest.mark.parametrize("name, which", _OPERATOR_ERROR_CASES)
def test_operator_argument_errors(name, which):
    specs, x, wa, wb, gy, cases = _mutations()
    change, exc, fragments = cases[name]
    args = dict(x=x, wa=wa, wb=wb, gy=gy, method="patchwise") | change
    with raises_before_arithmetic(exc, *fragments):
        if which == "forward":
            neocell_forward(args["x"], args["wa"], args["wb"], specs, method=args["method"])
        else:
            neocell_backward(args["gy"], args["x"], args["wa"], args["wb"], specs, method=args["method"])


@pytest.mark.parametrize("which", ["x", "grad_y"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_refuses_nonfinite_x_and_grad_y(which, bad):
    specs, x, wa, wb, gy = _good()
    arrays = {"x": x.copy(), "grad_y": gy.copy()}
    arrays[which][1, 2, 3, 4] = bad
    with raises_before_arithmetic(ValueError, which, "NaN or Inf"):
        neocell_backward(arrays["grad_y"], arrays["x"], wa, wb, specs, check_finite=True)
    if which == "x":
        with raises_before_arithmetic(ValueError, "x", "NaN or Inf"):
            neocell_forward(arrays["x"], wa, wb, specs, check_finite=True)


def test_without_check_finite_nan_propagates_like_ieee():
    """Default: x is not scanned; a NaN pixel gives NaN wherever IEEE arithmetic puts it.

    Kernel 2 unshifted, NaN at pixel (0, 0) of channel 0. The patch-wise formulations
    only form products of that pixel's tile, so exactly the top-left 2x2 output tile is
    NaN. The block-diagonal formulation multiplies the explicit zeros of the expanded
    matrices too, and 0 * NaN = NaN spreads it over the whole plane of that channel.
    The other channel stays finite in every formulation. (docs/semantics.md)
    """
    specs = [{"kernel": 2, "channels": 2}]
    wa, wb = [np.ones((2, 2, 2))], [np.ones((2, 2, 2))]
    x = np.ones((1, 2, 4, 4))
    x[0, 0, 0, 0] = np.nan
    tile = np.zeros((4, 4), dtype=bool)
    tile[:2, :2] = True
    expected = {"loop": tile, "patchwise": tile, "blockdiag": np.ones((4, 4), dtype=bool)}
    for method in METHODS:
        y = neocell_forward(x, wa, wb, specs, method=method)
        assert np.array_equal(np.isnan(y[0, 0]), expected[method]), (
            f"{method}: NaN pattern {np.isnan(y[0, 0]).astype(int).tolist()}, "
            f"expected {expected[method].astype(int).tolist()}"
        )
        assert np.isfinite(y[0, 1]).all(), f"{method}: NaN leaked into channel 1"


def test_a_nan_pixel_no_output_reads_still_reaches_the_patchwise_kernel_gradients():
    """2x2 -> 1x1 on a 5x5 input: the output is 2x2, so row 4 and column 4 form tiles
    that are cut away and reach no output. A NaN at (4, 4) leaves y and grad_x finite in
    the patch-wise formulations, but its tile's products with the zero output gradient
    are formed, and 0 * NaN = NaN enters the kernel entries it meets (docs/semantics.md). The
    block-diagonal formulation makes y NaN instead and drops the pixel's gradient terms
    with the rows of the expanded matrices that fold onto no kernel."""
    specs = [{"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 1}]
    wa, wb = [np.ones((1, 1, 2))], [np.ones((1, 2, 1))]
    x = np.ones((1, 1, 5, 5))
    x[0, 0, 4, 4] = np.nan
    grad_y = np.ones((1, 1, 2, 2))
    for method in ("loop", "patchwise"):
        y = neocell_forward(x, wa, wb, specs, method=method)
        grad_x, grads_a, grads_b = neocell_backward(grad_y, x, wa, wb, specs, method=method)
        assert np.array_equal(y, np.full((1, 1, 2, 2), 4.0)), f"{method}: y {y.ravel()}"
        assert np.isfinite(grad_x).all(), f"{method}: grad_x not finite"
        # The pixel sits first in its tile: it multiplies the first kernel entries only.
        pattern = [np.isnan(g[0]).ravel().tolist() for g in (grads_a, grads_b)]
        assert pattern == [[True, False], [True, False]], (
            f"{method}: kernel gradients {grads_a[0].ravel()}, {grads_b[0].ravel()}, expected NaN in the first entries"
        )
    y = neocell_forward(x, wa, wb, specs, method="blockdiag")
    grad_x, grads_a, grads_b = neocell_backward(grad_y, x, wa, wb, specs, method="blockdiag")
    assert np.isnan(y).all() and np.isfinite(grads_a[0]).all() and np.isfinite(grads_b[0]).all(), (
        f"blockdiag: y {y.ravel()} (expected all NaN), kernel gradients {grads_a[0].ravel()}, "
        f"{grads_b[0].ravel()} (expected finite)"
    )


# --------------------------------------------------------------------------------------
# shift_segments in closed form (from the hostile-input review: a trillion channels)
# --------------------------------------------------------------------------------------
def test_shift_segments_closed_form_matches_per_channel_shifts():
    """Independent source: the per-channel shifts of SPEC 4 (channel_shifts), grouped by
    hand into runs. Covers remainders, channels < sub-groups and unshifted axes."""
    for channels in range(1, 14):
        for ka in range(1, 6):
            for kb in (1, 2, 5):
                for sa in range(ka):
                    for sb in range(kb):
                        spec = GroupSpec(channels, ka, ka, kb, kb, sa, sb)
                        per_a, per_b = spec.channel_shifts()
                        runs = []
                        for c in range(channels):
                            if runs and [per_a[c], per_b[c]] == runs[-1][2:]:
                                runs[-1][1] = c + 1
                            else:
                                runs.append([c, c + 1, per_a[c], per_b[c]])
                        assert shift_segments(spec) == [tuple(int(v) for v in r) for r in runs], spec


def test_shift_segments_is_instant_at_a_trillion_channels():
    # kernel 7: shift 1 gives 7 sub-groups for A, shift 2 gives 4 for B; the runs are cut
    # where either split changes sub-group.
    spec = GroupSpec(10**12, 7, 7, 7, 7, 1, 2)
    segments = shift_segments(spec)
    cuts = {k * (10**12 // 7) for k in range(1, 7)} | {k * (10**12 // 4) for k in range(1, 4)}
    assert [s[0] for s in segments] == sorted({0} | cuts), (
        f"segment starts {[s[0] for s in segments]}, expected {sorted({0} | cuts)}"
    )
    assert [s[1] for s in segments] == sorted(cuts | {10**12}), (
        f"segment ends {[s[1] for s in segments]}, expected {sorted(cuts | {10**12})}"
    )
    assert segments[0][2:] == (0, 0) and segments[-1][2:] == (6, 6), (
        f"first segment sub-groups {segments[0][2:]} (expected (0, 0)), last {segments[-1][2:]} (expected (6, 6))"
    )


def test_parse_kernel_code_reads_leading_zeros():
    """Python's int() counts leading zeros against its 4300-digit limit; the size is 4."""
    sizes = [g.h_in for g in parse_kernel_code("0" * 5000 + "4+07", 4)]
    assert sizes == [4, 7], f"h_in of '0' * 5000 + '4+07' parsed to {sizes}, expected [4, 7]"
