"""dwscan.memory: freed memory goes back at once, call after call."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from dwscan.memory import release_free_memory


class _Node:
    """Holds an array inside a reference cycle, which only the cycle collector frees."""

    def __init__(self) -> None:
        self.data = np.ones(1 << 20)
        self.me = self


def _garbage_cycle() -> weakref.ref:
    return weakref.ref(_Node())


def test_each_call_frees_the_cycles_made_since_the_last_one():
    """release_free_memory freezes what survives it (so the next call does not scan it again):
    cycles that became garbage after a call must still go at the next."""
    gc.disable()  # no automatic collection may free the cycles in between
    try:
        for _ in range(3):
            cycle = _garbage_cycle()
            assert cycle() is not None  # garbage, but only the cycle collector can free it
            release_free_memory()
            assert cycle() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.enable()
