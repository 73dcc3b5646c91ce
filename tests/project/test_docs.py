"""The documentation builds with warnings as errors, and its pages hold what they promise.

One build per test session: ``python -m sphinx -W --keep-going -b html`` on a copy of
``docs/`` and ``notebooks/`` in a temporary folder (so that the test writes nothing into
the checkout). The build executes the code cells of the pages (MyST-NB), so a failing
``assert`` in any of them fails it; the notebooks are rendered with their committed
outputs, which tests/project/test_notebooks.py re-executes and compares. The subprocess gets the
checkout on ``PYTHONPATH``, so the pages document and run the code under test.

Needs the ``docs`` extra (and ``test`` for the API page of ``neocell_ref.verify.testing``);
see ``tests/support/optional.py`` for what happens when it is missing. That a failing
code cell fails the build is shown in tests/meta/test_docs_mutants.py.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
from pathlib import Path

import pytest
from support.docs import DOCS, require_docs_extra, sphinx_build
from support.optional import require
from support.paths import REPO

NOTEBOOK_DIR = REPO / "notebooks"
GENERATED = ("_build", "_generated", "jupyter_execute", ".jupyter_cache", "__pycache__")

# Pages written for this documentation; every one must be built.
PAGES = ["index", "motivation", "operator", "derivations", "api"]


def _copy_sources(dest: Path) -> Path:
    """Copy docs/ and notebooks/ (without generated files) under ``dest``; return the docs copy."""
    ignore = shutil.ignore_patterns(*GENERATED)
    shutil.copytree(DOCS, dest / "docs", ignore=ignore)
    if NOTEBOOK_DIR.is_dir():
        shutil.copytree(NOTEBOOK_DIR, dest / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return dest / "docs"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The documentation built once for this module: (exit code, log, html folder)."""
    require_docs_extra()
    require("hypothesis", "docs")  # the API page documents neocell_ref.verify.testing
    base = tmp_path_factory.mktemp("docs_build")
    src = _copy_sources(base / "src")
    code, log, seconds = sphinx_build(src, base / "out")
    print(f"sphinx build: exit code {code} in {seconds:.1f} s")
    return code, log, base / "out" / "html"


def _html(built, page):
    code, log, html = built
    assert code == 0, f"the documentation build failed (exit code {code}); log tail:\n{log[-6000:]}"
    path = html / f"{page}.html"
    assert path.is_file(), f"page {page}.html was not built; present: {sorted(p.name for p in html.glob('*.html'))}"
    return path.read_text(encoding="utf-8")


def test_docs_build_with_warnings_as_errors(built):
    code, log, _ = built
    assert code == 0, f"sphinx -W failed with exit code {code}; log tail:\n{log[-6000:]}"
    assert "build succeeded" in log, f"no 'build succeeded' in the log:\n{log[-3000:]}"


@pytest.mark.parametrize("page", PAGES)
def test_page_is_built(built, page):
    text = _html(built, page)
    assert "<h1>" in text, f"{page}.html has no title"


def test_every_markdown_page_is_in_the_docs(built):
    # The docs' own .md pages (other helpers' included) must all be rendered.
    for md in sorted(DOCS.glob("*.md")):
        _html(built, md.stem)


def test_every_notebook_is_rendered_with_its_figures(built):
    notebooks = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    assert notebooks, f"no notebooks in {NOTEBOOK_DIR}"
    for nb in notebooks:
        text = _html(built, f"_generated/notebooks/{nb.stem}")
        images = text.count("<img ")
        assert images >= 3, f"{nb.name} rendered with {images} images; its figures are missing"
        assert "Traceback" not in text, f"{nb.name} rendered a traceback"


def test_operator_page_has_its_figures(built):
    text = _html(built, "operator")
    images = text.count("<img ")
    assert images >= 6, f"operator.html holds {images} images, expected the 6 figures of the page"


def test_derivations_checks_ran(built):
    text = _html(built, "derivations")
    for claim in (
        "Proposition 2 checked",
        "Proposition 3 checked",
        "Proposition 4 checked",
        "Proposition 6 checked",
        "nnz closed forms checked",
    ):
        assert claim in text, f"derivations.html lacks the output '{claim}': a check cell did not run"


def _public_modules():
    import neocell_ref

    # the verifier subpackage and its modules included
    return sorted(
        m.name
        for m in pkgutil.walk_packages(neocell_ref.__path__, "neocell_ref.")
        if not m.name.rpartition(".")[2].startswith("_")
    )


def test_api_reference_covers_every_module_and_public_name(built):
    text = _html(built, "api")
    missing = []
    for name in _public_modules():
        if f'id="module-{name}"' not in text:
            missing.append(f"module {name}")
            continue
        if f'href="#module-{name}"' not in text:
            missing.append(f"{name} in the module table")
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == name:
                if f'id="{name}.{attr}"' not in text:
                    missing.append(f"{name}.{attr}")
    assert not missing, (
        "docs/api.md does not document: "
        + ", ".join(missing)
        + ". Add an automodule section (and a row of the module table) for each new module."
    )
