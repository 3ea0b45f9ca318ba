"""Reading the small side files of a checkpoint (config.json, a shard index) whole, safely.

Such a file is read into memory and parsed, so what it may cost is decided before it is read:
it must be a regular file (a FIFO would block the reader forever, `/dev/zero` would never end,
and opening some devices acts on them), and at most `limit` bytes are ever read from it, whatever
its size claims (a file that grows while it is read, a size /proc or a FUSE mount gets wrong).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotARegularFile(OSError):
    """The path names a FIFO, a device, a socket or a folder: it is never opened."""


class FileTooLarge(OSError):
    """The file holds more than the caller's limit; nothing past the limit was read."""


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of `path` (symlinks followed), which must be a regular file of at most `limit`
    bytes: else NotARegularFile or FileTooLarge (FileNotFoundError when there is none).

    The type is checked before the file is opened, and again on the open descriptor (the path
    may have been swapped in between); the open is non-blocking, so even a FIFO swapped in
    cannot hold the reader."""
    _check_regular(os.stat(path).st_mode, path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(fd)
        _check_regular(status.st_mode, path)
        if status.st_size > limit:  # said before anything is read
            raise FileTooLarge(f"{Path(path).name} is over {limit} bytes")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew, or its size was wrong
        raise FileTooLarge(f"{Path(path).name} is over {limit} bytes")
    return data


def _check_regular(mode: int, path: str | os.PathLike) -> None:
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise NotARegularFile(f"{Path(path).name} is {kind}, not a regular file")
