"""Speed of NeoNeXt-T in NumPy: inference at 224x224 (batch 1 and 8) and one training step.

Every time is the minimum over ``--repeats`` runs after a warm-up, and the baseline is
measured in the same run, interleaved with the model, so that load from other processes
affects both alike:

* **MLP floor**: the matrix products of every block's ``fc_1`` and ``fc_2`` alone, in
  the network's order, as plain ``np.matmul`` of float32 arrays of the right shapes
  (``(4d, d) @ (d, N·H·W)`` and back). This is the arithmetic floor of the network:
  about 94 % of its multiply-accumulates.
* **inference**: ``model.forward(x, training=False, cache=False)``, the fast path
  (intermediates overwritten in place, nothing kept for backward, the fused block
  tails split over ``NEOCELL_THREADS`` threads), the same with ``NEOCELL_THREADS=1``
  (one thread), and the default ``cache=True`` forward for comparison.
* **training step**: ``forward(training=True)``, cross-entropy with label smoothing,
  ``backward``, AdamW update, at batch 8.

The share of time per layer kind comes from the model's ``profile`` hook (one extra
run of each workload). Run from the repository root::

    python benchmarks/bench_model.py                    # OpenBLAS picks its thread count
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_model.py
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import neocell_ref as nr
from neocell_ref._parallel import threads
from neocell_ref.layers import cross_entropy_backward, cross_entropy_forward
from neocell_ref.train import AdamW


def mlp_operands(model, batch, rng):
    """(weight, activation) pairs of every block's fc_1 and fc_2, in execution order."""
    pairs = []
    for desc in model.architecture.layers():
        if desc.kind == "linear" and desc.name.startswith("stage_"):
            c_in, h, w = desc.in_shape
            act = rng.standard_normal((c_in, batch * h * w)).astype(np.float32)
            pairs.append((model.params[f"{desc.name}.weight"], act))
    return pairs


def mlp_floor(pairs):
    for weight, act in pairs:
        np.matmul(weight, act)


def one_thread(fn):
    """``fn()`` with the fast path's threads off (``NEOCELL_THREADS=1``)."""
    saved = os.environ.get("NEOCELL_THREADS")
    os.environ["NEOCELL_THREADS"] = "1"
    try:
        return fn()
    finally:
        if saved is None:
            del os.environ["NEOCELL_THREADS"]
        else:
            os.environ["NEOCELL_THREADS"] = saved


def timed(fn):
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


#: Untimed pause after the MLP floor (see :func:`interleaved_turns`): OpenBLAS's idle
#: workers spin for about 2**28 cycles (~0.1 s) after a multi-threaded product.
SETTLE_SECONDS = 0.15


def interleaved_turns(workloads, repeats, settle=("floor",), calls=1):
    """Wall and CPU time of each workload's best call in each of ``repeats`` interleaved
    rounds: ``{name: [(wall, cpu), ...]}``, one pair per round.

    On a machine shared with other processes the wall time of a single-threaded run
    includes the time the scheduler gave to others; the process CPU time does not, so
    with ``OPENBLAS_NUM_THREADS=1`` it is the steadier measure of the work itself.

    In each round every workload takes one turn of ``calls`` back-to-back calls, each
    timed; a turn reports its fastest call. With ``calls > 1`` every workload is also
    measured in its own steady state, not only right after another library's call:
    PyTorch's idle OpenMP workers keep spinning briefly after its calls and slowed the
    next call of whatever followed (measured: neocell_ref's 56² NeoCell forward 8.6 ms
    as the first call of its turn, 5.7 ms as the best of three; PyTorch's own call 11.2
    and 10.4 ms alike).

    After each workload named in ``settle`` (the MLP floor: plain ``np.matmul`` with
    OpenBLAS's own threads) the loop sleeps :data:`SETTLE_SECONDS`, untimed, so that
    OpenBLAS's spinning idle workers do not take a core from the next workload
    (measured: PyTorch's GELU right after the floor 45 ms, after the pause 26 ms).
    The timed workloads themselves leave no spinning OpenBLAS worker behind with
    threads on (the fast paths hold it at one thread).
    """
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    for fn in workloads.values():
        fn()  # warm-up: first-touch page faults, BLAS thread start
    turns = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, fn in workloads.items():
            times = [timed(fn) for _ in range(calls)]
            turns[name].append((min(wall for wall, _ in times), min(cpu for _, cpu in times)))
            if name in settle:
                time.sleep(SETTLE_SECONDS)
    return turns


def best_interleaved(workloads, repeats, settle=("floor",), calls=1):
    """Minimum wall and CPU time of each workload over ``repeats`` interleaved rounds
    (:func:`interleaved_turns`): ``{name: [wall, cpu]}``, the minimum over every timed call."""
    turns = interleaved_turns(workloads, repeats, settle, calls)
    return {name: [min(w for w, _ in pairs), min(c for _, c in pairs)] for name, pairs in turns.items()}


def share_table(profile, title):
    total = sum(profile.values())
    rows = sorted(profile.items(), key=lambda kv: -kv[1])
    lines = [f"\n{title}", "| layer kind | ms | share |", "|---|---:|---:|"]
    for kind, seconds in rows:
        lines.append(f"| {kind} | {seconds * 1e3:.1f} | {100 * seconds / total:.1f} % |")
    lines.append(f"| total (profiled) | {total * 1e3:.1f} | 100 % |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per workload (minimum is reported)")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    args = parser.parse_args(argv)

    print(
        f"NeoNeXt-T, {args.resolution}x{args.resolution}, float32; numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
        f"fast-path threads {threads()}, "
        f"min of {args.repeats} runs"
    )
    rng = np.random.default_rng(0)
    model = nr.models.neonext_t(dtype=np.float32, rng=np.random.default_rng(0), resolution=args.resolution)
    size = args.resolution

    rows = []
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
        pairs = mlp_operands(model, batch, rng)
        workloads = {
            "floor": lambda: mlp_floor(pairs),
            "fast": lambda: model.forward(x, training=False, cache=False),
            "fast_1": lambda: one_thread(lambda: model.forward(x, training=False, cache=False)),
            "cached": lambda: model.forward(x, training=False),
        }
        best = best_interleaved(workloads, args.repeats)
        model.clear_cache()
        rows.append((batch, best))

    print("\nInference (forward, training=False); wall time, and in brackets process CPU time")
    print(
        "| batch | MLP floor ms | cache=False ms | ms/image | ratio to floor | "
        "cache=False, 1 thread ms | ratio | cache=True ms | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch, best in rows:
        floor, fast, fast_1, cached = best["floor"], best["fast"], best["fast_1"], best["cached"]
        print(
            f"| {batch} | {floor[0] * 1e3:.1f} ({floor[1] * 1e3:.1f}) | {fast[0] * 1e3:.1f} ({fast[1] * 1e3:.1f}) | "
            f"{fast[0] * 1e3 / batch:.1f} ({fast[1] * 1e3 / batch:.1f}) | "
            f"{fast[0] / floor[0]:.2f} ({fast[1] / floor[1]:.2f}) | "
            f"{fast_1[0] * 1e3:.1f} ({fast_1[1] * 1e3:.1f}) | {fast_1[0] / floor[0]:.2f} ({fast_1[1] / floor[1]:.2f}) | "
            f"{cached[0] * 1e3:.1f} ({cached[1] * 1e3:.1f}) | {cached[0] / floor[0]:.2f} ({cached[1] / floor[1]:.2f}) |"
        )

    x1 = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    model.profile = {}
    for _ in range(3):
        model.forward(x1, training=False, cache=False)
    profile = {k.split(":", 1)[1]: v / 3 for k, v in model.profile.items()}
    model.profile = None
    print(
        share_table(
            profile,
            "Share of inference time per layer kind (batch 1, cache=False, mean of 3 runs; "
            "with threads, thread-seconds summed over threads)",
        )
    )

    if not args.no_train:
        batch = 8
        x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
        labels = rng.integers(0, 1000, batch)
        opt = AdamW(model.params, lr=1e-4)

        def step():
            logits = model.forward(x, training=True)
            model.backward(cross_entropy_backward(logits, labels, smoothing=0.1))
            opt.step(model.grads)
            return cross_entropy_forward(logits, labels, smoothing=0.1)

        best = best_interleaved({"step": step}, max(2, args.repeats // 2))
        wall, cpu = best["step"]
        print(
            f"\nTraining step (batch {batch}: forward, cross-entropy, backward, AdamW): "
            f"{wall * 1e3:.0f} ms ({cpu * 1e3:.0f} ms CPU), {wall * 1e3 / batch:.0f} ms/image"
        )
        model.profile = {}
        step()
        profile = dict(model.profile)
        model.profile = None
        model.clear_cache()
        print(share_table(profile, "Share of training-step time per layer kind (forward + backward, one step)"))

    # float32 accuracy of this run's batch-1 logits against the float64 model
    ref = nr.models.neonext_t(dtype=np.float64, rng=np.random.default_rng(0), resolution=size)
    ref.load_state_dict(model.state_dict())  # the float32 weights, exactly
    y64 = ref.forward(x1.astype(np.float64), cache=False)
    y32 = model.forward(x1, cache=False)
    err = np.abs(y32 - y64).max() / np.abs(y64).max()
    print(f"\nfloat32 vs float64 logits (same weights, batch 1): relative error {err:.2e}")


if __name__ == "__main__":
    main()
