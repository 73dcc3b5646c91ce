"""``neocell-ref demo``: a short tour that checks itself (the package's main job).

Builds a "4+7" NeoCell with shifts, runs the three formulations, prints how far
apart they are, and gradient-checks the patch-wise backward; then prints what a 7x7
NeoCell layer costs against the depthwise convolution it replaces, and what a whole
NeoNeXt-T costs in every counting convention. Exit status 1 if anything disagrees,
so the demo doubles as a smoke test.
"""

from __future__ import annotations

import numpy as np

from .init import neo_init
from .neocell import METHODS, neocell_backward, neocell_forward
from .spec import parse_kernel_code
from .validation import as_flag
from .verify.gradcheck import neocell_gradcheck


def run_demo(channels=24, size=(23, 30), code="4+7", shift=1, seed=0, out=print, costs=True) -> bool:
    """Run the demonstration; return True when every check passed.

    ``costs=False`` skips the complexity tables.
    """
    costs = as_flag(costs, "costs")
    rng = np.random.default_rng(seed)
    specs = parse_kernel_code(code, channels=channels, shift=shift)
    weights_a, weights_b = neo_init(specs, rng=rng)
    x = rng.standard_normal((2, channels, *size))
    grad_y = rng.standard_normal(x.shape)
    out(f'NeoCell "{code}", shift {shift}, C={channels}, input {x.shape} (float64)')
    for g, spec in enumerate(specs):
        out(
            f"  group {g}: {spec.channels} channels, A {spec.h_out}x{spec.h_in}, "
            f"B {spec.w_in}x{spec.w_out}, {spec.subgroups_a} shifted sub-groups"
        )
    ref_y = neocell_forward(x, weights_a, weights_b, specs, method="patchwise")
    ref_g = neocell_backward(grad_y, x, weights_a, weights_b, specs, method="patchwise")
    ok = True
    out("  method       max|y - y_patchwise|   max|grad - grad_patchwise|")
    for method in METHODS:
        y = neocell_forward(x, weights_a, weights_b, specs, method=method)
        gx, ga, gb = neocell_backward(grad_y, x, weights_a, weights_b, specs, method=method)
        dy = float(np.abs(y - ref_y).max())
        dg = max(float(np.abs(a - b).max()) for a, b in zip([gx, *ga, *gb], [ref_g[0], *ref_g[1], *ref_g[2]]))
        ok &= dy < 1e-12 and dg < 1e-12
        out(f"  {method:<12} {dy:<22.3e} {dg:.3e}")
    report = neocell_gradcheck(x[:1, :, :9, :11], weights_a, weights_b, specs, rng=np.random.default_rng(seed))
    out(str(report))
    ok &= report.passed
    if costs:
        from .calculator import complexity, model_complexity, released_checkpoint_options

        out("")
        out(str(complexity(k=7, c=96)))
        out("")
        out(str(model_complexity("neonext_t", 224, **released_checkpoint_options(224))))
        out("(more: neocell-ref complexity --help, neocell-ref model-complexity --help, neocell-ref golden --help)")
    out("demo: all checks passed" if ok else "demo: CHECKS FAILED")
    return ok
