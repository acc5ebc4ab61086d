"""Mutation fuzzing of the files fcnwild reads: seeds, mutators and the oracle.

Shared by tests/test_fuzz_formats.py (a short deterministic run) and
benchmarks/fuzz_formats.py (the long run). Mutations are hypothesis
strategies, so hypothesis chooses (and, in the tests, shrinks) them:

- every format: byte flips, truncation, inserted/deleted/overwritten bytes;
- protobuf binaries (.caffemodel, .solverstate): the message is parsed into a
  tree of fields (our caffe.proto's descriptors say which fields are nested
  messages) and fields are removed, duplicated, renumbered, given another wire
  type, huge varints (dims of 1e12, negative dims), lying length prefixes
  (2^31, 2^62), re-encoded packed payloads and NaN/Inf floats;
- prototxt text: lines dropped, duplicated and swapped, numbers and strings
  replaced by extreme ones, random text inserted;
- HDF5: datasets retyped (int, string, compound, 0-d, null dataspace,
  float16/64, big-endian), given huge declared shapes without data, NaN/Inf
  values, deleted, turned into groups or (self-)links, renamed to odd indices;
- torch files: values of other types and dtypes, sparse and stride-0
  (expanded) tensors, odd keys and containers;
- fcnwild's JSON resume state: any value replaced by one of another type.

The oracle: reading the file (and using it the way fcnwild does: building the
net, copying weights into a net, restoring a solver) ends in a valid result or
an FcnwildError, within TIME_LIMIT seconds and within MEMORY_HEADROOM bytes of
address space beyond what the process had; anything else is a finding.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import re
import resource
import shutil
import signal
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import torch
from hypothesis import strategies as st

from fcnwild.base import caffe_pb2
from fcnwild.base.errors import FcnwildError
from fcnwild.nets import wire
from fcnwild.nets.net import Net
from fcnwild.nets.weights import open_weights
from fcnwild.solvers.snapshot import read_solverstate
from fcnwild.solvers.solver import Solver

CAFFE = Path(__file__).parent / "fixtures" / "caffe_reference"
TIME_LIMIT = 5.0                  # seconds per case
MEMORY_HEADROOM = 3 << 30         # bytes of address space a case may add

VALID, OUR_ERROR, FOREIGN, TIMEOUT = "valid", "our error", "FOREIGN", "timeout"

# ------------------------------------------------------------------ byte-level mutations
_BIG_VARINTS = [2**31 - 1, 2**31, 2**32, 10**12, 2**62, 2**63, 2**64 - 1]
INTERESTING_VARINTS = [0, 1, 2, 7, 255, 2**24] + _BIG_VARINTS
_FLOAT_BITS = [struct.pack("<f", v) for v in (math.nan, math.inf, -math.inf, 1e-45, -0.0, 3e38)]
INTERESTING_CHUNKS = [b"\xff" * 4, b"\x00" * 4, b"\xff" * 10, b"\x80" * 10 + b"\x01",
                      *_FLOAT_BITS, *(wire.encode_varint(v) for v in _BIG_VARINTS)]


@st.composite
def byte_mutations(draw, data: bytes, min_ops: int = 1, max_ops: int = 3) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(min_ops, max_ops))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        if not buf:
            buf += draw(st.binary(min_size=1, max_size=8))
            continue
        pos = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[pos:pos + draw(st.integers(1, 64))]
        else:
            chunk = draw(st.sampled_from(INTERESTING_CHUNKS))
            buf[pos:pos + len(chunk)] = chunk
    return bytes(buf)


# ------------------------------------------------------------------ protobuf wire trees
@dataclass
class WireNode:
    number: int
    wire_type: int
    payload: int | bytes | list["WireNode"]
    declared_length: int | None = None      # a LENGTH prefix that lies about its payload


def parse_tree(buf: bytes, descriptor) -> list[WireNode]:
    """The fields of a message; nested messages (per ``descriptor``) as subtrees."""
    nodes = []
    for f in wire.iter_fields(buf, 0, len(buf)):
        if f.wire_type == wire.VARINT:
            nodes.append(WireNode(f.number, f.wire_type, f.value))
            continue
        payload: bytes | list[WireNode] = bytes(buf[f.value:f.end])
        spec = descriptor.fields_by_number.get(f.number) if descriptor is not None else None
        if f.wire_type == wire.LENGTH and spec is not None and spec.message_type is not None:
            with contextlib.suppress(wire.WireError):
                payload = parse_tree(payload, spec.message_type)
        nodes.append(WireNode(f.number, f.wire_type, payload))
    return nodes


def serialize_tree(nodes: list[WireNode]) -> bytes:
    out = bytearray()
    for node in nodes:
        out += wire.key(node.number, node.wire_type)
        if node.wire_type == wire.VARINT:
            out += wire.encode_varint(node.payload)
            continue
        body = serialize_tree(node.payload) if isinstance(node.payload, list) else node.payload
        if node.wire_type == wire.LENGTH:
            length = len(body) if node.declared_length is None else node.declared_length
            out += wire.encode_varint(length)
        out += body
    return bytes(out)


def _walk(nodes: list[WireNode]) -> Iterator[tuple[list[WireNode], int]]:
    for i, node in enumerate(nodes):
        yield nodes, i
        if isinstance(node.payload, list):
            yield from _walk(node.payload)


_TREE_OPS = ["remove", "duplicate", "varint", "length", "packed", "nonfinite", "wire_type",
             "number", "json"]


def _retyped(node: WireNode, wire_type: int) -> WireNode:
    raw = node.payload if isinstance(node.payload, bytes) else (
        wire.encode_varint(node.payload) if isinstance(node.payload, int)
        else serialize_tree(node.payload))
    if wire_type == wire.VARINT:
        return WireNode(node.number, wire_type, len(raw))
    if wire_type in (wire.FIXED32, wire.FIXED64):
        width = 4 if wire_type == wire.FIXED32 else 8
        return WireNode(node.number, wire_type, raw[:width].ljust(width, b"\0"))
    if wire_type == wire.LENGTH:
        return WireNode(node.number, wire_type, raw)
    return WireNode(node.number, wire_type, b"")      # 3, 4, 6, 7: groups / invalid types


@st.composite
def json_mutation(draw, text: str) -> str:
    """One value of a JSON document replaced by a value of another type."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    paths: list[tuple] = []

    def collect(value, path):
        paths.append(path)
        if isinstance(value, dict):
            for k, v in value.items():
                collect(v, path + (k,))
        elif isinstance(value, list):
            for k, v in enumerate(value):
                collect(v, path + (k,))
    collect(doc, ())
    path = paths[draw(st.integers(0, len(paths) - 1))]
    replacement = draw(st.sampled_from([None, [], {}, "x", -1, 10**30, 1.5, True, [[]],
                                        {"a": 1}, "AAAA", [0] * 3]))
    if not path:
        return json.dumps(replacement)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = replacement
    return json.dumps(doc)


@st.composite
def wire_mutations(draw, seed: bytes, descriptor) -> bytes:
    tree = parse_tree(seed, descriptor)
    tree_ops = draw(st.integers(0, 3))
    for _ in range(tree_ops):
        places = list(_walk(tree))
        if not places:
            break
        parent, i = places[draw(st.integers(0, len(places) - 1))]
        node = parent[i]
        op = draw(st.sampled_from(_TREE_OPS))
        if op == "remove":
            del parent[i]
        elif op == "duplicate":
            parent.insert(i, copy.deepcopy(node))
        elif op == "varint" and node.wire_type == wire.VARINT:
            node.payload = draw(st.sampled_from(INTERESTING_VARINTS))
        elif op == "length" and node.wire_type == wire.LENGTH:
            size = len(serialize_tree([node]))
            node.declared_length = draw(st.sampled_from(
                [0, 1, size + 1, size + 1000, *_BIG_VARINTS]))
        elif op == "packed" and isinstance(node.payload, bytes):
            # e.g. BlobShape.dim: packed varints of huge or (as int64) negative values
            values = draw(st.lists(st.sampled_from(INTERESTING_VARINTS), max_size=5))
            node.payload = b"".join(wire.encode_varint(v) for v in values)
        elif op == "nonfinite" and isinstance(node.payload, bytes) and len(node.payload) >= 4:
            slot = 4 * draw(st.integers(0, len(node.payload) // 4 - 1))
            bits = draw(st.sampled_from(_FLOAT_BITS))
            node.payload = node.payload[:slot] + bits + node.payload[slot + 4:]
        elif op == "wire_type":
            parent[i] = _retyped(node, draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7])))
        elif op == "number":
            node.number = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 50, 100, 10000,
                                                2**29 - 1]))
        elif op == "json" and isinstance(node.payload, bytes):
            with contextlib.suppress(UnicodeDecodeError):
                node.payload = draw(json_mutation(node.payload.decode("utf-8"))).encode()
    return draw(byte_mutations(serialize_tree(tree), 0 if tree_ops else 1, 2))


# ------------------------------------------------------------------ prototxt text
_NUMBERS = ["0", "-1", "1", "3", "2147483647", "2147483648", "-2147483649", "4294967296",
            "9223372036854775807", "9223372036854775808", "18446744073709551616", "1e12",
            "1000000000000", "1e308", "1e400", "-1e400", "nan", "inf", "-inf", "0.5", "-0.0",
            "1e-45", "0x10", "07", "1.5e"]
_STRINGS = ['""', '"\\000"', '"' + "a" * 5000 + '"', '"../../../etc/passwd"', '"\\377\\376"',
            '"missing.txt"', '"conv1"', '"data"', "'unterminated"]


@st.composite
def text_mutations(draw, seed: bytes) -> bytes:
    text = seed.decode("utf-8")
    ops = draw(st.integers(0, 3))
    for _ in range(ops):
        lines = text.splitlines(keepends=True)
        op = draw(st.sampled_from(["drop", "duplicate", "swap", "number", "string",
                                   "identifier", "insert"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[i]
        elif op == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op in ("number", "string", "identifier"):
            pattern = {"number": r"(?<=:)\s*-?[0-9][0-9.eE+-]*",
                       "string": r'"[^"\n]*"',
                       "identifier": r"(?<=:)\s*[A-Za-z_]+\b"}[op]
            matches = list(re.finditer(pattern, text))
            if matches:
                m = matches[draw(st.integers(0, len(matches) - 1))]
                new = draw(st.sampled_from(_NUMBERS if op != "string" else _STRINGS)) \
                    if op != "identifier" else draw(st.sampled_from(
                        ["TRAIN", "TEST", "MAX", "HDF5", "true", "false", "BOGUS", "0"]))
                text = text[:m.start()] + " " + new + text[m.end():]
                continue
        else:
            insert = draw(st.sampled_from(["layer {", "}", "{", "dim: 1000000000000",
                                           "num_output: 2147483647", "kernel_size: 0",
                                           'type: "Python"', "include { phase: TRAIN }",
                                           "input_dim: -5", "\\", "#"]))
            lines.insert(i, insert + "\n")
        text = "".join(lines)
    return draw(byte_mutations(text.encode("utf-8"), 0 if ops else 1, 2))


# ------------------------------------------------------------------ HDF5
_H5_OPS = ["retype", "huge", "nonfinite", "delete", "to_group", "to_dataset", "self_link",
           "root_link", "external", "rename", "add", "json"]


def _h5_replacement(kind: str, data: np.ndarray):
    shape = data.shape if data.shape else (1,)
    return {
        "int32": lambda: np.zeros(shape, np.int32),
        "string": lambda: np.array([b"not numbers"] * 2),
        "vlen": lambda: np.array(["a", "bc"], dtype=h5py.string_dtype()),
        "compound": lambda: np.zeros(shape, dtype=[("a", "<f4"), ("b", "<i4")]),
        "scalar": lambda: np.float32(1.5),
        "null": lambda: h5py.Empty("f4"),
        "float64": lambda: np.ones(shape, np.float64),
        "float16": lambda: np.ones(shape, np.float16),
        "big_endian": lambda: np.ones(shape, ">f4"),
        "bool": lambda: np.ones(shape, bool),
        "empty": lambda: np.zeros((0,), np.float32),
        "extra_dim": lambda: np.ones((1, *shape), np.float32),
        "complex": lambda: np.ones(shape, np.complex64),
    }[kind]()


@st.composite
def hdf5_mutations(draw, seed: bytes, scratch: Path) -> bytes:
    path = scratch / "edit.h5"
    path.write_bytes(seed)
    ops = draw(st.integers(0, 2))
    with h5py.File(path, "r+") as h5:
        for _ in range(ops):
            names: list[str] = []
            h5.visit(names.append)
            if not names:
                break
            name = names[draw(st.integers(0, len(names) - 1))]
            op = draw(st.sampled_from(_H5_OPS))
            with contextlib.suppress(Exception):   # an edit h5py refuses is just skipped
                _apply_h5_op(h5, name, op, draw)
    return draw(byte_mutations(path.read_bytes(), 0 if ops else 1, 2))


def _apply_h5_op(h5: h5py.File, name: str, op: str, draw) -> None:
    item = h5[name]
    parent, _, leaf = name.rpartition("/")
    parent = "/" + parent
    if op == "retype" and isinstance(item, h5py.Dataset):
        data = np.asarray(item[()]) if item.shape is not None else np.zeros(1)
        kind = draw(st.sampled_from(["int32", "string", "vlen", "compound", "scalar", "null",
                                     "float64", "float16", "big_endian", "bool", "empty",
                                     "extra_dim", "complex"]))
        del h5[name]
        h5.create_dataset(name, data=_h5_replacement(kind, data))
    elif op == "huge":
        shape = draw(st.sampled_from([(2**31,), (10**6, 10**6), (2**40,), (1, 2**40, 4)]))
        chunked = draw(st.booleans())
        del h5[name]
        h5.create_dataset(name, shape=shape, dtype="f4",
                          chunks=(1024,) + (1,) * (len(shape) - 1) if chunked else None)
    elif op == "nonfinite" and isinstance(item, h5py.Dataset) and item.dtype.kind == "f" \
            and item.size:
        values = np.array(item[()])
        values.reshape(-1)[draw(st.integers(0, values.size - 1))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf]))
        item[...] = values
    elif op == "delete":
        del h5[name]
    elif op == "to_group":
        del h5[name]
        h5.create_group(name)
    elif op == "to_dataset":
        del h5[name]
        h5.create_dataset(name, data=np.zeros(3, np.float32))
    elif op == "self_link":
        del h5[name]
        h5[name] = h5py.SoftLink("/" + name)
    elif op == "root_link":
        del h5[name]
        h5[name] = h5py.SoftLink("/")
    elif op == "external":
        del h5[name]
        h5[name] = h5py.ExternalLink("missing.h5", "/data")
    elif op == "rename":
        new = draw(st.sampled_from(["99999999999", "-1", "1e3", "\u00b2", "\u0663", "x", ""]))
        h5.move(name, f"{parent.rstrip('/')}/{new}")
    elif op == "add":
        new = draw(st.sampled_from(["7", "100000", "zzz", "0"]))
        with contextlib.suppress(ValueError):
            h5.create_dataset(f"{parent.rstrip('/')}/{new}", data=np.ones((2, 2), np.float32))
    elif op == "json" and isinstance(item, h5py.Dataset) and item.dtype.kind in "SOU":
        value = item[()]
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        del h5[name]
        h5.create_dataset(name, data=np.bytes_(draw(json_mutation(text)).encode()))


# ------------------------------------------------------------------ torch files
_TENSOR_CHANGES = [
    lambda t: 3, lambda t: "x", lambda t: None, lambda t: [t], lambda t: {"a": t},
    lambda t: t.long(), lambda t: t.bool(), lambda t: t.to(torch.complex64),
    lambda t: t.half(), lambda t: t.bfloat16(), lambda t: t.to(torch.uint8),
    lambda t: t.reshape(-1)[0], lambda t: torch.full(t.shape, math.nan),
    lambda t: torch.full(t.shape, math.inf), lambda t: t.reshape(-1)[::2],
    lambda t: torch.zeros(1).expand(10**12),
    lambda t: torch.zeros(2, 3).as_strided((10**6, 10**6), (0, 0)),
    lambda t: torch.sparse_coo_tensor([[0]], [1.0], (10**9,), check_invariants=True),
    lambda t: torch.nn.Parameter(t.float()),
    lambda t: torch.empty(0),
]


@st.composite
def torch_mutations(draw, seed: bytes) -> bytes:
    state = torch.load(io.BytesIO(seed), weights_only=True)
    ops = draw(st.integers(0, 2))
    for _ in range(ops):
        keys = list(state) if isinstance(state, dict) else []
        op = draw(st.sampled_from(["value", "key", "container", "drop"]))
        if not keys:
            break
        key = keys[draw(st.integers(0, len(keys) - 1))]
        if op == "value":
            change = draw(st.sampled_from(_TENSOR_CHANGES))
            with contextlib.suppress(Exception):    # a change torch refuses is skipped
                state[key] = change(state[key])
        elif op == "key":
            state[draw(st.sampled_from(["conv1", "conv1/x", "conv1/-1", "/0",
                                        "conv1/99999999999", 7, "conv1/\u00b2",
                                        "conv1/\u0663", "a/b/0"]))] = state.pop(key)
        elif op == "container":
            state = draw(st.sampled_from([lambda s: list(s.values()), lambda s: {"state": s},
                                          lambda s: next(iter(s.values())), lambda s: None]))(
                state)
        else:
            del state[key]
    out = io.BytesIO()
    torch.save(state, out)
    return draw(byte_mutations(out.getvalue(), 0 if ops else 1, 2))


# ------------------------------------------------------------------ targets and the oracle
@dataclass(repr=False)
class Target:
    """One seed file in a working folder that holds what using it needs."""
    name: str
    seed: bytes
    folder: Path
    filename: str                  # the mutated file's name inside ``folder``
    check: Callable[[Path], None]  # reads and uses the file; raises on bad input

    def __repr__(self) -> str:
        return f"Target({self.name!r})"


@dataclass
class Format:
    name: str
    targets: list[Target]
    mutate: Callable[[Target], st.SearchStrategy[bytes]]

    def cases(self) -> st.SearchStrategy[tuple[Target, bytes]]:
        return st.sampled_from(self.targets).flatmap(
            lambda t: self.mutate(t).map(lambda data: (t, data)))


@dataclass
class CaseResult:
    outcome: str
    seconds: float
    detail: str = ""
    error: BaseException | None = field(default=None, repr=False)


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` can swallow it."""


def _alarm(signum, frame):
    raise CaseTimeout()


@contextlib.contextmanager
def memory_cap(headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """Cap the address space at what the process has now plus ``headroom``, so an
    allocation sized by a lying file fails (as a FOREIGN MemoryError) instead of
    exhausting the machine."""
    old = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + headroom, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


def names_the_culprit(err: FcnwildError, path: Path, data: bytes) -> bool:
    """The message names the fuzzed file, or a file the fuzzed file points to (a
    solver's net, a snapshot's weights) when that file is where the problem is."""
    if str(path) in str(err):
        return True
    return err.file is not None and Path(err.file).name.encode("utf-8", "replace") in data


def run_case(target: Target, data: bytes, time_limit: float = TIME_LIMIT) -> CaseResult:
    """Write ``data`` as the target's file and run its check under a time limit.

    The global RNG states are kept (restoring a solver state sets them)."""
    path = target.folder / target.filename
    path.write_bytes(data)
    rng = torch.get_rng_state(), np.random.get_state()
    previous = signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    try:
        signal.setitimer(signal.ITIMER_REAL, time_limit)
        try:
            target.check(path)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        result = CaseResult(VALID, time.perf_counter() - start)
    except CaseTimeout as err:
        result = CaseResult(TIMEOUT, time.perf_counter() - start, "timed out", err)
    except FcnwildError as err:
        result = CaseResult(OUR_ERROR, time.perf_counter() - start, str(err)[:300], err)
        if not names_the_culprit(err, path, data):
            result = CaseResult(FOREIGN, result.seconds,
                                f"{type(err).__name__} without the file name: {err}"[:300], err)
    except Exception as err:  # noqa: BLE001 - every other exception is a finding
        result = CaseResult(FOREIGN, time.perf_counter() - start,
                            f"{type(err).__name__}: {err}"[:300], err)
    finally:
        signal.signal(signal.SIGALRM, previous)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
    return result


# ------------------------------------------------------------------ the formats
def _copy_case(case: str, into: Path, names: list[str]) -> Path:
    folder = into / case
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(CAFFE / case / name, folder / name)
    return folder


def _check_net(path: Path) -> None:
    # meta tensors: a fuzzed num_output or input dim must not make real allocations here
    with torch.device("meta"):
        Net(path, phase="TRAIN")


def _check_weights(net: Net) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        with open_weights(path) as stored:
            for blobs in stored.values():
                for blob in blobs:
                    if blob is not None:
                        blob.load()
        net.copy_from(path)
    return check


def _check_solver(path: Path) -> None:
    solver = Solver(path)
    for iteration in (0, 1, solver.param.stepsize, solver.param.max_iter, 10**6):
        solver.lr.rate(iteration)


def _check_solverstate(solver: Solver) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        with read_solverstate(path) as state:
            for blob in state.history:
                blob.load()
        solver.restore(path)
    return check


_DATA = ["net.prototxt", "solver_data.h5", "solver_data_list.txt"]
NET_SEEDS = ["conv_k3_p1", "format_v1_layers", "format_legacy_blob_shape", "split_implicit",
             "dilation_frontend_small"]
SOLVER_SEEDS = ["solver_adam", "solver_sgd_multistep_l1", "solver_sgd_clip_gradients",
                "solver_snapshot_resume_hdf5", "solver_sgd_poly"]
CAFFEMODEL_SEEDS = ["conv_k3_p1", "format_v1_layers", "format_legacy_blob_shape",
                    "format_hdf5_weights"]
RESUME = {"solverstate": ["solver_snapshot_resume_binaryproto", "solver_snapshot_resume_adam"],
          "solverstate_h5": ["solver_snapshot_resume_hdf5"]}


def build_formats(workdir: Path) -> dict[str, Format]:
    """Every format with its targets, working folders under ``workdir``."""
    workdir = Path(workdir)
    formats: dict[str, Format] = {}

    targets = []
    for case in NET_SEEDS:
        folder = _copy_case(case, workdir / "net", ["net.prototxt"])
        targets.append(Target(case, (folder / "net.prototxt").read_bytes(), folder,
                              "fuzzed.prototxt", _check_net))
    formats["net_prototxt"] = Format("net_prototxt", targets,
                                     lambda t: text_mutations(t.seed))

    targets = []
    for case in SOLVER_SEEDS:
        folder = _copy_case(case, workdir / "solver", _DATA + ["solver.prototxt"])
        targets.append(Target(case, (folder / "solver.prototxt").read_bytes(), folder,
                              "fuzzed_solver.prototxt", _check_solver))
    formats["solver_prototxt"] = Format("solver_prototxt", targets,
                                        lambda t: text_mutations(t.seed))

    targets = []
    for case in CAFFEMODEL_SEEDS:
        folder = _copy_case(case, workdir / "caffemodel", ["net.prototxt", "weights.caffemodel"])
        net = Net(folder / "net.prototxt", phase="TEST")
        targets.append(Target(case, (folder / "weights.caffemodel").read_bytes(), folder,
                              "fuzzed.caffemodel", _check_weights(net)))
    formats["caffemodel"] = Format("caffemodel", targets, lambda t: wire_mutations(
        t.seed, caffe_pb2.NetParameter.DESCRIPTOR))

    targets = []
    h5_weights = [("format_hdf5_weights", ["net.prototxt", "weights.caffemodel.h5"],
                   "weights.caffemodel.h5"),
                  ("solver_snapshot_resume_hdf5", _DATA + ["snapshot_iter_3.caffemodel.h5"],
                   "snapshot_iter_3.caffemodel.h5")]
    for case, names, seed in h5_weights:
        folder = _copy_case(case, workdir / "caffemodel_h5", names)
        net = Net(folder / "net.prototxt", phase="TEST")
        targets.append(Target(case, (folder / seed).read_bytes(), folder,
                              "fuzzed.caffemodel.h5", _check_weights(net)))
    formats["caffemodel_h5"] = Format("caffemodel_h5", targets, lambda t: hdf5_mutations(
        t.seed, t.folder))

    targets = []
    for case in ("conv_k3_p1", "format_hdf5_weights"):
        folder = _copy_case(case, workdir / "torch", ["net.prototxt", "weights.caffemodel"])
        net = Net(folder / "net.prototxt", weights=folder / "weights.caffemodel", phase="TEST")
        net.save(folder / "weights.pt")
        targets.append(Target(case, (folder / "weights.pt").read_bytes(), folder,
                              "fuzzed.pt", _check_weights(net)))
    formats["torch"] = Format("torch", targets, lambda t: torch_mutations(t.seed))

    for name, cases in RESUME.items():
        suffix = ".solverstate.h5" if name.endswith("h5") else ".solverstate"
        model = ".caffemodel.h5" if name.endswith("h5") else ".caffemodel"
        targets = []
        for case in cases:
            folder = _copy_case(case, workdir / name,
                                _DATA + ["solver.prototxt", f"snapshot_iter_3{model}",
                                         f"snapshot_iter_3{suffix}"])
            # An fcnwild-written state of the same run adds the JSON resume extension.
            writer = Solver(folder / "solver.prototxt")
            writer.param.snapshot_prefix = str(folder / "fcnwild")
            writer.step(3)
            solver = Solver(folder / "solver.prototxt")
            for seed in (f"snapshot_iter_3{suffix}", f"fcnwild_iter_3{suffix}"):
                targets.append(Target(f"{case}/{seed}", (folder / seed).read_bytes(), folder,
                                      f"fuzzed{suffix}", _check_solverstate(solver)))
        mutate = (lambda t: hdf5_mutations(t.seed, t.folder)) if name.endswith("h5") else \
            (lambda t: wire_mutations(t.seed, caffe_pb2.SolverState.DESCRIPTOR))
        formats[name] = Format(name, targets, mutate)
    return formats
