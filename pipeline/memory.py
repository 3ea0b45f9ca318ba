"""Memory that a stage has freed goes back to the system at once, not when the process exits."""

from __future__ import annotations


def release_free_memory() -> None:
    """Hand freed memory back to the system now: Arrow's pool and glibc's malloc keep freed
    pages for reuse, so a process that read a zoo's kernels holds them until it exits. In the
    300-model zoo benchmark the exiting training worker still held 827 MiB while the driver
    loaded the kernels for the templates stage."""
    import ctypes
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS): its malloc returns pages itself
        pass
