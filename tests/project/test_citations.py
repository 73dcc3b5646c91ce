"""Every citation of the specification resolves, and no file points outside the repository.

The project cites its specification, ``docs/spec.md``, as "SPEC section N" (also "SPEC N",
"SPEC sections 2 and 4", "SPEC 2-4", "SPEC §3", "SPEC-3", "SPEC 3.1", ...) in code,
docstrings, tests, notebooks, documentation and command-line output. This module scans
every tracked text file of the repository (``git ls-files``; outside a git checkout, a
walk of the tree) and fails, naming the file and line (for a notebook: the cell and its
line), on

* a cited section number that is not a ``## N.`` heading of ``docs/spec.md`` (a dotted
  number ``N.M`` must be a ``### N.M`` heading), or the word "section" after SPEC with no
  number; a bare "SPEC" (the document itself) is fine;
* a Markdown link labelled SPEC that does not lead to ``docs/spec.md``, and a link to an
  anchor of ``spec.md`` that none of its headings produces (GitHub-style slugs, as
  MyST's ``myst_heading_anchors`` and code-hosting viewers make them);
* a path outside the repository: a relative path whose parent-directory steps leave the
  checkout, the folder of the project's private hand-over copies (``shared`` followed by
  the specification's or the conformance data's folder name), or an absolute path into a
  machine's own folders (work, temporary, home, user and mount folders). Device files and
  URLs are not paths into the machine and are not flagged.

Notebooks are read as JSON: the sources and text outputs of their cells, and their
metadata. Binary data (``tests/data/*.npz``) is not text and is not scanned. The scanner
is ``tests/support/citations.py``; tests/meta/test_citations_mutants.py plants each kind
of mistake in temporary files and requires it to be found.
"""

from __future__ import annotations

from support.citations import (
    CITATION,
    ROOT,
    SECTION_TITLES,
    SPEC_PAGE,
    scan_file,
    spec_headings,
    text_units,
    tracked_text_files,
)


# -- the repository --------------------------------------------------------------------
def test_spec_has_the_nine_numbered_sections():
    sections, _, _ = spec_headings(SPEC_PAGE.read_text(encoding="utf-8"))
    assert sections == SECTION_TITLES, (
        "docs/spec.md must have exactly the sections '## N. Title' that the code cites; "
        f"expected {SECTION_TITLES}, found {sections}"
    )


def test_scan_covers_the_tree():
    files = {p.relative_to(ROOT).as_posix() for p in tracked_text_files()}
    for expected in (
        "README.md",
        "docs/spec.md",
        "neocell_ref/spec.py",
        "tests/data/PROVENANCE.md",
        "tests/project/test_citations.py",
    ):
        assert expected in files, f"{expected} is not among the {len(files)} scanned files"
    assert any(f.endswith(".ipynb") for f in files), "no notebook is scanned"
    assert not any(f.endswith(".npz") for f in files), "binary data must not be scanned"


def test_every_spec_citation_resolves_and_no_path_leaves_the_repository():
    spec_text = SPEC_PAGE.read_text(encoding="utf-8")
    problems = [p for path in tracked_text_files() for p in scan_file(path, spec_text)]
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_the_tree_cites_the_spec_in_many_places():
    # Guards the scanner against a pattern that silently stops matching anything.
    count = sum(len(CITATION.findall(text)) for path in tracked_text_files() for _, text in text_units(path))
    assert count >= 100, f"only {count} SPEC citations found; the tree has about 150"
