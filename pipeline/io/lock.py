"""One writer per output folder: a lock file that names its holder and survives a crash.

The lock is `OUT/.dwscan.lock`, created exclusively (O_EXCL locally; a conditional PUT,
If-None-Match, on an object store that supports it), holding the host, pid and the process's
start time (so a recycled pid is not mistaken for the holder). A lock whose holder is gone (same
host, no such process) is stale: the next run takes it over and says so. A lock from another host
cannot be checked from here; the message says how to remove it when that run is known dead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dwscan.io.storage import Location, as_location, is_remote

logger = logging.getLogger(__name__)
LOCK_NAME = ".dwscan.lock"


class OutputLocked(RuntimeError):
    """Another run holds the output folder."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/pid/stat); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _holder_alive(holder: dict) -> bool | None:
    """True/False on this host; None when the holder is on another host (unknowable here)."""
    if holder.get("host") != socket.gethostname():
        return None
    start = _process_start(int(holder.get("pid", -1)))
    return start is not None and start == holder.get("start")


@contextmanager
def output_lock(out: str | os.PathLike, command: str = "dwscan") -> Iterator[Path]:
    """Hold OUT's lock for the duration; refuse (OutputLocked) while a live run holds it."""
    out = as_location(out)
    if not is_remote(out):
        out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
          "command": command, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for _ in range(3):
        if not _create_exclusive(path, json.dumps(me).encode()):
            holder = _read_holder(path)
            if not holder and time.time() - _mtime(path) < 5:
                time.sleep(1)  # created this instant by another run, not written yet
                continue
            alive = _holder_alive(holder) if holder else False
            if alive or alive is None:
                raise OutputLocked(
                    f"{out} is in use by another run ({holder.get('command')}, pid "
                    f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}). "
                    f"Wait for it to finish; if you know it is dead, delete {path}.") from None
            logger.warning("WARNING: taking over a stale lock on %s (pid %s on %s died)", out,
                           holder.get("pid"), holder.get("host"))
            path.unlink(missing_ok=True)
            continue
        break
    else:
        raise OutputLocked(f"could not take the lock {path}")
    try:
        yield path
    finally:
        if _read_holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def _create_exclusive(path: Location, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; False when it does."""
    if not is_remote(path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True
    try:
        path.fs.pipe_file(path.path, data, mode="create")  # s3fs: a conditional PUT
        return True
    except FileExistsError:
        return False
    except (TypeError, ValueError, NotImplementedError):  # no conditional writes: best effort
        if path.exists():
            return False
        path.write_bytes(data)
        return True


def _mtime(path: Location) -> float:
    try:
        return float(path.stat().st_mtime)
    except (OSError, AttributeError, TypeError):
        return 0.0


def _read_holder(path: Location) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a lock killed before it was written: treated as stale
