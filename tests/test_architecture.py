"""The description of the network (neocell_ref/architecture.py).

A network too deep to describe is refused at once, naming the field and the limit,
while the calculator still counts it. The description's parameter and buffer names
and shapes are tested against the built model in tests/test_models.py, its layer
kinds in tests/test_registry.py.
"""

import itertools

import pytest

import neocell_ref as nr
from neocell_ref import architecture
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
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"refusing a million blocks took {elapsed:.3f} s, expected < 1 s"
    assert MAX_BLOCKS >= 36, f"MAX_BLOCKS = {MAX_BLOCKS} < 36"  # NeoNeXt-XL stays describable
    rows = nr.model_complexity(NeoNeXtConfig(per_stage_layers=(10**6, 1, 1, 1)), 224).num_layer_rows
    assert rows > 10**6, f"model_complexity of a million blocks counted {rows:,} layer rows, expected > 10**6"


# ----------------------------------------------------------------------------------------
# NeoNeXtConfig: every field checked, each error naming the field and the value
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, error, words",
    [
        ("per_stage_layers", (1, 2, 3), ValueError, ["per_stage_layers", "4 entries", "(1, 2, 3)"]),
        ("per_stage_layers", 5, TypeError, ["per_stage_layers", "sequence of 4 integers", "5"]),
        ("per_stage_layers", "1234", TypeError, ["per_stage_layers", "sequence", "'1234'"]),
        ("per_stage_layers", (1, 0, 1, 1), ValueError, ["per_stage_layers[1]", ">= 1", "0"]),
        ("dims", (8, 16, 32.0, 64), TypeError, ["dims[2]", "integer", "32.0"]),
        ("dims", (8, 16, True, 64), TypeError, ["dims[2]", "integer", "True"]),
        ("shifts", (0, 0, -1, 0), ValueError, ["shifts[2]", ">= 0", "-1"]),
        ("num_classes", 0, ValueError, ["num_classes", ">= 1", "0"]),
        ("num_classes", True, TypeError, ["num_classes", "integer", "True"]),
        ("in_chans", 3.0, TypeError, ["in_chans", "integer", "3.0"]),
        ("kernel_spec", 7, TypeError, ["kernel_spec", "str", "7"]),
        ("drop_path", 1.0, ValueError, ["drop_path", "< 1", "1.0"]),
        ("drop_path", -0.1, ValueError, ["drop_path", ">= 0", "-0.1"]),
        ("drop_path", float("nan"), ValueError, ["drop_path", "finite", "nan"]),
        ("drop_path", "0.1", TypeError, ["drop_path", "real number", "'0.1'"]),
        ("layer_scale_init_value", -1e-6, ValueError, ["layer_scale_init_value", ">= 0", "-1e-06"]),
        ("layer_scale_init_value", float("inf"), ValueError, ["layer_scale_init_value", "finite", "inf"]),
        ("linear_bias", 1, TypeError, ["linear_bias", "True or False", "1"]),
        # no stage order: a set or a dict would be counted in hash order
        ("dims", {96, 192, 384, 768}, TypeError, ["dims", "sequence of 4 integers", "{"]),
        ("shifts", dict.fromkeys((1, 2, 3, 4)), TypeError, ["shifts", "sequence of 4 integers", "{1: None"]),
        # read to at most 5 items: an endless iterable is refused, not drained into memory
        ("shifts", itertools.repeat(1), ValueError, ["shifts", "4 entries", "repeat(1)"]),
        ("per_stage_layers", itertools.count(1), ValueError, ["per_stage_layers", "4 entries", "count("]),
    ],
)
def test_config_field_errors_name_the_field_and_the_value(field, value, error, words):
    from neocell_ref.architecture import NeoNeXtConfig

    with pytest.raises(error) as info:
        NeoNeXtConfig(**{field: value})
    missing = [word for word in words if word not in str(info.value)]
    assert not missing, f"NeoNeXtConfig({field}={value!r}): message {str(info.value)!r} lacks {missing}"


def test_config_stores_plain_python_numbers():
    """Fields given as NumPy scalars or lists are stored as Python ints/floats and tuples,
    so that two equal configurations compare and hash equal."""
    import numpy as np

    from neocell_ref.architecture import NeoNeXtConfig

    config = NeoNeXtConfig(
        per_stage_layers=[np.int64(1)] * 4, dims=np.array([8, 16, 32, 64]), drop_path=np.float32(0.25)
    )
    assert config.per_stage_layers == (1, 1, 1, 1) and type(config.per_stage_layers[0]) is int, (
        f"per_stage_layers {config.per_stage_layers!r} of types {[type(n).__name__ for n in config.per_stage_layers]}"
    )
    assert config.dims == (8, 16, 32, 64) and all(type(d) is int for d in config.dims), (
        f"dims {config.dims!r} of types {[type(d).__name__ for d in config.dims]}"
    )
    assert config.drop_path == 0.25 and type(config.drop_path) is float, (
        f"drop_path {config.drop_path!r} of type {type(config.drop_path).__name__}"
    )
    plain = NeoNeXtConfig(per_stage_layers=(1, 1, 1, 1), dims=(8, 16, 32, 64), drop_path=0.25)
    assert config == plain, f"{config!r} differs from {plain!r}"
    assert hash(config) == hash(plain), f"hash {hash(config)} of {config!r} differs from {hash(plain)} of {plain!r}"


# ----------------------------------------------------------------------------------------
# resolution_pair: the one check of the network's input size
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "resolution, expected",
    [(224, (224, 224)), ((224, 160), (224, 160)), ([8, 12], (8, 12)), ("array", (8, 12)), ("int64", (8, 8))],
)
def test_resolution_pair_accepts_one_or_two_multiples_of_the_patch(resolution, expected):
    import numpy as np

    from neocell_ref.architecture import resolution_pair

    resolution = (
        {"array": np.array([8, 12]), "int64": np.int64(8)}.get(resolution, resolution)
        if isinstance(resolution, str)
        else resolution
    )
    pair = resolution_pair(resolution)
    assert pair == expected and all(type(side) is int for side in pair), f"{resolution!r} -> {pair!r}"


@pytest.mark.parametrize(
    "label",
    [
        "bool",
        "float",
        "string",
        "one side",
        "three sides",
        "endless",
        "0-d array",
        "not /4",
        "zero",
        "None",
        "set",
        "dict",
    ],
)
def test_resolution_pair_refuses_anything_else_at_once(label):
    """Each of these used to reach ``tuple()`` (a TypeError deep inside, or a hang on an
    endless iterable) or the stem; now one ValueError names the rule and the value."""
    import itertools

    import numpy as np

    from neocell_ref.architecture import resolution_pair

    value = {
        "bool": True,
        "float": 224.0,
        "string": "224",
        "one side": (8,),
        "three sides": (8, 8, 8),
        "endless": itertools.count(4, 4),
        "0-d array": np.array(8),
        "not /4": (8, 6),
        "zero": (0, 8),
        "None": None,
        "set": {224, 384},  # no order: which side is H?
        "dict": {224: 0, 384: 1},
    }[label]
    with pytest.raises(ValueError, match=r"input resolution must be \(H, W\) with positive multiples of 4"):
        resolution_pair(value)


def test_model_describe_uses_the_same_check():
    model = NeoNeXt(
        per_stage_layers=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=3, shifts=(0, 0, 0, 0), resolution=32
    )
    square, pair = model.describe(32), model.describe((32, 32))
    assert square is pair, (  # memoised under the pair
        f"describe(32) and describe((32, 32)) are different objects (equal: {square == pair})"
    )
    for bad in (32.0, "32", (32,), None):
        with pytest.raises(ValueError, match="input resolution"):
            model.describe(bad)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: architecture.describe("neonext_t"), TypeError, ["config", "NeoNeXtConfig", "'neonext_t'"]),
        (lambda: architecture.get_config(["neonext_t"]), TypeError, ["model name", "str", "['neonext_t']"]),
        (lambda: architecture.stage_kernel_codes(None), TypeError, ["kernel_spec", "str", "None"]),
    ],
    ids=["describe(name)", "get_config(list)", "stage_kernel_codes(None)"],
)
def test_description_functions_name_a_wrong_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    missing = [word for word in words if word not in str(info.value)]
    assert not missing, f"message {str(info.value)!r} lacks {missing}"
