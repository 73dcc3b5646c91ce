"""neocell_ref: a pure-NumPy reference implementation and verifier for NeoCell and NeoNeXt.

NeoCell (Korviakov & Koposov, arXiv 2403.11251) multiplies every channel plane by
block-diagonal matrices from both sides: ``y[n, c] = Â_c x[n, c] B̂_c``. See
``docs/`` for the exact semantics and the derivations.
"""

from . import (  # noqa: E402  (the NeoNeXt network: nr.models.neonext_t(...))
    layer_kinds,  # noqa: E402,F401  (registers the built-in layer kinds of neocell_ref.registry)
    layers,
    models,
    train,
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
    # the NeoNeXt network and its training, as modules: nr.models.neonext_t(...)
    "layers",
    "models",
    "train",
]
