"""Files written by an earlier version still decode to the same symbols (the bitstream contract).

``tests/data/golden`` holds small files (a 96x128 crop of kodim23; 32x64 for the lossless model)
written by commit 2668911, format version 1, one per shipped model and coding path (one packet,
several packets, staged transformer coding, static tables, lossless; mcq also at encoder
effort 2 and 3, whose files the same decoder reads), with the SHA-256 of the
symbols they decoded to then. Any change to tables, priors, packet layout or coder that would
make old files decode differently fails here. Never regenerate these files to make the test pass:
add new ones next to them when the format version changes, or when a model is retrained (files of
the previous weight revision must keep decoding). A file whose weight revision is no longer
shipped stays here marked ``refused``: it must be refused with a clear message, not decoded.

Files of format version 2 are named ``v2-*`` and carry ``format_version: 2`` in the manifest.
``v2-mcq-tiny-q2-p2-meta.nic`` (written by the commit that introduced version 2) holds a metadata
block: the 96x128 top-left crop of kodim23 with an alpha plane (a soft-edged hole:
``clip((hypot(y - 48, x - 64) - 30) * 16, 0, 255)``), Pillow's sRGB ICC profile and an EXIF block
(Make "nicodec golden", orientation 1), coded with ``mcq-tiny`` at quality 2 in 2 packets; the
manifest keeps the SHA-256 of each metadata record as decoded then.

Files of format version 3 (every packet's length stored) are named ``v3-*``: the same crop coded
with ``mcq`` (r8) at quality 1 in one packet and at quality 4 in 2 packets, written by the commit
that introduced version 3. They also decode to the same symbols with bytes appended.
``v3-ctx-photo-q0.nic`` (the same crop) and ``v3-ctx-photo-gray.nic`` (the 32x64 top-left crop,
grayscale) were written by ``ctx-photo``'s first weights (issue 37), one tile each; the model
codes its packets itself (no symbols: the pixels' SHA-256 is the check).

Files of format version 4 (the sample depth in the header) are named ``v4-*``:
``v4-ctx-photo-rgb16.nic`` holds a 48x64 RGB image of 16-bit samples,
``(x * 700 + y * 400 + k * 9000) % 60000`` in channel k plus integers in 0..299 drawn by
``numpy.random.default_rng(37).integers(0, 300, (48, 64, 3))``, and ``v4-ctx-photo-gray16.nic``
its channel 1 as a grayscale image, both coded by ``ctx-photo`` (the commit that introduced
version 4); the manifest's ``bit_depth`` is checked with the pixels (uint16) SHA-256.
``v4-ctx-photo-r2-*.nic`` hold the same four images (q0, gray, rgb16, gray16) coded by
``ctx-photo`` r2 (the coder revision its weight file names; the format version is unchanged),
written by the commit that shipped r2: the r1 files above now decode with the retired
``ctx-photo-r1.safetensors``.

Files of format version 5 (the alpha plane at the samples' depth) are named ``v5-*``:
``v5-ctx-photo-rgba16.nic`` holds the RGB samples of ``v4-ctx-photo-rgb16.nic`` with the 16-bit
alpha plane ``clip((hypot(y - 24, x - 32) - 10) * 5000 + 7, 0, 65535)``, coded by ``ctx-photo``
r1 (the commit that introduced version 5); the manifest keeps the SHA-256 of that plane's
uint16 samples (little-endian bytes). ``v5-ctx-photo-r3-*.nic`` hold the same five images
(q0, gray, rgb16, gray16, rgba16) coded by ``ctx-photo`` r3, written by the commit that shipped
r3: the r2 files above now decode with the retired ``ctx-photo-r2.safetensors``.
``v5-ctx-photo-r4-*.nic`` hold the same five images coded by ``ctx-photo`` r4, written by the
commit that shipped r4: the r3 files above now decode with the retired
``ctx-photo-r3.safetensors``. ``v5-ctx-photo-r5-*.nic`` hold them coded by ``ctx-photo`` r5,
written by the commit that shipped r5: the r4 files now decode with the retired
``ctx-photo-r4.safetensors``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from nicodec.bitstream.errors import ModelMismatchError
from nicodec.bitstream.format import parse_header
from nicodec.codec import registry
from nicodec.codec.pipeline import decode_detailed, encode_detailed

GOLDEN = Path(__file__).parent / "data" / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())


def _sha(array: np.ndarray, dtype=None) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=dtype).tobytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_old_files_decode_to_the_same_symbols(name):
    expected = MANIFEST[name]
    if "refused" in expected:  # its weight revision is no longer shipped: a clear refusal
        with pytest.raises(ModelMismatchError, match="other weights"):
            decode_detailed((GOLDEN / name).read_bytes())
        return
    decoded = decode_detailed((GOLDEN / name).read_bytes())
    assert decoded.lost_packets == 0
    assert decoded.header.quality == expected["quality"]
    assert _sha(decoded.indices, np.int64) == expected["indices_sha256"]
    if "pixels_sha256" in expected:  # lossless: the pixels themselves
        assert _sha(decoded.pixels) == expected["pixels_sha256"]
    assert decoded.header.version == expected.get("format_version", 1)
    assert decoded.header.bit_depth == expected.get("bit_depth", 8)
    assert decoded.pixels.dtype == (np.uint16 if decoded.header.bit_depth > 8 else np.uint8)
    assert not decoded.metadata_lost
    metadata = expected.get("metadata", {})
    for field in ("icc_profile", "exif", "alpha"):
        value = getattr(decoded.metadata, field)
        if f"{field}_sha256" in metadata:
            data = value if isinstance(value, bytes) else value.tobytes()
            assert hashlib.sha256(data).hexdigest() == metadata[f"{field}_sha256"], field
        else:
            assert value is None, field


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items()
                                         if e.get("format_version", 1) >= 3))
def test_trailing_bytes_change_nothing_from_version_3(name):
    """Bytes appended to a version-3 file are not read: the same symbols, nothing lost."""
    data = (GOLDEN / name).read_bytes()
    for tail in (b"\n", data):
        decoded = decode_detailed(data + tail)
        assert decoded.lost_packets == 0
        assert _sha(decoded.indices, np.int64) == MANIFEST[name]["indices_sha256"]


def test_every_revision_of_a_model_has_its_own_digest():
    for info in registry.MODELS.values():
        files = [info.weights, *info.retired]
        digests = [registry.weights_digest(registry.WEIGHTS_DIR / f) for f in files]
        assert len(set(digests)) == len(files), info.name


def test_retired_weights_still_decode_their_files(monkeypatch, tmp_path, small_rgb):
    """After a retrain, a file written with the earlier weights decodes with them; a file whose
    weights no shipped revision has is refused."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shipped = registry.WEIGHTS_DIR / registry.MODELS["mcq-tiny"].weights
    old = tmp_path / "old.safetensors"
    old.write_bytes(shipped.read_bytes())
    with safe_open(str(shipped), framework="pt") as f:  # a retrained file: other numbers
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 100)
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, str(tmp_path / "new.safetensors"), metadata=meta)

    info = dataclasses.replace(registry.MODELS["mcq-tiny"], name="mcq-rev", model_id=97,
                               weights="old.safetensors")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setitem(registry.MODELS, "mcq-rev", info)
    registry.load_model.cache_clear()
    try:
        encoded = encode_detailed(small_rgb, model="mcq-rev", quality=2)
        retrained = dataclasses.replace(info, weights="new.safetensors")
        monkeypatch.setitem(registry.MODELS, "mcq-rev", retrained)
        registry.load_model.cache_clear()  # a new installation: a new process
        with pytest.raises(ModelMismatchError, match="other weights"):
            decode_detailed(encoded.data)
        monkeypatch.setitem(registry.MODELS, "mcq-rev",
                            dataclasses.replace(retrained, retired=("old.safetensors",)))
        registry.load_model.cache_clear()
        assert (decode_detailed(encoded.data).indices == encoded.indices).all()
        again = encode_detailed(small_rgb, model="mcq-rev", quality=2)
        assert parse_header(again.data)[0].weights_digest != parse_header(encoded.data)[0].weights_digest
        assert (decode_detailed(again.data).indices == again.indices).all()
    finally:
        registry.load_model.cache_clear()
