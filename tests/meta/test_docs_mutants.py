"""The documentation build has teeth: a page whose code cell fails makes it fail.

``support.docs.sphinx_build`` (the build of tests/project/test_docs.py, warnings as
errors) exits non-zero on a one-page copy of ``docs/conf.py`` whose code cell raises,
and its log shows the failing cell.
"""

import shutil

from support.docs import DOCS, require_docs_extra, sphinx_build


def _minimal_docs(tmp_path, index_text):
    src = tmp_path / "docs"
    src.mkdir()
    shutil.copy(DOCS / "conf.py", src / "conf.py")
    (src / "index.md").write_text(index_text, encoding="utf-8")
    return src


def test_a_failing_code_cell_fails_the_build(tmp_path):
    require_docs_extra()
    src = _minimal_docs(
        tmp_path,
        (
            "---\nfile_format: mystnb\nkernelspec:\n  name: python3\n  display_name: Python 3\n"
            "  language: python\n---\n\n# Planted\n\n```{code-cell} ipython3\n"
            "assert 1 + 1 == 3, 'planted failing cell'\n```\n"
        ),
    )
    code, log, _ = sphinx_build(src, tmp_path / "out", timeout=300)
    assert code != 0, f"a failing code cell must fail the build; it exited 0:\n{log[-3000:]}"
    # conf.py turns a cell error into a warning that carries the traceback; -W makes it fatal
    assert "planted failing cell" in log, f"the log does not show the failing cell:\n{log[-3000:]}"
