"""Atomic file writes: a crash never leaves a half-written file under the final name."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import h5py


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    # mkstemp creates 0600 files; give the result the mode a plain open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """An HDF5 file built in memory, then written to ``path`` with ``atomic_write``.

    HDF5 never writes to the disk itself: when one of its writes fails (a full
    disk, noticed as the file is flushed on close), h5py raises RuntimeError and
    the library is left in a state where closing another file later crashes the
    process (seen with h5py 3 on a full tmpfs). Built in memory, the file reaches
    the disk through plain Python writes, which fail with an OSError and leave
    nothing behind. The price: the file's bytes are held in memory while it is
    written.
    """
    image = io.BytesIO()
    with h5py.File(image, "w") as h5:
        yield h5
    with atomic_write(path, "wb") as out:
        out.write(image.getbuffer())
