"""The fcnwild command keeps freed memory for reuse (tools/allocator.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# glibc's mallinfo2: how many bytes are mmapped (hblkhd) and how big the heap is (arena)
# while a 64 MB buffer is alive and after it is freed.
PROBE = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    from fcnwild.tools.allocator import retain_freed_memory
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "retain" and not retain_freed_memory():
        raise SystemExit("mallopt refused")
    block = np.ones(64 << 20, np.uint8)
    alive = libc.mallinfo2()
    del block
    freed = libc.mallinfo2()
    print(json.dumps({"mmapped": alive.hblkhd, "heap_after_free": freed.arena}))
""")


def allocator_state(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_buffers_come_from_a_heap_that_is_kept_after_free():
    size = 64 << 20
    default = allocator_state("default")
    assert default["mmapped"] >= size and default["heap_after_free"] < size
    retained = allocator_state("retain")
    assert retained["mmapped"] < size and retained["heap_after_free"] >= size
