"""The ONNX Runtime port (examples/onnx_port) verified by the golden oracle and the kit, in float32.

Needs the 'onnx' extra (onnx and onnxruntime): skipped with the install command when
it is missing, failed instead under CI (tests/support/optional.py).

What is checked: NeoCell (golden set through ``verify_golden`` and the command line,
the kit's golden and drawn cases), every layer the model uses, the small golden
models' logits in inference and training mode, a NeoNeXt-T graph's logits at 224 px
against the float64 reference, and that deliberately wrong graphs fail all of these.
"""

import dataclasses
import sys

import numpy as np
import pytest
from support.optional import require
from support.paths import REPO

from neocell_ref.verify.golden import export_golden, verify_golden
from neocell_ref.verify.testing import assert_layer_matches, assert_model_matches, assert_neocell_matches
from neocell_ref.verify.tolerances import MODEL_RTOL

PORT_DIR = REPO / "examples" / "onnx_port"
#: Every layer of NeoNeXt that the kit checks and the port has a forward for.
LAYERS = ["linear", "conv1x1", "batchnorm", "layernorm", "gelu", "patchify", "avgpool", "layer_scale", "drop_path"]


@pytest.fixture(scope="module")
def port():
    require("onnx", "onnx")
    require("onnxruntime", "onnx")
    if str(PORT_DIR) not in sys.path:
        sys.path.insert(0, str(PORT_DIR))
    import neocell_onnx

    # One intra-op thread: the suite's graphs are small, and a pool per session only
    # adds start-up and contention on a shared 2-core machine.
    neocell_onnx.INTRA_OP_THREADS = 1
    return neocell_onnx


@pytest.fixture(scope="module")
def golden32(tmp_path_factory, port):
    directory = tmp_path_factory.mktemp("golden32")
    export_golden(directory, dtype="float32")
    return directory


def _forward_of(port, op):
    if op == "neocell":
        return port.forward
    if op == "model":
        return port.model_forward
    return getattr(port, f"{op}_forward")


# ------------------------------------------------------------------------------------
# golden verify
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["neocell", "model"] + LAYERS)
def test_port_passes_float32_golden_set(port, golden32, op):
    report = verify_golden(golden32, op, _forward_of(port, op))
    assert report.passed, report.table()
    assert report.results and not report.excluded, report.table()


def test_port_passes_golden_verify_command(port, golden32, monkeypatch, capsys):
    from neocell_ref.cli import main

    monkeypatch.chdir(PORT_DIR)  # the command imports "neocell_onnx:forward" from here
    code = main(["golden", "verify", str(golden32), "--op", "neocell", "--forward", "neocell_onnx:forward"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS" in out.upper(), out


@pytest.mark.parametrize("mutation", ["shift-corner-dropped"])  # the kit tests below take all three
def test_wrong_graph_fails_golden_set(port, golden32, mutation):
    report = verify_golden(golden32, "neocell", lambda *a: port.forward(*a, mutation=mutation))
    assert not report.passed, f"a graph with {mutation} passed the golden set:\n{report.table()}"


# ------------------------------------------------------------------------------------
# the conformance kit
# ------------------------------------------------------------------------------------
def test_port_passes_neocell_kit(port):
    assert_neocell_matches(port.forward, dtype=np.float32, max_examples=15)


@pytest.mark.parametrize("mutation", ["shift-corner-dropped", "shifts-ignored", "kernels-swapped"])
def test_wrong_graph_fails_neocell_kit(port, mutation):
    with pytest.raises(AssertionError, match="differs from the reference"):
        assert_neocell_matches(lambda *a: port.forward(*a, mutation=mutation), dtype=np.float32, max_examples=0)


def test_wrong_graph_fails_kit_on_drawn_cases_alone(port):
    # Without the curated cases, hypothesis must find a shifted layer on its own.
    with pytest.raises(AssertionError, match="drawn case"):
        assert_neocell_matches(
            lambda *a: port.forward(*a, mutation="shift-corner-dropped"),
            dtype=np.float32,
            golden=False,
            max_examples=15,
            shrink=False,
        )


@pytest.mark.parametrize("layer", LAYERS)
def test_port_passes_layer_kit(port, layer):
    assert_layer_matches(layer, getattr(port, f"{layer}_forward"), dtype=np.float32)


def test_wrong_layer_fails_layer_kit(port):
    # GELU's tanh approximation is a classic porting slip; the kit must see it.
    def gelu_tanh(x):
        x = np.asarray(x, dtype=np.float32)
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    assert_layer_matches("gelu", port.gelu_forward, dtype=np.float32)
    with pytest.raises(AssertionError):
        assert_layer_matches("gelu", gelu_tanh, dtype=np.float32)


def test_port_passes_model_kit(port):
    # Inference and training (BatchNorm with batch statistics; the golden models have no drop path).
    assert_model_matches(port.model_forward, dtype=np.float32)


def test_wrong_model_graph_fails_model_kit(port):
    with pytest.raises(AssertionError, match="differs from the reference"):
        assert_model_matches(lambda *a: port.model_forward(*a, mutation="shift-corner-dropped"), dtype=np.float32)


def test_training_with_drop_path_is_refused(port):
    from neocell_ref.models import NeoNeXt

    config = dict(per_stage_layers=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=5, drop_path=0.1)
    state = NeoNeXt(**config, resolution=112).state_dict()
    x = np.zeros((1, 3, 112, 112), np.float32)
    with pytest.raises(NotImplementedError, match="drop_path"):
        port.model_forward(x, state, config, True)
    shape = port.model_forward(x, state, config, False).shape
    assert shape == (1, 5), f"inference with drop_path: logits shape {shape}, expected (1, 5)"


# ------------------------------------------------------------------------------------
# NeoNeXt-T at 224 px
# ------------------------------------------------------------------------------------
def test_neonext_t_logits_match_reference(port):
    from neocell_ref.architecture import RELEASED_CHECKPOINT_OPTIONS
    from neocell_ref.models import NeoNeXt

    # Released-checkpoint options (biases, layer scale, "4+7" everywhere) so that every
    # option is exercised at full size; the tiny golden models cover the defaults.
    model = NeoNeXt(**RELEASED_CHECKPOINT_OPTIONS, rng=np.random.default_rng(0))
    # Layer scale initialised at 1e-6 would shrink every residual branch to nothing
    # and hide a wrong NeoCell; gamma = 1 keeps the branches in the logits (measured:
    # a dropped shift corner then moves the logits by 25 %, ignoring shifts by 37 %).
    state = {k: (np.ones_like(v) if k.endswith(".gamma") else v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224))
    expected = model.forward(x, cache=False)
    got = port.model_forward(x.astype(np.float32), state, dataclasses.asdict(model.config))
    assert got.shape == expected.shape == (1, 1000) and got.dtype == np.float32, (
        f"port logits {got.shape} {got.dtype}, reference {expected.shape}; expected (1, 1000) float32"
    )
    error = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
    rtol = MODEL_RTOL["float32"]["logits"]
    assert error <= rtol, f"NeoNeXt-T logits: normwise relative error {error:.3g} > {rtol:g}"


# ------------------------------------------------------------------------------------
# bad input: named errors before any graph runs
# ------------------------------------------------------------------------------------
def test_bad_input_gets_named_errors(port):
    x = np.zeros((1, 4, 8, 8), np.float32)
    w = [np.zeros((4, 3, 3), np.float32)]
    with pytest.raises(ValueError, match="unknown key"):
        port.forward(x, w, w, [{"kernel": 3, "channels": 4, "shfit": 1}])
    w5 = [np.zeros((5, 3, 3), np.float32)]
    with pytest.raises(ValueError, match="x has 4 channels but the groups' channels sum to 5"):
        port.forward(x, w5, w5, [{"kernel": 3, "channels": 5}])
    with pytest.raises(ValueError, match=r"weights_a\[0\] has shape"):
        port.forward(x, [np.zeros((4, 2, 2))], w, [{"kernel": 3, "channels": 4}])
    with pytest.raises(ValueError, match="shift"):
        port.forward(x, w, w, [{"kernel": 3, "channels": 4, "shift": 3}])
    with pytest.raises(ValueError, match="4-D"):
        port.forward(x[0], w, w, [{"kernel": 3, "channels": 4}])
    with pytest.raises(TypeError, match="x must be a real"):
        port.forward(x.astype(complex), w, w, [{"kernel": 3, "channels": 4}])
    with pytest.raises(ValueError, match="kernel_spec"):
        port.model_forward(np.zeros((1, 3, 32, 32)), {}, {"kernel_spec": "4+x"})
    with pytest.raises(ValueError, match="state has no entry 'stem.conv.weight'"):
        port.model_forward(np.zeros((1, 3, 32, 32)), {}, {"dims": (8, 16, 24, 32), "per_stage_layers": (1, 1, 1, 1)})


@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 6, 3, 2, 2)])
def test_channel_axis_layers_on_other_ranks(port, shape):
    # The golden layer cases hold 2-D and 4-D inputs; the channel-axis layers also take
    # (N, C, *S) of other ranks, through other nodes (Reshape to 4-D, Transpose).
    from neocell_ref import layers
    from neocell_ref.verify.tolerances import relative_error

    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    w, b = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    g, beta = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    f64 = lambda *a: [np.asarray(v, np.float64) for v in a]  # noqa: E731
    for name, got, ref in (
        ("linear", port.linear_forward(x, w, b), layers.linear_forward(*f64(x, w, b))),
        ("layernorm", port.layernorm_forward(x, g, beta), layers.layernorm_forward(*f64(x, g, beta))),
        ("layer_scale", port.layer_scale_forward(x, g), layers.layer_scale_forward(*f64(x, g))),
    ):
        assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
        assert relative_error(got, ref) < 1e-5, f"{name} on {shape}: relative error {relative_error(got, ref):.3g}"
