"""Keep freed memory for reuse instead of handing it back to the kernel (glibc on Linux).

Every training step and decoding batch allocates and frees the same large tensors again. glibc serves
big blocks with mmap and unmaps them when they are freed, so each step pays page faults and the
kernel's zeroing of fresh pages all over again: 12-18% of a Multi30k training step on a 2-core CPU
(bench/README.md). Serving every block from the heap, and never trimming it, makes a freed block
reusable at once. The price: the process never gives memory back, and blocks of ever-changing sizes
fragment the heap, so a long run holds several times what it uses (a Multi30k bf16 run: 4.6 GB after
1,000 updates, against 0.9 GB in use between updates; bench/README.md).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed memory; False where that is not possible (another OS or C library)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
