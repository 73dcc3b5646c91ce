"""Graph size and speed of the ONNX Runtime port against the NumPy reference.

Run from the repository root (needs the 'onnx' extra)::

    python examples/onnx_port/bench_onnx.py [--threads 1] [--repeat 7]

``--threads N`` sets both OpenBLAS's threads (NumPy) and ONNX Runtime's intra-op pool
(default 0: each library's own default, one thread per core).

Measured, interleaved round-robin and reported as median (minimum):

* one NeoCell, batch 8, 96 channels at 56x56, kernel code "4+7", shift 1 (NeoNeXt-T
  stage 1) in float32: the port's patch-wise graph, a block-diagonal graph (two
  batched MatMuls with the expanded matrices as initializers, built here with
  ``neocell_ref.expansion`` for the comparison only), and ``neocell_forward`` (NumPy,
  patch-wise) in float32 and float64;
* NeoNeXt-T at 224 px, batch 1, inference: the port's graph against
  ``NeoNeXt.forward(cache=False)`` in float32 and float64.

Graph size: node count and initializer bytes of each ONNX model.
"""

import argparse
import os
import sys
import time
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import dataclasses
    import platform

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import neocell_onnx as port

    import neocell_ref as nr
    from neocell_ref.models import NeoNeXt

    port.INTRA_OP_THREADS = args.threads
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__}, opset {port.OPSET}, threads {args.threads or 'default'}, "
        f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}"
    )

    def size(model):
        return len(model.graph.node), sum(len(t.raw_data) for t in model.graph.initializer)

    def timed(fns, repeat):
        samples = {k: [] for k in fns}
        for k, fn in fns.items():  # warm-up
            fn()
        for _ in range(repeat):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                samples[k].append(time.perf_counter() - t)
        return {k: (float(np.median(v)), min(v)) for k, v in samples.items()}

    # --- one NeoCell ---------------------------------------------------------------------
    rng = np.random.default_rng(0)
    specs = [s.to_dict() for s in nr.parse_kernel_code("4+7", 96, shift=1)]
    shape = (8, 96, 56, 56)
    x32 = rng.standard_normal(shape).astype(np.float32)
    wa, wb = nr.neo_init(specs, rng=rng)
    wa32 = [w.astype(np.float32) for w in wa]
    wb32 = [w.astype(np.float32) for w in wb]
    x64 = x32.astype(np.float64)

    patch_model = port.build_neocell_model(specs, shape)
    patch_sess = port.session(patch_model)
    feeds = {
        "x": x32,
        **{f"weight_a_{g}": w for g, w in enumerate(wa32)},
        **{f"weight_b_{g}": w for g, w in enumerate(wb32)},
    }

    # block-diagonal alternative: y = A_full @ x @ B_full, expanded matrices as initializers
    a_full, b_full = nr.expand(wa32, wb32, specs, shape[2:])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "x"], ["z"]), helper.make_node("MatMul", ["z", "B"], ["y"])],
        "blockdiag",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        initializer=[
            numpy_helper.from_array(a_full.astype(np.float32), "A"),
            numpy_helper.from_array(b_full.astype(np.float32), "B"),
        ],
    )
    block_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", port.OPSET)])
    block_model.ir_version = min(block_model.ir_version, 10)
    block_sess = port.session(block_model)

    ref = nr.neocell_forward(x64, wa, wb, specs)
    for name, got in (
        ("patch-wise graph", patch_sess.run(None, feeds)[0]),
        ("block-diagonal graph", block_sess.run(None, {"x": x32})[0]),
    ):
        print(f"{name}: relative error vs float64 reference {np.abs(got - ref).max() / np.abs(ref).max():.2g}")
    print(f"\nNeoCell {shape} '4+7' shift 1, float32 graphs")
    for name, model in (("patch-wise graph", patch_model), ("block-diagonal graph", block_model)):
        nodes, nbytes = size(model)
        print(
            f"  {name:<24} {nodes:5d} nodes, initializers {nbytes / 1e6:8.3f} MB, model {model.ByteSize() / 1e6:8.3f} MB"
        )
    times = timed(
        {
            "onnx patch-wise (f32)": lambda: patch_sess.run(None, feeds),
            "onnx block-diagonal (f32)": lambda: block_sess.run(None, {"x": x32}),
            "numpy neocell_forward f32": lambda: nr.neocell_forward(x32, wa32, wb32, specs),
            "numpy neocell_forward f64": lambda: nr.neocell_forward(x64, wa, wb, specs),
        },
        args.repeat,
    )
    base = times["numpy neocell_forward f32"][0]
    for k, (med, mn) in times.items():
        print(f"  {k:<28} {med * 1e3:8.1f} ms ({mn * 1e3:7.1f})   x{base / med:5.2f} vs numpy f32")

    # --- NeoNeXt-T ---------------------------------------------------------------------------
    model64 = NeoNeXt(rng=np.random.default_rng(0))
    model32 = NeoNeXt(rng=np.random.default_rng(0), dtype=np.float32)
    state = model64.state_dict()
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224))
    t = time.perf_counter()
    onnx_model = port.build_neonext_model(state, dataclasses.asdict(model64.config), x.shape)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    sess = port.session(onnx_model)
    t_session = time.perf_counter() - t
    nodes, nbytes = size(onnx_model)
    print(
        f"\nNeoNeXt-T 224 px batch 1: {nodes} nodes, initializers {nbytes / 1e6:.1f} MB, model "
        f"{onnx_model.ByteSize() / 1e6:.1f} MB; graph built in {t_build:.2f} s, session in {t_session:.2f} s"
    )
    x32 = x.astype(np.float32)
    times = timed(
        {
            "onnx (f32)": lambda: sess.run(None, {"x": x32}),
            "numpy NeoNeXt f32": lambda: model32.forward(x32, cache=False),
            "numpy NeoNeXt f64": lambda: model64.forward(x, cache=False),
        },
        args.repeat,
    )
    base = times["numpy NeoNeXt f32"][0]
    for k, (med, mn) in times.items():
        print(f"  {k:<28} {med * 1e3:8.1f} ms ({mn * 1e3:7.1f})   x{base / med:5.2f} vs numpy f32")
    got = sess.run(None, {"x": x32})[0]
    ref = model64.forward(x, cache=False)
    print(f"  logits: relative error vs float64 reference {np.abs(got - ref).max() / np.abs(ref).max():.2g}")


if __name__ == "__main__":
    main()
