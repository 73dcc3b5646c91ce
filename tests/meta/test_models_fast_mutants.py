"""The threaded fast path's comparison has teeth.

- ``test_a_threaded_split_that_skips_work_fails_the_comparison``: the threads-on against
  threads-off comparison of tests/test_models_fast.py (``support.threads.assert_threads_agree``)
  fails when the pool's split loses one thread's share of blocks or rows.
"""

import numpy as np
import pytest
from support.threads import assert_threads_agree, model_with_nontrivial_tail, use_small_blocks

from neocell_ref import _parallel as parallel


def test_a_threaded_split_that_skips_work_fails_the_comparison(monkeypatch):
    """Mutant: the pool's split loses its last range (one thread's blocks or rows
    never computed). The comparison with one thread must catch it."""
    use_small_blocks(monkeypatch)
    model = model_with_nontrivial_tail(np.float64)
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32))
    real_split = parallel.split

    def lossy_split(count, parts):
        ranges = real_split(count, parts)
        return ranges[:-1] if len(ranges) > 1 else ranges

    monkeypatch.setattr(parallel, "split", lossy_split)
    # the skipped share holds whatever the buffer held: overflow warnings are expected
    with pytest.raises(AssertionError, match="threads differ"), np.errstate(all="ignore"):
        assert_threads_agree(model, x, monkeypatch, exact=True)
