"""A reusable gradient checker: central finite differences and the dot-product test.

A backward is a function ``backward(grad_out, *inputs) -> grads`` returning one
gradient per input (``None`` for an input that is not differentiated). Two checks:

**Finite differences** (per element). For a fixed random cotangent ``g`` the scalar
``L(inputs) = <forward(inputs), g>`` has partial derivatives
``(L(x + e·δ) - L(x - e·δ)) / 2e`` that must match ``backward(g, ...)``
element by element. Large inputs are checked on a random sample of elements.

**Dot-product (adjoint) test** (per input). For a random direction ``d`` the
directional derivative ``<g, J d>`` (by central differences; exact for inputs on
which the forward is linear) must equal ``<Jᵀ g, d> = <backward(g)_i, d>``.

Run both in float64: in float32 the differencing error swamps the comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..validation import as_int, as_real_array, real_number

__all__ = ["GradcheckReport", "InputReport", "check_gradients", "assert_gradients", "neocell_gradcheck"]


@dataclass
class InputReport:
    """What the checker found for one input.

    Attributes
    ----------
    name : str
    fd_max_error : float
        ``|analytic - numeric|`` at the worst element.
    worst_index : tuple
        Index of the element with the largest error relative to its tolerance.
    analytic, numeric : float
        The two values at ``worst_index``.
    fd_passed : bool
    dot_analytic, dot_numeric : float
        ``<backward_i, d>`` and ``<g, J d>`` for the dot-product test.
    dot_passed : bool
    checked : int
        Number of elements compared by finite differences.
    """

    name: str
    fd_max_error: float
    worst_index: tuple
    analytic: float
    numeric: float
    fd_passed: bool
    dot_analytic: float
    dot_numeric: float
    dot_passed: bool
    checked: int

    @property
    def passed(self) -> bool:
        return self.fd_passed and self.dot_passed


@dataclass
class GradcheckReport:
    """Result of :func:`check_gradients`; ``str(report)`` is a readable table."""

    inputs: list = field(default_factory=list)
    rtol: float = 0.0
    atol: float = 0.0
    dot_rtol: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.inputs)

    @property
    def worst(self):
        """The input report with the largest finite-difference error."""
        return max(self.inputs, key=lambda r: r.fd_max_error) if self.inputs else None

    def __str__(self) -> str:
        lines = [
            f"gradient check: {'PASSED' if self.passed else 'FAILED'} "
            f"(finite differences rtol={self.rtol:g} atol={self.atol:g}; dot-product rtol={self.dot_rtol:g})"
        ]
        for r in self.inputs:
            lines.append(
                f"  {r.name:<24} fd {'ok ' if r.fd_passed else 'BAD'} max|err|={r.fd_max_error:.3e} "
                f"worst at {r.worst_index}: analytic={r.analytic:.12g} numeric={r.numeric:.12g} "
                f"({r.checked} elements) | dot {'ok ' if r.dot_passed else 'BAD'} "
                f"<Jᵀg,d>={r.dot_analytic:.12g} <g,Jd>={r.dot_numeric:.12g}"
            )
        return "\n".join(lines)

    __repr__ = __str__


def _inner(a, b) -> float:
    return float(np.vdot(np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()))


def check_gradients(
    forward: Callable,
    backward: Callable,
    inputs: Sequence[np.ndarray],
    *,
    names: Sequence[str] | None = None,
    rng: np.random.Generator | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    dot_rtol: float = 1e-8,
    max_elements: int = 64,
    wrt: Sequence[int] | None = None,
) -> GradcheckReport:
    """Check ``backward`` against ``forward`` by finite differences and the dot-product test.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs) -> ndarray`` (any shape).
    backward : callable
        ``backward(grad_out, *inputs) -> sequence`` with one gradient per input
        (same shape as the input) or ``None`` where not differentiated.
    inputs : sequence of float64 ndarray
        The point at which to check. Not modified.
    names : sequence of str, optional
        Names for the report (default ``input0``, ``input1``, ...).
    rng : numpy.random.Generator, optional
        For the cotangent, directions and element sample (default: seed 0).
    eps : float
        Central-difference step. The differences divide by the step as actually taken
        (``x + eps`` and ``x - eps`` are rounded); where rounding swallows it (``|x|``
        too large for ``eps``) the check is refused, since a difference of 0 would let a
        zero gradient pass.
    rtol, atol : float
        Element check passes where ``|analytic - numeric| <= atol + rtol * |numeric|``.
    dot_rtol : float
        Dot-product check passes where
        ``|a - n| <= dot_rtol * max(|a|, |n|, 1e-3 * scale) + atol`` with ``a`` and ``n``
        the analytic and numerical directional derivatives and ``scale`` the product of
        the norms of the gradient and the direction.
    max_elements : int
        Check at most this many elements per input (sampled without replacement).
    wrt : sequence of int, optional
        Indices of inputs to check (default: all whose gradient is not ``None``).
        Every listed input must get a gradient.

    Returns
    -------
    GradcheckReport

    Raises
    ------
    TypeError
        ``rng`` is not a ``numpy.random.Generator`` (or None); an input, the forward's
        output or a gradient is not real (complex, bool, object...): a complex gradient
        is refused, never cast.
    ValueError
        ``eps`` is not finite and > 0; a tolerance is not finite and >= 0;
        ``max_elements`` < 1; ``wrt`` names an input that does not exist, twice, or
        whose gradient is None; **nothing would be checked** (no inputs, an empty
        ``wrt``, a backward returning None for every input, or only inputs without
        elements); a gradient has the wrong shape; ``x ± eps`` rounds back to ``x``.
    """
    for what, fn in (("forward", forward), ("backward", backward)):
        if not callable(fn):
            raise TypeError(f"{what} must be callable, got {type(fn).__name__} {fn!r}")
    if rng is None:
        rng = np.random.default_rng(0)
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(0)) or None, got {rng!r}")
    eps = real_number(eps, "eps", 0.0, low_open=True)
    rtol = real_number(rtol, "rtol", 0.0)
    atol = real_number(atol, "atol", 0.0)
    dot_rtol = real_number(dot_rtol, "dot_rtol", 0.0)
    max_elements = as_int(max_elements, "max_elements", 1)
    if isinstance(inputs, np.ndarray) or not hasattr(inputs, "__len__"):
        raise TypeError(f"inputs must be a list of arrays, got {type(inputs).__name__}")
    if len(inputs) == 0:
        raise ValueError("nothing to check: inputs is empty")
    inputs = [as_real_array(a, f"inputs[{i}]") for i, a in enumerate(inputs)]
    inputs = [np.array(a, dtype=np.float64, copy=True) for a in inputs]
    if isinstance(names, (str, bytes)):
        raise TypeError(f"names must be a sequence of str, one per input, got the string {names!r}")
    names = [str(n) for n in names] if names is not None else [f"input{i}" for i in range(len(inputs))]
    if len(names) != len(inputs):
        raise ValueError(f"names has {len(names)} entries but there are {len(inputs)} inputs")
    if wrt is not None:
        if isinstance(wrt, (str, bytes)) or not hasattr(wrt, "__iter__"):
            raise TypeError(f"wrt must be a sequence of input indices, got {wrt!r}")
        wrt = [as_int(i, "wrt entry", 0) for i in wrt]
        if not wrt:
            raise ValueError("nothing to check: wrt is empty")
        bad = [i for i in wrt if i >= len(inputs)]
        if bad:
            raise ValueError(
                f"wrt names input(s) {bad}, but there are only {len(inputs)} inputs (indices 0..{len(inputs) - 1})"
            )
        if len(set(wrt)) != len(wrt):
            raise ValueError(f"wrt lists an input twice: {wrt}")
    out = as_real_array(forward(*inputs), "the forward's output")
    g = rng.standard_normal(out.shape)
    grads = backward(g, *inputs)
    if grads is None or isinstance(grads, np.ndarray) or not hasattr(grads, "__len__"):
        raise TypeError(f"backward must return a sequence with one gradient per input, got {type(grads).__name__}")
    grads = list(grads)
    if len(grads) != len(inputs):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(inputs)} inputs")
    if wrt is None:
        indices = [i for i in range(len(inputs)) if grads[i] is not None]
        if not indices:
            raise ValueError("nothing to check: backward returned None for every input")
    else:
        indices = wrt
        skipped = [names[i] for i in indices if grads[i] is None]
        if skipped:
            raise ValueError(f"wrt selects {skipped}, but backward returned None for them")
    if all(inputs[i].size == 0 for i in indices):
        raise ValueError(f"nothing to check: the checked inputs {[names[i] for i in indices]} have no elements")

    def loss(args):
        return _inner(forward(*args), g)

    report = GradcheckReport(rtol=rtol, atol=atol, dot_rtol=dot_rtol)
    for i in indices:
        x = inputs[i]
        grad = as_real_array(grads[i], f"gradient of {names[i]}").astype(np.float64)
        if grad.shape != x.shape:
            raise ValueError(f"gradient of {names[i]} has shape {grad.shape}, input has {x.shape}")
        # -- element-wise central differences on a sample of elements
        flat = np.arange(x.size)
        if x.size > max_elements:
            flat = rng.choice(x.size, size=max_elements, replace=False)
        worst = (-np.inf, (), 0.0, 0.0, 0.0)  # (score, index, analytic, numeric, |error|)
        fd_ok = True
        for f in flat:
            idx = np.unravel_index(f, x.shape)
            args = list(inputs)
            xp, xm = x.copy(), x.copy()
            xp[idx] += eps
            xm[idx] -= eps
            # The step actually taken: x ± eps is rounded, and where |x| is large
            # against eps it rounds back to x (the difference would then be 0 and a
            # zero gradient would "match").
            step = _taken_step(xp[idx] - xm[idx], eps, names[i], tuple(int(j) for j in idx), x[idx])
            args[i] = xp
            lp = loss(args)
            args[i] = xm
            lm = loss(args)
            num = (lp - lm) / step
            ana = grad[idx]
            err = abs(ana - num)
            bound = atol + rtol * abs(num)
            fd_ok &= err <= bound
            # A NaN error is the worst there is; a zero allowance fails any error.
            score = np.inf if np.isnan(err) else err / bound if bound > 0 else (0.0 if err == 0 else np.inf)
            if score > worst[0]:
                worst = (score, idx, ana, num, err)
        # -- dot-product test along a random direction, the one actually taken after
        # rounding x ± eps·d (the step of an element whose |x| dwarfs eps·|d| is 0)
        d = rng.standard_normal(x.shape)
        args = list(inputs)
        plus, minus = x + eps * d, x - eps * d
        d = (plus - minus) / (2 * eps)
        if x.size and not np.any(d):
            _taken_step(0.0, eps, names[i], "every element", float(np.max(np.abs(x))))
        args[i] = plus
        lp = loss(args)
        args[i] = minus
        lm = loss(args)
        dot_num = (lp - lm) / (2 * eps)
        dot_ana = _inner(grad, d)
        scale = max(abs(dot_ana), abs(dot_num), np.linalg.norm(grad) * np.linalg.norm(d) * 1e-3)
        dot_ok = abs(dot_ana - dot_num) <= dot_rtol * scale + atol
        report.inputs.append(
            InputReport(
                name=names[i],
                fd_max_error=float(worst[4]),
                worst_index=tuple(int(j) for j in worst[1]),
                analytic=float(worst[2]),
                numeric=float(worst[3]),
                fd_passed=bool(fd_ok),
                dot_analytic=dot_ana,
                dot_numeric=dot_num,
                dot_passed=bool(dot_ok),
                checked=len(flat),
            )
        )
    return report


def _taken_step(step, eps, name, where, value) -> float:
    """The central-difference step ``x + eps - (x - eps)`` as rounded, refused when
    rounding swallowed it (the differences would be 0 whatever the function)."""
    if not np.isfinite(value):
        raise ValueError(f"{name} at {where} is {value}: finite differences need a finite input")
    if not step > 0:
        raise ValueError(
            f"eps={eps:g} is too small for {name} at {where} (|x| = {abs(value):.3g}): x ± eps rounds back to x, "
            "so a finite difference would be 0 whatever the gradient; use a larger eps or smaller inputs"
        )
    return float(step)


def assert_gradients(forward, backward, inputs, **kwargs) -> GradcheckReport:
    """:func:`check_gradients`, raising ``AssertionError`` with the report on failure.

    Parameters
    ----------
    forward, backward, inputs
        As in :func:`check_gradients`.
    **kwargs
        Passed to :func:`check_gradients` (``names``, ``rng``, ``eps``, ``rtol``,
        ``atol``, ``dot_rtol``, ``max_elements``, ``wrt``).

    Returns
    -------
    GradcheckReport
        The passing report.

    Raises
    ------
    AssertionError
        An input fails either check; the message is ``str(report)``.
    TypeError, ValueError
        As :func:`check_gradients` raises them (bad arguments, nothing to check).
    """
    report = check_gradients(forward, backward, inputs, **kwargs)
    if not report.passed:
        raise AssertionError(str(report))
    return report


def neocell_gradcheck(x, weights_a, weights_b, specs, method="patchwise", backward=None, **kwargs):
    """Gradient-check NeoCell with respect to ``x`` and every kernel.

    Parameters
    ----------
    x, weights_a, weights_b, specs, method
        As in :func:`neocell_ref.neocell_forward`; converted to float64.
    backward : callable, optional
        A backward with the signature of :func:`neocell_ref.neocell_backward`
        (without ``method``) to check instead of the package's own, for example a
        port's. It is called as a port is (docs/porting.md section 2): ``specs`` as
        official-style dicts, those the caller wrote (a GroupSpec as its explicit
        dict), a fresh copy per call.
    **kwargs
        Passed to :func:`check_gradients`; ``wrt`` defaults to every input here (a
        backward returning None for a kernel is refused, not skipped). The step ``eps``
        defaults to ``1e-3`` here:
        NeoCell is linear in ``x`` and in each kernel separately, so a central
        difference along one input has no truncation error for any step, only the
        rounding error of the loss divided by the step. With ``1e-6`` that rounding
        noise (about ``u·Σ|y·g| / eps``) already exceeds the tolerances for a layer of a
        few thousand outputs.

    Returns
    -------
    GradcheckReport
        Inputs named ``x``, ``weights_a[g]``, ``weights_b[g]``.
    """
    kwargs.setdefault("eps", 1e-3)
    from ..neocell import neocell_backward, neocell_forward
    from ..spec import _as_written

    if backward is not None and not callable(backward):
        raise TypeError(f"backward must be callable or None, got {type(backward).__name__} {backward!r}")
    # A port gets the specs as the caller wrote them, as official-style dicts, a fresh
    # copy per call: the calling convention of docs/porting.md section 2.
    parsed, written = _as_written(specs)
    groups = len(parsed)
    for what, weights in (("weights_a", weights_a), ("weights_b", weights_b)):
        if isinstance(weights, np.ndarray) or not hasattr(weights, "__len__"):
            raise TypeError(f"{what} must be a list of one array per group, got {type(weights).__name__}")
        if len(weights) != groups:
            raise ValueError(f"{what} has {len(weights)} arrays, but specs have {groups} group(s): one per group")
    if backward is None:

        def bwd(gy, x_, wa, wb, _):
            return neocell_backward(gy, x_, wa, wb, parsed, method=method)

    else:
        bwd = backward

    def fwd(x_, *w):
        return neocell_forward(x_, list(w[:groups]), list(w[groups:]), parsed, method=method)

    def back(gy, x_, *w):
        gx, ga, gb = bwd(gy, x_, list(w[:groups]), list(w[groups:]), [dict(g) for g in written])
        return [gx, *ga, *gb]

    names = ["x"] + [f"weights_a[{g}]" for g in range(groups)] + [f"weights_b[{g}]" for g in range(groups)]
    # Every input is checked unless the caller chose: a backward returning None for a
    # kernel must fail ("backward returned None for them"), not drop that kernel's rows.
    kwargs.setdefault("wrt", list(range(len(names))))
    return check_gradients(fwd, back, [x, *weights_a, *weights_b], names=names, **kwargs)
