"""Independent constructions of SPEC 3's expanded matrix and hand-computed examples.

Two constructions written on purpose differently from
``neocell_ref.expansion.block_layout`` (a sliced ``scipy.linalg.block_diag``, and a
per-entry formula) and literal matrices computed by hand. tests/test_expansion.py
compares the package against them; tests/meta/test_expansion_mutants.py shows that
the comparison catches a wrong corner rule.
"""

import numpy as np
import scipy.linalg


def expand_by_slicing(kernel, rows, cols, shift):
    """Expanded matrix from a sliced ``scipy.linalg.block_diag`` of kernel copies."""
    p, q = kernel.shape
    copies = rows // p + cols // q + 3  # more than enough to cover the slice
    big = scipy.linalg.block_diag(*([kernel] * copies))
    r0, c0 = (p - shift, q - shift) if shift else (0, 0)
    return big[r0 : r0 + rows, c0 : c0 + cols]


def expand_by_index(kernel, rows, cols, shift):
    """Expanded matrix from the per-entry formula of SPEC 3."""
    p, q = kernel.shape
    out = np.zeros((rows, cols), dtype=kernel.dtype)
    for i in range(rows):
        for j in range(cols):
            if i < shift and j < shift:
                out[i, j] = kernel[p - shift + i, q - shift + j]
            elif i >= shift and j >= shift:
                block_i, a = divmod(i - shift, p)
                block_j, b = divmod(j - shift, q)
                if block_i == block_j:
                    out[i, j] = kernel[a, b]
    return out


K22 = np.array([[1.0, 2.0], [3.0, 4.0]])


K33 = np.arange(1.0, 10.0).reshape(3, 3)


K44 = np.arange(1.0, 17.0).reshape(4, 4)


HAND_EXAMPLES = {
    "2x2_shift0_on_5x5": (
        K22,
        5,
        5,
        0,
        [
            [1, 2, 0, 0, 0],
            [3, 4, 0, 0, 0],
            [0, 0, 1, 2, 0],
            [0, 0, 3, 4, 0],
            [0, 0, 0, 0, 1],
        ],
    ),
    "2x2_shift1_on_5x5": (
        K22,
        5,
        5,
        1,
        [
            [4, 0, 0, 0, 0],
            [0, 1, 2, 0, 0],
            [0, 3, 4, 0, 0],
            [0, 0, 0, 1, 2],
            [0, 0, 0, 3, 4],
        ],
    ),
    "2x2_shift1_on_4x4": (
        K22,
        4,
        4,
        1,
        [
            [4, 0, 0, 0],
            [0, 1, 2, 0],
            [0, 3, 4, 0],
            [0, 0, 0, 1],
        ],
    ),
    # corner K[1:3, 1:3] = [[5, 6], [8, 9]], then a block clipped to K[0:2, 0:2]
    "3x3_shift2_on_4x4": (
        K33,
        4,
        4,
        2,
        [
            [5, 6, 0, 0],
            [8, 9, 0, 0],
            [0, 0, 1, 2],
            [0, 0, 4, 5],
        ],
    ),
    # largest shift equal to the size: only the corner K[1:4, 1:4] is left
    "4x4_shift3_on_3x3": (
        K44,
        3,
        3,
        3,
        [
            [6, 7, 8],
            [10, 11, 12],
            [14, 15, 16],
        ],
    ),
    # only K[3, 3] is wrapped; the rest of the kernel's last row and column is not
    "4x4_shift1_on_6x6": (
        K44,
        6,
        6,
        1,
        [
            [16, 0, 0, 0, 0, 0],
            [0, 1, 2, 3, 4, 0],
            [0, 5, 6, 7, 8, 0],
            [0, 9, 10, 11, 12, 0],
            [0, 13, 14, 15, 16, 0],
            [0, 0, 0, 0, 0, 1],
        ],
    ),
    # 7x7 kernel on a 3x3 plane: just the top-left part of one block
    "7x7_shift0_on_3x3": (
        np.arange(1.0, 50.0).reshape(7, 7),
        3,
        3,
        0,
        [
            [1, 2, 3],
            [8, 9, 10],
            [15, 16, 17],
        ],
    ),
    # A of a 2 -> 1 down-sampling (h_out=1, h_in=2), H = 5: H_out = 2; the last row is cut
    "A_2to1_H5": (
        np.array([[1.0, 2.0]]),
        2,
        5,
        0,
        [
            [1, 2, 0, 0, 0],
            [0, 0, 1, 2, 0],
        ],
    ),
    # B of a 1 -> 3 up-sampling (w_in=1, w_out=3), W = 2: W_out = 6
    "B_1to3_W2": (
        np.array([[1.0, 2.0, 3.0]]),
        2,
        6,
        0,
        [
            [1, 2, 3, 0, 0, 0],
            [0, 0, 0, 1, 2, 3],
        ],
    ),
    # B of a 2 -> 3 up-sampling, W = 3: W_out = floor(4.5) = 4; second block keeps K[0:1, 0:1]
    "B_2to3_W3": (
        np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        3,
        4,
        0,
        [
            [1, 2, 3, 0],
            [4, 5, 6, 0],
            [0, 0, 0, 1],
        ],
    ),
    # A of a 1 -> 2 up-sampling (h_out=2, h_in=1), H = 3: H_out = 6
    "A_1to2_H3": (
        np.array([[1.0], [2.0]]),
        6,
        3,
        0,
        [
            [1, 0, 0],
            [2, 0, 0],
            [0, 1, 0],
            [0, 2, 0],
            [0, 0, 1],
            [0, 0, 2],
        ],
    ),
}
