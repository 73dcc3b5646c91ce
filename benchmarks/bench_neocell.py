"""Speed of the three NeoCell formulations at NeoNeXt-T stage shapes.

Run from the repository root::

    python benchmarks/bench_neocell.py            # full run, about 5-10 minutes on 2 cores
    python benchmarks/bench_neocell.py --quick    # fewer repeats, no 112x112 case, no "loop"

What is timed, per case and dtype (all inputs made once, outside the timing):

``copy``
    ``np.copyto(buf, x)`` into a preallocated array: the memory-bandwidth floor of
    any operator that reads ``x`` and writes an array of its size.
``dense``
    ``A_full @ x @ B_full`` with the expanded matrices built *outside* the timing:
    the best case for the block-diagonal view (the ``"blockdiag"`` method also
    builds them on every call).
``patchwise`` / ``blockdiag`` / ``loop``
    :func:`neocell_ref.neocell_forward` (``fwd``) and ``neocell_forward`` followed by
    :func:`neocell_ref.neocell_backward` (``fwd+bwd``, the backward recomputes
    ``z = Â x`` itself), input validation included, as a user calls them.

The quantities of a case are measured round-robin in two groups (the forward
passes with ``copy`` and ``dense``; then the forward+backward steps), so that load
from other processes hits the members of a group alike; the table reports the
median of the rounds (and the minimum). Ratios are medians over medians, measured
in the same run: speed is only ever compared against a baseline measured
alongside it.

``loop`` is the readable tile-by-tile transcription; it is timed with one round
only, and only where one forward call takes less than ``--loop-budget`` seconds
(otherwise the table says it was skipped and why).

The targets of the "NeoCell operator core" issue are checked at the end (float32,
batch 8, ``"4+7"``, shift 1): patch-wise forward <= 0.8 x ``dense`` at 56x56,
<= 0.4 x ``dense`` at 112x112, and <= 15 x ``copy`` at 56x56.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time

import numpy as np

from neocell_ref import neocell_backward, neocell_forward
from neocell_ref.expansion import expand
from neocell_ref.spec import parse_kernel_code

# (name, channels, size, kernel code, shift): NeoNeXt-T stage 1 (C=96 at 56x56, "4+7")
# and stage 3 (C=384 at 14x14, "7"); stage 1's mixer at 112x112 for the size target.
CASES = [
    ("C96 56x56 '4+7' s1", 96, 56, "4+7", 1),
    ("C384 14x14 '7' s1", 384, 14, "7", 1),
    ("C96 112x112 '4+7' s1", 96, 112, "4+7", 1),
]
BATCH = 8
TARGETS = [
    # (case name, dtype, numerator, denominator, bound)
    ("C96 56x56 '4+7' s1", "float32", "patchwise fwd", "dense", 0.8),
    ("C96 112x112 '4+7' s1", "float32", "patchwise fwd", "dense", 0.4),
    ("C96 56x56 '4+7' s1", "float32", "patchwise fwd", "copy", 15.0),
]


# --------------------------------------------------------------------------------------
# machine description
# --------------------------------------------------------------------------------------
def machine_info() -> dict:
    """Platform, NumPy/BLAS and thread settings, as far as they are cheap to learn."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
    }
    try:
        cpu_model = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo", encoding="utf-8")
            if line.startswith("model name")
        )
        info["cpu_model"] = cpu_model
    except (OSError, StopIteration):
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy or unusual build: not worth failing over
        info["blas"] = "unknown"
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            f"{p.get('internal_api')} {p.get('version')}: {p.get('num_threads')} threads" for p in threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    info["thread_env"] = {
        k: os.environ[k]
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
        if k in os.environ
    } or "none set (BLAS default: one thread per core)"
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------
def _calibrate(fn, min_seconds):
    """Calls per sample so that one sample lasts at least ``min_seconds``."""
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, int(min_seconds / max(once, 1e-9)))


def measure(functions: dict, rounds: int, min_seconds: float = 0.02) -> dict:
    """Time every function ``rounds`` times, round-robin; return per-call seconds.

    Each sample repeats a function enough times to last ``min_seconds`` (a tiny
    copy is otherwise below the clock's useful resolution). The order rotates from
    round to round, so that no function always runs right after the same other one
    (a multi-threaded BLAS call, for one, leaves its threads spinning for a while).
    """
    inner = {name: _calibrate(fn, min_seconds) for name, fn in functions.items()}
    samples = {name: [] for name in functions}
    names = list(functions)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = functions[name]
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return samples


# --------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------
def make_inputs(channels, size, code, shift, dtype, seed=0):
    rng = np.random.default_rng(seed)
    specs = [g.to_dict() for g in parse_kernel_code(code, channels, shift)]
    x = rng.standard_normal((BATCH, channels, size, size)).astype(dtype)
    grad_y = rng.standard_normal(x.shape).astype(dtype)
    groups = parse_kernel_code(code, channels, shift)
    weights_a = [rng.standard_normal(g.shape_a).astype(dtype) / g.h_in for g in groups]
    weights_b = [rng.standard_normal(g.shape_b).astype(dtype) / g.w_in for g in groups]
    return specs, x, grad_y, weights_a, weights_b


def run_case(name, channels, size, code, shift, dtype, rounds, loop_budget, with_loop):
    specs, x, grad_y, wa, wb = make_inputs(channels, size, code, shift, dtype)
    a_full, b_full = expand(wa, wb, specs, (size, size))  # outside the timing
    copy_buf = np.empty_like(x)

    # Sanity: the timed patch-wise result is the dense product (to float32 rounding).
    y_pw = neocell_forward(x, wa, wb, specs, method="patchwise")
    y_dense = np.matmul(np.matmul(a_full, x), b_full)
    rel = float(np.abs(y_pw - y_dense).max() / np.abs(y_dense).max())
    tol = 1e-4 if dtype == np.float32 else 1e-12
    if not rel < tol:
        raise SystemExit(f"{name} {np.dtype(dtype).name}: patchwise differs from dense by {rel:.3g}")
    del y_pw, y_dense

    def fwd(method):
        return lambda: neocell_forward(x, wa, wb, specs, method=method)

    def fwd_bwd(method):
        def step():
            neocell_forward(x, wa, wb, specs, method=method)
            neocell_backward(grad_y, x, wa, wb, specs, method=method)

        return step

    # Two groups, each round-robin: the forward passes with their baselines, then the
    # training steps. A training step allocates several input-sized arrays, and
    # whatever runs right after one pays for the memory the system then has to hand
    # out afresh; the forward targets are about the operator, not about that.
    samples = measure(
        {
            "copy": lambda: np.copyto(copy_buf, x),
            "dense": lambda: np.matmul(np.matmul(a_full, x), b_full),
            "patchwise fwd": fwd("patchwise"),
            "blockdiag fwd": fwd("blockdiag"),
        },
        rounds,
    )
    samples.update(
        measure(
            {
                "patchwise fwd+bwd": fwd_bwd("patchwise"),
                "blockdiag fwd+bwd": fwd_bwd("blockdiag"),
            },
            rounds,
        )
    )
    notes = []
    if with_loop:
        start = time.perf_counter()
        fwd("loop")()
        once = time.perf_counter() - start
        if once <= loop_budget:
            samples["loop fwd"] = [once]
            samples.update(measure({"loop fwd+bwd": fwd_bwd("loop")}, 1, min_seconds=0))
            notes.append("loop: one round only (slow by design)")
        else:
            notes.append(f"loop skipped: one forward took {once:.1f} s > --loop-budget {loop_budget:g} s")
    else:
        notes.append("loop not run (--quick or --no-loop)")
    return samples, rel, notes


def profile_patchwise(calls=10, lines=12):
    """cProfile of the patch-wise forward and backward at stage 1 (56x56, float32).

    The strided copies into and out of the tiled layout run inline in
    ``_patchwise_forward``/``_patchwise_backward``, so their own time ("tottime") is
    the copies plus the Python loop; ``matmul`` is the matrix products.
    """
    name, channels, size, code, shift = CASES[0]
    specs, x, grad_y, wa, wb = make_inputs(channels, size, code, shift, np.float32)
    for label, fn in (
        ("forward", lambda: neocell_forward(x, wa, wb, specs)),
        ("backward", lambda: neocell_backward(grad_y, x, wa, wb, specs)),
    ):
        fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            fn()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(lines)
        print(
            f"\nProfile of the patch-wise {label}, {name}, float32, {calls} calls "
            "(cProfile adds overhead per Python call):"
        )
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


def step_profile(rounds=15):
    """Where the patch-wise time goes at stage 1 (56x56): matrix products by kind, the rest.

    Every product of the fast path goes through the functions that
    :mod:`neocell_ref.neocell_fast` imports from :mod:`neocell_ref.instrument`
    (``matmul``, ``stacked_dot``, ``outer``); timing wrappers put in their place sort
    each call by shape: a *left* product has the small kernel first (``A @ X``), a
    *right* product has it second (``Z @ B``), a *reduction* has a kernel-sized result
    (the kernel gradients). The rest of the time is the strided copies into and out of
    the tiled layout, the zero frames and the Python loop. Run with the fast path's
    threads held at one (``NEOCELL_THREADS=1`` for the duration), so that the parts add
    up to the wall time; shown: the fastest of ``rounds`` calls.
    """
    import neocell_ref.neocell_fast as fast

    name, channels, size, code, shift = CASES[0]
    wrapped = ("matmul", "stacked_dot", "outer")
    real = {fn_name: getattr(fast, fn_name) for fn_name in wrapped}
    saved_threads = os.environ.get("NEOCELL_THREADS")
    os.environ["NEOCELL_THREADS"] = "1"
    try:
        for dtype in (np.float32, np.float64):
            _step_profile_dtype(fast, real, name, make_inputs(channels, size, code, shift, dtype), dtype, rounds)
    finally:
        for fn_name, fn in real.items():
            setattr(fast, fn_name, fn)
        if saved_threads is None:
            os.environ.pop("NEOCELL_THREADS", None)
        else:
            os.environ["NEOCELL_THREADS"] = saved_threads


def _product_kind(a, b, result):
    if result.shape[-1] * result.shape[-2] < a.shape[-1]:
        return "reductions"
    return "left products" if a.shape[-1] * a.shape[-2] < b.shape[-1] * b.shape[-2] else "right products"


def _step_profile_dtype(fast, real, name, inputs, dtype, rounds):
    specs, x, grad_y, wa, wb = inputs
    copy_buf = np.empty_like(x)
    copy = min(_time_once(lambda: np.copyto(copy_buf, x)) for _ in range(rounds))
    print(
        f"\nStep profile, {name}, {np.dtype(dtype).name}, one thread, fastest of {rounds} calls "
        f"(copy floor {copy * 1e3:.2f} ms):"
    )
    for label, fn in (
        ("forward", lambda: neocell_forward(x, wa, wb, specs)),
        ("backward", lambda: neocell_backward(grad_y, x, wa, wb, specs)),
    ):
        best = None
        for _ in range(rounds):
            spent = {"left products": 0.0, "right products": 0.0, "reductions": 0.0}
            counts = dict.fromkeys(spent, 0)

            def wrap(product, spent=spent, counts=counts):
                def timed(a, b, tag="", out=None):
                    start = time.perf_counter()
                    result = product(a, b, tag, out=out)
                    kind = _product_kind(a, b, result)
                    spent[kind] += time.perf_counter() - start
                    counts[kind] += 1
                    return result

                return timed

            for fn_name, product in real.items():
                setattr(fast, fn_name, wrap(product))
            try:
                total = _time_once(fn)
            finally:
                for fn_name, product in real.items():
                    setattr(fast, fn_name, product)
            if best is None or total < best[0]:
                best = (total, spent, counts)
        total, spent, counts = best
        if not any(counts.values()):
            raise RuntimeError(
                "step profile: no product went through the wrapped functions; "
                "neocell_ref.neocell_fast no longer calls them by these names"
            )
        rest = total - sum(spent.values())
        parts = [f"{k} {v * 1e3:.2f} ms ({counts[k]} calls)" for k, v in spent.items() if counts[k]]
        print(
            f"  {label}: total {total * 1e3:.2f} ms = "
            + ", ".join(parts)
            + f", copies in/out of the tiled layout + Python {rest * 1e3:.2f} ms"
        )


def _time_once(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def summarise(samples):
    return {k: (statistics.median(v), min(v), len(v)) for k, v in samples.items()}


def ratio_to(stats, name):
    """The ratio column: each time over the patch-wise time of the same pass."""
    if name in ("copy", "dense"):
        return ""
    base = "patchwise fwd+bwd" if name.endswith("fwd+bwd") else "patchwise fwd"
    return f"{stats[name][0] / stats[base][0]:.2f}"


def print_table(results):
    print()
    print("| case | dtype | quantity | median ms | min ms | rounds | / patchwise (same pass) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for (case, dtype), (stats, rel, notes) in results.items():
        for name, (med, low, n) in stats.items():
            print(f"| {case} | {dtype} | {name} | {med * 1e3:.2f} | {low * 1e3:.2f} | {n} | {ratio_to(stats, name)} |")
    print()
    print(
        "| case | dtype | patchwise fwd / copy | patchwise fwd / dense | blockdiag fwd / dense | max rel. diff patchwise vs dense |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for (case, dtype), (stats, rel, notes) in results.items():
        pw = stats["patchwise fwd"][0]
        print(
            f"| {case} | {dtype} | {pw / stats['copy'][0]:.1f} | {pw / stats['dense'][0]:.2f} | "
            f"{stats['blockdiag fwd'][0] / stats['dense'][0]:.2f} | {rel:.1e} |"
        )
    for (case, dtype), (stats, rel, notes) in results.items():
        for note in notes:
            print(f"note ({case}, {dtype}): {note}")


def check_targets(results):
    print()
    print("Targets (medians of this run):")
    for case, dtype, num, den, bound in TARGETS:
        if (case, dtype) not in results:
            print(f"  {num} / {den} at {case} {dtype}: not measured in this run")
            continue
        stats = results[(case, dtype)][0]
        value = stats[num][0] / stats[den][0]
        verdict = "met" if value <= bound else "NOT met"
        print(f"  {num} / {den} at {case} {dtype}: {value:.2f} (target <= {bound:g}) -> {verdict}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, no 112x112 case, no loop method")
    parser.add_argument("--repeat", type=int, default=None, help="rounds per quantity (default 9, or 3 with --quick)")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    parser.add_argument("--no-loop", action="store_true", help="do not time the loop method")
    parser.add_argument("--no-112", action="store_true", help="skip the 112x112 case")
    parser.add_argument(
        "--loop-budget",
        type=float,
        default=3.0,
        help="time the loop method only where one forward takes at most this many seconds (default 3)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write all samples to this JSON file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a cProfile and a step profile (products by kind vs copies) "
        "of the patch-wise forward and backward at 56x56",
    )
    args = parser.parse_args(argv)
    rounds = args.repeat or (3 if args.quick else 9)
    if rounds < 1:
        parser.error(f"--repeat must be >= 1, got {rounds}")
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    cases = [c for c in CASES if not ((args.quick or args.no_112) and c[2] == 112)]

    info = machine_info()
    print("Machine:")
    for key, value in info.items():
        print(f"  {key}: {value}")
    print(f"Command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"Batch {BATCH}; {rounds} rounds per quantity, round-robin; times per call.")

    results = {}
    for name, channels, size, code, shift in cases:
        for dtype in dtypes:
            print(f"... {name} {dtype}", file=sys.stderr, flush=True)
            samples, rel, notes = run_case(
                name,
                channels,
                size,
                code,
                shift,
                np.dtype(dtype),
                rounds,
                args.loop_budget,
                with_loop=not (args.quick or args.no_loop),
            )
            results[(name, dtype)] = (summarise(samples), rel, notes)
            if args.json:
                results[(name, dtype)] += (samples,)
    print_table({k: v[:3] for k, v in results.items()})
    check_targets(results)
    if args.profile:
        profile_patchwise()
        step_profile()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "machine": info,
                    "rounds": rounds,
                    "results": [
                        {"case": case, "dtype": dtype, "max_rel_diff": rel, "notes": notes, "samples_s": samples}
                        for (case, dtype), (_, rel, notes, samples) in results.items()
                    ],
                },
                fh,
                indent=1,
                default=str,
            )


if __name__ == "__main__":
    main()
