"""The notebook checks have teeth: planted failures in small notebooks are reported.

- execution (``support.notebooks.execute``) stops at a failing ``assert`` cell and
  raises, leaving the later cells unexecuted;
- ``stale_outputs`` reports a changed or vanished printed output, and not a changed
  image; ``volatile_metadata`` finds no timings recorded;
- ``exercise_problems`` reports a solution that asserts nothing, a missing
  ``solution`` tag, too few exercises and a missing heading.

These are the checks tests/project/test_notebooks.py runs on the committed notebooks.
"""

import copy

import pytest
from support.notebooks import (
    execute,
    exercise_problems,
    stale_outputs,
    tiny_notebook,
    unexecuted_cells,
    volatile_metadata,
)
from support.optional import require  # noqa: E402


def test_a_failing_assert_in_a_notebook_fails_execution(tmp_path):
    nbclient = require("nbclient", "notebooks")
    nb = tiny_notebook("x = 1", "assert x == 2, 'planted failure'", "print('never reached')")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="planted failure"):
        execute(nb, tmp_path)
    assert nb.cells[2].execution_count is None, "execution must stop at the failing cell"
    assert unexecuted_cells(nb) == [2], (
        f"after the failing cell 1, unexecuted code cells are {unexecuted_cells(nb)}, expected only cell 2"
    )


def test_a_stale_stored_output_is_reported_and_an_image_is_not(tmp_path):
    nbformat = require("nbformat", "notebooks")
    stored = execute(tiny_notebook("print('a')\nprint(1 + 1)", "'text'"), tmp_path)
    assert stale_outputs(stored, copy.deepcopy(stored)) == [], (
        f"a copy of the notebook reported as stale: {stale_outputs(stored, copy.deepcopy(stored))}"
    )
    assert volatile_metadata(stored) == [], "execute() must not record timings"
    fresh = copy.deepcopy(stored)
    fresh.cells[0].outputs[0]["text"] = "a\n3\n"  # the package now prints something else
    assert stale_outputs(stored, fresh) == ["code cell 0, line 1: stored '2', now '3'"], (
        f"a changed printed line (cell 0, line 1: '2' -> '3') reported as {stale_outputs(stored, fresh)}"
    )
    fresh = copy.deepcopy(stored)
    fresh.cells[1].outputs = []  # an output disappeared
    assert stale_outputs(stored, fresh) == ["code cell 1, line 0: stored \"'text'\", now '<nothing>'"], (
        f"a vanished output (cell 1) reported as {stale_outputs(stored, fresh)}"
    )
    # an image that changed is not a stale output; a figure's text placeholder is ignored too
    for nb, pixels in ((stored, "iVBORw0KGgo="), (fresh, "iVBORw0KGgoAAAA=")):
        nb.cells[1].outputs = [
            nbformat.v4.new_output("display_data", data={"image/png": pixels, "text/plain": f"<Figure {pixels}>"})
        ]
    assert stale_outputs(stored, fresh) == [], (
        f"a changed image (cell 1) reported as stale output: {stale_outputs(stored, fresh)}"
    )


def test_exercise_rules_are_enforced():
    nbformat = require("nbformat", "notebooks")
    nb = tiny_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## Exercises")]
    for n in range(3):
        nb.cells.append(nbformat.v4.new_markdown_cell(f"**Exercise {n}.** Why?"))
        solution = nbformat.v4.new_code_cell("assert 1 + 1 == 2")
        solution.metadata.update({"tags": ["hide-input", "solution"], "jupyter": {"source_hidden": True}})
        nb.cells.append(solution)
    assert exercise_problems(nb) == [], f"three well-formed exercises reported: {exercise_problems(nb)}"
    nb.cells[2].source = "print(2)"
    assert exercise_problems(nb) == ["the solution of the exercise in cell 1 asserts nothing"], (
        f"a solution without assert (cell 2) reported as {exercise_problems(nb)}"
    )
    nb.cells[2].metadata["tags"] = []
    assert exercise_problems(nb)[0].endswith("not followed by a code cell tagged 'solution'"), (
        f"a solution without the 'solution' tag (cell 2) reported as {exercise_problems(nb)}"
    )
    del nb.cells[3:]
    assert exercise_problems(nb)[0] == "1 exercises after the heading, expected >= 3", (
        f"a notebook with one exercise reported as {exercise_problems(nb)}"
    )
    nb.cells[0].source = "## Summary"
    assert exercise_problems(nb) == ["no '## Exercises' heading"], (
        f"a notebook without the '## Exercises' heading reported as {exercise_problems(nb)}"
    )
