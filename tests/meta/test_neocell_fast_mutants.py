"""The tiled-layout and chunking tests have teeth: a buffer that keeps stale padding fails them.

The mutant gives each work buffer of :mod:`neocell_ref.neocell_fast` its zero padding
frame on first use only. Then

- the buffer-reuse check of tests/test_neocell_fast.py
  (``support.neocell_fast.assert_reused_buffer_stays_correct``) sees garbage leak
  through, and
- the chunking check (``support.neocell_fast.assert_chunkings_equal_blockdiag``) sees
  the patch-wise results differ from blockdiag's.
"""

import pytest
from support.neocell_fast import assert_chunkings_equal_blockdiag, assert_reused_buffer_stays_correct

import neocell_ref.neocell_fast as nc


def _zero_frame_only_once(monkeypatch):
    """Mutant: buffers get their zero padding frame on first use only, never again."""
    calls = []
    real = nc._zero_frame

    def first_time_only(*args):
        if not calls:
            real(*args)
        calls.append(args)

    monkeypatch.setattr(nc, "_zero_frame", first_time_only)


def test_the_reuse_test_catches_a_buffer_that_never_rewrites_its_frame(monkeypatch):
    """With the frame written only once, garbage leaks through a reused buffer."""
    _zero_frame_only_once(monkeypatch)
    with pytest.raises(AssertionError, match="reused buffer differs"):
        assert_reused_buffer_stays_correct()


def test_the_chunking_tests_catch_stale_padding_in_a_reused_buffer(monkeypatch):
    """An operator whose buffers keep the first chunk's frame fails the chunking check."""
    _zero_frame_only_once(monkeypatch)
    specs = [{"kernel": 4, "channels": 9, "shift": 1}, {"kernel": 7, "channels": 10, "shift": 1}]
    with pytest.raises(AssertionError, match="relative error"):
        assert_chunkings_equal_blockdiag(specs, (15, 15))
