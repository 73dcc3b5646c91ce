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
metadata. Binary data (``tests/data/*.npz``) is not text and is not scanned. The tests of
the scanner plant each kind of mistake in temporary files and require it to be found.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from support.paths import REPO

ROOT = REPO
SPEC_PAGE = ROOT / "docs" / "spec.md"
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".cfg", ".toml", ".txt", ".json", ".rst", ".ini", ".yml", ".yaml", ".sh"}
SKIP_DIRS = {
    ".git",
    "_build",
    "_generated",
    "jupyter_execute",
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    ".ipynb_checkpoints",
    "build",
    "dist",
    ".venv",
}

# The sections the code cites by number; the numbering must never change.
SECTION_TITLES = {
    1: "The operator",
    2: "Channel groups and their specification",
    3: "The expanded (block-diagonal) matrix",
    4: "Shifted sub-groups",
    5: "Backward pass",
    6: "NeoInit",
    7: "NeoNeXt",
    8: "Counting conventions",
    9: "Conformance data",
}

# -- what a citation looks like ---------------------------------------------------------
_NUMBER = r"\d+(?:\.\d+)*"
_JOIN = r"\s*(?:,|and|or|to|-|–|&)\s*(?:§\s*)?"
_NUMBERS = _NUMBER + r"(?:" + _JOIN + _NUMBER + r")*"
# "SPEC section 3" (the word may follow on the next line, after a comment sign), "SPEC §3",
# "SPEC 3", "SPEC-3"; "N" is the placeholder of prose that explains the convention.
CITATION = re.compile(
    r"\bSPEC\b(?:"
    r"(?P<word>[\s#*>]*(?:§|\bsections?\b))\s*(?:(?P<numbers>" + _NUMBERS + r")|(?P<placeholder>N\b))?"
    r"|[ \t]*-?[ \t]*(?:(?P<bare_numbers>" + _NUMBERS + r")|N\b)"
    r")?"
)
_RANGE = re.compile(r"(" + _NUMBER + r")\s*(?:to|-|–)\s*(?:§\s*)?(" + _NUMBER + r")")
SPEC_LINK = re.compile(r"\[([^\]\n]*\bSPEC\b[^\]\n]*)\]\(([^)\s]*)\)")
SPEC_ANCHOR = re.compile(r"(?<![\w\-])((?:[\w.\-]+/)*spec\.md)#([^)\s\"'`>]*)")

# -- what a path outside the repository looks like ----------------------------------------
PARENT_PATH = re.compile(r"(?<![\w.\-/])((?:\.\./)+)([\w.\-/]*)")
SHARED_FOLDER = re.compile(r"\bshared/(?:SPEC|conformance)\b")
MACHINE_PATH = re.compile(r"(?<![\w.~:/\-])/(?:work|tmp|home|Users|root|mnt|scratch|private|opt)/")


def github_slug(title: str) -> str:
    """Anchor of a heading: lower case, spaces to hyphens, other punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", title.lower().replace(" ", "-"))


def spec_headings(text: str):
    """``(sections, subsections, slugs)`` of the specification page's text."""
    sections = {int(m.group(1)): m.group(2).strip() for m in re.finditer(r"^## (\d+)\. (.+)$", text, re.MULTILINE)}
    subsections = {m.group(1) for m in re.finditer(r"^### (\d+\.\d+) ", text, re.MULTILINE)}
    slugs = {github_slug(m.group(1).strip()) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}
    return sections, subsections, slugs


def cited_numbers(numbers: str) -> list[str]:
    """Every section a number list cites: ``"2-4"`` gives 2, 3, 4; ``"1, 3 and 5"`` 1, 3, 5."""
    cited = []
    for m in _RANGE.finditer(numbers):
        low, high = m.group(1), m.group(2)
        if "." not in low and "." not in high and int(low) <= int(high):
            cited += [str(n) for n in range(int(low), int(high) + 1)]
    cited += re.findall(_NUMBER, numbers)
    return list(dict.fromkeys(cited))


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def text_units(path: Path):
    """``(label, text)`` pieces of a file to scan; a notebook gives one piece per cell."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix != ".ipynb":
        return [("", raw)]
    notebook = json.loads(raw)
    units = [("metadata", json.dumps(notebook.get("metadata", {}), ensure_ascii=False))]
    for i, cell in enumerate(notebook.get("cells", [])):
        source = cell.get("source", "")
        units.append((f"cell {i}", "".join(source) if isinstance(source, list) else source))
        for output in cell.get("outputs", []):
            pieces = [output.get("text", "")] + [
                output.get("data", {}).get(kind, "") for kind in ("text/plain", "text/markdown")
            ]
            for piece in pieces:
                text = "".join(piece) if isinstance(piece, list) else piece
                if text:
                    units.append((f"cell {i} output", text))
    return units


def scan_text(text: str, where: Path, spec_text: str, root: Path = ROOT) -> list[str]:
    """Problems in one piece of text of the file ``where`` in the tree ``root``.

    ``spec_text`` is the text of ``root/docs/spec.md``. Each message starts with
    ``line L:`` (the line within ``text``).
    """
    sections, subsections, slugs = spec_headings(spec_text)
    spec_page = (root / "docs" / "spec.md").resolve()
    problems = []
    for m in CITATION.finditer(text):
        numbers = m.group("numbers") or m.group("bare_numbers")
        line = _line_of(text, m.start())
        if numbers is None:
            if m.group("word") and not m.group("placeholder"):
                problems.append(f"line {line}: '{' '.join(m.group(0).split())}' cites no section number")
            continue
        for number in cited_numbers(numbers):
            if "." in number:
                ok = number in subsections
            else:
                ok = int(number) in sections
            if not ok:
                problems.append(
                    f"line {line}: '{' '.join(m.group(0).split())}' cites section {number}, which is not a "
                    f"heading of docs/spec.md (sections: {sorted(sections)})"
                )
    for m in SPEC_LINK.finditer(text):
        target = m.group(2).split("#")[0]
        if not target or not target.endswith("spec.md") or (where.parent / target).resolve() != spec_page:
            problems.append(
                f"line {_line_of(text, m.start())}: link '{m.group(0)}' is labelled SPEC but does "
                "not lead to docs/spec.md"
            )
    for m in SPEC_ANCHOR.finditer(text):
        if m.group(2) and m.group(2) not in slugs:
            problems.append(
                f"line {_line_of(text, m.start())}: anchor '#{m.group(2)}' of spec.md is not "
                "produced by any heading of docs/spec.md"
            )
    for m in PARENT_PATH.finditer(text):
        target = (where.parent / (m.group(1) + m.group(2))).resolve()
        try:
            target.relative_to(root.resolve())
        except ValueError:
            problems.append(f"line {_line_of(text, m.start())}: '{m.group(0)}' leads outside the repository")
    for pattern, what in (
        (SHARED_FOLDER, "a folder outside the repository"),
        (MACHINE_PATH, "an absolute path outside the repository"),
    ):
        for m in pattern.finditer(text):
            problems.append(f"line {_line_of(text, m.start())}: '{m.group(0)}' is {what}")
    return problems


def scan_file(path: Path, spec_text: str, root: Path = ROOT) -> list[str]:
    """Problems of one file, each prefixed by the file (relative to ``root``) and location."""
    name = path.relative_to(root) if path.is_relative_to(root) else path
    problems = []
    for label, text in text_units(path):
        for problem in scan_text(text, path, spec_text, root):
            problems.append(f"{name}: {label + ' ' if label else ''}{problem}")
    return problems


def tracked_text_files(root: Path = ROOT) -> list[Path]:
    """Text files of the repository: the tracked ones (``git ls-files``; scratch files of a
    working copy are not the project's), or, without git, a walk of the tree that leaves out
    build output and caches."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True, timeout=60
        ).stdout.decode("utf-8")
        names = [n for n in listing.split("\0") if n]
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        names = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            names += [str((Path(folder) / f).relative_to(root)) for f in files]
    paths = [root / n for n in names if not SKIP_DIRS.intersection(Path(n).parts)]
    return sorted(p for p in paths if p.suffix in TEXT_SUFFIXES and p.is_file())


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


# -- the scanner itself ------------------------------------------------------------------
# Planted text is assembled from pieces, so that this file's own source stays clean for
# the scan of the repository above.
S = "SP" + "EC"
UP = "." + "./"
PAGE = "spec" + ".md"
SPEC_SAMPLE = "# Spec\n\n## 1. One\n\n### 1.2 Sub part\n\n## 3. Three (the third)\n"


@pytest.mark.parametrize(
    "text",
    [
        f"see {S} section 3",
        f"({S} 1)",
        f"{S} 3's rule",
        f"{S} §3",
        f"{S}-3 pattern",
        f"{S} sections 1 and 3",
        f"{S} sections 1, 3 and 1.2",
        f"{S}\n# section 3, continued in a comment",
        f"{S} 1.2",
        f"the {S} text",
        f"{S}: the document",
        f"{S} section N means section N of the page",
        f"[{S} 3]({PAGE}#3-three-the-third)",
        f"[the {S}]({PAGE}), [{S} 1]({UP}docs/{PAGE}#1-one)",
        f"{S}S = [1, 2]",
        f"cat > /dev/null; see https://example.org/tmp/x and {UP}docs/{PAGE}",
    ],
)
def test_scanner_accepts_valid_text(tmp_path, text):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(text, encoding="utf-8")
    problems = scan_file(page, SPEC_SAMPLE, root=tmp_path)
    assert not problems, f"valid text {text!r} was flagged: {problems}"


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"see {S} section 12 here", "cites section 12"),
        (f"({S} 2)", "cites section 2"),
        (f"{S} sections 1 and 4", "cites section 4"),
        (f"{S} sections 1-3", "cites section 2"),
        (f"{S} 1 to 3", "cites section 2"),
        (f"{S} §7", "cites section 7"),
        (f"{S}-5 rule", "cites section 5"),
        (f"{S} 1.3", "cites section 1.3"),
        (f"{S} section\n 2 (the word and the number on other lines)", "cites section 2"),
        (f"{S} section X", "cites no section number"),
        (f"[{S}](operator.md)", "does not lead to docs/spec.md"),
        (f"[{S} 3]({PAGE}#3-the-expanded-matrix)", "anchor '#3-the-expanded-matrix'"),
        (f"copied from {UP}{UP}shared/data", "leads outside the repository"),
        ("from the folder " + "shared/" + "conformance/", "a folder outside the repository"),
        ("read " + "shared/" + f"{S}.md", "a folder outside the repository"),
        ("the checkout at " + "/wo" + "rk/official", "an absolute path"),
        ("write to " + "/t" + "mp/golden", "an absolute path"),
        ("look in " + "/ho" + "me/someone/data", "an absolute path"),
    ],
)
def test_scanner_flags_planted_mistakes(tmp_path, text, expected):
    page = tmp_path / "page.md"
    page.write_text(f"first line\n{text}\n", encoding="utf-8")
    problems = scan_file(page, SPEC_SAMPLE, root=tmp_path)
    assert any(expected in p for p in problems), f"{text!r}: expected a problem with {expected!r}, got {problems}"
    assert all(p.startswith("page.md: line 2:") for p in problems), f"wrong location in {problems}"


def test_scanner_reads_notebook_cells_and_outputs(tmp_path):
    notebook = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["# Title\n", f"Fine: {S} 1.\n"]},
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": 1,
                "source": ["x = 1\n", f"# rule of {S} section 8\n"],
                "outputs": [{"name": "stdout", "output_type": "stream", "text": ["saved to " + "/tm" + "p/out\n"]}],
            },
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    problems = scan_file(path, SPEC_SAMPLE, root=tmp_path)
    assert any(p.startswith("nb.ipynb: cell 1 line 2:") and "cites section 8" in p for p in problems), problems
    assert any(p.startswith("nb.ipynb: cell 1 output line 1:") and "absolute path" in p for p in problems), problems
    assert len(problems) == 2, f"exactly the two planted mistakes expected, got {problems}"


@pytest.mark.parametrize("with_git", [True, False], ids=["git", "walk"])
def test_scanner_finds_planted_files_in_a_tree(tmp_path, with_git):
    # Only text files of the tree are scanned (git's list, or the walk outside a git
    # repository), build output is not, and a planted mistake is reported with its file.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "spec.md").write_text(SPEC_SAMPLE, encoding="utf-8")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(f'"""Rule of {S} section 6."""\n', encoding="utf-8")
    (tmp_path / "pkg" / "data.npz").write_bytes(b"PK\x03\x04 not text")
    (tmp_path / "docs" / "_build").mkdir()
    (tmp_path / "docs" / "_build" / "junk.md").write_text(f"{S} 99\n", encoding="utf-8")
    try:  # with git: a repository holding the three files; without git the walk is used
        if not with_git:
            raise OSError("no repository: the walk of the tree")
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, capture_output=True)
        subprocess.run(
            ["git", "add", "docs/spec.md", "pkg/mod.py", "pkg/data.npz"], cwd=tmp_path, check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError):
        pass
    files = [p.relative_to(tmp_path).as_posix() for p in tracked_text_files(tmp_path)]
    assert files == ["docs/spec.md", "pkg/mod.py"], files
    problems = [p for f in tracked_text_files(tmp_path) for p in scan_file(f, SPEC_SAMPLE, root=tmp_path)]
    assert problems and all(p.startswith("pkg/mod.py: line 1:") for p in problems), problems
