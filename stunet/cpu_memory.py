"""Keeping freed memory for reuse on Linux CPUs.

glibc serves every allocation above 32 MiB with a fresh ``mmap`` and returns it to the kernel when freed, so each
large temporary of a 3D network is zero-filled page by page again on every forward pass. On the 2-core machines of
benchmarks/forward.py that made STU-Net-S's forward pass at 128³ 1.6-2.3x slower (3.2 s instead of 1.9 s in the
latest run). ``reuse_freed_memory()`` makes glibc take large blocks from its heap and keep up to 2 GiB of freed memory
for reuse: faster, at the cost of a process that holds on to its peak memory. A ``stunet.Segmenter`` whose network
runs on the CPU calls it (so ``stunet-predict`` and ``Segmenter.predict_folder`` do), and CPU trainings set it for
their duration; scripts that run networks of ``stunet.create_model`` on a CPU call it themselves, once, first::

    from stunet.cpu_memory import reuse_freed_memory
    reuse_freed_memory()
    net = stunet.create_model("stunet_small").eval()
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# glibc's documented defaults (M_MMAP_MAX 65536, M_TRIM_THRESHOLD 128 KiB)
_DEFAULTS = {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024}
_REUSE = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2 ** 31 - 1}


def _mallopt(settings: dict) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(bool(libc.mallopt(option, value)) for option, value in settings.items())
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False


def reuse_freed_memory() -> bool:
    """Configure glibc's allocator as above, for the rest of the process; False (and nothing changed) where that is
    not glibc on Linux."""
    return _mallopt(_REUSE)


def release_freed_memory() -> bool:
    """Give the pages of freed heap memory back to the kernel now (glibc's ``malloc_trim``), keeping the heap's
    layout: between the phases of a prediction, so that memory one phase freed is not counted resident during the
    next, whose own allocations fault their pages in once. False where that is not glibc on Linux."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def freed_memory_reused():
    """:func:`reuse_freed_memory` for the duration of a block, then glibc's defaults again (for code that runs inside
    other people's processes, such as the trainers)."""
    changed = reuse_freed_memory()
    try:
        yield changed
    finally:
        if changed:
            _mallopt(_DEFAULTS)
