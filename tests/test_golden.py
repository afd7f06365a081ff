"""Files written by an earlier version still decode to the same symbols (the bitstream contract).

``tests/data/golden`` holds small files (a 96x128 crop of kodim23; 32x64 for the lossless model)
written by commit 2668911, format version 1, one per shipped model and coding path (one packet,
several packets, staged transformer coding, static tables, lossless), with the SHA-256 of the
symbols they decoded to then. Any change to tables, priors, packet layout or coder that would
make old files decode differently fails here. Never regenerate these files to make the test pass:
add new ones next to them when the format version changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from codec.pipeline import decode_detailed

GOLDEN = Path(__file__).parent / "data" / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())


def _sha(array: np.ndarray, dtype=None) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=dtype).tobytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_old_files_decode_to_the_same_symbols(name):
    expected = MANIFEST[name]
    decoded = decode_detailed((GOLDEN / name).read_bytes())
    assert decoded.lost_packets == 0
    assert decoded.header.quality == expected["quality"]
    assert _sha(decoded.indices, np.int64) == expected["indices_sha256"]
    if "pixels_sha256" in expected:  # lossless: the pixels themselves
        assert _sha(decoded.pixels) == expected["pixels_sha256"]
