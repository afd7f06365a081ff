"""Fuzzing (issue 27), short: the header parser and every family's decoder on mutated small files
give only BitstreamError subclasses, or a decode of the header's shape. The mutations are those
of ``eval/fuzz.py`` (its long run: ``python -m nicodec.eval.fuzz --cases 100000``); hypothesis draws
them, derandomized so that the suite is deterministic."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nicodec.bitstream.errors import BitstreamError
from nicodec.bitstream.format import (MAX_PACKETS, MAX_SIDE, READABLE_VERSIONS, Family, Header,
                                      parse_header, seal_packet, unpack)
from nicodec.eval.fuzz import FAMILIES, KINDS, case, mutate, outcome, seed_files

FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ops = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 24),
                         st.integers(0, 1 << 24), st.binary(max_size=8)),
               min_size=1, max_size=3)

headers = st.builds(
    Header, family=st.sampled_from(Family), model_id=st.integers(0, 1 << 20),
    weights_digest=st.integers(0, 0xFFFF), width=st.integers(1, MAX_SIDE),
    height=st.integers(1, MAX_SIDE), channels=st.sampled_from((1, 3)), bit_depth=st.just(8),
    quality=st.integers(0, 1 << 10),
    packet_lengths=st.lists(st.integers(0, 1 << 20), min_size=1, max_size=40).map(tuple),
    version=st.sampled_from(READABLE_VERSIONS))


@FUZZ
@given(header=headers, tail=st.binary(max_size=64))
def test_header_round_trip(header, tail):
    parsed, offset = parse_header(header.to_bytes() + tail)
    if header.version >= 3:  # every length is stored: what follows does not change them
        assert parsed == header
    else:  # the last packet runs to the end of the file
        last = max(0, len(tail) - sum(header.packet_lengths[:-1]))
        assert parsed == dataclasses.replace(header,
                                             packet_lengths=header.packet_lengths[:-1] + (last,))
    assert offset == len(header.to_bytes())


@settings(FUZZ, max_examples=300)
@given(header=headers, tail=st.binary(max_size=64), mutations=ops)
def test_header_parser_raises_only_bitstream_errors(header, tail, mutations):
    data = mutate(header.to_bytes() + tail, mutations)
    try:
        parsed, payloads = unpack(data)
    except BitstreamError:
        return
    assert len(payloads) == len(parsed.packet_lengths) <= MAX_PACKETS


@FUZZ
@given(data=st.binary(max_size=200))
def test_parser_on_arbitrary_bytes(data):
    for candidate in (data, b"n\x11" + data):
        try:
            unpack(candidate)
        except BitstreamError:
            pass


@pytest.mark.parametrize("family", FAMILIES)
@settings(FUZZ, max_examples=25)
@given(which=st.integers(0, 7), mutations=ops)
def test_decoder_raises_only_bitstream_errors(family, which, mutations):
    files = seed_files(family)
    outcome(mutate(files[which % len(files)], mutations))  # raises anything but ours


@pytest.mark.parametrize("family", FAMILIES)
def test_seed_files_decode(family):
    assert {outcome(data) for data in seed_files(family)} == {"ok"}


@pytest.mark.parametrize("family", FAMILIES)
def test_payload_garbage_with_valid_checksums(family):
    """Payloads replaced by garbage resealed with valid CRCs reach the range decoder itself."""
    for number, data in enumerate(seed_files(family)):
        header, offset = parse_header(data)
        for fill in (b"\x00", b"\xff", bytes(range(7, 256, 31))):
            packets = [seal_packet((fill * 64)[: n]) for n in header.packet_lengths]
            forged = dataclasses.replace(
                header, packet_lengths=tuple(len(p) for p in packets)).to_bytes()
            assert outcome(forged + b"".join(packets)) in {
                "ok", "concealed", "PacketLossError", "DecodeError"}, (number, fill)


def test_cases_are_reproducible():
    assert case(0, "mcq", 5) == case(0, "mcq", 5) != case(1, "mcq", 5)


def test_cli_reports_fuzzed_files_in_one_line_each(tmp_path):
    """``codec decode`` on a batch of fuzz cases: exit 0 or 1, one line per bad file, no
    traceback (click's runner re-raises anything that escapes)."""
    from click.testing import CliRunner

    from nicodec.cli import main

    for family in FAMILIES:
        for number in range(8):
            (tmp_path / f"{family}-{number}.nic").write_bytes(case(7, family, number))
    res = CliRunner().invoke(main, ["decode", str(tmp_path), "-o", str(tmp_path / "out"),
                                    "--max-pixels", "16384", "--json"], catch_exceptions=False)
    assert res.exit_code in (0, 1)
    records = json.loads(res.stdout)
    errors = [r for r in records if "error" in r]
    assert len(records) == 8 * len(FAMILIES) and errors
    assert res.stderr.count("error: ") == len(errors)
    assert len(list((tmp_path / "out").glob("*.png"))) == len(records) - len(errors)
