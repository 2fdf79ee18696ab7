"""Keep freed tensor memory in the process during training (glibc ``mallopt``), to stop page-fault churn.

Why: torch's CPU allocator is plain ``malloc``.  glibc serves large blocks
with ``mmap`` and returns them with ``munmap`` on free, and trims the heap top
back to the kernel; a training step allocates and frees the same few hundred
activation buffers every time, so every step page-faults all of them in again
and the kernel zeroes each 4 KiB page.  Measured on a Taobao file (batch 256
windows × 2 tasks, window 100): 2.6 M minor page faults and ~5 s of system
time per step (see docs/eval.md, "CPU threads and kernel time").  Raising the
mmap threshold to its maximum (32 MiB on 64-bit) and disabling trimming keeps
those blocks in the heap for reuse.  Blocks above 32 MiB still go through
``mmap``; that is why the quick plans also keep batches and windows small.

The setting is process-wide and only affects reuse of freed memory (peak RSS
is unchanged: the same blocks are live at the peak).  It is applied by the
training entry points only, never on import, and is a no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's HEAP_MAX/2 on 64-bit: larger values are refused
_TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the mallopt settings once; True if glibc accepted them (False elsewhere)."""
    global _applied
    if _applied is not None:
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _applied = False
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    _applied = ok
    return ok
