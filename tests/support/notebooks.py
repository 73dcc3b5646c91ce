"""Executing the tutorial notebooks and the checks on them (stale outputs, exercises).

tests/project/test_notebooks.py runs these on the committed notebooks (and, as a
script with ``--update``, re-executes and stores them); tests/meta/test_notebooks_mutants.py
runs them on small planted notebooks to show they fail when they should.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from support.optional import require
from support.paths import REPO

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds; each notebook takes seconds in total
MAX_BYTES = 1_000_000  # a committed notebook, figures included, stays well below this
MIN_EXERCISES = 3


def read_notebook(path):
    """The notebook at ``path`` (nbformat version 4)."""
    nbformat = require("nbformat", "notebooks")
    return nbformat.read(str(path), as_version=4)


def execute(nb, cwd: Path):
    """Run every cell of ``nb`` in place with a fresh python3 kernel; raise on any error.

    Timing metadata is not recorded, so an executed notebook is deterministic. The
    kernel gets the checkout first on ``PYTHONPATH``, so the notebooks run the code
    under test (as in ``tests/support/docs.py``).
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
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [saved])])
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
        nb = read_notebook(path)
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


def tiny_notebook(*sources):
    """A python3 notebook of one code cell per source, for planting failures."""
    nbformat = require("nbformat", "notebooks")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb
