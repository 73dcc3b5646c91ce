"""The worked examples of docs/spec.md, read from the page, agree with the package.

The examples were computed by hand when the specification was written; this module
parses them out of the page (the drawn matrices, the channel shifts, the figures of the
cost example) and compares them with what ``neocell_ref`` computes, so that the
normative text and the code cannot drift apart unnoticed. Each test names the section.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from support.paths import REPO

import neocell_ref as nr
from neocell_ref.expansion import nnz
from neocell_ref.spec import GroupSpec

SPEC_PAGE = REPO / "docs" / "spec.md"


def section(number: int) -> str:
    """Text of ``## number.`` up to the next ``## `` heading."""
    text = SPEC_PAGE.read_text(encoding="utf-8")
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/spec.md has no section {number}"
    return match.group(0)


def text_block_after(text: str, marker: str) -> list[str]:
    """Lines of the first ```text block after ``marker``."""
    start = text.index(marker)
    block = re.search(r"```text\n(.*?)```", text[start:], re.DOTALL)
    assert block, f"no text block after {marker!r}"
    return block.group(1).splitlines()


def drawn_matrix(lines: list[str]) -> list[list[str]]:
    """The entries of the ``row i`` lines of a drawn matrix (comments after ``<-`` dropped)."""
    rows = []
    for line in lines:
        if line.startswith("row "):
            entries = line.split("<-")[0].split()[2:]  # drop "row", "i"
            rows.append(entries)
    assert rows and len({len(r) for r in rows}) == 1, f"ragged drawn matrix: {rows}"
    return rows


def labelled_expansion(p, q, rows, cols, shift):
    """Expanded matrix of a kernel whose entry (a, b) holds its label; '.' where zero."""
    labels = np.arange(1, p * q + 1, dtype=float).reshape(p, q)
    expanded = nr.expand_kernel(labels, rows, cols, shift)
    return [[None if v == 0 else divmod(int(v) - 1, q) for v in row] for row in expanded]


def test_section_3_corner_and_clipped_block():
    drawn = drawn_matrix(text_block_after(section(3), "*Example: corner and clipped block.*"))
    expected = labelled_expansion(3, 3, 6, 6, 1)
    got = [[None if e == "." else (int(e[0]), int(e[1])) for e in row] for row in drawn]
    assert got == expected, f"spec.md 3.1 draws\n{got}\nthe package expands to\n{expected}"


def test_section_3_non_square_kernel():
    drawn = drawn_matrix(text_block_after(section(3), "*Example: a non-square kernel.*"))
    expected = labelled_expansion(1, 2, 3, 7, 0)
    got = [[None if e == "." else (0, int(e[1])) for e in row] for row in drawn]
    assert got == expected, f"spec.md 3.1 draws\n{got}\nthe package expands to\n{expected}"


def test_section_4_channel_shifts():
    text = section(4)
    match = re.search(r"the channels\s+use\s+the\s+shifts\s*`([\d ]+)`", text)
    assert match, "section 4's example no longer lists the channel shifts"
    drawn = [int(v) for v in match.group(1).split()]
    group = GroupSpec(channels=10, h_in=7, h_out=7, w_in=7, w_out=7, shift_a=2, shift_b=2)
    assert drawn == group.channel_shifts()[0].tolist(), (drawn, group.channel_shifts()[0])
    few = GroupSpec(channels=3, h_in=7, h_out=7, w_in=7, w_out=7, shift_a=2, shift_b=2)
    assert re.search(r"With\s+only\s+3\s+channels,\s+all\s+three\s+use\s+shift\s+6", text), (
        "section 4 no longer says 'With only 3 channels, all three use shift 6'"
    )
    shifts = few.channel_shifts()[0].tolist()
    assert shifts == [6, 6, 6], f"3 channels, kernel 7, shift 2: channel shifts {shifts}, section 4 says [6, 6, 6]"


def test_section_7_block_parameters():
    text = section(7)
    assert re.search(r"each\s+without\s+biases:\s+80160\s+trainable\s+parameters", text), (
        "section 7 no longer states 'each without biases: 80160 trainable parameters'"
    )
    model = nr.models.NeoNeXt(
        per_stage_layers=(1, 1, 1, 1), dims=(96, 192, 384, 768), num_classes=10, rng=np.random.default_rng(0)
    )
    block = {
        k: v
        for k, v in model.state_dict().items()
        if k.startswith("stage_1.0.") and not re.search(r"running_|num_batches", k)
    }
    assert sum(v.size for v in block.values()) == 80160, {k: v.shape for k, v in block.items()}


@pytest.mark.parametrize(
    "written, value",
    [
        ("4\\,214\\,784", lambda r: r.neocell_macs),
        ("33\\,718\\,272", lambda r: r.blockdiag_macs),
        ("14\\,751\\,744", lambda r: r.depthwise_macs),
    ],
)
def test_section_8_cost_example(written, value):
    assert written in section(8), f"section 8's example no longer states {written}"
    number = int(written.replace("\\,", ""))
    got = value(nr.complexity(7, 96, 56))
    assert got == number, f"spec.md section 8 says {number}, the package counts {got}"


def test_section_8_shifted_nnz_example():
    text = section(8)
    assert re.search(r"\$\\operatorname\{nnz\} = 34\$,\s+against\s+36", text), (
        "section 8 no longer states '$\\operatorname{nnz} = 34$, against 36'"
    )
    shifted, plain = nnz(4, 4, 10, 10, 3), nnz(4, 4, 10, 10, 0)
    assert shifted == 34 and plain == 36, f"nnz(4, 4, 10, 10, shift 3) = {shifted}, shift 0: {plain}; spec says 34, 36"
