"""The shared validation (neocell_ref/validation.py): the memory budget.

The budget is tested for what it promises: every builder refuses a request over it
before allocating (tracemalloc peak), naming the size in bytes and how to raise it;
the environment variable and ``set_max_bytes`` both move it, and one place holds the
number; sizes are computed exactly (no int64 overflow). The argument checks it serves
are tested with the functions that call them (issue "Verdicts that cannot be fooled",
section 5).
"""

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from support.hostile import raises_naming

import neocell_ref as nr
from neocell_ref import layers as L
from neocell_ref import validation
from neocell_ref.expansion import expand, expand_kernel
from neocell_ref.init import neo_init, skewed_identity
from neocell_ref.models import NeoNeXt
from neocell_ref.spec import GroupSpec, parse_kernel_code
from neocell_ref.train import synthetic_patterns

HUGE = [
    (
        "neo_init",
        lambda: neo_init(parse_kernel_code("7", channels=10**12), np.random.default_rng(0)),
        ("neo_init", "392,000,000,000,000 bytes"),
    ),
    ("skewed_identity", lambda: skewed_identity(10**7, 10**7), ("skewed_identity", "800,000,000,000,000 bytes")),
    (
        "expand",
        lambda: expand([np.eye(3)[None]], [np.eye(3)[None]], [{"kernel": 3, "channels": 1}], (10**6, 10**6)),
        ("expand: A_full", "(1, 1000000, 1000000)", "8,000,000,000,000 bytes"),
    ),
    ("expand_kernel", lambda: expand_kernel(np.ones((2, 2)), 10**6, 10**6, 0), ("expand_kernel", "bytes")),
    (
        "blockdiag",
        lambda: nr.neocell_forward(
            np.ones((1, 1, 10**6, 3)),
            [np.eye(3)[None]],
            [np.eye(3)[None]],
            [{"kernel": 3, "channels": 1}],
            method="blockdiag",
        ),
        ("expand: A_full", "bytes"),
    ),
    (
        "neocell output",
        lambda: nr.neocell_forward(
            np.ones((1, 1, 4, 4)),
            [np.ones((1, 10**6, 1))],
            [np.ones((1, 1, 10**6))],
            [{"h_in": 1, "h_out": 10**6, "w_in": 1, "w_out": 10**6, "channels": 1}],
        ),
        ("neocell: output y", "bytes"),
    ),
    *[
        (  # y is as large as x (4 MiB), but one sample's z = A x is 16384 times larger
            f"neocell intermediate, {method} {direction}",
            lambda method=method, direction=direction: getattr(nr, f"neocell_{direction}")(
                *([np.ones((2, 1, 16 * 2**14, 1))] if direction == "backward" else []),
                np.ones((2, 1, 16, 2**14)),
                [np.ones((1, 2**14, 1))],
                [np.ones((1, 2**14, 1))],
                [{"h_in": 1, "h_out": 2**14, "w_in": 2**14, "w_out": 1, "channels": 1}],
                method=method,
            ),
            (f"neocell ({method}): intermediate", size),
        )
        for method, size in [
            ("patchwise", "(262144, 16384)"),  # one sample's Z: 32 GiB
            ("blockdiag", "(2, 1, 262144, 16384)"),  # z for the batch: 64 GiB
            ("loop", "(2, 16384, 16384)"),  # one tile's A P for the batch: 4 GiB
        ]
        for direction in ("forward", "backward")
    ],
    (  # a 500x500 kernel on 500x1 planes: the planes are 4 MB, one tile's per-sample
        # kernel-gradient terms of the loop backward (N, 500, 500) 2.2 GB (NumPy's MemoryError before)
        "neocell loop backward, per-sample kernel gradients",
        lambda: nr.neocell_backward(
            np.ones((1100, 1, 500, 1)),
            np.ones((1100, 1, 500, 1)),
            [np.eye(500)[None]],
            [np.ones((1, 1, 1))],
            [{"kernel_a": 500, "kernel_b": 1, "channels": 1}],
            method="loop",
        ),
        ("neocell (loop): intermediate", "(1100, 500, 500)"),
    ),
    (  # a broadcast view of one byte, cast to float64 for the computation: 32 GiB
        "neocell cast of x",
        lambda: nr.neocell_forward(
            np.broadcast_to(np.uint8(1), (1, 4096, 1024, 1024)),
            [np.ones((4096, 1, 16))],
            [np.ones((4096, 16, 1))],
            [{"h_in": 16, "h_out": 1, "w_in": 16, "w_out": 1, "channels": 4096}],
        ),
        ("neocell: x in the compute dtype", "34,359,738,368 bytes"),
    ),
    ("NeoNeXt", lambda: NeoNeXt(dims=(10**12, 16, 24, 32)), ("NeoNeXt", "stem.conv.weight", "bytes")),
    ("channel_shifts", lambda: GroupSpec(10**12, 7, 7, 7, 7, 1, 1).channel_shifts(), ("channel_shifts", "bytes")),
    ("drop_path_scale", lambda: L.drop_path_scale(np.random.default_rng(0), 10**12, 0.5), ("drop_path_scale", "bytes")),
    (
        "synthetic_patterns",
        lambda: synthetic_patterns(np.random.default_rng(0), 10**9),
        ("synthetic_patterns", "bytes"),
    ),
]


@pytest.mark.parametrize("name, call, words", HUGE, ids=[h[0] for h in HUGE])
def test_builders_refuse_over_budget_before_allocating(name, call, words):
    tracemalloc.start()
    try:
        with raises_naming(ValueError, *words, "memory budget", "set_max_bytes", "NEOCELL_MAX_BYTES"):
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{name}: {peak:,} bytes allocated before refusing"


def test_budget_can_be_raised_and_lowered():
    call = lambda: skewed_identity(300, 200)  # noqa: E731  480,000 bytes
    expected = np.zeros((300, 200))
    for i in range(150):  # hand-written: step round(1.5) = 2, ones in rows 2i, 2i+1, then /2;
        expected[2 * i : 2 * i + 2, i] = 0.5  # columns 150.. start past the last row: zero
    with validation.max_bytes_set_to(479_999):
        budget = validation.max_bytes()
        assert budget == 479_999, f"max_bytes() inside max_bytes_set_to(479_999) is {budget:,}"
        with raises_naming(ValueError, "480,000 bytes", "479,999 bytes"):
            call()
        with validation.max_bytes_set_to(480_000):
            np.testing.assert_array_equal(call(), expected)
    budget = validation.max_bytes()
    assert budget == validation.DEFAULT_MAX_BYTES, (
        f"max_bytes() after the contexts is {budget:,}, not DEFAULT_MAX_BYTES {validation.DEFAULT_MAX_BYTES:,}"
    )


def test_budget_from_the_environment_variable():
    code = (
        "import numpy as np, neocell_ref.validation as v, neocell_ref as nr\n"
        "assert v.max_bytes() == 1000, v.max_bytes()\n"
        "try:\n    nr.skewed_identity(12, 12)\nexcept ValueError as e:\n    print('refused', e)\n"
        "print(nr.skewed_identity(11, 11).shape)\n"
    )
    env = {
        "NEOCELL_MAX_BYTES": "1000",
        "PATH": "",
        "PYTHONPATH": str(__import__("pathlib").Path(nr.__file__).parents[1]),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused" in out.stdout and "1,152 bytes" in out.stdout and "(11, 11)" in out.stdout, out.stdout
    env["NEOCELL_MAX_BYTES"] = "lots"
    out = subprocess.run(
        [sys.executable, "-c", "import neocell_ref as nr; nr.skewed_identity(2, 2)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "NEOCELL_MAX_BYTES='lots'" in out.stderr, out.stderr


def test_set_max_bytes_validates_and_sizes_never_overflow():
    with raises_naming(ValueError, ">= 1"):
        validation.set_max_bytes(0)
    with raises_naming(TypeError, "integer"):
        validation.set_max_bytes(1.5e9)
    # 2**40 * 2**40 elements overflow int64; Python ints give the exact size.
    with raises_naming(ValueError, f"{2**80 * 8:,} bytes"):
        validation.check_nbytes((2**40, 2**40), np.float64, "test")
    nbytes = validation.check_nbytes((0, 10**30), np.float64, "empty")
    assert nbytes == 0, f"check_nbytes of shape (0, 10**30) is {nbytes}, expected 0"


@pytest.mark.parametrize(
    "value, words",
    [
        (10**400, ["eps must be a finite real number", "(401 characters)"]),  # beyond the float range
        (__import__("fractions").Fraction(10**400, 3), ["eps must be a finite real number"]),
        (10**5000, ["eps must be a finite real number", "5000 digits"]),  # repr() itself would fail
        (__import__("fractions").Fraction(10**5000, 3), ["eps must be a finite real number", "Fraction too long"]),
    ],
    ids=["10**400", "Fraction(10**400, 3)", "10**5000", "Fraction(10**5000, 3)"],
)
def test_real_number_beyond_the_float_range_is_named(value, words):
    with raises_naming(ValueError, *words):
        validation.real_number(value, "eps", 0.0)


def test_real_number_accepts_exact_rationals():
    value = validation.real_number(__import__("fractions").Fraction(1, 4), "eps", 0.0)
    assert value == 0.25, f"real_number(Fraction(1, 4)) is {value!r}, expected 0.25"


def test_masked_arrays_are_refused_not_unmasked():
    """np.asarray drops a mask silently: the masked values would be computed with."""
    x = np.ma.masked_array(np.ones((1, 1, 6, 6)), mask=np.eye(6, dtype=bool)[None, None])
    wa, wb = neo_init([{"kernel": 3, "channels": 1}], np.random.default_rng(0))
    with raises_naming(TypeError, "x is a masked array", "filled"):
        nr.neocell_forward(x, wa, wb, [{"kernel": 3, "channels": 1}])


@pytest.mark.parametrize("size", [{7, 8}, {7: 0, 8: 1}, frozenset({6, 9})])
def test_expand_refuses_an_unordered_size(size):
    wa, wb = neo_init([{"kernel": 3, "channels": 1}], np.random.default_rng(0))
    with raises_naming(TypeError, "size must be a pair (H, W)"):
        expand(wa, wb, [{"kernel": 3, "channels": 1}], size)


@pytest.mark.parametrize("method", ["patchwise", "loop"])
def test_the_intermediate_budget_refuses_only_what_is_allocated(method):
    """1 -> 8 rows, 8 -> 1 columns at 16 samples of 8x64: the whole padded plane of the
    batch (16, 64, 64) would be 512 KiB, but patch-wise holds one sample's planes (32
    KiB) and the loop one channel's (16, 8, 64) planes and (16, 8, 8) tiles (64 KiB):
    both run under a 100 KiB budget and agree with the unbudgeted block-diagonal result."""
    specs = [{"h_in": 1, "h_out": 8, "w_in": 8, "w_out": 1, "channels": 1}]
    rng = np.random.default_rng(4)
    x, wa, wb = rng.standard_normal((16, 1, 8, 64)), [rng.standard_normal((1, 8, 1))], [rng.standard_normal((1, 8, 1))]
    grad_y = rng.standard_normal((16, 1, 64, 8))
    want_y = nr.neocell_forward(x, wa, wb, specs, method="blockdiag")
    want_grads = nr.neocell_backward(grad_y, x, wa, wb, specs, method="blockdiag")
    with validation.max_bytes_set_to(100 * 1024):
        y = nr.neocell_forward(x, wa, wb, specs, method=method)
        grads = nr.neocell_backward(grad_y, x, wa, wb, specs, method=method)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12, err_msg=f"{method}: y")
    for name, got, want in zip(("grad_x", "grad_a", "grad_b"), grads, want_grads):
        np.testing.assert_allclose(
            np.asarray(got).squeeze(), np.asarray(want).squeeze(), rtol=1e-12, atol=1e-12, err_msg=f"{method}: {name}"
        )


# --------------------------------------------------------------------------------------
# on/off arguments: one rule (validation.as_flag) for every flag of the package
# --------------------------------------------------------------------------------------
def _flag_calls():
    """``(flag name, call(value))`` for every on/off argument of the public API."""
    from support.hostile import TINY_MODEL, small_layer

    from neocell_ref import demo, registry
    from neocell_ref.architecture import NeoNeXtConfig
    from neocell_ref.verify.golden import verify_golden
    from neocell_ref.verify.precision import emulate_neocell

    specs, wa, wb, x = small_layer()
    arrays = {"x": x, "grad_y": x, "weight_a_0": wa[0], "weight_b_0": wb[0]}
    ones = np.ones(2)
    model = NeoNeXt(**TINY_MODEL)
    image = np.ones((1, 3, 32, 32))
    kind = registry.get("gelu")
    calls = [
        ("check_finite", lambda v: nr.neocell_forward(x, wa, wb, specs, check_finite=v)),
        ("training", lambda v: L.batchnorm_forward(x, ones, ones, ones, ones, training=v)),
        ("training", lambda v: model.forward(image, training=v)),
        ("cache", lambda v: model.forward(image, cache=v)),
        ("strict", lambda v: model.load_state_dict(model.state_dict(), strict=v)),
        ("linear_bias", lambda v: NeoNeXtConfig(linear_bias=v)),
        ("forward_only", lambda v: verify_golden("no such directory", "neocell", command="port", forward_only=v)),
        ("costs", lambda v: demo.run_demo(channels=2, size=(3, 3), code="3", out=lambda line: None, costs=v)),
    ]
    for flag in ("corner", "swap", "shifts", "split_rounded_up", "size_rounded"):
        calls.append((flag, lambda v, flag=flag: emulate_neocell(arrays, specs, "float64", **{flag: v})))
    for flag in ("init_draws_float64", "inference_identity"):
        fields = {f: getattr(kind, f) for f in kind.__dataclass_fields__}
        calls.append((flag, lambda v, flag=flag, fields=fields: registry.LayerKind(**{**fields, flag: v})))
    return calls


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0, np.int64(1)], ids=repr)
def test_every_flag_refuses_what_is_not_a_bool(value):
    # a truthiness check (``if flag:``) would read these silently; each flag must name
    # itself and the value instead (a misplaced positional argument cannot switch it)
    for name, call in _flag_calls():
        with raises_naming(TypeError, name, "True or False", repr(value)):
            call(value)


def test_as_flag_accepts_numpy_bools_and_returns_python_bools():
    for value in (True, False, np.True_, np.False_):
        result = validation.as_flag(value, "flag")
        assert type(result) is bool and result == bool(value), f"as_flag({value!r}) gave {result!r}"
    from neocell_ref.architecture import NeoNeXtConfig

    flag = NeoNeXtConfig(linear_bias=np.True_).linear_bias
    assert flag is True, f"NeoNeXtConfig(linear_bias=np.True_).linear_bias is {flag!r} of type {type(flag).__name__}"


@pytest.mark.parametrize(
    "value, words",
    [
        ("foo", ["precision must be a floating NumPy dtype", "'foo'"]),  # NumPy: "data type 'foo' not understood"
        (None, ["precision", "None"]),  # np.dtype(None) would be float64
        (int, ["precision", "int64"]),
        (np.complex64, ["precision", "complex64"]),
        (np.dtype([("a", "f8")]), ["precision", "('a', '<f8')"]),  # a structured dtype of floats is not floating
        ([("a", "f8")], ["precision", "[('a', 'f8')]"]),  # nor is its list spec read
        (np.float64(7.0), ["precision", "np.float64(7.0)"]),  # np.dtype reads a number's dtype: float64
        (np.ndarray, ["precision", "got object (from <class 'numpy.ndarray'>)"]),  # what was passed, too
        (np.zeros(3, np.float32), ["precision", "array("]),  # and an array's
    ],
)
def test_floating_dtype_refuses_naming_the_argument(value, words):
    with raises_naming(TypeError, *words):
        validation.floating_dtype(value, "precision")


def test_floating_dtype_reads_what_numpy_reads_and_restricts_to_allowed():
    got = validation.floating_dtype("f4")
    assert got == np.float32, f"floating_dtype('f4') is {got!r}, expected float32"
    got = validation.floating_dtype(float)
    assert got == np.float64, f"floating_dtype(float) is {got!r}, expected float64"
    got = validation.floating_dtype(np.float16)
    assert got == np.float16, f"floating_dtype(np.float16) is {got!r}, expected float16"
    got = validation.floating_dtype(np.float32, allowed=(np.float32, np.float64))
    assert got == np.float32, f"floating_dtype(np.float32, allowed=(float32, float64)) is {got!r}, expected float32"
    with raises_naming(TypeError, "dtype must be float32 or float64", "float16"):
        validation.floating_dtype(np.float16, allowed=(np.float32, np.float64))


# --------------------------------------------------------------------------------------
# reading .npz archives without trusting them (validation.read_npy_member, read_npz)
# --------------------------------------------------------------------------------------
def _zip_of(path, members, compression=None):
    """A zip at ``path`` of ``{name: bytes}`` members, deflated unless ``compression``."""
    import warnings
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compression is None else compression) as zf:
        for name, data in members:
            with warnings.catch_warnings():  # a duplicate name is the point of some tests
                warnings.simplefilter("ignore", UserWarning)
                zf.writestr(name, data)
    return path


def _npy_bomb(path, name, declared, spaces):
    """A deflated member ``name``: a format-2.0 .npy prefix declaring ``declared`` bytes
    of header text, then ``spaces`` spaces (written in chunks: the test stays small)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w", force_zip64=True) as member:
        member.write(b"\x93NUMPY\x02\x00" + struct.pack("<I", declared))
        chunk = b" " * 2**20
        for start in range(0, spaces, len(chunk)):
            member.write(chunk[: spaces - start])
    return path


def _peak_of(call):
    """``(exception raised by call(), peak traced bytes)``."""
    tracemalloc.start()
    try:
        try:
            call()
        except Exception as exc:
            error = exc
        else:
            error = None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return error, peak


def test_a_member_larger_than_any_valid_one_is_refused_before_anything_is_read(tmp_path):
    """A 100 KB deflated member holding a format-2.0 header that declares 10**8 bytes of
    header text (followed by them): NumPy's reader read them all before comparing the
    length with max_header_size (10**9 made a 1 MB file cost 2 GB). The zip directory's
    size is over what a .npy of the expected shape can be: refused by name, unread."""
    import zipfile

    path = _npy_bomb(tmp_path / "bomb.npz", "w.npy", 10**8, 10**8)
    assert path.stat().st_size < 2**20, f"the test archive is {path.stat().st_size} bytes"
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
        error, peak = _peak_of(lambda: validation.read_npy_member(zf, info, (3, 4), "bomb: member 'w.npy'"))
    assert isinstance(error, ValueError), f"expected a ValueError, got {error!r}"
    message = str(error)
    assert message.startswith("bomb: member 'w.npy': the zip directory says 100000012 bytes"), message
    # largest valid member: 12 bytes of prefix, the header limit, 12 values of <= 16 bytes
    assert f"more than the {12 + 4096 + 12 * 16} a .npy" in message, message
    assert peak < 2**20, f"{peak:,} bytes allocated before the refusal"


def test_a_declared_header_length_is_checked_before_the_header_is_read(tmp_path):
    """Same member, but an expected array large enough for the directory's size to pass:
    the declared header length (10**8) is refused before NumPy reads those bytes."""
    path = _npy_bomb(tmp_path / "bomb.npz", "w.npy", 10**8, 10**8)
    error, peak = _peak_of(lambda: validation.read_npz(path, {"w": (10**8 // 8,)}, what="bomb"))
    assert peak < 2**20, f"{peak:,} bytes allocated before the refusal ({error!r})"
    assert isinstance(error, ValueError), f"expected a ValueError, got {error!r}"
    message = str(error)
    assert message.startswith("bomb: member 'w.npy': its .npy header declares 100,000,000 bytes"), message
    assert "MAX_NPY_HEADER" in message, message


def _npy(header: bytes, version=b"\x01\x00", data=b""):
    """A .npy of the given header text (any bytes), length field of ``version``."""
    import struct

    field = "<H" if version == b"\x01\x00" else "<I"
    return b"\x93NUMPY" + version + struct.pack(field, len(header)) + header + data


GOOD_DICT = b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"


@pytest.mark.parametrize(
    "member, words",
    [
        (_npy(b" " * 5000), ["declares 5,000 bytes of header text"]),  # NumPy: "Header info length"
        (_npy(b" " * 5000, b"\x02\x00"), ["declares 5,000 bytes of header text"]),
        (_npy(b"{'descr': '<f8', 'shape': (2,)}"), ["malformed .npy header", "correct keys"]),
        (_npy(b"{'descr': '<f8', 'fortran_order': f(), 'shape': (2,)}"), ["malformed .npy header", "malformed node"]),
        (_npy(b"-" * 4000 + b"1"), ["malformed .npy header"]),  # RecursionError in the parser
        (_npy(b"(" * 3999 + b"\n"), ["malformed .npy header", "TokenError"]),  # escaped as TokenError
        (_npy(b"{'descr': 'foo', 'fortran_order': False, 'shape': (2,)}"), ["not a valid dtype descriptor"]),
        (_npy(b"[1, 2]"), ["malformed .npy header", "not a dictionary"]),
        (b"NOTNUMPY" + b" " * 40, ["not a .npy array", "magic string is not correct"]),
        (b"\x93NUM", ["not a .npy array", "EOF"]),
        (_npy(b"", b"\x03\x00"), [".npy format version (3, 0)"]),
        (b"\x93NUMPY\x01\x00\x10", ["ends inside its .npy header length"]),
        (_npy(GOOD_DICT)[:-5], ["ends inside its .npy header"]),
    ],
    ids=[
        "long-1.0",
        "long-2.0",
        "keys",
        "call",
        "deep",
        "nested",
        "descr",
        "list",
        "magic",
        "short-magic",
        "version",
        "short-length",
        "short-header",
    ],
)
def test_a_malformed_header_is_a_value_error_starting_with_where(tmp_path, member, words):
    """NumPy's header errors named no member; each now starts with ``where``. (An
    expected shape of 1000 values lets the 5,000-byte headers past the size bound.)"""
    path = _zip_of(tmp_path / "bad.npz", [("w.npy", member)])
    with pytest.raises(ValueError) as info:
        validation.read_npz(path, {"w": (1000,)}, what="bad archive")
    message = str(info.value)
    assert message.startswith("bad archive: member 'w.npy': "), f"message does not start with where: {message!r}"
    for word in words:
        assert word in message, f"message {message!r} does not mention {word!r}"


def test_a_well_formed_member_still_reads_in_both_formats(tmp_path):
    values = np.array([1.5, -2.0])
    for version in (b"\x01\x00", b"\x02\x00"):
        path = _zip_of(tmp_path / "good.npz", [("w.npy", _npy(GOOD_DICT, version, values.tobytes()))])
        got = validation.read_npz(path, {"w": (2,)})["w"]
        assert np.array_equal(got, values) and got.flags.c_contiguous, f"format {version!r} read as {got!r}"


def test_skipped_members_are_kept_in_a_set_and_reported_once_in_archive_order(tmp_path):
    """The caller's list was searched once per unknown member: 20,000 of them took 1.8 s,
    quadratic in their number. The list is now only appended to."""

    class CountingList(list):
        searches = 0

        def __contains__(self, item):
            CountingList.searches += 1
            return super().__contains__(item)

    members = [(f"{name}.npy", _npy(GOOD_DICT, data=bytes(16))) for name in ("b", "w", "a", "b", "c", "a")]
    path = _zip_of(tmp_path / "extra.npz", members)
    skipped = CountingList()
    arrays = validation.read_npz(path, {"w": (2,)}, strict=False, skipped=skipped)
    assert list(skipped) == ["b", "a", "c"], f"skipped reported as {list(skipped)}"
    assert list(arrays) == ["w"], f"read {list(arrays)}"
    assert CountingList.searches == 0, f"the caller's list was searched {CountingList.searches} times"


@pytest.mark.parametrize("path", [12345, None, b"x.npz", 1.5, "a text file"], ids=repr)
def test_read_npz_refuses_a_path_of_the_wrong_type_naming_it(path):
    """They gave AttributeError ('int' object has no attribute 'seek') or TypeError from
    inside zipfile, naming no argument."""
    import io

    value = io.StringIO("PK") if path == "a text file" else path
    shown = "<_io.StringIO" if path == "a text file" else repr(path)
    with raises_naming(TypeError, "path must be a str, an os.PathLike or a binary file object", shown):
        validation.read_npz(value, {"w": (2,)})


def test_read_npz_names_a_file_object_in_its_errors(tmp_path):
    """os.fspath(BytesIO) raised TypeError inside the error handler itself."""
    import io

    with raises_naming(ValueError, "state archive <file object> is not a readable .npz"):
        validation.read_npz(io.BytesIO(b"junk"), {"w": (2,)}, what="state archive")
    data = _zip_of(tmp_path / "good.npz", [("w.npy", _npy(GOOD_DICT, data=bytes(16)))]).read_bytes()
    got = validation.read_npz(io.BytesIO(data), {"w": (2,)})["w"]
    assert np.array_equal(got, np.zeros(2)), f"read {got!r} from a BytesIO"
