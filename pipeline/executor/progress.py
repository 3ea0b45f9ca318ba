"""Progress of a stage, for a person at a terminal and for a log nobody watches.

A terminal gets tqdm's live bar. Anything else (`dwscan run > log 2>&1`, `ray job logs`, cron
mail, journald) gets plain lines: every redraw of a bar would become a line there, hundreds per
stage. A line is written when another tenth of the stage is done, or when `interval` seconds
have passed with progress since the last line, and once at the end.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # at most one time-driven line per this many seconds


class StageProgress:
    """`update()` after each finished item; `note` is shown beside the count (ok/failed, MB...)."""

    def __init__(self, total: int, desc: str, unit: str = "model", stream: TextIO | None = None,
                 live: bool | None = None, interval: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.live = _is_terminal(self.stream) if live is None else live
        self.interval, self.clock = interval, clock
        self.done, self.note = 0, ""
        self._start = self._last_time = clock()
        self._last_done = 0
        self._step = max(1, math.ceil(total / 10))
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream) if self.live else None

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.note = note
        if self._bar is not None:
            self._bar.update(n)
            if note is not None:
                self._bar.set_postfix_str(note)
            return
        now = self.clock()
        if (self.done >= self.total or self.done - self._last_done >= self._step
                or now - self._last_time >= self.interval):
            self._write_line(now)

    def _write_line(self, now: float) -> None:
        percent = 100 * self.done / self.total if self.total else 100.0
        note = f"; {self.note}" if self.note else ""
        units = self.unit + ("es" if self.unit.endswith(("s", "sh", "ch", "x")) else "s")
        self.stream.write(f"{self.desc}: {self.done}/{self.total} {units} ({percent:.0f}%) "
                          f"in {now - self._start:.1f}s{note}\n")
        self.stream.flush()
        self._last_time, self._last_done = now, self.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False
