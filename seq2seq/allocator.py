"""Memory for long loops: glibc keeps freed memory for reuse, and oneDNN keeps few compiled kernels.

Every training step and decoding batch allocates and frees the same large tensors again. glibc serves
big blocks with mmap and unmaps them when they are freed, so each step pays page faults and the
kernel's zeroing of fresh pages all over again: 12-18% of a Multi30k training step on a 2-core CPU
(bench/README.md). Serving every block from the heap, and never trimming it, makes a freed block
reusable at once. The price: the process never gives memory back, so whatever fragments the heap stays
held. oneDNN's cache of compiled kernels did (`small_kernel_cache`, which `train` calls too).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
KERNEL_CACHE_ENTRIES = 64  # oneDNN's default is 1,024


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed memory; False where that is not possible (another OS or C library)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def small_kernel_cache(entries: int = KERNEL_CACHE_ENTRIES) -> None:
    """Let oneDNN (bf16 products, the encoder's LSTM) keep `entries` compiled kernels instead of 1,024, unless
    the user set ONEDNN_PRIMITIVE_CACHE_CAPACITY. Call it before the first product: oneDNN reads it once.

    Every batch brings new shapes, so a training step compiles about 24 kernels and the cache evicts as many,
    each leaving a hole of about 100 KB between live tensors. Over 1,000 bf16 Multi30k updates, `train`
    peaked at 5.0 GB with 1,024 entries and at 3.1 GB with 64, and ran faster (bench/README.md). A step
    reuses the kernels it made itself, rarely older ones: with 64 entries it compiled 29 instead of 24.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(entries))
