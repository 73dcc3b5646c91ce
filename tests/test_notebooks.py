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

    python tests/test_notebooks.py --update            # all notebooks
    python tests/test_notebooks.py --update 02_backward_derivation.ipynb

Needs the ``notebooks`` extra (nbformat, nbclient, ipykernel, matplotlib); see
``tests/_optional.py`` for what happens when it is missing.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _optional when run as a script
from _optional import require  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# The notebooks the documentation links to; each must exist.
EXPECTED = (
    "01_neocell_from_scratch.ipynb",
    "02_backward_derivation.ipynb",
    "03_cost.ipynb",
    "04_neonext_end_to_end.ipynb",
    "05_porting_with_the_golden_oracle.ipynb",
)
CELL_TIMEOUT = 120  # seconds; each notebook takes seconds in total
MAX_BYTES = 1_000_000  # a committed notebook, figures included, stays well below this
MIN_EXERCISES = 3


def _read(path):
    nbformat = require("nbformat", "notebooks")
    return nbformat.read(str(path), as_version=4)


def execute(nb, cwd: Path):
    """Run every cell of ``nb`` in place with a fresh python3 kernel; raise on any error.

    Timing metadata is not recorded, so an executed notebook is deterministic. The
    kernel gets the checkout first on ``PYTHONPATH``, so the notebooks run the code
    under test (as in ``tests/test_docs.py``).
    """
    nbclient = require("nbclient", "notebooks")
    require("ipykernel", "notebooks")
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [saved])])
    try:
        client.execute()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return nb


def text_outputs(nb) -> list[list[tuple[str, str]]]:
    """The text a notebook shows, per code cell: a list of (kind, text) per output.

    ``stream`` outputs give (stream name, text) and results give ("result", text/plain).
    An output that carries an image is skipped entirely (its text/plain is only a
    placeholder such as ``<Figure size ...>``); an error gives ("error", name: value).
    Consecutive pieces of the same stream are joined, since how the kernel splits a
    stream into messages is not part of what the notebook prints.
    """
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        shown: list[tuple[str, str]] = []
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                text = "".join(out.get("text", ""))
                if shown and shown[-1][0] == out.get("name"):
                    shown[-1] = (shown[-1][0], shown[-1][1] + text)
                else:
                    shown.append((out.get("name"), text))
            elif kind in ("execute_result", "display_data"):
                data = out.get("data", {})
                if any(key.startswith("image/") for key in data):
                    continue
                shown.append(("result", "".join(data.get("text/plain", ""))))
            elif kind == "error":
                shown.append(("error", f"{out.get('ename')}: {out.get('evalue')}"))
        cells.append(shown)
    return cells


def stale_outputs(stored, fresh) -> list[str]:
    """Where the stored text outputs differ from the fresh ones; [] when they agree."""
    old, new = text_outputs(stored), text_outputs(fresh)
    if len(old) != len(new):
        return [f"{len(old)} code cells stored, {len(new)} executed"]
    problems = []
    for i, (a, b) in enumerate(zip(old, new)):
        if a == b:
            continue
        shown_a = "".join(text for _, text in a)
        shown_b = "".join(text for _, text in b)
        lines_a, lines_b = shown_a.splitlines(), shown_b.splitlines()
        where = next((j for j, (u, v) in enumerate(zip(lines_a, lines_b)) if u != v), min(len(lines_a), len(lines_b)))
        first_a = lines_a[where] if where < len(lines_a) else "<nothing>"
        first_b = lines_b[where] if where < len(lines_b) else "<nothing>"
        problems.append(f"code cell {i}, line {where}: stored {first_a!r}, now {first_b!r}")
    return problems


def unexecuted_cells(nb) -> list[int]:
    """Indices of code cells without an execution count (the notebook was not run)."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.execution_count is None]


def volatile_metadata(nb) -> list[str]:
    """Metadata that would change on every run: timings, widget state."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if "execution" in cell.get("metadata", {}):
            problems.append(f"cell {i} stores execution timings")
    if "widgets" in nb.metadata:
        problems.append("notebook metadata holds widget state")
    return problems


def exercise_problems(nb) -> list[str]:
    """An "Exercises" heading, then at least three exercises each followed by a solution.

    An exercise is a markdown cell whose first line starts with ``**Exercise``; its
    solution is the next code cell, tagged ``solution``, which must ``assert``.
    """
    cells = nb.cells
    heading = [
        i
        for i, c in enumerate(cells)
        if c.cell_type == "markdown" and any(line.strip() == "## Exercises" for line in c.source.splitlines())
    ]
    if not heading:
        return ["no '## Exercises' heading"]
    exercises = [
        i
        for i, c in enumerate(cells)
        if i > heading[0] and c.cell_type == "markdown" and c.source.lstrip().startswith("**Exercise")
    ]
    problems = []
    if len(exercises) < MIN_EXERCISES:
        problems.append(f"{len(exercises)} exercises after the heading, expected >= {MIN_EXERCISES}")
    for i in exercises:
        solution = next((c for c in cells[i + 1 :] if c.cell_type == "code"), None)
        if solution is None or "solution" not in solution.metadata.get("tags", []):
            problems.append(f"exercise in cell {i} is not followed by a code cell tagged 'solution'")
        elif "assert" not in solution.source:
            problems.append(f"the solution of the exercise in cell {i} asserts nothing")
        elif not solution.metadata.get("jupyter", {}).get("source_hidden"):
            problems.append(f"the solution of the exercise in cell {i} is not collapsed")
    return problems


def update(paths) -> None:
    """Execute each notebook and write it back with its outputs (the ``--update`` command)."""
    nbformat = require("nbformat", "notebooks")
    for path in paths:
        nb = _read(path)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        start = time.perf_counter()
        execute(nb, NOTEBOOK_DIR)
        nb.metadata = {"kernelspec": nb.metadata["kernelspec"], "language_info": {"name": "python"}}
        nbformat.validate(nb)
        nbformat.write(nb, str(path))
        size = path.stat().st_size
        print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s, {size / 1e3:.0f} kB")
        if size > MAX_BYTES:
            print(f"  WARNING: larger than {MAX_BYTES / 1e6:.0f} MB; make the figures smaller")


# -- the tests ---------------------------------------------------------------------------
def test_expected_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    missing = [name for name in EXPECTED if name not in names]
    assert not missing, f"notebooks missing from {NOTEBOOK_DIR}: {missing} (found {names})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_executed_and_small(path):
    nbformat = require("nbformat", "notebooks")
    nb = _read(path)
    nbformat.validate(nb)
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{path.name}: kernelspec name is {kernel!r}, expected 'python3'"
    not_run = unexecuted_cells(nb)
    assert not not_run, (
        f"{path.name}: code cells {not_run} have no stored output; run "
        f"'python tests/test_notebooks.py --update {path.name}' and commit the result"
    )
    problems = volatile_metadata(nb)
    assert not problems, f"{path.name}: {problems}; store it with --update"
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size:,} bytes; keep figures small (modest DPI)"
    figures = sum("image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code" for out in c.outputs)
    assert figures >= 3, f"{path.name} stores {figures} figures; a learner should see the plots"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_exercises_with_solutions(path):
    problems = exercise_problems(_read(path))
    assert not problems, f"{path.name}: {problems}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_prints_what_it_stores(path):
    stored = _read(path)
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
        f"'python tests/test_notebooks.py --update {path.name}' and commit the result."
    )
    print(f"{path.name}: {len(text_outputs(nb))} code cells, {seconds:.1f} s")


# -- the checks above must be able to fail ---------------------------------------------
def _tiny_notebook(*sources):
    nbformat = require("nbformat", "notebooks")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_a_failing_assert_in_a_notebook_fails_execution(tmp_path):
    nbclient = require("nbclient", "notebooks")
    nb = _tiny_notebook("x = 1", "assert x == 2, 'planted failure'", "print('never reached')")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="planted failure"):
        execute(nb, tmp_path)
    assert nb.cells[2].execution_count is None, "execution must stop at the failing cell"
    assert unexecuted_cells(nb) == [2]


def test_a_stale_stored_output_is_reported_and_an_image_is_not(tmp_path):
    nbformat = require("nbformat", "notebooks")
    stored = execute(_tiny_notebook("print('a')\nprint(1 + 1)", "'text'"), tmp_path)
    assert stale_outputs(stored, copy.deepcopy(stored)) == []
    assert volatile_metadata(stored) == [], "execute() must not record timings"
    fresh = copy.deepcopy(stored)
    fresh.cells[0].outputs[0]["text"] = "a\n3\n"  # the package now prints something else
    assert stale_outputs(stored, fresh) == ["code cell 0, line 1: stored '2', now '3'"]
    fresh = copy.deepcopy(stored)
    fresh.cells[1].outputs = []  # an output disappeared
    assert stale_outputs(stored, fresh) == ["code cell 1, line 0: stored \"'text'\", now '<nothing>'"]
    # an image that changed is not a stale output; a figure's text placeholder is ignored too
    for nb, pixels in ((stored, "iVBORw0KGgo="), (fresh, "iVBORw0KGgoAAAA=")):
        nb.cells[1].outputs = [
            nbformat.v4.new_output("display_data", data={"image/png": pixels, "text/plain": f"<Figure {pixels}>"})
        ]
    assert stale_outputs(stored, fresh) == []


def test_exercise_rules_are_enforced():
    nbformat = require("nbformat", "notebooks")
    nb = _tiny_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## Exercises")]
    for n in range(3):
        nb.cells.append(nbformat.v4.new_markdown_cell(f"**Exercise {n}.** Why?"))
        solution = nbformat.v4.new_code_cell("assert 1 + 1 == 2")
        solution.metadata.update({"tags": ["hide-input", "solution"], "jupyter": {"source_hidden": True}})
        nb.cells.append(solution)
    assert exercise_problems(nb) == []
    nb.cells[2].source = "print(2)"
    assert exercise_problems(nb) == ["the solution of the exercise in cell 1 asserts nothing"]
    nb.cells[2].metadata["tags"] = []
    assert exercise_problems(nb)[0].endswith("not followed by a code cell tagged 'solution'")
    del nb.cells[3:]
    assert exercise_problems(nb)[0] == "1 exercises after the heading, expected >= 3"
    nb.cells[0].source = "## Summary"
    assert exercise_problems(nb) == ["no '## Exercises' heading"]


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "--update":
        sys.exit(__doc__)
    chosen = [NOTEBOOK_DIR / Path(name).name for name in args[1:]] or NOTEBOOKS
    update(chosen)
