"""Caffe's util/db_lmdb.cpp and util/db_leveldb.cpp: a key-value store read with one cursor.

Records come in key order (both stores compare keys bytewise); ``next`` wraps
from the last record to the first, as Caffe's DataLayer does. The LMDB is
opened read-only without a lock file (``lock=False``), so read-only folders
and stores copied without ``lock.mdb`` open too; LevelDB cannot be opened
read-only and needs a writable folder for its LOCK file.

The bindings are imported when a store is opened, so a missing one is an
error naming the package rather than an import failure of the whole package.
"""
from __future__ import annotations

import importlib
from os import PathLike
from pathlib import Path
from types import ModuleType

from fcnwild.base.errors import DatasetError

LMDB, LEVELDB = "LMDB", "LEVELDB"
_BINDINGS = {LMDB: ("lmdb", "lmdb"), LEVELDB: ("plyvel", "plyvel")}
# Both bindings open a store once per process: readers of one store (a train and a
# test net, say) share the handle, each with its own cursor. Values: [handle, users].
_OPEN: dict[tuple[str, Path], list] = {}


def _binding(backend: str, path: Path) -> ModuleType:
    module, package = _BINDINGS[backend]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DatasetError(f"reading a {backend} store needs the Python package '{package}' "
                           f"(pip install {package}): {err}", file=path) from None


class DatumStore:
    """A Caffe data store opened for reading, its cursor on the first record."""

    def __init__(self, path: str | PathLike, backend: str) -> None:
        self.path, self.backend = Path(path), backend
        if backend not in _BINDINGS:
            raise DatasetError(f"unknown backend {backend!r}; expected LMDB or LEVELDB",
                               file=path)
        if not self.path.is_dir():
            what = "is a file" if self.path.exists() else "does not exist"
            raise DatasetError(f"the {backend} store {what}; expected the store's folder",
                               file=path)
        binding = self._binding = _binding(backend, self.path)
        self._handle_key = (backend, self.path.resolve())
        self._closed = True
        entry = None
        try:
            entry = _OPEN.get(self._handle_key)
            if entry is None:
                entry = _OPEN[self._handle_key] = [
                    binding.open(str(self.path), readonly=True, lock=False) if backend == LMDB
                    else binding.DB(str(self.path), create_if_missing=False), 0]
            if backend == LMDB:
                self._txn = entry[0].begin(buffers=False)
                self._cursor = self._txn.cursor()
            else:
                self._cursor = entry[0].iterator()
        except (binding.Error, OSError) as err:
            if entry is not None and not entry[1]:
                _OPEN.pop(self._handle_key)[0].close()
            raise DatasetError(f"cannot open the {backend} store ({err})",
                               file=path) from None
        entry[1] += 1
        self._closed = False
        self.key: bytes = b""
        self.value: bytes = b""
        if not self.seek_first():
            self.close()
            raise DatasetError(f"the {backend} store holds no records", file=path)

    def seek_first(self) -> bool:
        """Move to the first record; False when the store is empty."""
        if self.backend == LMDB:
            return self._lmdb_here(self._cursor.first())
        self._cursor.seek_to_start()
        return self._leveldb_next()

    def next(self) -> None:
        """Move to the next record, wrapping from the last to the first."""
        try:
            moved = self._lmdb_here(self._cursor.next()) if self.backend == LMDB else \
                self._leveldb_next()
            if not moved:
                self.seek_first()
        except (self._binding.Error, OSError) as err:
            raise DatasetError(f"cannot read the record after {self.key!r} ({err})",
                               file=self.path) from None

    def seek(self, key: bytes) -> bool:
        """Move to the record ``key``; False (cursor unchanged) when there is none."""
        if self.backend == LMDB:
            if not self._cursor.set_key(key):
                self._cursor.set_key(self.key)
                return False
            return self._lmdb_here(True)
        self._cursor.seek(key)
        if self._leveldb_next() and self.key == key:
            return True
        self._cursor.seek(self.key)
        self._leveldb_next()
        return False

    def _lmdb_here(self, valid: bool) -> bool:
        if valid:
            self.key, self.value = self._cursor.key(), self._cursor.value()
        return valid

    def _leveldb_next(self) -> bool:
        try:
            self.key, self.value = next(self._cursor)
        except StopIteration:
            return False
        return True

    def close(self) -> None:
        """Release the cursor (the store itself closes with its last reader)."""
        if self._closed:
            return
        self._closed = True
        if self.backend == LMDB:
            self._txn.abort()
        else:
            self._cursor.close()
        entry = _OPEN[self._handle_key]
        entry[1] -= 1
        if not entry[1]:
            _OPEN.pop(self._handle_key)[0].close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def where(self, key: bytes | None = None) -> str:
        """The store and a record key, for error messages."""
        return f"{self.path} (record {(self.key if key is None else key)!r})"
