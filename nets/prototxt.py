"""Reading and writing NetParameter / SolverParameter files.

Text files go through protobuf's text parser; its errors are turned into a
PrototxtError naming file, line and column. Binary files are parsed with
protobuf after a size check, so a truncated or corrupted file becomes one
clear error instead of a DecodeError from protobuf internals.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from google.protobuf import message, text_format

from fcnwild.base import caffe_pb2
from fcnwild.base.atomic import atomic_write
from fcnwild.base.errors import PrototxtError
from fcnwild.nets.upgrade import upgrade_net, upgrade_solver

M = TypeVar("M", bound=message.Message)
PathLike = str | os.PathLike


def parse_text(text: str, msg: M, *, file: PathLike | None = None) -> M:
    """Parse protobuf text into ``msg``; errors name ``file``, line and column."""
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as err:
        line, col = err.GetLine(), err.GetColumn()
        detail = str(err)
        # protobuf prefixes "line:col : "; the location is reported separately.
        prefix = f"{line}:{col} : "
        if detail.startswith(prefix):
            detail = detail[len(prefix):]
        raise PrototxtError(f"cannot parse {msg.DESCRIPTOR.name}: {detail}",
                            file=file, line=line or None, column=col or None) from None
    return msg


def read_text(path: PathLike, msg: M) -> M:
    """Read a protobuf text file (prototxt) into ``msg``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PrototxtError(f"no such file (expected a {msg.DESCRIPTOR.name} prototxt)",
                            file=path) from None
    except UnicodeDecodeError as err:
        raise PrototxtError(f"not a text file (byte {err.start} is not UTF-8); "
                            f"expected a {msg.DESCRIPTOR.name} prototxt", file=path) from None
    except OSError as err:
        raise PrototxtError(f"cannot read: {err.strerror}", file=path) from None
    except ValueError as err:    # a path with a NUL byte
        raise PrototxtError(f"not a usable file name ({err})", file=path) from None
    return parse_text(text, msg, file=path)


def parse_binary(data: bytes, msg: M, *, file: PathLike | None = None) -> M:
    """Parse a binary protobuf message; a DecodeError becomes a PrototxtError."""
    try:
        msg.ParseFromString(data)
    except message.DecodeError as err:
        raise PrototxtError(f"corrupted or truncated binary {msg.DESCRIPTOR.name} "
                            f"({len(data)} bytes): {err}", file=file) from None
    return msg


def read_binary(path: PathLike, msg: M) -> M:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PrototxtError(f"no such file (expected a binary {msg.DESCRIPTOR.name})",
                            file=path) from None
    except OSError as err:
        raise PrototxtError(f"cannot read: {err.strerror}", file=path) from None
    except ValueError as err:    # a path with a NUL byte
        raise PrototxtError(f"not a usable file name ({err})", file=path) from None
    return parse_binary(data, msg, file=path)


def to_text(msg: message.Message, header: str = "") -> str:
    """``msg`` as protobuf text, after ``header`` as ``#`` comment lines."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + text_format.MessageToString(msg)


def write_text(path: PathLike, msg: message.Message, header: str = "") -> None:
    """Write ``msg`` as protobuf text (``to_text``), atomically (temp file + rename)."""
    with atomic_write(path, "w") as f:
        f.write(to_text(msg, header))


def read_net_param(path: PathLike) -> caffe_pb2.NetParameter:
    """A NetParameter from a prototxt (text) or a binary file, upgraded to V2."""
    raw = caffe_pb2.NetParameter()
    if _looks_binary(path):
        read_binary(path, raw)
    else:
        read_text(path, raw)
    return upgrade_net(raw, file=path)


def read_solver_param(path: PathLike) -> caffe_pb2.SolverParameter:
    return upgrade_solver(read_text(path, caffe_pb2.SolverParameter()), file=path)


def _looks_binary(path: PathLike) -> bool:
    """Binary NetParameters (.caffemodel, .binaryproto) vs prototxt text."""
    suffix = Path(path).suffix.lower()
    if suffix in (".caffemodel", ".binaryproto", ".pb"):
        return True
    if suffix in (".prototxt", ".pbtxt", ".txt"):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except (OSError, ValueError):    # unreadable or not a valid path: read_text reports it
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\x00" in head
