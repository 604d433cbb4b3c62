"""Keep the memory that CPU tensors free, so the next tensors reuse it instead of faulting it in.

glibc's malloc hands every block above its mmap threshold (a few MiB once it has adapted) straight
back to the operating system when it is freed, and trims the heap's free top as well. A training
step or an inference batch frees and allocates the same large activations over and over, so every
new tensor's pages are faulted in afresh: on the 2-core machine here that costs about 13 % of a
``tiny`` MAE training step and about 8 % of ``xecbench inpaint`` (measured side by side with
``farm-bench``). :func:`keep_freed_memory` tells glibc (``mallopt``) to serve blocks up to 32 MiB
from its heap and to keep up to 1 GiB of free memory there: freed blocks are reused in place.

Values are bit for bit the same; what changes is the time, and that the process's resident memory
stays near its peak instead of shrinking between steps (budget for the peak where jobs have a memory
limit). It is for the whole process and for good: the Trainer, ``xecbench inpaint`` and the command
line call it. Linux with glibc only (elsewhere it does nothing; under a preloaded allocator such as
jemalloc it changes nothing). Set the environment variable ``XECBENCH_KEEP_FREED_MEMORY=0`` before
the first call to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring). Returns
    whether they are set (False: not glibc, or turned off by ``XECBENCH_KEEP_FREED_MEMORY=0``)."""
    global _done
    if _done:
        return True
    if os.environ.get("XECBENCH_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    _done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _done
