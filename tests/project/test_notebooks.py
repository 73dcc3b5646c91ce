"""The tutorial notebooks: committed executed, and their stored outputs are current.

The notebooks are committed *with* their outputs and figures, so that a learner who
opens one in a code-hosting viewer sees the plots without running anything. Each
notebook checks its own claims with ``assert`` cells, so executing it is a test of both
the notebook and the package; and the text it prints now must be the text stored in
the committed file, so stored outputs never go stale. Images are excluded from that
comparison (a PNG's bytes depend on the matplotlib and FreeType versions); nothing
else is normalised, which is why the notebooks print no timings, addresses or
rounding-level differences.

Execution uses nbclient with the ``python3`` kernel of this interpreter, working
directory ``notebooks/``, and a per-cell timeout that only guards against a hang.

To re-execute every notebook and store its outputs (after changing a notebook or
the package), from the repository root::

    python tests/project/test_notebooks.py --update            # all notebooks
    python tests/project/test_notebooks.py --update 02_backward_derivation.ipynb

Needs the ``notebooks`` extra (nbformat, nbclient, ipykernel, matplotlib); see
``tests/support/optional.py`` for what happens when it is missing. The execution and
the checks live in ``tests/support/notebooks.py``; tests/meta/test_notebooks_mutants.py
shows on planted notebooks that they fail when they should.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `support` when run as a script
from support.notebooks import (  # noqa: E402
    MAX_BYTES,
    NOTEBOOK_DIR,
    NOTEBOOKS,
    execute,
    exercise_problems,
    read_notebook,
    stale_outputs,
    text_outputs,
    unexecuted_cells,
    update,
    volatile_metadata,
)
from support.optional import require  # noqa: E402

# The notebooks the documentation links to; each must exist.
EXPECTED = (
    "01_neocell_from_scratch.ipynb",
    "02_backward_derivation.ipynb",
    "03_cost.ipynb",
    "04_neonext_end_to_end.ipynb",
    "05_porting_with_the_golden_oracle.ipynb",
)


# -- the tests ---------------------------------------------------------------------------
def test_expected_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    missing = [name for name in EXPECTED if name not in names]
    assert not missing, f"notebooks missing from {NOTEBOOK_DIR}: {missing} (found {names})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_executed_and_small(path):
    nbformat = require("nbformat", "notebooks")
    nb = read_notebook(path)
    nbformat.validate(nb)
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{path.name}: kernelspec name is {kernel!r}, expected 'python3'"
    not_run = unexecuted_cells(nb)
    assert not not_run, (
        f"{path.name}: code cells {not_run} have no stored output; run "
        f"'python tests/project/test_notebooks.py --update {path.name}' and commit the result"
    )
    problems = volatile_metadata(nb)
    assert not problems, f"{path.name}: {problems}; store it with --update"
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size:,} bytes; keep figures small (modest DPI)"
    figures = sum("image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code" for out in c.outputs)
    assert figures >= 3, f"{path.name} stores {figures} figures; a learner should see the plots"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_exercises_with_solutions(path):
    problems = exercise_problems(read_notebook(path))
    assert not problems, f"{path.name}: {problems}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_prints_what_it_stores(path):
    stored = read_notebook(path)
    nb = copy.deepcopy(stored)
    start = time.perf_counter()
    execute(nb, NOTEBOOK_DIR)
    seconds = time.perf_counter() - start
    assert not unexecuted_cells(nb), f"{path.name}: cells {unexecuted_cells(nb)} were not executed"
    errors = [
        (i, out.get("ename"))
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for out in c.outputs
        if out.output_type == "error"
    ]
    assert not errors, f"{path.name}: cells raised {errors}"
    stale = stale_outputs(stored, nb)
    assert not stale, (
        f"{path.name}: stored outputs are stale: {stale[:5]}. Run "
        f"'python tests/project/test_notebooks.py --update {path.name}' and commit the result."
    )
    print(f"{path.name}: {len(text_outputs(nb))} code cells, {seconds:.1f} s")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "--update":
        sys.exit(__doc__)
    chosen = [NOTEBOOK_DIR / Path(name).name for name in args[1:]] or NOTEBOOKS
    update(chosen)
