"""Property tests: reassembly is independent of chunking and never trusts bad bytes."""

from hypothesis import given, settings, strategies as st

import jbd
from conftest import feed_all
from vbms import response_frame

frames = st.builds(
    response_frame,
    register=st.integers(0, 255),
    data=st.binary(min_size=0, max_size=80),
    status=st.sampled_from([0, 0, 0, 0x80, 0x81]),
)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, min_size=1, max_size=6), st.lists(st.integers(0, 10_000), max_size=30))
def test_any_chunking_gives_back_the_same_frames(stream, cuts):
    data = b"".join(stream)
    a, out = feed_all(cut(data, cuts))
    assert out == stream
    assert a.errors == 0 and a.pending == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 10_000), max_size=20))
def test_random_bytes_only_yield_valid_frames(data, cuts):
    a, out = feed_all(cut(data, cuts))
    for f in out:
        jbd.parse_frame(f)
    assert len(a.pending) <= jbd.MAX_FRAME


@settings(max_examples=300, deadline=None)
@given(
    st.lists(frames, min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_mutated_frames_yield_valid_frames_or_counted_errors(stream, mutations, cuts):
    data = bytearray(b"".join(stream))
    for pos, value in mutations:
        data[pos % len(data)] = value
    a, out = feed_all(cut(bytes(data), cuts))
    for f in out:
        jbd.parse_frame(f)
    if bytes(data) != b"".join(stream):
        # Every original frame either came back intact or a rejection was counted
        # (or it is still waiting for bytes that a mutated length byte asked for, or the
        # mutation hit the register byte, which the checksum does not cover).
        assert len(out) == len(stream) or a.errors or a.pending


@settings(max_examples=100, deadline=None)
@given(st.lists(frames, min_size=1, max_size=4), st.binary(min_size=1, max_size=40))
def test_junk_between_frames_never_wedges(stream, junk):
    junk = junk.replace(b"\xdd", b"\x00")
    data = b"".join(junk + f for f in stream)
    a, out = feed_all([data[i : i + 20] for i in range(0, len(data), 20)])
    assert out == stream
    assert a.errors == len(stream)


@given(st.integers(0, 255))
def test_every_read_request_parses_and_checksums(register):
    frame = jbd.read_request(register)
    assert frame[:2] == b"\xdd\xa5" and frame[-1] == 0x77 and len(frame) == 7
    # A request has the same layout as a reply (the register sits in the status slot).
    reg, status, payload = jbd.parse_frame(frame)
    assert (reg, status, payload) == (0xA5, register, b"")
