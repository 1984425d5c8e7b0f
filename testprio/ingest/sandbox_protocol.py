"""The frames between the parent (``testprio.ingest.sandbox``) and the custom op's worker.

Protocol (one worker, one op): the parent sends a JSON frame ``{"source", "name",
"cpu_seconds", "memory_mb"}``; the worker answers ``{"status": "ready"}`` or an error. Then,
per batch, the parent sends an array frame and the worker answers with an array frame or a
JSON error ``{"status": "error", "kind": ..., "detail": ..., "line": ...}``. A frame is one
tag byte (``J`` JSON, ``A`` array), an 8-byte little-endian length and the payload. The
worker exits at end of input.

Arrays travel as ``.npy`` bytes: nothing is ever pickled, and ``decode_array`` refuses object
arrays. The worker process loads this module by file, without testprio (see
``sandbox_worker``): it imports only the standard library and numpy.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct

import numpy as np

FRAME_HEADER = struct.Struct("<cQ")
JSON_TAG, ARRAY_TAG = b"J", b"A"


def encode_array(array: np.ndarray) -> list:
    """``.npy`` bytes of ``array`` as a list of buffers (header, data: no copy of the data)."""
    if array.dtype.hasobject:
        raise ValueError(f"arrays of dtype {array.dtype} cannot be sent")
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, np.lib.format.header_data_from_array_1_0(array))
    return [header.getvalue(), memoryview(array.reshape(-1).view(np.uint8))]


def decode_array(payload: bytearray) -> np.ndarray:
    """The array in a ``.npy`` payload, sharing its memory; never unpickles anything."""
    stream = io.BytesIO(memoryview(payload)[:65_536])
    version = np.lib.format.read_magic(stream)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        raise ValueError(f".npy version {version} is not accepted")
    shape, fortran_order, dtype = read_header(stream, max_header_size=10_000)
    if dtype.hasobject:
        raise ValueError(f"arrays of dtype {dtype} are not accepted")
    count = math.prod(shape)
    offset = stream.tell()
    if len(payload) - offset != count * dtype.itemsize:
        raise ValueError("the .npy payload's length does not match its header")
    flat = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def write_frame(fd: int, tag: bytes, parts: list) -> None:
    """One frame to a blocking file descriptor."""
    total = sum(len(memoryview(part).cast("B")) for part in parts)
    for part in [FRAME_HEADER.pack(tag, total), *parts]:
        view = memoryview(part).cast("B")
        while view:
            view = view[os.write(fd, view) :]


class FrameTooLarge(Exception):
    """A frame's payload did not fit in memory; it was read past, the stream is in step."""


def read_frame(stream) -> tuple[bytes, bytearray] | None:
    """The next ``(tag, payload)`` from a blocking binary stream; None at end of input."""
    header = stream.read(FRAME_HEADER.size)
    if len(header) < FRAME_HEADER.size:
        return None
    tag, length = FRAME_HEADER.unpack(header)
    try:
        payload = bytearray(length)
    except MemoryError:
        while length > 0:  # skip it, so that the next frame is read from its start
            skipped = len(stream.read(min(length, 1 << 20)))
            if not skipped:
                return None
            length -= skipped
        raise FrameTooLarge from None
    view = memoryview(payload)
    filled = 0
    while filled < length:
        got = stream.readinto(view[filled:])
        if not got:
            return None
        filled += got
    return tag, payload


def error_frame(kind: str, detail: str, line: int | None = None) -> list:
    """The parts of a JSON error frame: its ``kind``, a ``detail`` sentence and the op
    file's ``line`` where known."""
    message = {"status": "error", "kind": kind, "detail": detail}
    if line is not None:
        message["line"] = line
    return [json.dumps(message).encode()]
