"""Memory policy for long loops: glibc keeps freed memory, and oneDNN keeps few compiled kernels."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from seq2seq import devices
from seq2seq.allocator import reuse_freed_memory

# Ten bf16 products of different shapes, then the first shape again, with oneDNN saying whether it
# found that kernel in its cache. `small_kernel_cache(4)` must take effect although torch is already
# imported, as it is when `seq2seq train` calls it.
PROBE = """
import sys, torch
from seq2seq.allocator import small_kernel_cache
if sys.argv[1] == "small":
    small_kernel_cache(entries=4)
weight = torch.randn(512, 2048, dtype=torch.bfloat16)
for rows in range(1, 11):
    torch.randn(rows, 512, dtype=torch.bfloat16) @ weight
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON_CREATION):
    torch.randn(1, 512, dtype=torch.bfloat16) @ weight
"""


def _first_kernel_found_again(mode: str, **env: str) -> bool:
    clean = {key: value for key, value in os.environ.items() if key != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                            env={**clean, **env})
    lookups = [line for line in result.stdout.splitlines() if ",primitive,create:" in line]
    assert len(lookups) == 1, result.stdout
    return "create:cache_hit" in lookups[0]


@pytest.mark.skipif(not (devices.has_bf16_units(torch.device("cpu")) and torch.backends.mkldnn.is_available()),
                    reason="bf16 products go through oneDNN only on a CPU with bf16 units")
def test_a_small_kernel_cache_forgets_old_shapes_unless_the_user_chose_its_size() -> None:
    assert _first_kernel_found_again("default")
    assert not _first_kernel_found_again("small")
    assert _first_kernel_found_again("small", ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_keeping_freed_memory() -> None:
    assert reuse_freed_memory()
