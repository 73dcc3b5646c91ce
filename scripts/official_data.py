"""Re-derive or grow the official conformance data with the authors' own implementation.

The arrays in ``tests/data/official_*.npz`` are outputs of the authors' NeoNeXt PyTorch
implementation (github HapKoM/neonext, commit ``ea32509``; SPEC section 9). This
script runs that implementation on the CPU, from a checkout of their repository, so
anyone can audit the data or add cases. It loads their code with
``scripts/official_loader.py`` (no CUDA needed, their files are neither changed nor
copied) and needs the ``official`` extra: ``python -m pip install ".[official]"``.

Commands
--------
``check --official PATH [--data DIR]``
    For every ``official_*.json`` / ``.npz`` pair in ``DIR`` (default: ``tests/data``),
    re-run their implementation on the stored inputs and weights, print the relative
    error ``max|got - ref| / max|ref|`` (SPEC section 9) of every stored result and the
    worst one, and exit 0 only if every error is within the case's tolerance: 1e-12 for
    float64 (all of ``tests/data``). Integer arrays must match exactly; a model's
    parameter gradient that vanishes mathematically (rounding noise, at most 1e-10 of
    its layer's largest) is measured against that layer maximum
    (``neocell_ref.verify.tolerances.model_errors``). An array that is neither an input
    nor a re-derived result is reported and fails the check.

``generate --official PATH --out DIR [--stem NAME] ...``
    Write ``DIR/NAME.npz`` and ``DIR/NAME.json`` in the format of
    ``official_neocell.{npz,json}``: either one new case (``--specs JSON --shape N C H W
    [--seed S] [--name CASE]``, inputs and weights drawn from
    ``numpy.random.default_rng(S)``) or cases whose specs, inputs and weights are taken
    from existing data (``--from STEM --case NAME ...``). ``--dtype`` chooses float64
    (default), float32 or ``float16-autocast``. Every float64 case is cross-checked
    against this package's reference (``neocell_ref``) and must agree within 1e-12; the
    low-precision cases print their error against the float64 reference for
    information.

``generate-model --official PATH --out DIR --stem NAME --config JSON [--shape N C H W] [--seed S]``
    Write ``DIR/NAME.npz`` and ``DIR/NAME.json`` in the format of
    ``official_tiny_model.{npz,json}``: their ``NeoNeXt(**config)`` in float64 with
    every state-dict entry drawn from ``numpy.random.default_rng(S)`` (see
    :func:`draw_model_state`), an input of shape ``N C H W`` (default ``2 3 112 112``)
    and an upstream gradient; their inference forward, training forward and backward.
    The results are cross-checked against this package's model, which must agree
    within the verifier's float64 model tolerance (``MODEL_RTOL``, 1e-10).

float16 autocast on the CPU: their forward runs under ``torch.autocast("cpu",
dtype=torch.float16)`` (the block-diagonal products run in float16, ``y`` is float16).
Their backward is decorated with ``torch.cuda.amp.custom_bwd``, which on a GPU replays
the forward's autocast state; on the CPU that decorator does nothing, and their
backward then fails on mixed float16/float32 operands. This script therefore calls
the backward inside the same CPU autocast region, which is what the decorator does on
a GPU. The numbers are CPU float16 kernels' results, not bit-for-bit what a GPU gives.

Exit status: 0 success; 1 a re-derived array differs beyond its tolerance or cannot be
re-derived (``check``), or a float64 case disagrees with the reference or their code
rejects a case (``generate``); 2 unusable arguments
(e.g. a path that is not a checkout) or a missing dependency, with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
try:
    import neocell_ref  # noqa: F401  (installed with the package, or ...)
except ImportError:  # ... run from a source tree that is not installed
    sys.path.insert(1, str(REPO))

from official_loader import (
    EXPECTED_COMMIT,
    NotACheckoutError,
    checkout_commit,
    validate_checkout,
)

DEFAULT_DATA = REPO / "tests" / "data"
#: ``check`` audits every JSON/NPZ pair whose name matches this pattern.
PATTERN = "official_*.json"
#: Re-derivation tolerance per dtype of a case: float64 is SPEC section 9's 1e-12. The
#: low-precision ones allow for CPU kernels that differ between machines.
TOLERANCES = {"float64": 1e-12, "float32": 1e-5, "float16-autocast": 1e-2}
DTYPES = tuple(TOLERANCES)
#: Agreement required between a generated float64 case and the reference (SPEC section 9).
REFERENCE_TOLERANCE = 1e-12


class UsageError(Exception):
    """Unusable arguments or environment: exit status 2 with a one-line message."""


# --------------------------------------------------------------------------------------
# reading and comparing
# --------------------------------------------------------------------------------------
def read_pair(json_path: Path):
    """``(meta, arrays)`` of a JSON/NPZ pair; the NPZ is loaded without pickle."""
    npz_path = json_path.with_suffix(".npz")
    if not npz_path.is_file():
        raise UsageError(f"{json_path.name}: no {npz_path.name} beside it")
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{json_path.name}: not readable JSON ({exc})") from None
    try:
        with np.load(npz_path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{npz_path.name}: not a readable npz without pickles ({exc})") from None
    return meta, arrays


def result_row(name, got, arrays, tolerance):
    """``(label, error, tolerance)`` of one re-derived result against the stored array.

    A missing stored array, a different shape or a different dtype is an infinite error,
    and the label says which.
    """
    if name not in arrays:
        return f"{name} (missing)", math.inf, tolerance
    ref = arrays[name]
    if np.asarray(got).dtype != ref.dtype:
        return f"{name} (stored as {ref.dtype}, re-derived as {np.asarray(got).dtype})", math.inf, tolerance
    if np.shape(got) != ref.shape:
        return f"{name} (stored shape {ref.shape}, re-derived {np.shape(got)})", math.inf, tolerance
    return name, compare(got, ref), tolerance


def compare(got, ref) -> float:
    """SPEC section 9's relative error; integer arrays must be equal (0 or inf)."""
    from neocell_ref.verify.tolerances import relative_error

    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return math.inf
    if ref.dtype.kind in "iub":
        return 0.0 if np.array_equal(got, ref) else math.inf
    return relative_error(got, ref)


# --------------------------------------------------------------------------------------
# running their implementation
# --------------------------------------------------------------------------------------
def _torch_dtype(dtype: str):
    import torch

    return torch.float64 if dtype == "float64" else torch.float32


def run_neocell_case(impl, specs, x, weights_a, weights_b, grad_y_fn, dtype: str):
    """Their NeoCell forward and backward on numpy inputs.

    Parameters
    ----------
    impl : official_loader.OfficialImplementation
    specs : list of dict
    x : ndarray, shape (N, C, H, W)
    weights_a, weights_b : list of ndarray
    grad_y_fn : callable
        ``grad_y_fn(y_shape, y_dtype) -> ndarray``: the upstream gradient.
    dtype : {"float64", "float32", "float16-autocast"}
        Parameter and input dtype (float32 for ``float16-autocast``).

    Returns
    -------
    dict
        ``y``, ``grad_y``, ``grad_x``, ``grad_weight_a_I``, ``grad_weight_b_I`` as numpy arrays.
    """
    import contextlib

    import torch

    tdtype = _torch_dtype(dtype)
    layer = impl.neocell_layer(specs, dtype=tdtype)
    if len(layer.weight_a) != len(weights_a) or len(layer.weight_b) != len(weights_b):
        raise ValueError(f"{len(specs)} groups in specs but {len(weights_a)}/{len(weights_b)} weight arrays")
    with torch.no_grad():
        for param, value in zip([*layer.weight_a, *layer.weight_b], [*weights_a, *weights_b]):
            if tuple(param.shape) != value.shape:
                raise ValueError(f"weight shape {value.shape}, their layer expects {tuple(param.shape)}")
            param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(tdtype).requires_grad_(True)
    region = torch.autocast("cpu", dtype=torch.float16) if dtype == "float16-autocast" else contextlib.nullcontext()
    with region:  # the backward runs in the same region: see the module docstring
        y = layer(xt)
        grad_y = grad_y_fn(tuple(y.shape), y.dtype)
        y.backward(torch.from_numpy(np.ascontiguousarray(grad_y)))
    out = {"y": y.detach().numpy(), "grad_y": np.asarray(grad_y), "grad_x": xt.grad.numpy()}
    for g, (pa, pb) in enumerate(zip(layer.weight_a, layer.weight_b)):
        out[f"grad_weight_a_{g}"] = pa.grad.numpy()
        out[f"grad_weight_b_{g}"] = pb.grad.numpy()
    return out


def _numpy_dtype_of(torch_dtype):
    import torch

    return {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}[torch_dtype]


def check_neocell_file(impl, meta, arrays, report):
    """Re-derive every result of a NeoCell case file; record ``(name, error, tolerance)``."""
    used = set()
    for case in meta.get("cases", []):
        name, groups = case["name"], int(case["groups"])
        dtype = case.get("dtype", "float64")
        if dtype not in TOLERANCES:
            raise UsageError(f"case {name}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        inputs = [f"{name}/x", f"{name}/grad_y"]
        inputs += [f"{name}/weight_{ab}_{g}" for ab in "ab" for g in range(groups)]
        missing = [key for key in inputs if key not in arrays]
        if missing:
            report.append((f"{', '.join(missing)} (input missing)", math.inf, TOLERANCES[dtype]))
            continue
        used.update(inputs)
        results = ["y", "grad_x"] + [f"grad_weight_{ab}_{g}" for ab in "ab" for g in range(groups)]
        stored_grad_y = arrays[f"{name}/grad_y"]
        try:
            got = run_neocell_case(
                impl,
                case["specs"],
                arrays[f"{name}/x"],
                [arrays[f"{name}/weight_a_{g}"] for g in range(groups)],
                [arrays[f"{name}/weight_b_{g}"] for g in range(groups)],
                lambda shape, torch_dtype, stored=stored_grad_y: stored,
                dtype,
            )
        except (RuntimeError, TypeError, ValueError) as exc:  # e.g. specs their code rejects
            report.append((f"{name} (not re-derived: {_first_line(exc)})", math.inf, TOLERANCES[dtype]))
            used.update(f"{name}/{key}" for key in results)
            continue
        for key in results:
            full = f"{name}/{key}"
            used.add(full)
            report.append(result_row(full, got[key], arrays, TOLERANCES[dtype]))
    return used


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _tensor_state(state_arrays):
    import torch

    return {key: torch.from_numpy(np.array(value)) for key, value in state_arrays.items()}


def model_options(config):
    """A model file's JSON ``config`` as keyword options: its lists (per-stage values) as tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}


def run_model_case(impl, config, state, x, grad_logits):
    """Their NeoNeXt: load ``state``, inference forward, training forward, backward (float64).

    Returns
    -------
    dict
        ``logits_eval``, ``logits_train``, ``grad_x``, ``grad/KEY`` for every trainable
        parameter and ``buffers_after_train/KEY`` for every buffer, as numpy arrays.
    """
    import torch

    model = impl.build_model(**model_options(config)).to(torch.float64)
    model.load_state_dict(_tensor_state(state), strict=True)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    model.eval()
    with torch.no_grad():
        logits_eval = model(xt)
    model.train()
    xt = xt.clone().requires_grad_(True)
    logits_train = model(xt)
    logits_train.backward(torch.from_numpy(np.ascontiguousarray(grad_logits)))
    out = {
        "logits_eval": logits_eval.numpy(),
        "logits_train": logits_train.detach().numpy(),
        "grad_x": xt.grad.numpy(),
    }
    out.update({f"grad/{key}": p.grad.numpy() for key, p in model.named_parameters() if p.grad is not None})
    out.update({f"buffers_after_train/{key}": b.numpy() for key, b in model.named_buffers()})
    return out


def check_model_file(impl, meta, arrays, report):
    """Re-derive every result of a whole-model file (``official_tiny_model`` format)."""
    from neocell_ref.verify.tolerances import model_errors

    state = {key[len("state/") :]: value for key, value in arrays.items() if key.startswith("state/")}
    needed = ["x", "grad_logits"]
    missing = [key for key in needed if key not in arrays]
    if missing or not state:
        report.append((f"{', '.join(missing) or 'state/*'} (input missing)", math.inf, TOLERANCES["float64"]))
        return set()
    used = {f"state/{key}" for key in state} | set(needed)
    try:
        got = run_model_case(impl, meta["config"], state, arrays["x"], arrays["grad_logits"])
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a state dict that does not fit
        report.append((f"model (not re-derived: {_first_line(exc)})", math.inf, TOLERANCES["float64"]))
        return set(arrays)
    # parameter gradients normwise per layer, as the verifier compares them (a gradient
    # that vanishes mathematically is rounding noise on both sides)
    try:
        layered = model_errors(got, {key: arrays[key] for key in got if key in arrays}, _architecture(meta))
    except (TypeError, ValueError) as exc:  # neocell_ref refuses the configuration: plain errors
        print(f"note: per-layer gradient errors unavailable ({_first_line(exc)}); every array on its own")
        layered = {}
    for key in sorted(got):  # every result their model produces must be stored
        used.add(key)
        label, error, tolerance = result_row(key, got[key], arrays, TOLERANCES["float64"])
        report.append((label, layered.get(key, error) if label == key else error, tolerance))
    return used


def _architecture(meta):
    """This package's description of a model file's network (it names each parameter's layer)."""
    from neocell_ref.architecture import NeoNeXtConfig, describe

    return describe(NeoNeXtConfig(**model_options(meta["config"])), tuple(meta["input_shape"][2:]))


def cmd_check(args) -> int:
    data = Path(args.data)
    if not data.is_dir():
        raise UsageError(f"--data {args.data!r}: not a folder")
    files = sorted(data.glob(PATTERN))
    if not files:
        raise UsageError(f"--data {args.data!r}: no {PATTERN} files")
    pairs = [(path, *read_pair(path)) for path in files]
    impl = _load(args)
    worst = (None, -1.0, None)
    failures = 0
    total = 0
    for path, meta, arrays in pairs:
        report = []
        try:
            if "cases" in meta:
                used = check_neocell_file(impl, meta, arrays, report)
            elif "config" in meta:
                used = check_model_file(impl, meta, arrays, report)
            else:
                raise UsageError(f"{path.name}: neither NeoCell cases ('cases') nor a model ('config')")
        except KeyError as exc:
            raise UsageError(f"{path.name}: a case lacks the field {exc}") from None
        for key in sorted(set(arrays) - used):
            report.append((f"{key} (neither an input nor a re-derived result)", math.inf, 0.0))
        print(f"{path.stem}: {len(report)} results compared")
        width = max(len(name) for name, _, _ in report)
        for name, error, tolerance in report:
            ok = error <= tolerance
            failures += not ok
            total += 1
            print(f"  {name:<{width}}  {error:.3e}  {'ok' if ok else f'FAIL (> {tolerance:g})'}")
            if error > worst[1]:
                worst = (f"{path.stem}:{name}", error, tolerance)
    print(f"worst relative error: {worst[1]:.3e} ({worst[0]})")
    if failures:
        print(f"FAILED: {failures} of {total} arrays beyond their tolerance")
        return 1
    print(f"OK: all {total} arrays re-derived within tolerance (1e-12 for float64)")
    return 0


# --------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------
ARRAYS_NOTE = (
    "for each case NAME: NAME/x, NAME/y, NAME/grad_y, NAME/grad_x, NAME/weight_a_I, NAME/weight_b_I, "
    "NAME/grad_weight_a_I, NAME/grad_weight_b_I (I = channel group index)"
)


def parse_specs_argument(text: str):
    """``--specs``: a JSON list of official group dicts (checked by the reference's parser)."""
    from neocell_ref.spec import parse_specs

    try:
        specs = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--specs: not valid JSON ({exc})") from None
    if isinstance(specs, dict):
        specs = [specs]
    if not isinstance(specs, list) or not specs or not all(isinstance(g, dict) for g in specs):
        raise UsageError(f"--specs: expected a JSON list of group dicts, got {text!r}")
    try:
        parse_specs(specs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--specs: {exc}") from None
    return specs


def planned_cases(args):
    """``[(name, specs, seed or None, inputs or None)]`` from the arguments, validated."""
    from neocell_ref.spec import check_input_size, parse_specs

    suffix = "" if args.dtype == "float64" else "_" + args.dtype.replace("-", "_")
    if args.source:
        if args.specs or args.shape:
            raise UsageError("--from cannot be combined with --specs/--shape")
        if not args.case:
            raise UsageError("--from needs at least one --case NAME")
        source = Path(args.source)
        json_path = source if source.suffix == ".json" else source.with_suffix(".json")
        if not json_path.is_file():
            raise UsageError(f"--from {args.source!r}: no {json_path.name}")
        meta, arrays = read_pair(json_path)
        by_name = {case["name"]: case for case in meta.get("cases", [])}
        planned = []
        for name in args.case:
            if name not in by_name:
                raise UsageError(f"--case {name!r}: not in {json_path.name} (has {', '.join(by_name) or 'no cases'})")
            case = by_name[name]
            groups = int(case["groups"])
            inputs = {
                "x": arrays[f"{name}/x"],
                "weights_a": [arrays[f"{name}/weight_a_{g}"] for g in range(groups)],
                "weights_b": [arrays[f"{name}/weight_b_{g}"] for g in range(groups)],
                "grad_y": arrays[f"{name}/grad_y"],
            }
            planned.append((name + suffix, case["specs"], None, inputs, f"{json_path.stem} case {name}"))
        return planned
    if args.case:
        raise UsageError("--case needs --from")
    if not args.specs or not args.shape:
        raise UsageError("generate needs either --specs and --shape, or --from and --case")
    specs = parse_specs_argument(args.specs)
    n, c, h, w = check_shape_argument(args.shape)
    parsed = parse_specs(specs)
    channels = sum(g.channels for g in parsed)
    if channels != c:
        raise UsageError(f"--shape: C={c} but the specs have {channels} channels")
    try:
        check_input_size(parsed, h, w)
    except ValueError as exc:
        raise UsageError(f"--shape: {exc}") from None
    check_seed_argument(args.seed)
    name = args.name or f"case_seed{args.seed}_{n}x{c}x{h}x{w}"
    return [(name + suffix, specs, args.seed, None, f"drawn from numpy.random.default_rng({args.seed})")]


def check_shape_argument(shape):
    """``--shape N C H W``: every size >= 1 and at most 2**24 elements (cases stay small)."""
    text = " ".join(map(str, shape))
    if min(shape) < 1:
        raise UsageError(f"--shape {text}: every size must be >= 1")
    if math.prod(shape) > 1 << 24:
        raise UsageError(f"--shape {text}: more than 2**24 elements; keep cases small")
    return tuple(shape)


def check_seed_argument(seed):
    """``--seed``: a seed ``numpy.random.default_rng`` takes (>= 0)."""
    if seed < 0:
        raise UsageError(f"--seed {seed}: must be >= 0")


def output_targets(args):
    """``[NAME.npz, NAME.json]`` in ``--out`` for ``--stem NAME``, after checking both
    (a plain printable file name; existing files only with ``--force``)."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r}: exists and is not a folder")
    stem = args.stem
    if not stem or Path(stem).name != stem or stem.startswith(".") or not stem.isprintable():
        raise UsageError(f"--stem {stem!r}: must be a plain file name without folders")
    targets = [out / f"{stem}.npz", out / f"{stem}.json"]
    if not args.force and any(path.exists() for path in targets):
        raise UsageError(f"{targets[0].name}/{targets[1].name} already exist in {args.out!r}; pass --force to replace")
    return targets


def write_pair(targets, arrays, meta):
    """Write ``arrays`` to the ``.npz`` and ``meta`` to the ``.json`` of ``targets``
    (:func:`output_targets`), creating the folder."""
    targets[0].parent.mkdir(parents=True, exist_ok=True)
    np.savez(targets[0], **arrays)
    targets[1].write_text(json.dumps(meta, indent=1) + "\n")


def draw_inputs(specs, shape, seed):
    """Standard-normal ``x`` and weights from ``default_rng(seed)`` (x, then A per group, then B per group)."""
    from neocell_ref.spec import parse_specs

    rng = np.random.default_rng(seed)
    parsed = parse_specs(specs)
    x = rng.standard_normal(shape)
    weights_a = [rng.standard_normal((g.channels, g.h_out, g.h_in)) for g in parsed]
    weights_b = [rng.standard_normal((g.channels, g.w_in, g.w_out)) for g in parsed]
    return rng, x, weights_a, weights_b


def reference_errors(specs, arrays, groups):
    """Relative error of the stored official results against ``neocell_ref`` in float64."""
    from neocell_ref import neocell_backward, neocell_forward

    x = arrays["x"].astype(np.float64)
    wa = [arrays[f"weight_a_{g}"].astype(np.float64) for g in range(groups)]
    wb = [arrays[f"weight_b_{g}"].astype(np.float64) for g in range(groups)]
    gy = arrays["grad_y"].astype(np.float64)
    y = neocell_forward(x, wa, wb, specs)
    gx, ga, gb = neocell_backward(gy, x, wa, wb, specs)
    ref = {"y": y, "grad_x": gx}
    ref.update({f"grad_weight_a_{g}": ga[g] for g in range(groups)})
    ref.update({f"grad_weight_b_{g}": gb[g] for g in range(groups)})
    return {key: compare(arrays[key], value) for key, value in ref.items()}


def cmd_generate(args) -> int:
    targets = output_targets(args)
    planned = planned_cases(args)
    names = [name for name, *_ in planned]
    if len(set(names)) != len(names):
        raise UsageError(f"case names repeat: {names}")
    impl = _load(args)
    npz, cases, failures = {}, [], 0
    for name, specs, seed, inputs, origin in planned:
        if inputs is None:
            rng, x, wa, wb = draw_inputs(specs, tuple(args.shape), seed)

            def grad_y_fn(shape, torch_dtype, rng=rng):
                return rng.standard_normal(shape).astype(_numpy_dtype_of(torch_dtype))

        else:
            x, wa, wb = inputs["x"], inputs["weights_a"], inputs["weights_b"]
            stored_grad_y = inputs["grad_y"]

            def grad_y_fn(shape, torch_dtype, stored=stored_grad_y):
                return stored.astype(_numpy_dtype_of(torch_dtype))

        input_dtype = np.float64 if args.dtype == "float64" else np.float32
        x = np.asarray(x).astype(input_dtype)
        wa = [np.asarray(w).astype(input_dtype) for w in wa]
        wb = [np.asarray(w).astype(input_dtype) for w in wb]
        try:
            got = run_neocell_case(impl, specs, x, wa, wb, grad_y_fn, args.dtype)
        except (RuntimeError, TypeError, ValueError) as exc:
            print(f"{name}: FAILED, their implementation rejects the case ({_first_line(exc)}); nothing written")
            return 1
        groups = len(wa)
        arrays = {"x": x, "y": got["y"], "grad_y": got["grad_y"], "grad_x": got["grad_x"]}
        for g in range(groups):
            arrays[f"weight_a_{g}"] = wa[g]
            arrays[f"weight_b_{g}"] = wb[g]
            arrays[f"grad_weight_a_{g}"] = got[f"grad_weight_a_{g}"]
            arrays[f"grad_weight_b_{g}"] = got[f"grad_weight_b_{g}"]
        try:
            errors = reference_errors(specs, arrays, groups)
        except (TypeError, ValueError) as exc:  # their code accepted what the reference rejects
            errors = {f"(neocell_ref rejects the case: {exc})": math.inf}
        worst = max(errors, key=errors.get)
        enforced = args.dtype == "float64"
        bad = enforced and not errors[worst] <= REFERENCE_TOLERANCE  # NaN fails too
        failures += bad
        verdict = ("FAIL" if bad else "ok") if enforced else "for information (low precision)"
        print(
            f"{name}: y {tuple(got['y'].shape)} {got['y'].dtype}; worst error against neocell_ref "
            f"(float64): {errors[worst]:.3e} in {worst} -- {verdict}"
        )
        order = ["x", "y", "grad_y", "grad_x"]
        order += [
            f"{kind}_{g}" for g in range(groups) for kind in ("weight_a", "weight_b", "grad_weight_a", "grad_weight_b")
        ]
        npz.update({f"{name}/{key}": arrays[key] for key in order})
        cases.append(
            {
                "name": name,
                "specs": specs,
                "x_shape": list(x.shape),
                "y_shape": list(got["y"].shape),
                "groups": groups,
                "dtype": args.dtype,
                "seed": seed,
                "inputs": origin,
            }
        )
    meta = {
        "source": f"outputs of the official NeoNeXt PyTorch implementation (NeoCellCPP, CPU, {args.dtype})",
        "arrays": ARRAYS_NOTE,
        "official_commit": impl.commit,
        "generator": "scripts/official_data.py generate",
        "cases": cases,
    }
    write_pair(targets, npz, meta)
    print(f"wrote {len(cases)} case(s) to {targets[0]} and {targets[1].name}")
    if failures:
        print(f"FAILED: {failures} float64 case(s) disagree with neocell_ref beyond {REFERENCE_TOLERANCE:g}")
        return 1
    return 0


MODEL_ARRAYS_NOTE = {
    "state/KEY": "every entry of the official state_dict before any forward pass, drawn at random "
    "(BatchNorm running statistics as drawn, num_batches_tracked 0), official key names and PyTorch "
    "layouts (Linear weight is (out, in); 1x1 Conv weight is (out, in, 1, 1))",
    "x": "input batch (N, in_chans, H, W)",
    "logits_eval": "model output in inference mode, computed first, with the state above",
    "logits_train": "model output in training mode, computed second from the same state (drop_path 0)",
    "grad_logits": "upstream gradient fed to backward of logits_train",
    "grad_x": "gradient of sum(logits_train * grad_logits) with respect to x",
    "grad/KEY": "the same gradient with respect to each trainable parameter KEY",
    "buffers_after_train/KEY": "BatchNorm buffers after that one training forward",
}


def draw_model_state(shapes, rng):
    """A random float64 state dict for ``{key: shape}`` (in order), from ``rng``.

    ``num_batches_tracked`` is 0 (int64); ``running_var`` uniform in [0.5, 2);
    every other entry standard normal, scaled by ``1/sqrt(prod(shape[1:]))`` when it
    has two or more axes (weights keep the activations of order 1) and by 0.5 when it
    has one (biases, norms' affine parameters, layer scales, running means).
    """
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = np.zeros(shape, dtype=np.int64)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, shape)
        else:
            scale = 1.0 / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 else 0.5
            state[key] = rng.standard_normal(shape) * scale
    return state


def reference_model_errors(config, input_shape, arrays):
    """Relative error of every stored result of a model file against ``neocell_ref``'s
    NeoNeXt (float64, the same sequence: load, eval forward, train forward, backward),
    parameter gradients normwise per layer (``model_errors``)."""
    from neocell_ref.models import NeoNeXt
    from neocell_ref.verify.tolerances import model_errors

    architecture = _architecture({"config": config, "input_shape": list(input_shape)})
    model = NeoNeXt.from_architecture(architecture, dtype=np.float64)
    model.load_state_dict({k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")})
    ours = {"logits_eval": model.forward(arrays["x"], training=False)}
    ours["logits_train"] = model.forward(arrays["x"], training=True)
    ours["grad_x"] = model.backward(arrays["grad_logits"])
    ours.update({f"grad/{key}": value for key, value in model.grads.items()})
    state = model.state_dict()
    ours.update({f"buffers_after_train/{key}": value for key, value in state.items()})
    results = {key: value for key, value in arrays.items() if key.split("/")[0] in RESULT_PREFIXES}
    return model_errors(ours, results, architecture)


#: The keys (or key prefixes) of a model file's results.
RESULT_PREFIXES = ("logits_eval", "logits_train", "grad_x", "grad", "buffers_after_train")


def cmd_generate_model(args) -> int:
    from neocell_ref.verify.tolerances import MODEL_RTOL

    targets = output_targets(args)
    try:
        config = json.loads(args.config)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--config: not JSON ({exc})") from None
    if not isinstance(config, dict) or not all(isinstance(key, str) for key in config):
        raise UsageError(f"--config: expected a JSON object of NeoNeXt options, got {args.config!r}")
    if config.get("drop_path", 0) != 0:  # their drop path draws from torch's generator: not reproducible
        raise UsageError(
            f"--config: drop_path must be 0 (a file is re-derived from its seed), got {config['drop_path']!r}"
        )
    shape = check_shape_argument(args.shape)
    check_seed_argument(args.seed)
    impl = _load(args)
    import torch

    try:
        model = impl.build_model(**model_options(config))
    except (RuntimeError, TypeError, ValueError) as exc:
        print(f"FAILED: their NeoNeXt rejects the configuration ({_first_line(exc)}); nothing written")
        return 1
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    rng = np.random.default_rng(args.seed)
    state = draw_model_state(shapes, rng)
    x = rng.standard_normal(shape)
    num_classes = shapes[[key for key in shapes if key.startswith("head.") and key.endswith(".weight")][-1]][0]
    grad_logits = rng.standard_normal((shape[0], num_classes))
    try:
        got = run_model_case(impl, config, state, x, grad_logits)
    except (RuntimeError, TypeError, ValueError) as exc:
        print(f"FAILED: their implementation rejects the case ({_first_line(exc)}); nothing written")
        return 1
    arrays = {f"state/{key}": value for key, value in state.items()}
    arrays.update(x=x, grad_logits=grad_logits)
    arrays.update(got)
    tolerance = MODEL_RTOL["float64"]["logits"]
    try:
        errors = reference_model_errors(config, shape, arrays)
    except (TypeError, ValueError) as exc:  # their code accepted what the reference rejects
        errors = {f"(neocell_ref rejects the case: {_first_line(exc)})": math.inf}
    worst = max(errors, key=errors.get)
    bad = not errors[worst] <= tolerance  # NaN fails too
    print(
        f"{args.stem}: {len(got)} results, logits {tuple(got['logits_eval'].shape)}; worst error against "
        f"neocell_ref (float64): {errors[worst]:.3e} in {worst} -- {'FAIL' if bad else 'ok'}"
    )
    meta = {
        "source": "outputs of the official NeoNeXt PyTorch implementation (class NeoNeXt, CPU, float64), "
        "every parameter and BatchNorm buffer drawn at random (scripts/official_data.py draw_model_state)",
        "config": config,
        "input_shape": list(shape),
        "arrays": MODEL_ARRAYS_NOTE,
        "keys": list(shapes),
        "official_commit": impl.commit,
        "generator": "scripts/official_data.py generate-model",
        "seed": args.seed,
    }
    write_pair(targets, arrays, meta)
    print(f"wrote {targets[0]} and {targets[1].name}; torch {torch.__version__}")
    if bad:
        print(f"FAILED: the model disagrees with neocell_ref beyond {tolerance:g}")
        return 1
    return 0


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
def _load(args):
    """Load their implementation (after all cheap argument checks), report the commit."""
    from official_loader import load_official

    root = validate_checkout(args.official)
    commit = checkout_commit(root)
    print(f"official checkout: {root}")
    if commit is None:
        print(f"WARNING: commit unknown (no git repository); the data in tests/data came from {EXPECTED_COMMIT}")
    elif not commit.startswith(EXPECTED_COMMIT):
        print(f"WARNING: checkout is at commit {commit}; the data in tests/data came from {EXPECTED_COMMIT}")
    else:
        print(f"commit: {commit} (the commit the data in tests/data came from)")
    try:
        impl = load_official(root, build_dir=args.build_dir, verbose=args.verbose)
    except ImportError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    import torch

    print(f"torch {torch.__version__}, their C++ helper built for the CPU")
    return impl


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="official_data.py",
        description="Re-derive (check) or grow (generate) tests/data/official_* with the authors' implementation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--official", required=True, metavar="PATH", help="checkout of github HapKoM/neonext")
        p.add_argument(
            "--build-dir",
            metavar="DIR",
            default=None,
            help="cache for the C++ build (default: $NEOCELL_OFFICIAL_BUILD_DIR, else the user cache folder)",
        )
        p.add_argument("--verbose", action="store_true", help="show the compiler's output")

    check = sub.add_parser("check", help="re-derive every stored result and compare (exit 0 iff all within 1e-12)")
    common(check)
    check.add_argument(
        "--data",
        metavar="DIR",
        default=str(DEFAULT_DATA),
        help="folder with official_*.json/.npz pairs (default: tests/data)",
    )
    check.set_defaults(run=cmd_check)

    gen = sub.add_parser("generate", help="write new NeoCell cases in the format of official_neocell.{npz,json}")
    common(gen)
    gen.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    gen.add_argument("--stem", default="official_neocell_generated", help="file name stem of the .npz/.json pair")
    gen.add_argument(
        "--specs", metavar="JSON", help='channel groups, e.g. \'[{"kernel": 7, "channels": 4, "shift": 1}]\''
    )
    gen.add_argument("--shape", type=int, nargs=4, metavar=("N", "C", "H", "W"), help="input shape")
    gen.add_argument("--seed", type=int, default=0, help="seed of numpy.random.default_rng for x, weights, grad_y")
    gen.add_argument("--name", help="case name (default: case_seedS_NxCxHxW)")
    gen.add_argument(
        "--from",
        dest="source",
        metavar="STEM",
        help="take specs, x, weights and grad_y from existing data, e.g. tests/data/official_neocell",
    )
    gen.add_argument("--case", action="append", metavar="NAME", help="case of --from to re-run (repeatable)")
    gen.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float64",
        help="float64 (default), float32, or float16-autocast (CPU autocast, float32 parameters)",
    )
    gen.add_argument("--force", action="store_true", help="replace existing output files")
    gen.set_defaults(run=cmd_generate)

    model = sub.add_parser(
        "generate-model", help="write a whole-model file in the format of official_tiny_model.{npz,json}"
    )
    common(model)
    model.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    model.add_argument("--stem", required=True, help="file name stem of the .npz/.json pair")
    model.add_argument(
        "--config",
        required=True,
        metavar="JSON",
        help='their NeoNeXt options, e.g. \'{"per_stage_layers": [1, 1, 2, 1], "dims": [8, 16, 32, 64]}\'',
    )
    model.add_argument(
        "--shape", type=int, nargs=4, default=[2, 3, 112, 112], metavar=("N", "C", "H", "W"), help="input shape"
    )
    model.add_argument("--seed", type=int, default=0, help="seed of numpy.random.default_rng for state, x, grad")
    model.add_argument("--force", action="store_true", help="replace existing output files")
    model.set_defaults(run=cmd_generate_model)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        validate_checkout(args.official)
        return args.run(args)
    except (UsageError, NotACheckoutError) as exc:
        print(f"official_data.py {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(
            f"official_data.py {args.command}: error: {_first_line(exc)}; install the 'official' extra: "
            'python -m pip install ".[official]"',
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
