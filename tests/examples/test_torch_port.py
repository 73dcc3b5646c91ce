"""The example PyTorch port (examples/torch_port) verified by the golden oracle.

Skipped, with the install command shown in pytest's summary, when PyTorch is not
installed (the `ports` extra); under CI a missing PyTorch is a failure instead
(``tests/support/optional.py``, ``require``), so the port is never skipped silently there.
"""

import sys

import numpy as np
import pytest
from support.optional import require
from support.paths import REPO

from neocell_ref.verify.golden import export_golden, verify_golden

torch = require("torch", "ports")

sys.path.insert(0, str(REPO / "examples" / "torch_port"))
import neocell_torch  # noqa: E402


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_port_passes_golden_set(tmp_path, dtype):
    export_golden(tmp_path, dtype=dtype)
    report = verify_golden(tmp_path, "neocell", neocell_torch.forward, neocell_torch.backward)
    assert report.passed, report.table()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_port_passes_conformance_kit(dtype):
    from neocell_ref.verify.testing import assert_neocell_matches

    assert_neocell_matches(neocell_torch.forward, neocell_torch.backward, dtype=np.dtype(dtype), max_examples=15)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_cpu_half_matmul_accumulates_in_float32(dtype):
    """The premise of verifying the port in half precision on CPU: a product of half
    tensors sums in float32 or better. 1 + 4095·t with t a quarter of the half type's
    spacing at 1 stays 1 when summed in the half type (each addition rounds away) and
    is 1 + 4095·t when summed in float32 (then rounded once to the half type)."""
    t = 2.0**-12 if dtype == torch.float16 else 2.0**-9
    a = torch.full((1, 4096), t, dtype=dtype)
    a[0, 0] = 1.0
    b = torch.ones((4096, 1), dtype=dtype)
    want = float(torch.tensor(1 + 4095 * t).to(dtype))
    for label, value in (
        ("matmul", a @ b),
        ("bmm", torch.bmm(a[None], b[None])),
        ("einsum", torch.einsum("ph,ho->po", a, b)),
    ):
        assert float(value) == want, f"{dtype} {label}: {float(value)}, float32 accumulation gives {want}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_port_passes_half_precision_golden_set(tmp_path, dtype):
    """The port computing every tensor in float16 / bfloat16 (CPU) passes the half set."""
    export_golden(tmp_path, dtype=dtype, operations=["neocell"])
    report = verify_golden(
        tmp_path, "neocell", getattr(neocell_torch, f"forward_{dtype}"), getattr(neocell_torch, f"backward_{dtype}")
    )
    assert report.passed, report.table()
    worst = max(r.ratio for r in report.results)
    print(f"torch port, {dtype}: worst error/allowed {worst:.3f}")


def test_torch_port_in_bfloat16_fails_the_float16_set(tmp_path):
    """The float16 set is tight enough to tell a bfloat16 computation from a float16 one."""
    export_golden(tmp_path, dtype="float16", operations=["neocell"])
    report = verify_golden(tmp_path, "neocell", neocell_torch.forward_bfloat16, neocell_torch.backward_bfloat16)
    assert not report.passed, (
        "the port computing in bfloat16 passed the float16 golden set"
        f" (worst error/allowed {max(r.ratio for r in report.results):.3f})\n{report.table()}"
    )
    assert {r.case for r in report.failures} == {r.case for r in report.results}, report.table()
