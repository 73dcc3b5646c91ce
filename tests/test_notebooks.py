"""The tutorial notebooks: committed without outputs, and every one runs top to bottom.

Each notebook checks its own claims with ``assert`` cells, so executing it is a
test of both the notebook and the package. Execution uses nbclient with the
``python3`` kernel of this interpreter, working directory ``notebooks/``, and a
per-cell timeout that only guards against a hang (speed is not asserted here).

Needs the ``notebooks`` extra (nbformat, nbclient, ipykernel, matplotlib); see
``tests/_optional.py`` for what happens when it is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from _optional import require

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


def _read(path):
    nbformat = require("nbformat", "notebooks")
    return nbformat.read(str(path), as_version=4)


def stripped_problems(nb) -> list[str]:
    """Everything that makes ``nb`` not 'stripped': outputs, execution counts, widget state."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i} has {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i} has execution_count {cell.execution_count}")
    if "widgets" in nb.metadata:
        problems.append("notebook metadata holds widget state")
    return problems


def execute(nb, cwd: Path):
    """Run every cell of ``nb`` in place with a fresh python3 kernel; raise on any error."""
    nbclient = require("nbclient", "notebooks")
    require("ipykernel", "notebooks")
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def test_expected_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    missing = [name for name in EXPECTED if name not in names]
    assert not missing, f"notebooks missing from {NOTEBOOK_DIR}: {missing} (found {names})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_stripped(path):
    nbformat = require("nbformat", "notebooks")
    nb = _read(path)
    nbformat.validate(nb)
    problems = stripped_problems(nb)
    assert not problems, (
        f"{path.name} must be committed without outputs: {problems}. Clear all outputs "
        "(Jupyter: Edit > Clear Outputs of All Cells) and save, or see notebooks/README.md."
    )
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{path.name}: kernelspec name is {kernel!r}, expected 'python3'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path):
    nb = _read(path)
    start = time.perf_counter()
    execute(nb, NOTEBOOK_DIR)
    seconds = time.perf_counter() - start
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, f"{path.name} has no code cell"
    not_run = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.execution_count is None]
    assert not not_run, f"{path.name}: cells {not_run} were not executed"
    errors = [
        (i, out.get("ename"))
        for i, c in enumerate(nb.cells) if c.cell_type == "code"
        for out in c.outputs if out.output_type == "error"
    ]
    assert not errors, f"{path.name}: cells raised {errors}"
    figures = sum(
        "image/png" in out.get("data", {})
        for c in code_cells for out in c.outputs if out.output_type == "display_data"
    )
    assert figures >= 1, f"{path.name} produced no figure; the notebooks are meant to show plots"
    print(f"{path.name}: {len(code_cells)} code cells, {figures} figures, {seconds:.1f} s")


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


def test_outputs_left_in_a_notebook_are_reported(tmp_path):
    nbformat = require("nbformat", "notebooks")
    nb = _tiny_notebook("1 + 1")
    assert stripped_problems(nb) == [], "a fresh notebook is stripped"
    nb.cells[0].execution_count = 1
    nb.cells[0].outputs = [
        nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)
    ]
    problems = stripped_problems(nb)
    assert problems == ["cell 0 has 1 output(s)", "cell 0 has execution_count 1"], problems
