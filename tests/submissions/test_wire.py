"""The plain-array wire format: what round-trips, and every malformed message a hostile worker could send
being refused before its payload is read, with no unpickling."""

from __future__ import annotations

import os
import pickle
import struct
import time

import numpy as np
import pytest

from evaluations.submissions import wire

ALL = wire.Kind.REQUESTS | wire.Kind.REPLIES


def _send(data: bytes) -> int:
    """A pipe holding ``data`` (closed for writing); returns its read end."""
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    return read


def test_float_arrays_round_trip_exactly():
    array = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    fd = _send(wire.encode(wire.Kind.ARRAY, array, tag=7))
    message = wire.read_message(fd, allowed=ALL, max_payload=array.nbytes)
    assert message.kind == wire.Kind.ARRAY and message.tag == 7
    assert message.array.dtype == np.float32 and np.array_equal(message.array, array)


def test_a_request_carries_its_route_and_a_program_its_bytes():
    program = b"PK\x03\x04 any bytes"
    fd = _send(
        wire.encode(wire.Kind.FORWARD, np.zeros((2, 3), np.float32), route=2)
        + wire.encode(wire.Kind.LOAD_FRONT, np.frombuffer(program, "u1"), tag=3, route=2)
    )
    first = wire.read_message(fd, allowed=ALL, max_payload=1 << 10)
    assert first.kind == wire.Kind.FORWARD and first.route == 2 and first.array.shape == (2, 3)
    second = wire.read_message(fd, allowed=ALL, max_payload=1 << 10)
    assert (second.kind, second.tag, second.route) == (wire.Kind.LOAD_FRONT, 3, 2)
    assert second.array.tobytes() == program


def test_text_and_empty_messages():
    fd = _send(wire.encode(wire.Kind.FAILED, text="bad | input\nline") + wire.encode(wire.Kind.READY))
    assert wire.read_message(fd, allowed=ALL, max_payload=0).text == "bad | input\nline"
    assert wire.read_message(fd, allowed=ALL, max_payload=0).kind == wire.Kind.READY


def test_a_pickle_is_not_a_message_and_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    fd = _send(pickle.dumps(Evil()) + b"\0" * 64)
    with pytest.raises(wire.ProtocolError, match="not a message of this protocol"):
        wire.read_message(fd, allowed=ALL, max_payload=1 << 20)
    assert not marker.exists()


def test_a_payload_larger_than_expected_is_refused_before_reading_it():
    header = wire.HEADER.pack(wire.MAGIC, wire.Kind.ARRAY, 1, 1, 0, 0, 1 << 40) + struct.pack("<Q", 1 << 38)
    with pytest.raises(wire.ProtocolError, match="more than the 400 expected"):
        wire.read_message(_send(header), allowed=ALL, max_payload=400)


def test_a_shape_that_does_not_match_the_payload_is_refused():
    header = wire.HEADER.pack(wire.MAGIC, wire.Kind.ARRAY, 1, 2, 0, 0, 16) + struct.pack("<2Q", 3, 3)
    with pytest.raises(wire.ProtocolError, match="does not match"):
        wire.read_message(_send(header + b"\0" * 16), allowed=ALL, max_payload=1 << 10)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((wire.MAGIC, 99, 1, 1, 0, 0, 4), "unexpected message kind"),
        ((wire.MAGIC, wire.Kind.ARRAY, 7, 1, 0, 0, 4), "unknown dtype"),
        ((wire.MAGIC, wire.Kind.ARRAY, 1, 9, 0, 0, 4), "unknown dtype code 1 or 9 dimensions"),
        ((wire.MAGIC, wire.Kind.ARRAY, 2, 1, 0, 0, 4), "bytes where an array was due"),
        ((wire.MAGIC, wire.Kind.LOAD_FRONT, 1, 1, 0, 1, 4), "an array where bytes were due"),
        ((wire.MAGIC, wire.Kind.READY, 0, 1, 0, 0, 0), "declares one"),
    ],
)
def test_malformed_headers_are_refused(fields, message):
    data = wire.HEADER.pack(*fields) + struct.pack("<Q", 1) + b"\0" * 8
    with pytest.raises(wire.ProtocolError, match=message):
        wire.read_message(_send(data), allowed=ALL, max_payload=1 << 10)


def test_a_long_text_is_refused():
    data = wire.HEADER.pack(wire.MAGIC, wire.Kind.FAILED, 2, 1, 0, 0, 10_000) + struct.pack("<Q", 10_000)
    with pytest.raises(wire.ProtocolError, match="more than the 4096"):
        wire.read_message(_send(data + b"x" * 10_000), allowed=ALL, max_payload=1 << 20)


def test_a_truncated_message_and_a_silent_pipe_fail_cleanly():
    full = wire.encode(wire.Kind.ARRAY, np.zeros((2, 10), np.float32))
    with pytest.raises(wire.ProtocolError, match="closed"):
        wire.read_message(_send(full[:-5]), allowed=ALL, max_payload=1 << 10)
    read, write = os.pipe()
    start = time.monotonic()
    with pytest.raises(wire.ProtocolError, match="timed out"):
        wire.read_message(read, allowed=ALL, max_payload=1 << 10, deadline=time.monotonic() + 0.2)
    assert time.monotonic() - start < 2.0
    os.close(read)
    os.close(write)


def test_a_reader_that_stops_reading_times_the_writer_out():
    read, write = os.pipe()
    os.set_blocking(write, False)
    with pytest.raises(wire.ProtocolError, match="timed out writing"):
        wire.write_all(write, b"x" * (1 << 22), deadline=time.monotonic() + 0.2)
    os.close(read)
    os.close(write)
