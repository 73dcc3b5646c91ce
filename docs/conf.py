"""Sphinx configuration of the neocell_ref documentation.

Build (from the repository root, with the ``docs`` extra installed)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Design
------
* Pages are MyST Markdown; pages with figures are MyST-NB text notebooks whose
  ``{code-cell}`` blocks run at build time, so every figure is produced by
  committed code and no image is committed.
* The tutorial notebooks live in ``notebooks/`` (outside this source folder, which
  Sphinx cannot reach). :func:`_copy_notebooks` copies them into
  ``docs/_generated/notebooks/`` when the configuration is read; that folder is
  generated, never edited and never committed.
* Code-cell pages are executed on every build (``nb_execution_mode = "force"``), so
  their rendered outputs are always those of the current code. The tutorial notebooks
  are rendered with the outputs they are committed with
  (``nb_execution_excludepatterns``): tests/project/test_notebooks.py re-executes each one
  and fails when a stored output differs from what it prints now, so running them a
  second time here would only double the build time. A cell
  error is reported as a warning *with the cell's traceback in the log* (with
  ``nb_execution_raise_on_error = True`` the log would name only the file), and
  ``-W``, which the documented build command and CI always pass, turns it into a
  failure. For a quick look at the prose only, pass ``-D nb_execution_mode=off``.
* The API reference is written with ``automodule`` directives and a hand-written
  module table. Not autosummary: its stub files would be generated into the source
  tree. Docstrings are numpydoc.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
NOTEBOOK_SOURCE = ROOT / "notebooks"
NOTEBOOK_COPY = DOCS / "_generated" / "notebooks"

# Document the checkout's package when building inside a checkout; otherwise (for
# example a copy of docs/ elsewhere) the installed package.
if (ROOT / "neocell_ref" / "__init__.py").is_file():
    sys.path.insert(0, str(ROOT))

import neocell_ref  # noqa: E402  (after the path set-up on purpose)

# -- project -----------------------------------------------------------------------
project = "neocell_ref"
author = "the neocell_ref authors"
copyright = "the neocell_ref authors, MIT licence"
release = neocell_ref.__version__
version = release

# -- extensions --------------------------------------------------------------------
extensions = [
    "myst_nb",  # MyST Markdown + notebooks (.ipynb and text notebooks); loads myst_parser
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
]

root_doc = "index"
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# -- MyST --------------------------------------------------------------------------
myst_enable_extensions = [
    "amsmath",  # \begin{align} ... \end{align} blocks
    "dollarmath",  # $inline$ and $$display$$ math
    "colon_fence",  # ::: fences for admonitions
]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# -- MyST-NB: execute on every build; a cell error is a warning, -W makes it fatal ---
nb_execution_mode = "force"
# Committed with outputs that tests/project/test_notebooks.py keeps current: render, do not re-run.
nb_execution_excludepatterns = ["_generated/notebooks/*"]
nb_execution_timeout = 120  # seconds per cell; a notebook takes seconds in total
nb_execution_allow_errors = False  # stop at the first failing cell
nb_execution_raise_on_error = False  # warn (with traceback) instead of aborting Sphinx
nb_execution_show_tb = True  # print the failing cell's traceback into the build log
nb_merge_streams = True
nb_kernel_rgx_aliases = {".*": "python3"}  # always the Python kernel of this interpreter

# -- autodoc / numpydoc ------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # shapes and types are in the numpydoc sections
numpydoc_show_class_members = False  # members are documented by automodule itself
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- HTML --------------------------------------------------------------------------
html_theme = "alabaster"  # ships with Sphinx: no extra dependency
html_title = f"neocell_ref {release}"
html_theme_options = {
    "description": "Reference implementation and verifier for NeoCell and NeoNeXt",
    "fixed_sidebar": True,
    "page_width": "1160px",
    "sidebar_width": "240px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}


def _copy_notebooks(app, config):
    """Mirror ``notebooks/*.ipynb`` into ``docs/_generated/notebooks/``.

    ``copy2`` keeps modification times, so an unchanged notebook is not re-read
    by an incremental build; copies whose source was deleted are removed.
    """
    NOTEBOOK_COPY.mkdir(parents=True, exist_ok=True)
    sources = sorted(NOTEBOOK_SOURCE.glob("*.ipynb")) if NOTEBOOK_SOURCE.is_dir() else []
    wanted = {src.name for src in sources}
    for stale in NOTEBOOK_COPY.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for src in sources:
        dst = NOTEBOOK_COPY / src.name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copy2(src, dst)


def setup(app):
    app.connect("config-inited", _copy_notebooks)
    return {"parallel_read_safe": True}
