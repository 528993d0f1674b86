"""glibc malloc settings for processes that move batch-sized buffers (the broker, workers, trainers).

Every batch is a fresh multi-megabyte buffer: the pool's gather at the sender, libzmq's receive
buffer at the client. With glibc's defaults such buffers are mmapped, or come from a heap top
that is trimmed as soon as a few of them are freed, so each one is faulted in and zeroed by the
kernel again; on the stream-transport bench that was about a third of the stream's CPU per batch
(docs/benchmarks.md). Keeping allocations below 32 MiB in the heap and freed heap memory up to
256 MiB in the process reuses the same pages instead. The cost is resident memory: up to
``trim`` bytes of freed heap the process keeps.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1     # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_MAX = 32 << 20       # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems


def keep_batch_buffers(mmap_bytes: int = MMAP_MAX, trim_bytes: int = 256 << 20) -> bool:
    """Set the thresholds for this process (later allocations); False where the C library is
    not glibc (musl, macOS) or refuses the values: the process then runs with its defaults."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, trim_bytes))
