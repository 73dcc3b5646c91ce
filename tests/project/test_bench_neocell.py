"""``benchmarks/bench_neocell.py --profile``: its step profile must see the fast path's products.

The step profile splits the patch-wise time into matrix products (timed by wrappers
put in place of the product functions that :mod:`neocell_ref.neocell_fast` calls) and
the rest. When the fast path moved to its own module, the wrappers kept patching the
plain module, and the profile reported every millisecond as "copies + Python" without
an error; these tests keep that from happening again.
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
from support.paths import REPO

import neocell_ref.instrument as instrument
import neocell_ref.neocell_fast as fast


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_neocell", REPO / "benchmarks" / "bench_neocell.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_profile_times_products_and_restores_everything(bench, capsys, monkeypatch):
    monkeypatch.setenv("NEOCELL_THREADS", "2")
    bench.step_profile(rounds=1)
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if re.match(r"\s+(forward|backward): total", line)]
    assert len(lines) == 4, f"expected forward and backward lines for float32 and float64, got:\n{text}"
    for line in lines:
        total = float(re.search(r"total ([\d.]+) ms", line).group(1))
        products = [float(v) for v in re.findall(r"products ([\d.]+) ms", line)]
        assert len(products) == 2, f"left and right products not both timed: {line!r}"
        assert all(0 < v < total for v in products), f"a product time outside (0, total): {line!r}"
    backward = [line for line in lines if "backward" in line]
    assert all("reductions" in line for line in backward), f"kernel gradients not timed: {backward}"
    # the wrappers are gone and the thread setting is back
    assert fast.matmul is instrument.matmul, f"neocell_fast.matmul left patched: {fast.matmul!r}"
    assert fast.stacked_dot is instrument.stacked_dot, f"neocell_fast.stacked_dot left patched: {fast.stacked_dot!r}"
    assert fast.outer is instrument.outer, f"neocell_fast.outer left patched: {fast.outer!r}"
    assert os.environ["NEOCELL_THREADS"] == "2", f"NEOCELL_THREADS left at {os.environ['NEOCELL_THREADS']!r}, was '2'"


def test_step_profile_refuses_when_no_product_is_seen(bench, monkeypatch):
    # a fast path that no longer calls the wrapped names: the profile must say so, not
    # report all time as copies
    def no_products(*args, **kwargs):
        return None

    monkeypatch.setattr(bench, "neocell_forward", no_products)
    monkeypatch.setattr(bench, "neocell_backward", no_products)
    with pytest.raises(RuntimeError, match="no product went through"):
        bench.step_profile(rounds=1)
    assert fast.matmul is instrument.matmul, f"neocell_fast.matmul left patched after the error: {fast.matmul!r}"
