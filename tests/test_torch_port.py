"""The example PyTorch port (examples/torch_port) verified by the golden oracle.

Skipped, with the reason shown in pytest's summary, when PyTorch is not installed
(install the `ports` extra to run it).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from neocell_ref.golden import export_golden, verify_golden

torch = pytest.importorskip("torch", reason="PyTorch is not installed: install the 'ports' extra to verify the example port")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "torch_port"))
import neocell_torch  # noqa: E402


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_port_passes_golden_set(tmp_path, dtype):
    export_golden(tmp_path, dtype=dtype)
    report = verify_golden(tmp_path, "neocell", neocell_torch.forward, neocell_torch.backward)
    assert report.passed, report.table()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_port_passes_conformance_kit(dtype):
    from neocell_ref.testing import assert_neocell_matches

    assert_neocell_matches(neocell_torch.forward, neocell_torch.backward, dtype=np.dtype(dtype), max_examples=15)
