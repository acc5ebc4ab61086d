"""Just enough of the protobuf wire format to walk large messages without parsing them.

A .caffemodel is one NetParameter whose bulk is packed float arrays. Parsing
it with protobuf turns every float into a Python object on the way to numpy;
walking the wire format instead finds each array's byte range, which is then
read straight into a numpy array. Encoding helpers write those arrays back the
same way.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message (truncated or corrupted)."""


class Field(NamedTuple):
    number: int
    wire_type: int
    value: int      # VARINT: the value; other types: payload start offset
    end: int        # payload end offset (== value for VARINT)


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def read_field(buf, pos: int, end: int) -> tuple[Field, int]:
    """The field starting at ``pos`` and the offset just after it."""
    key, pos = read_varint(buf, pos, end)
    number, wire_type = key >> 3, key & 7
    if number == 0:
        raise WireError(f"field number 0 at byte {pos}")
    if wire_type == VARINT:
        value, pos = read_varint(buf, pos, end)
        return Field(number, wire_type, value, value), pos
    if wire_type == LENGTH:
        length, pos = read_varint(buf, pos, end)
        payload_end = pos + length
    elif wire_type == FIXED64:
        payload_end = pos + 8
    elif wire_type == FIXED32:
        payload_end = pos + 4
    else:
        raise WireError(f"unsupported wire type {wire_type} (field {number}) at byte {pos}")
    if payload_end > end:
        raise WireError(f"field {number} needs {payload_end - pos} bytes at byte {pos} "
                        f"but the message ends at byte {end}")
    return Field(number, wire_type, pos, payload_end), payload_end


def iter_fields(buf, start: int, end: int) -> Iterator[Field]:
    """The top-level fields of the message occupying ``buf[start:end]``."""
    pos = start
    while pos < end:
        field, pos = read_field(buf, pos, end)
        yield field


def packed_varints(buf, start: int, end: int) -> list[int]:
    values, pos = [], start
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        values.append(value)
    return values


def unpacked_fixed_run(buf, pos: int, end: int, number: int, wire_type: int) -> tuple[int, int]:
    """Length of the run of consecutive non-packed fixed-width ``number`` fields at ``pos``.

    ``pos`` points at the first field's payload. Returns (count, end of run).
    Vectorised with numpy: old files store one tag byte per float.
    """
    tag = (number << 3) | wire_type
    if tag > 0x7F:
        raise WireError(f"non-packed field {number} has a multi-byte tag")
    width = 4 if wire_type == FIXED32 else 8
    stride = width + 1
    available = (end - pos + 1) // stride
    raw = np.frombuffer(buf, dtype=np.uint8, count=available * stride - 1, offset=pos)
    tags = raw[width::stride]
    mismatch = np.flatnonzero(tags != tag)
    count = 1 + (int(mismatch[0]) if mismatch.size else tags.size)
    return count, pos + count * stride - 1


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return encode_varint((number << 3) | wire_type)


def length_prefix(number: int, length: int) -> bytes:
    return key(number, LENGTH) + encode_varint(length)
