"""neocell_ref against the authors' PyTorch implementation on the CPU, side by side.

The seven workloads of the "ahead of the authors' PyTorch" issue, float32:

1. NeoCell 8x96x56x56, ``"4+7"``, shift 1, forward;
2. the same, forward + backward;
3. NeoCell 8x96x112x112, forward;
4. the same, forward + backward;
5. NeoNeXt-T 224 px inference, batch 1;
6. the same, batch 8;
7. NeoNeXt-T 224 px training step (forward + backward), batch 8.

Both implementations run in one process on the same inputs and weights (neocell_ref's
weights are copied into the authors' layer and model under the official state-dict
names), and are checked to agree before anything is timed: the relative error
``max|a - b| / max|b|`` (SPEC section 9) of every output and gradient must be below
:data:`NEOCELL_BOUND` (NeoCell) or :data:`MODEL_BOUND` (NeoNeXt-T) -- or, for a
training-step gradient that float32 cannot compute that accurately at all (a sum with
heavy cancellation), below ten times neocell_ref's own float32 error against float64
(see :func:`check_agreement`); otherwise the script refuses to time and exits 1. Their
timed runs are interleaved round-robin with neocell_ref's (and, for the model rows, with
the **MLP floor** of ``benchmarks/bench_model.py``: the ``fc_1``/``fc_2`` matrix
products of the same network alone), so load from other processes affects all alike.
Each workload's turn is ``--calls`` back-to-back calls, every call timed, and the
minimum over all calls of the ``--repeats`` turns is reported: so each is also measured
in its own steady state, not only right after the other's call (PyTorch's idle OpenMP
workers spin briefly after its calls and slowed the call after them: neocell_ref's 56²
NeoCell forward 8.6 ms as the first call of its turn, 5.7 ms as the best of three;
theirs 11.2 and 10.4 ms). After the floor (plain ``np.matmul`` on OpenBLAS's own
threads) the loop pauses, untimed, until OpenBLAS's idle workers have stopped spinning,
so that they do not slow the next call (theirs: measured 45 against 26 ms for a PyTorch
GELU). Beside the issue's ratio of the minimums, each row reports the **median per-turn
ratio** (:func:`turn_ratio`: neocell_ref's best call of a round over the official one's
in the same round, median over the rounds), which the machine's speed drifting between
rounds does not move; the verdicts use the issue's ratio.

What is timed, per implementation:

* NeoCell forward: ``neocell_forward`` / their ``NeoCellCPP`` module under
  ``torch.no_grad()``; forward + backward: ``neocell_forward`` then ``neocell_backward``
  / their forward with gradients enabled and ``backward`` of a fixed upstream gradient.
* NeoNeXt-T inference: ``forward(x, training=False, cache=False)`` / ``model.eval()``
  under ``torch.no_grad()``.
* training step: ``forward(training=True)`` then ``backward`` of a fixed gradient of the
  logits / the same with ``model.train()``; no loss and no optimiser (neither is the
  subject, and an update would change the weights between repeats). BatchNorm running
  statistics change on every training forward in both, alike.

Each thread setting runs in a fresh subprocess of this script: ``default`` (the
thread variables removed, so OpenBLAS and PyTorch pick one thread per core) and ``1``
(``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` set to 1 before
NumPy is imported, and ``torch.set_num_threads(1)``).

Run from the repository root (needs the ``official`` extra and a checkout of the
authors' repository, see :data:`HOW_TO`)::

    python benchmarks/bench_vs_official.py --official PATH [--repeats N] [--calls N]
        [--threads default|1|both] [--json FILE] [--quick] [--profile]

Without a checkout (no ``--official``, or a path that is not one) it prints how to get
one and exits 0. Exit status 1: the two implementations disagree (nothing is timed) or
a thread setting's run failed; 2: PyTorch or ninja is missing (the message says what
to install) or the arguments are unusable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "scripts"))  # official_loader
sys.path.insert(1, str(HERE))  # bench_model, bench_neocell
sys.path.insert(2, str(REPO))  # neocell_ref, when it is not installed

from official_loader import EXPECTED_COMMIT, NotACheckoutError, validate_checkout

HOW_TO = f"""\
To compare against the authors' implementation you need a checkout of their repository
and the 'official' extra (PyTorch CPU, ninja, setuptools; a C++ compiler):

    git clone https://github.com/HapKoM/neonext.git
    git -C neonext checkout {EXPECTED_COMMIT}
    python -m pip install ".[official]"        # from the root of this repository
    python benchmarks/bench_vs_official.py --official neonext

The first run compiles their csrc/neocell.cpp for the CPU (about two minutes; cached,
see NEOCELL_OFFICIAL_BUILD_DIR in scripts/official_loader.py)."""

#: Agreement required between the two implementations' NeoCell outputs and gradients.
#: float32 rounds each operation at u = 2**-24 ~ 6e-8. Every value of y and grad_x is
#: a sum of at most h_in + w_out <= 14 products per output (the block-diagonal
#: products of their code add zeros exactly), the kernel gradients sums over N x tiles
#: x tile rows (at most ~1e4 terms at 8x112x112), whose rounding errors grow like
#: sqrt(terms) x u ~ 1e-5 at worst in the normalised error; measured: 1e-7 - 1e-6.
#: 1e-4 leaves a margin of 10x over that, while one changed weight or a misplaced
#: tile gives errors of order 1e-2 - 1.
NEOCELL_BOUND = 1e-4
#: Agreement required between the NeoNeXt-T logits (and, for the training step, the
#: gradients of the input and of every parameter). 18 blocks and 3 down-sampling
#: layers compound the per-layer float32 rounding (each NeoCell, BatchNorm, GELU,
#: 1x1 product with up to 3072 terms); bench_model.py measures 6.6e-7 between float32
#: and float64 logits, and gradients of the small parameters (BatchNorm, head) are
#: sums over the whole batch and image. 1e-3 is above what two correct float32
#: implementations with different operation orders differ by here (measured at
#: NeoNeXt-T batch 8: at most 1.6e-4, for the gradient of ``stem.norm.bias``; every
#: value is in the JSON), and far below what a wrong weight or layout gives.
MODEL_BOUND = 1e-3
#: An array that misses its bound may be ill-conditioned in float32 (a sum with heavy
#: cancellation): it passes if the two differ by less than this factor times the error
#: of neocell_ref's float32 result against its float64 result (same weights), at most
#: :data:`CONDITIONED_CAP`. See :func:`check_agreement`.
CONDITIONED_FACTOR = 10.0
CONDITIONED_CAP = 1e-2

#: Targets of the issue (ratio neocell_ref / official, both thread settings).
NEOCELL_TARGET = 0.35
MODEL_TARGET = 0.9
#: Targets in ratio to the MLP floor (training: three times the batch-8 forward floor).
FLOOR_TARGETS = {"inference batch 1": 1.8, "inference batch 8": 1.4, "training step": 1.6}

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def workload_plan(smoke: bool) -> dict:
    """Shapes of the workloads: the issue's, or tiny ones for a test (``--smoke``)."""
    if smoke:
        return {
            "neocell": [(2, 12, 16), (2, 12, 32)],
            "code": "4+7",
            "shift": 1,
            "model": "tiny",
            "resolution": 112,
            "batches": (1, 2),
            "train_batch": 2,
        }
    return {
        "neocell": [(8, 96, 56), (8, 96, 112)],
        "code": "4+7",
        "shift": 1,
        "model": "neonext_t",
        "resolution": 224,
        "batches": (1, 8),
        "train_batch": 8,
    }


# --------------------------------------------------------------------------------------
# the parent: one subprocess per thread setting, then the table
# --------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", metavar="PATH", help="root of a checkout of github HapKoM/neonext")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="round-robin turns per workload, minimum reported (default 7; 2 with --quick)",
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=None,
        help="back-to-back timed calls per turn (default 3; 1 with --quick)",
    )
    parser.add_argument("--threads", choices=("default", "1", "both"), default="both")
    parser.add_argument("--json", metavar="FILE", help="write every time and the machine description here")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run of the real workloads")
    parser.add_argument(
        "--profile", action="store_true", help="also print neocell_ref's time per layer kind for the NeoNeXt-T rows"
    )
    # for tests: tiny workloads; a deliberately different weight in the authors' copy
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tamper", choices=("neocell", "model"), help=argparse.SUPPRESS)
    # internal: run one thread setting in this process and write its results here
    parser.add_argument("--child", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", choices=("default", "1"), default="default", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if (args.quick or args.smoke) else 7
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be >= 1")
    if args.calls is None:
        args.calls = 1 if (args.quick or args.smoke) else 3
    if args.calls < 1:
        parser.error(f"--calls {args.calls}: must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.official is None:
        print("No --official checkout given: nothing to compare against.\n")
        print(HOW_TO)
        return 0
    try:
        root = validate_checkout(args.official)
    except NotACheckoutError as exc:
        print(f"{exc}: nothing to compare against.\n")
        print(HOW_TO)
        return 0
    if args.child:
        return run_child(args, root)

    settings = ["default", "1"] if args.threads == "both" else [args.threads]
    results = []
    for setting in settings:
        status, result = spawn_child(args, root, setting)
        if status != 0:
            print(f"\nthread setting {setting!r}: the run failed (exit status {status}); see above")
            return status if status in (1, 2) else 1
        results.append(result)

    report = build_report(args, root, results)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def spawn_child(args, root: Path, setting: str):
    """Run one thread setting in a fresh interpreter; ``(exit status, its result dict)``."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    if setting == "1":
        env.update({k: "1" for k in THREAD_VARIABLES})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--official",
            str(root),
            "--repeats",
            str(args.repeats),
            "--calls",
            str(args.calls),
            "--child",
            str(out),
            "--child-threads",
            setting,
        ]
        command += [flag for flag, on in (("--smoke", args.smoke), ("--profile", args.profile)) if on]
        command += ["--tamper", args.tamper] if args.tamper else []
        print(f"\n=== thread setting: {setting} ===", flush=True)
        done = subprocess.run(command, env=env, cwd=REPO, check=False)
        if done.returncode != 0 or not out.is_file():
            return done.returncode or 1, None
        return 0, json.loads(out.read_text())


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def build_report(args, root, results) -> dict:
    from bench_neocell import machine_info

    import neocell_ref

    first = results[0]
    return {
        # datetime.UTC is Python 3.11+; the package supports 3.10
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        "machine": machine_info(),
        "commit": git_commit(),
        "official_commit": first["official_commit"],
        "versions": {**first["versions"], "neocell_ref": neocell_ref.__version__},
        "repeats": args.repeats,
        "calls": args.calls,
        "quick": args.quick,
        "smoke": args.smoke,
        "bounds": {"neocell": NEOCELL_BOUND, "model": MODEL_BOUND},
        "targets": {"neocell": NEOCELL_TARGET, "model": MODEL_TARGET, "floor": FLOOR_TARGETS},
        "settings": results,
    }


def verdict(ratio, bound) -> str:
    return "met" if ratio <= bound else "**missed**"


def print_report(report):
    print(
        f"\nneocell_ref {report['versions']['neocell_ref']} (commit {report['commit']}) against the "
        f"official implementation (commit {report['official_commit']}); torch {report['versions']['torch']}, "
        f"numpy {report['versions']['numpy']}; {report['machine'].get('cpu_model', '?')}, "
        f"{report['machine']['cpu_count']} CPUs; minimum of {report['repeats']} round-robin turns of "
        f"{report['calls']} back-to-back calls"
    )
    if report["smoke"]:
        print("(--smoke: tiny shapes, the targets are not meaningful)")
    for result in report["settings"]:
        print(
            f"\nThreads: {result['threads']} (torch {result['torch_threads']} threads; load average "
            f"{fmt_load(result['load_before'])} before, {fmt_load(result['load_after'])} after)\n"
        )
        print("| workload | official ms | neocell_ref ms | neocell_ref / official | target | | median per-turn ratio |")
        print("|---|---:|---:|---:|---:|---|---:|")
        for row in result["rows"]:
            print(
                f"| {row['name']} | {row['official_ms']:.1f} | {row['neocell_ref_ms']:.1f} | "
                f"{row['ratio']:.2f} | <= {row['target']} | {verdict(row['ratio'], row['target'])} | "
                f"{row['turn_ratio']:.2f} |"
            )
        print("\n| floor ratio | neocell_ref ms | floor ms | ratio | target | |")
        print("|---|---:|---:|---:|---:|---|")
        for row in result["floor_ratios"]:
            print(
                f"| {row['name']} | {row['neocell_ref_ms']:.1f} | {row['floor_ms']:.1f} | {row['ratio']:.2f} | "
                f"<= {row['target']} | {verdict(row['ratio'], row['target'])} |"
            )
        worst = max(result["agreement"], key=lambda a: a["error"] / a["bound"])
        print(
            f"\nagreement before timing: {len(result['agreement'])} arrays, worst relative error "
            f"{worst['error']:.1e} ({worst['name']}, bound {worst['bound']:g})"
        )


def fmt_load(load):
    return "/".join(f"{v:.1f}" for v in load) if load else "?"


# --------------------------------------------------------------------------------------
# the child: one thread setting, everything in this process
# --------------------------------------------------------------------------------------
class Disagreement(Exception):
    """The two implementations do not agree: nothing may be timed."""


def run_child(args, root: Path) -> int:
    import numpy as np

    try:
        import torch
        from official_loader import load_official

        impl = load_official(root)
    except ImportError as exc:
        print(f"cannot load the authors' implementation: {exc}\n")
        print(HOW_TO)
        return 2
    if args.child_threads == "1":
        torch.set_num_threads(1)
    load_before = list(os.getloadavg())
    agreement = []
    plan = workload_plan(args.smoke)
    try:  # every check runs before anything is timed
        prepared = []
        for n, c, size in plan["neocell"]:
            prepared += prepare_neocell(impl, n, c, size, plan["code"], plan["shift"], args.tamper, agreement)
        prepared += prepare_model(impl, plan, args.tamper, agreement)
    except Disagreement as exc:
        print(f"REFUSING TO TIME: {exc}")
        return 1
    rows, floors, profiles = [], {}, {}
    for item in prepared:
        print(f"  timing {item['name']}", flush=True)
        turns = time_pair(item["workloads"], args.repeats, args.calls)
        times = {name: min(values) for name, values in turns.items()}
        if "floor" in times:
            floors[f"floor{item['batch']}"] = times["floor"]
        rows.append(
            {
                "name": item["name"],
                "key": item["key"],
                "batch": item["batch"],
                "official_ms": times["official"],
                "neocell_ref_ms": times["neocell_ref"],
                "ratio": times["neocell_ref"] / times["official"],
                "turn_ratio": turn_ratio(turns["neocell_ref"], turns["official"]),
                "official_turns_ms": turns["official"],
                "neocell_ref_turns_ms": turns["neocell_ref"],
                "target": item["target"],
            }
        )
        if args.profile and item.get("profile"):
            profiles[item["key"]] = layer_shares(*item["profile"])
    floor_ratios = []
    by_name = {row["key"]: row for row in rows}
    b1, b8 = plan["batches"]
    for name, key, floor_key, factor in (
        ("inference batch 1", f"infer{b1}", f"floor{b1}", 1),
        ("inference batch 8", f"infer{b8}", f"floor{b8}", 1),
        ("training step", "train", f"floor{plan['train_batch']}", 3),
    ):
        mine, floor = by_name[key]["neocell_ref_ms"], floors[floor_key] * factor
        floor_ratios.append(
            {
                "name": name if not args.smoke else f"{name} (smoke: batch {by_name[key]['batch']})",
                "neocell_ref_ms": mine,
                "floor_ms": floor,
                "floor_factor": factor,
                "ratio": mine / floor,
                "target": FLOOR_TARGETS[name],
            }
        )
    result = {
        "threads": args.child_threads,
        "torch_threads": torch.get_num_threads(),
        "thread_env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "load_before": load_before,
        "load_after": list(os.getloadavg()),
        "official_commit": impl.commit,
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__},
        "rows": rows,
        "floors_ms": floors,
        "floor_ratios": floor_ratios,
        "agreement": agreement,
        "profile_ms": profiles,
    }
    Path(args.child).write_text(json.dumps(result, indent=2))
    return 0


def check_agreement(name, pairs, bound, agreement, reference=None):
    """Record ``relative_error(neocell_ref, official)`` of every pair; raise beyond the bound.

    Parameters
    ----------
    name : str
        The workload.
    pairs : list of (label, ndarray, ndarray)
        neocell_ref's and the official result of the same quantity, float32.
    bound : float
        :data:`NEOCELL_BOUND` or :data:`MODEL_BOUND`.
    agreement : list
        Every comparison is appended here (for the JSON).
    reference : callable, optional
        ``reference() -> {label: float64 ndarray}``, neocell_ref in float64 with the same
        weights, called (once) only when an array misses ``bound``. Such an array still
        passes if the two differ by less than :data:`CONDITIONED_FACTOR` times the
        error of neocell_ref's float32 result against float64 on that array, at most
        :data:`CONDITIONED_CAP`: a gradient that is a sum with heavy cancellation (the
        bias of a BatchNorm followed by a training-mode BatchNorm) is that far from
        its exact value in float32 whoever computes it.
    """
    from neocell_ref.verify.tolerances import relative_error

    exact = {}
    for label, mine, theirs in pairs:
        error = relative_error(mine, theirs)
        entry = {"name": f"{name}: {label}", "error": error, "bound": bound}
        if not error < bound and reference is not None and not math.isnan(error):
            exact = exact or reference()
            float32_error = relative_error(mine, exact[label])
            entry["float32_error"] = float32_error
            entry["bound"] = min(CONDITIONED_CAP, max(bound, CONDITIONED_FACTOR * float32_error))
        agreement.append(entry)
        if not error < entry["bound"]:  # also catches NaN
            raise Disagreement(
                f"{name}: {label} of neocell_ref and of the official implementation differ by "
                f"{error:.3g} (relative, bound {entry['bound']:.3g}); same inputs and weights "
                "were given, so one of them computes something else"
            )
        note = (
            f" (bound {entry['bound']:.1e}: float32 itself is {entry['float32_error']:.1e} off)"
            if "float32_error" in entry
            else ""
        )
        print(f"  agree: {name}: {label} {error:.1e}{note}", flush=True)


def time_pair(workloads, repeats, calls):
    """Round-robin wall times in ms of every workload (bench_model's interleaving,
    ``calls`` back-to-back calls per turn): ``{name: [best call of each turn, ...]}``."""
    from bench_model import interleaved_turns

    turns = interleaved_turns(workloads, repeats, calls=calls)
    return {name: [wall * 1e3 for wall, _cpu in pairs] for name, pairs in turns.items()}


def turn_ratio(mine, theirs):
    """Median over the turns of neocell_ref's time over the official one's in the same
    round: a second view of the ratio, insensitive to the machine's speed drifting
    between rounds (each ratio compares two turns timed seconds apart), where the
    issue's ratio of the minimums compares each side's luckiest turn."""
    if len(mine) != len(theirs) or not mine:
        raise ValueError(f"turn_ratio: {len(mine)} and {len(theirs)} turns")
    return statistics.median(m / t for m, t in zip(mine, theirs))


def prepare_neocell(impl, n, c, size, code, shift, tamper, agreement):
    """The two NeoCell workloads at one size, after checking that both implementations agree.

    Returns
    -------
    list of dict
        ``name``, ``key``, ``batch``, ``target`` and ``workloads`` (``{"official": fn,
        "neocell_ref": fn}``) of the forward row and of the forward + backward row.
    """
    import numpy as np
    import torch

    from neocell_ref import neocell_backward, neocell_forward
    from neocell_ref.spec import parse_kernel_code

    groups = parse_kernel_code(code, c, shift)
    specs = [g.to_dict() for g in groups]
    rng = np.random.default_rng(size)
    x = rng.standard_normal((n, c, size, size)).astype(np.float32)
    grad_y = rng.standard_normal(x.shape).astype(np.float32)
    wa = [(rng.standard_normal(g.shape_a) / g.h_in).astype(np.float32) for g in groups]
    wb = [(rng.standard_normal(g.shape_b) / g.w_in).astype(np.float32) for g in groups]

    layer = impl.neocell_layer(specs)  # float32, as their constructor makes it
    with torch.no_grad():
        for param, value in zip([*layer.weight_a, *layer.weight_b], [*wa, *wb]):
            param.copy_(torch.from_numpy(value))
        if tamper == "neocell":  # test of the agreement check: one weight differs
            layer.weight_a[0][0, 0, 0] += 1.0
    xt = torch.from_numpy(x)
    xg = xt.clone().requires_grad_(True)
    gyt = torch.from_numpy(grad_y)

    def official_fwd():
        with torch.no_grad():
            return layer(xt)

    def official_step():
        layer.zero_grad(set_to_none=True)
        xg.grad = None
        layer(xg).backward(gyt)

    def mine_fwd():
        return neocell_forward(x, wa, wb, specs)

    def mine_step():
        neocell_forward(x, wa, wb, specs)
        return neocell_backward(grad_y, x, wa, wb, specs)

    label = f'NeoCell {n}x{c}x{size}x{size} "{code}" shift {shift}'
    check_agreement(label, [("y", mine_fwd(), official_fwd().numpy())], NEOCELL_BOUND, agreement)
    official_step()
    gx, ga, gb = mine_step()
    pairs = [("grad_x", gx, xg.grad.numpy())]
    pairs += [(f"grad_weight_a_{g}", ga[g], p.grad.numpy()) for g, p in enumerate(layer.weight_a)]
    pairs += [(f"grad_weight_b_{g}", gb[g], p.grad.numpy()) for g, p in enumerate(layer.weight_b)]
    check_agreement(label, pairs, NEOCELL_BOUND, agreement)
    return [
        {
            "name": f"{label}, forward",
            "key": f"neocell{size}_fwd",
            "batch": n,
            "target": NEOCELL_TARGET,
            "workloads": {"official": official_fwd, "neocell_ref": mine_fwd},
        },
        {
            "name": f"{label}, forward + backward",
            "key": f"neocell{size}_fwdbwd",
            "batch": n,
            "target": NEOCELL_TARGET,
            "workloads": {"official": official_step, "neocell_ref": mine_step},
        },
    ]


def build_models(impl, plan):
    """neocell_ref's model (float32, seed 0) and the authors' with the same state dict."""
    import numpy as np
    import torch

    import neocell_ref as nr

    if plan["model"] == "tiny":
        config = {"per_stage_layers": (1, 1, 2, 1), "dims": (8, 16, 32, 64), "num_classes": 10}
        mine = nr.models.NeoNeXt(
            **config, dtype=np.float32, rng=np.random.default_rng(0), resolution=plan["resolution"]
        )
    else:
        config = {"per_stage_layers": (3, 3, 9, 3), "dims": (96, 192, 384, 768)}  # their neonext_t
        mine = nr.models.neonext_t(dtype=np.float32, rng=np.random.default_rng(0), resolution=plan["resolution"])
    theirs = impl.build_model(**config)
    state = {key: torch.from_numpy(np.array(value)) for key, value in mine.state_dict().items()}
    theirs.load_state_dict(state, strict=True)
    return mine, theirs


def model_float64(mine, plan):
    """A float64 copy of neocell_ref's model with its current weights and buffers."""
    import numpy as np

    import neocell_ref as nr

    exact = nr.models.NeoNeXt.from_config(mine.config, dtype=np.float64, resolution=plan["resolution"])
    exact.load_state_dict(mine.state_dict())
    return exact


def prepare_model(impl, plan, tamper, agreement):
    """The NeoNeXt rows (inference per batch, with the MLP floor; the training step),
    after checking that both models agree; items as :func:`prepare_neocell`'s."""
    import numpy as np
    import torch
    from bench_model import mlp_floor, mlp_operands

    mine, theirs = build_models(impl, plan)
    if tamper == "model":  # test of the agreement check: one weight differs
        with torch.no_grad():
            theirs.state_dict()["head.fc.weight"][0, 0] += 1.0
    name = "NeoNeXt-T" if plan["model"] == "neonext_t" else "tiny NeoNeXt"
    size = plan["resolution"]
    rng = np.random.default_rng(1)
    prepared = []

    for batch in plan["batches"]:
        x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
        xt = torch.from_numpy(x)
        pairs = mlp_operands(mine, batch, rng)

        def official(xt=xt):
            theirs.eval()  # the training step, timed in between, leaves it in training mode
            with torch.no_grad():
                return theirs(xt)

        def fast(x=x):
            return mine.forward(x, training=False, cache=False)

        label = f"{name} {size} px inference, batch {batch}"
        check_agreement(label, [("logits", fast(), official().numpy())], MODEL_BOUND, agreement)
        prepared.append(
            {
                "name": label,
                "key": f"infer{batch}",
                "batch": batch,
                "target": MODEL_TARGET,
                "workloads": {"official": official, "neocell_ref": fast, "floor": lambda pairs=pairs: mlp_floor(pairs)},
                "profile": (mine, fast),
            }
        )

    batch = plan["train_batch"]
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    grad_logits = rng.standard_normal((batch, mine.config.num_classes)).astype(np.float32)
    xg = torch.from_numpy(x).clone().requires_grad_(True)
    gt = torch.from_numpy(grad_logits)

    def official_step():
        theirs.train()
        theirs.zero_grad(set_to_none=True)
        xg.grad = None
        logits = theirs(xg)
        logits.backward(gt)
        return logits

    def mine_step():
        logits = mine.forward(x, training=True)
        return logits, mine.backward(grad_logits)

    label = f"{name} {size} px training step (forward + backward), batch {batch}"
    # one step of each from the same state (BatchNorm running statistics included)
    logits_theirs = official_step().detach().numpy()
    logits_mine, grad_x = mine_step()
    pairs = [("logits", logits_mine, logits_theirs), ("grad_x", grad_x, xg.grad.numpy())]
    grads = dict(theirs.named_parameters())
    pairs += [(f"grad {key}", value, grads[key].grad.numpy()) for key, value in mine.grads.items()]

    def reference():
        """neocell_ref in float64 on the same weights and data: the exact values to float32's eyes."""
        exact = model_float64(mine, plan)
        logits = exact.forward(x.astype(np.float64), training=True)
        out = {"logits": logits, "grad_x": exact.backward(grad_logits.astype(np.float64))}
        out.update({f"grad {key}": value for key, value in exact.grads.items()})
        exact.clear_cache()
        return out

    check_agreement(label, pairs, MODEL_BOUND, agreement, reference)
    prepared.append(
        {
            "name": label,
            "key": "train",
            "batch": batch,
            "target": MODEL_TARGET,
            "workloads": {"official": official_step, "neocell_ref": mine_step},
            "profile": (mine, mine_step),
        }
    )
    return prepared


def layer_shares(model, fn, runs=3):
    """neocell_ref's ms per layer kind (mean of ``runs`` calls), from the model's profile hook."""
    from bench_model import share_table

    model.profile = {}
    for _ in range(runs):
        fn()
    shares = {key: value / runs * 1e3 for key, value in model.profile.items()}
    model.profile = None
    print(share_table({k: v / 1e3 for k, v in shares.items()}, "  neocell_ref time per layer kind"), flush=True)
    return shares


if __name__ == "__main__":
    sys.exit(main())
