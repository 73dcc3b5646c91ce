"""The citation scanner has teeth: planted mistakes are found, valid text is not flagged.

``support.citations`` (the scan tests/project/test_citations.py runs on the repository)
is run on planted text and files: every kind of mistake (an unknown section number, a
bare "section", a SPEC link elsewhere, a dead anchor, a path leaving the repository, a
private hand-over folder, a machine path) is found with its file and line, in
Markdown, Python and notebook cells and outputs, and in a planted tree with and without
git; every valid form of citation passes.
"""

import json
import subprocess

import pytest
from support.citations import scan_file, tracked_text_files

# Planted text is assembled from pieces, so that this file's own source stays clean for
# the scan of the repository.
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
