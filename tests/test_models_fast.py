"""The model's fused inference path (neocell_ref/models_fast.py) equals the layer-by-layer one.

``forward(cache=False)`` runs each block's tail on blocks of pixels; it must give the
logits, the executed products and, in training mode, the buffers of the plain path.
tests/test_models.py draws random small models and compares both paths too.

The worker threads (neocell_ref/_parallel.py, tested here with the path they serve):
the thread count from the environment (bad values refused, naming the variable),
``split`` covers every index once, ``run`` returns results in task order and re-raises
a task's error after every task has finished, the BLAS thread count is restored, a
forked child starts its own pool; and the model with threads on equals the model with
threads off: bit-identical where each value's operations are those of one thread (the
early stages' pixel blocks, float64 here), within float32 accuracy where BLAS sums a
late stage's share of rows in another order; batch 1 and 3, block and row counts that
do not divide by the thread count; the same MACs and profile keys; the same result on
every repeat. The proof that this comparison catches lost work is
tests/meta/test_models_fast_mutants.py.
"""

import numpy as np
import pytest
from support.models import tiny, tiny_input
from support.optional import unavailable
from support.threads import assert_threads_agree, model_with_nontrivial_tail, perturb_tail, use_small_blocks

import neocell_ref as nr
from neocell_ref import _parallel as parallel
from neocell_ref import models_fast
from neocell_ref.instrument import count_macs
from neocell_ref.verify.tolerances import relative_error


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_path_matches_the_layer_by_layer_path(monkeypatch, dtype):
    """cache=False runs BatchNorm (inference), fc_1, GELU, fc_2, layer scale and the skip
    addition on blocks of pixels: blocks of 3 columns here, so that samples split into
    several blocks with a short last one (64 = 21·3 + 1). Training mode too (there only
    fc_1, GELU, fc_2 are blocked)."""
    model = perturb_tail(tiny(dtype, linear_bias=True, layer_scale_init_value=0.5))
    monkeypatch.setattr(models_fast, "_MLP_BLOCK", 16 * 3)  # stage 1: 16 hidden channels -> 3 columns
    x = tiny_input(3).astype(dtype)
    with count_macs() as fused_count:
        fused = model.forward(x, cache=False)
    with count_macs() as plain_count:
        plain = model.forward(x, cache=True)
    tol = 1e-13 if dtype == np.float64 else 1e-6
    err = relative_error(fused, plain)
    assert err <= tol, f"fast inference path differs from the layer-by-layer path: {err:.3e}"
    assert fused_count.by_tag() == plain_count.by_tag(), (fused_count.by_tag(), plain_count.by_tag())
    twin = tiny(dtype, linear_bias=True, layer_scale_init_value=0.5)
    twin.load_state_dict(model.state_dict())
    twin.fast_training = False  # the layer-by-layer formulation is the reference
    fast_train = model.forward(x, training=True, cache=False)
    plain_train = twin.forward(x, training=True)
    err = relative_error(fast_train, plain_train)
    assert err <= tol, f"training-mode fast path differs: {err:.3e}"
    for key in model.buffers:  # later BatchNorms see inputs that differ by rounding
        assert np.allclose(model.buffers[key], twin.buffers[key], rtol=tol, atol=0), f"{key} differs"


@pytest.fixture
def small_blocks(monkeypatch):
    use_small_blocks(monkeypatch)


# ======================================================================================
# the worker threads (neocell_ref/_parallel.py)
# ======================================================================================
def test_thread_count_from_the_environment(monkeypatch):
    for name in ("NEOCELL_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    default = parallel.threads()
    assert 1 <= default <= parallel.MAX_THREADS, f"default thread count {default}, MAX_THREADS {parallel.MAX_THREADS}"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert parallel.threads() == 1, "a single-threaded BLAS run must stay single-threaded"
    monkeypatch.setenv("NEOCELL_THREADS", "3")
    assert parallel.threads() == 3, "NEOCELL_THREADS overrides the default"
    for bad in ("0", "-2", "two", "1.5", "257", "100000"):
        monkeypatch.setenv("NEOCELL_THREADS", bad)
        with pytest.raises(ValueError, match=f"NEOCELL_THREADS.*{bad}"):
            parallel.threads()
    monkeypatch.delenv("NEOCELL_THREADS")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "junk")  # another library's variable: ignored
    count = parallel.threads()
    assert count == default, f"OPENBLAS_NUM_THREADS=junk gave {count} threads, the default is {default}"


@pytest.mark.parametrize("count, parts", [(0, 2), (1, 3), (5, 2), (22, 3), (7, 7), (3, 8)])
def test_split_covers_every_index_once_in_order(count, parts):
    ranges = parallel.split(count, parts)
    covered = [i for lo, hi in ranges for i in range(lo, hi)]
    assert covered == list(range(count)), f"split({count}, {parts}) = {ranges}"
    assert all(hi > lo for lo, hi in ranges) or count == 0, f"empty range in {ranges}"
    sizes = [hi - lo for lo, hi in ranges]
    assert not sizes or max(sizes) - min(sizes) <= 1, f"unbalanced {ranges}"


def test_run_returns_in_task_order_and_reraises_after_all_finish():
    results = parallel.run([lambda i=i: i * i for i in range(5)])
    assert results == [0, 1, 4, 9, 16], f"run of i*i for i < 5 returned {results}, expected [0, 1, 4, 9, 16]"
    results = parallel.run([])
    assert results == [], f"run([]) returned {results!r}"
    finished = []

    def boom():
        raise KeyError("task 1")

    def slow():
        np.linalg.eigvalsh(np.eye(200))
        finished.append("slow")

    with pytest.raises(KeyError, match="task 1"):
        parallel.run([lambda: finished.append("first"), boom, slow])
    assert sorted(finished) == ["first", "slow"], f"not every task finished before the error: {finished}"


def test_run_each_runs_one_share_inline_and_several_over_the_pool_with_blas_held(monkeypatch):
    """The fast paths' one way to run thread shares: each share exactly once; one share in
    the calling thread (not a pool task), several over the pool, BLAS held at one thread."""
    monkeypatch.setenv("NEOCELL_THREADS", "3")
    seen = []

    def task(share):
        api = parallel._BLAS_STATE["api"]
        seen.append((share, parallel.in_task(), None if api is None else api[1]()))

    parallel.run_each([(0, 4)], task)
    assert seen == [((0, 4), False, seen[0][2])], f"one share must run inline: {seen}"
    seen.clear()
    parallel.run_each([(0, 2), (2, 3), (3, 4)], task)
    assert sorted(share for share, _, _ in seen) == [(0, 2), (2, 3), (3, 4)], f"shares run: {seen}"
    assert all(inside for _, inside, _ in seen), f"several shares must run as pool tasks: {seen}"
    assert all(count in (None, 1) for _, _, count in seen), f"BLAS not held at one thread: {seen}"


def test_single_threaded_blas_restores_the_thread_count():
    with parallel.single_threaded_blas():
        api = parallel._BLAS_STATE["api"]
        if api is not None:
            assert api[1]() == 1, "BLAS not single-threaded inside the block"
            with parallel.single_threaded_blas():  # nested
                count = api[1]()
                assert count == 1, f"BLAS uses {count} threads inside the nested block"
            assert api[1]() == 1, "the inner block restored the count too early"
    if api is not None:
        assert api[1]() == parallel._BLAS_STATE["saved"], "thread count not restored"
    assert parallel._BLAS_STATE["depth"] == 0, f"BLAS nesting depth {parallel._BLAS_STATE['depth']} after the blocks"


def test_pool_owns_the_cores_for_a_whole_pass_only_with_threads(monkeypatch):
    """fast_forward holds BLAS at one thread for the whole pass when the pool has two
    threads or more (OpenBLAS's spinning workers would take the pool's cores), and leaves
    BLAS alone when the pool is off (then BLAS threads are the only parallelism)."""
    with parallel.single_threaded_blas():
        api = parallel._BLAS_STATE["api"]
    if api is None:
        unavailable("NumPy's OpenBLAS was not found: its thread count cannot be read")
    initial = api[1]()
    if initial < 2:  # a one-core machine or OPENBLAS_NUM_THREADS=1: ask for two
        api[0](2)
        if api[1]() < 2:
            api[0](initial)
            unavailable(f"OpenBLAS runs {initial} thread here and cannot be given two")
        monkeypatch.setattr(parallel, "_cpus", lambda: 2)  # the pool's default: two threads
    try:
        _check_pool_owns_the_cores(api, monkeypatch)
    finally:
        api[0](initial)


def _check_pool_owns_the_cores(api, monkeypatch):
    seen = []
    real = models_fast._forward
    monkeypatch.setattr(models_fast, "_forward", lambda *a: (seen.append(api[1]()), real(*a))[1])
    model = model_with_nontrivial_tail(np.float32)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    before = api[1]()
    for setting, expected in (("2", 1), ("1", before)):
        monkeypatch.setenv("NEOCELL_THREADS", setting)
        model.forward(x, cache=False)
        assert seen[-1] == expected, f"NEOCELL_THREADS={setting}: BLAS ran {seen[-1]} threads in the pass"
        assert api[1]() == before, f"NEOCELL_THREADS={setting}: BLAS count {api[1]()} not restored to {before}"


def _forward_in_child(queue):
    model = model_with_nontrivial_tail(np.float64)
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 32))
    queue.put(model.forward(x, cache=False))


def test_a_forked_child_gets_its_own_pool(monkeypatch):
    """The parent's pool threads do not exist in a forked child: without a new pool
    the child's first threaded forward would wait forever."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")  # pragma: no cover - Linux CI forks
    monkeypatch.setenv("NEOCELL_THREADS", "2")
    parallel.run([lambda: 1, lambda: 2])  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_forward_in_child, args=(queue,))
    child.start()
    try:
        y = queue.get(timeout=120)
    finally:
        child.join(timeout=30)
        if child.is_alive():  # pragma: no cover - only on failure
            child.kill()
    model = model_with_nontrivial_tail(np.float64)
    monkeypatch.setenv("NEOCELL_THREADS", "1")
    expected = model.forward(np.random.default_rng(6).standard_normal((2, 3, 32, 32)), cache=False)
    assert np.array_equal(y, expected), "the forked child's threaded forward differs"


# ======================================================================================
# the model, threads on against threads off
# ======================================================================================
@pytest.mark.parametrize("batch", [1, 3])
def test_threads_on_equal_threads_off_float64(small_blocks, monkeypatch, batch):
    model = model_with_nontrivial_tail(np.float64)
    x = np.random.default_rng(1).standard_normal((batch, 3, 32, 32))
    y, macs = assert_threads_agree(model, x, monkeypatch, exact=True)
    plain = model.forward(x, cache=True)
    assert relative_error(y, plain) <= 1e-13, "the fast path no longer equals the layer-by-layer path"
    expected = 0
    for desc in model.architecture.layers():
        if desc.kind == "linear":
            c_out, c_in = desc.params["weight"][:2]
            expected += batch * c_out * c_in * int(np.prod(desc.in_shape[1:]))
    assert macs["linear"] == expected, f"linear MACs {macs['linear']}, description {expected}"


@pytest.mark.parametrize("batch", [1, 3])
def test_threads_on_match_threads_off_float32(small_blocks, monkeypatch, batch):
    model = model_with_nontrivial_tail(np.float32)
    x = np.random.default_rng(2).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    assert_threads_agree(model, x, monkeypatch, exact=False)


def test_early_blocks_are_bitwise_equal_across_thread_counts(monkeypatch):
    """The early-stage blocks are the same whatever the thread count, so each value's
    operations are too: bitwise equal in float32 (the late stages' row shares need
    not be, see the module docstring)."""
    rng = np.random.default_rng(3)
    model = model_with_nontrivial_tail(np.float32)
    monkeypatch.setattr(models_fast, "_MLP_BLOCK", 16 * 5)
    w1 = rng.standard_normal((16, 4)).astype(np.float32)
    w2 = rng.standard_normal((4, 16)).astype(np.float32)
    b1, b2 = rng.standard_normal(16).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((2, 4, 7, 9)).astype(np.float32)  # 63 pixels: 13 blocks per sample
    skip = rng.standard_normal((2, 4, 7, 9)).astype(np.float32)
    affine = (rng.uniform(0.5, 2, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32))
    gamma = rng.standard_normal(4).astype(np.float32)
    outs = []
    for threads in (1, 2, 3, 4):
        monkeypatch.setenv("NEOCELL_THREADS", str(threads))
        outs.append(models_fast._fused_mlp(model, (w1, b1, w2, b2), x.copy(), affine=affine, gamma=gamma, skip=skip))
    for threads, y in zip((2, 3, 4), outs[1:]):
        assert np.array_equal(y, outs[0]), f"{threads} threads: early blocks differ by {relative_error(y, outs[0]):.3e}"
    # and the blocks compute the unfused formula
    h = np.einsum("oc,ncp->nop", w1, (x * affine[0][:, None, None] + affine[1][:, None, None]).reshape(2, 4, 63))
    h = nr.layers.gelu_forward(h + b1[:, None])
    y = (np.einsum("oc,ncp->nop", w2, h) + b2[:, None]) * gamma[:, None] + skip.reshape(2, 4, 63)
    err = relative_error(outs[0].reshape(2, 4, 63), y)
    diff = np.abs(outs[0].reshape(2, 4, 63) - y)
    assert err <= 1e-6, (
        f"fused blocks vs the unfused formula: relative error {err:.3e} > 1e-6, largest |difference| "
        f"{diff.max():.3e} at {np.unravel_index(np.argmax(diff), diff.shape)}"
    )


@pytest.mark.parametrize("threads", [2, 3])
def test_conv1x1_split_by_samples_is_the_plain_layer_bit_for_bit(monkeypatch, threads):
    """The fast paths' 1x1 convolution with the samples over the pool runs the plain
    layer's per-sample products: bitwise equal to layers.conv1x1_forward (odd batch,
    uneven shares); and the fast inference runs it (forced on a small model) within
    the documented accuracy of the plain forward."""
    monkeypatch.setenv("NEOCELL_THREADS", str(threads))
    monkeypatch.setattr(models_fast, "_SAMPLE_SPLIT_MACS", 0)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 6, 7, 9)).astype(np.float32)
    w = rng.standard_normal((11, 6, 1, 1)).astype(np.float32)
    shares = models_fast.sample_shares(5, 0)
    assert shares == parallel.split(5, threads), shares
    got = models_fast.conv1x1_samples(x, w, shares)
    want = nr.layers.conv1x1_forward(x, w)
    assert np.array_equal(got, want), f"{threads} threads: differs by {relative_error(got, want):.2e}"
    model = model_with_nontrivial_tail(np.float32)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    calls = []
    real = models_fast.conv1x1_samples
    monkeypatch.setattr(models_fast, "conv1x1_samples", lambda *a: calls.append(1) or real(*a))
    fast = model.forward(x, cache=False)
    plain = model.forward(x, cache=True)
    assert calls, "the forced split should run the 1x1 convolutions by samples"
    assert relative_error(fast, plain) <= 1e-5, f"fast inference with the split: {relative_error(fast, plain):.2e}"


def test_threaded_results_do_not_depend_on_scheduling(small_blocks, monkeypatch):
    model = model_with_nontrivial_tail(np.float32)
    x = np.random.default_rng(4).standard_normal((3, 3, 32, 32)).astype(np.float32)
    monkeypatch.setenv("NEOCELL_THREADS", "3")
    first = model.forward(x, cache=False)
    for _ in range(5):
        assert np.array_equal(model.forward(x, cache=False), first), "a repeat with the same threads differs"
