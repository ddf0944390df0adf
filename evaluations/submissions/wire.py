"""The plain-array wire format between the evaluator and a submission's worker process.

A message is a fixed 20-byte header, ``ndim`` little-endian 64-bit dimensions and a payload of raw
little-endian bytes in C order::

    magic  b"ASW1"   kind  u8   dtype  u8   ndim  u8   route  u8   tag  u32   payload bytes  u64

``route`` picks which of the worker's models a request is for: 0 the submission's model, ``k`` the
composition the evaluator set up with a LOAD_FRONT request of tag ``k`` (replies carry 0).

Nothing else crosses the pipe: no pickle, no JSON from the worker, no object the evaluator would have to
interpret beyond "this many float32 numbers of this shape" or "this much UTF-8 text". The evaluator checks
every field of what a worker sends (:func:`read_message` with the size it expects) before it reads the
payload, so a worker that sends garbage, a pickle, a huge length or the wrong shape is stopped with one
clear line instead of being believed.

This module imports only the standard library and numpy: the worker (:mod:`worker`) loads it as a
sibling file inside the sandbox, where the rest of the harness is not available.
"""

from __future__ import annotations

import os
import select
import struct
import time
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAGIC",
    "Kind",
    "Message",
    "ProtocolError",
    "encode",
    "read_message",
    "write_all",
]

MAGIC = b"ASW1"
HEADER = struct.Struct("<4sBBBBIQ")
MAX_NDIM = 6
#: The longest error text a worker may send (longer text is a protocol violation).
MAX_TEXT_BYTES = 4096


class Kind:
    """Message kinds. Requests go from the evaluator to the worker, replies back."""

    FORWARD = 1  # array x (float32): reply ARRAY of outputs, no gradient kept
    FORWARD_KEEP = 2  # array x, tag = handle: reply ARRAY of outputs; keep the graph for one VJP
    VJP = 3  # array = cotangent of the outputs, tag = handle: reply ARRAY d<outputs, cotangent>/dx
    CLOSE = 4  # no array: the worker exits
    # bytes (u8) of a torch.export program of the evaluator's, tag = new route, route = the route it goes in
    # front of: reply READY, and requests of that route answer for route(program(x))
    LOAD_FRONT = 5
    READY = 16  # no array: the model is loaded
    ARRAY = 17  # array: a result
    FAILED = 18  # UTF-8 text: what went wrong
    UNKNOWN_HANDLE = 19  # no array: the graph of that handle is gone (the evaluator resends x)

    REQUESTS = frozenset({FORWARD, FORWARD_KEEP, VJP, CLOSE, LOAD_FRONT})
    REPLIES = frozenset({READY, ARRAY, FAILED, UNKNOWN_HANDLE})


#: dtype codes: float32 arrays and bytes (UTF-8 text, a front's program); nothing else is ever sent.
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("u1")}
_CODES = {np.dtype("<f4"): 1, np.dtype("u1"): 2}


#: The kinds whose payload is bytes rather than float32 numbers.
_BYTES_KINDS = frozenset({Kind.FAILED, Kind.LOAD_FRONT})


class ProtocolError(RuntimeError):
    """A message that breaks the format, or a pipe that closed or timed out mid-message."""


@dataclass
class Message:
    kind: int
    tag: int = 0
    array: np.ndarray | None = None
    route: int = 0

    @property
    def text(self) -> str:
        """The UTF-8 text of a FAILED message (undecodable bytes replaced)."""
        return b"" if self.array is None else self.array.tobytes().decode("utf-8", errors="replace")


def encode(
    kind: int, array: np.ndarray | None = None, tag: int = 0, text: str | None = None, route: int = 0
) -> bytes:
    """One message as bytes: a float32 array, bytes (u1: a text for FAILED, a program for LOAD_FRONT)
    or nothing; ``route`` for a request (see the module docstring)."""
    if text is not None:
        array = np.frombuffer(text.encode("utf-8")[:MAX_TEXT_BYTES], dtype="u1")
    if array is None:
        return HEADER.pack(MAGIC, kind, 0, 0, route, tag, 0)
    if array.dtype != np.dtype("u1"):
        array = np.ascontiguousarray(array, dtype="<f4")
    else:
        array = np.ascontiguousarray(array)
    if array.ndim > MAX_NDIM:
        raise ValueError(f"at most {MAX_NDIM} dimensions, got shape {array.shape}")
    payload = array.tobytes()
    header = HEADER.pack(MAGIC, kind, _CODES[array.dtype], array.ndim, route, tag, len(payload))
    return header + struct.pack(f"<{array.ndim}Q", *array.shape) + payload


def write_all(fd: int, data: bytes, deadline: float | None = None) -> None:
    """Write every byte to ``fd``; with a ``deadline`` (``time.monotonic()`` seconds) the file must be
    non-blocking and the write gives up with :class:`ProtocolError` when the reader stops reading."""
    view = memoryview(data)
    while view:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise ProtocolError("timed out writing to the worker")
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue
        except (BrokenPipeError, OSError) as error:
            raise ProtocolError(f"the pipe closed ({error.strerror or error})") from None
        view = view[written:]


#: Seconds a reader may poll for a message before it sleeps in ``select`` or ``read``, and the largest
#: exchange it polls for. Small requests (an attack step on a few points) come and go thousands of times
#: in well under a millisecond, and sleeping and being woken cost 0.2-0.4 ms each way on these machines,
#: more than the small model's computation: polling took a forward pass of 25 digits through a worker
#: from 0.63 to 0.40 ms (0.28 ms in process). A large batch keeps the other side computing for
#: milliseconds on every core it has, and a poller would take one of them (1,000 digits: 9.3 ms with
#: polling, 6.4 without, 6.5 in process): so only exchanges up to ``SPIN_BYTES`` are polled for.
SPIN_SECONDS = 0.002
SPIN_BYTES = 64 << 10


def spin_for(nbytes: int) -> float:
    """Seconds to poll for the answer to (or the successor of) a message of ``nbytes`` payload bytes."""
    return SPIN_SECONDS if nbytes <= SPIN_BYTES else 0.0


def _wait_briefly(fd: int, seconds: float) -> None:
    """Poll ``fd`` for up to ``seconds``, returning as soon as it can be read."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if select.select([fd], [], [], 0)[0]:
            return


def _read_exactly(fd: int, count: int, deadline: float | None, spin: float = 0.0) -> bytes:
    chunks = []
    while count:
        if spin:
            _wait_briefly(fd, spin)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ProtocolError("timed out")
        try:
            chunk = os.read(fd, min(count, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise ProtocolError("the pipe closed")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def read_message(
    fd: int,
    *,
    allowed: frozenset[int],
    max_payload: int,
    deadline: float | None = None,
    spin: float = 0.0,
) -> Message:
    """Read one message, checking the header before any payload is read.

    :param allowed: the kinds acceptable here; any other is a :class:`ProtocolError`.
    :param max_payload: the most payload bytes acceptable (the caller knows the size it expects).
    :param deadline: ``time.monotonic()`` by which the whole message must have arrived.
    :param spin: seconds to poll for the message before sleeping (:func:`spin_for`).
    """
    header = _read_exactly(fd, HEADER.size, deadline, spin)
    magic, kind, code, ndim, route, tag, nbytes = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"not a message of this protocol (it starts with {magic!r})")
    if kind not in allowed:
        raise ProtocolError(f"unexpected message kind {kind}")
    if kind == Kind.FAILED:
        max_payload = MAX_TEXT_BYTES
    if nbytes > max_payload:
        raise ProtocolError(f"a payload of {nbytes} bytes, more than the {max_payload} expected")
    if code == 0:
        if ndim or nbytes:
            raise ProtocolError("a message without an array that declares one")
        return Message(kind, tag, route=route)
    if code not in _DTYPES or ndim > MAX_NDIM:
        raise ProtocolError(f"unknown dtype code {code} or {ndim} dimensions")
    if (kind in _BYTES_KINDS) != (code == 2):
        raise ProtocolError("bytes where an array was due, or an array where bytes were due")
    shape = struct.unpack(f"<{ndim}Q", _read_exactly(fd, 8 * ndim, deadline))
    dtype = _DTYPES[code]
    if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize != nbytes:
        raise ProtocolError(f"shape {shape} does not match a payload of {nbytes} bytes")
    payload = _read_exactly(fd, nbytes, deadline)
    return Message(kind, tag, np.frombuffer(payload, dtype=dtype).reshape(shape).copy(), route)
