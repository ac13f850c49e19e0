"""Keep the CPU memory a training step frees for the next step (``train.cpu_allocator``).

CPU tensors come from the C allocator. glibc serves a large block (above its mmap threshold:
128 KiB, raised as blocks are freed up to 32 MiB) from freshly mapped pages and unmaps it on
free, and it trims the top of its heap when that exceeds twice the threshold. A training step
allocates and frees the same activations, casts and gradients every time, so each step faults
all of them in again: on the D-iGPT step of ``benchmarks/train_step.py`` at batch 8 in bf16,
134,000 minor page faults and 0.35 s of system time in a 1.3 s step; at batch 32, 517,000 and
1.7 s of 4.9 s (docs/performance.md).

``reuse`` tells glibc to serve every block from its heap (no mmap) and to trim the heap only when
2 GiB at its top are free: the memory a step frees stays in the process and the next step reuses
it without faults. The peak resident memory stays that of the largest step. Other C libraries are
left as they are.
"""

import ctypes
import functools
import logging
import sys

__all__ = ["reuse_freed_memory"]

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: The largest threshold mallopt takes (an int): the heap is trimmed only when 2 GiB at its top
#: are free. (Larger values through MALLOC_TRIM_THRESHOLD_, or -1, did not stop the trimming
#: with glibc 2.36: a freed 64 MiB block was faulted in again.)
NEVER = 2**31 - 1


@functools.cache
def reuse_freed_memory() -> bool:
    """Set glibc's allocator to keep freed blocks (once per process); False where the C library
    is not glibc or refuses the setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError):  # not glibc (musl has no gnu_get_libc_version)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    version.restype = ctypes.c_char_p
    done = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER) == 1
    log.debug("glibc %s: keep freed memory: %s", version().decode(), done)
    return done
