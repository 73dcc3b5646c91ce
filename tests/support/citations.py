"""The scanner behind tests/project/test_citations.py: SPEC citations and paths in text.

What a citation of ``docs/spec.md`` and a path outside the repository look like, and
the scan of every tracked text file (notebooks read as JSON cells). The project test
runs it on the repository; tests/meta/test_citations_mutants.py runs it on planted
text and files and requires every kind of mistake to be found.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

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
