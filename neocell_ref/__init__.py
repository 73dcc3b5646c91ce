"""neocell_ref: a pure-NumPy reference implementation and verifier for NeoCell and NeoNeXt.

NeoCell (Korviakov & Koposov, arXiv 2403.11251) multiplies every channel plane by
block-diagonal matrices from both sides: ``y[n, c] = Â_c x[n, c] B̂_c``. See
``docs/`` for the exact semantics and the derivations.

Import rule. ``import neocell_ref`` imports every reference module (they need NumPy
and SciPy only), so each is an attribute of the package: ``nr.spec``,
``nr.expansion``, ``nr.neocell``, ``nr.models``, ``nr.calculator``, ... The everyday
functions are re-exported under their own names (``nr.expand``, ``nr.complexity``,
``nr.neocell_forward``, ...); no function shares its name with a module. The verifier
is not imported: it is imported explicitly, ``from neocell_ref import verify`` (golden
sets, gradient checker, defect catalogue, tolerances) or ``import
neocell_ref.verify.testing`` (the conformance kit, which needs hypothesis). The
reference modules never import the verifier. The command line (``cli``, ``demo``)
is imported by the ``neocell-ref`` script.
"""

# Every reference module (tests/project/test_import_graph.py checks that none is missing).
from . import (
    architecture,
    calculator,
    expansion,
    init,
    instrument,
    layer_kinds,  # registers the built-in layer kinds of neocell_ref.registry
    layers,
    models,
    models_fast,
    models_fast_train,
    neocell,
    neocell_fast,
    registry,
    spec,
    train,
    validation,
)
from .calculator import complexity, model_complexity
from .expansion import expand, expand_adjoint, expand_kernel, expand_kernel_adjoint, nnz
from .init import neo_init, skewed_identity
from .neocell import neocell_backward, neocell_forward
from .spec import GroupSpec, parse_group, parse_kernel_code, parse_specs

__version__ = "0.2.0"

__all__ = [
    "GroupSpec",
    "parse_group",
    "parse_specs",
    "parse_kernel_code",
    "expand",
    "expand_adjoint",
    "expand_kernel",
    "expand_kernel_adjoint",
    "nnz",
    "neocell_forward",
    "neocell_backward",
    "neo_init",
    "skewed_identity",
    "complexity",
    "model_complexity",
    # the reference modules (nr.models.neonext_t(...), nr.calculator.CONVENTIONS, ...)
    "validation",
    "spec",
    "expansion",
    "neocell",
    "neocell_fast",
    "init",
    "instrument",
    "registry",
    "layers",
    "layer_kinds",
    "architecture",
    "models",
    "models_fast",
    "models_fast_train",
    "train",
    "calculator",
]
