"""The verifier: what a port author imports to test a port against the reference.

The reference modules of :mod:`neocell_ref` never import this subpackage; it is
imported explicitly (``from neocell_ref import verify``), because its conformance kit
needs hypothesis.

Its modules:

:mod:`~neocell_ref.verify.golden`
    Golden sets: the file format, ``export_golden`` and ``verify_golden`` (the
    ``neocell-ref golden`` command).
:mod:`~neocell_ref.verify.golden_ops`
    The golden operations: curated cases, reference computation, port conventions.
:mod:`~neocell_ref.verify.tolerances`
    The tolerance policy (bound rule, half-precision model, model tolerances,
    ``relative_error``) and the seeding of the cases.
:mod:`~neocell_ref.verify.precision`
    float16 and bfloat16: rounding, set dtypes, emulations of the mixed-precision model.
:mod:`~neocell_ref.verify.exec_port`
    The exec protocol: verifying a port that is a program.
:mod:`~neocell_ref.verify.diagnosis`
    Known porting defects: which one a failing output is consistent with.
:mod:`~neocell_ref.verify.gradcheck`
    Finite differences and the dot-product test for any backward.
:mod:`~neocell_ref.verify.testing`
    The conformance kit: hypothesis strategies and ``assert_*_matches`` for a port's
    own test suite (needs the ``test`` extra; ``import neocell_ref.verify.testing``).

The names below need NumPy and SciPy only; the kit is not imported here.
"""

from .diagnosis import DEFECTS, diagnose
from .golden import GoldenError, VerifyReport, export_golden, verify_golden
from .gradcheck import check_gradients, neocell_gradcheck
from .tolerances import relative_error

__all__ = [
    "export_golden",
    "verify_golden",
    "GoldenError",
    "VerifyReport",
    "check_gradients",
    "neocell_gradcheck",
    "diagnose",
    "DEFECTS",
    "relative_error",
]
