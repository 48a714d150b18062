"""Compiling the next cohorts' programs on threads while one trains
(`CompileAhead`), and how many threads a host affords.
"""
from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable

import jax

from normsweep.resources import COMPILE_BYTES, available_memory, host_cores


COMPILE_THREAD = "normsweep-compile"     # the name prefix of the compile-ahead threads


class CompileAhead:
    """Compiles cohorts' programs (`compile(i)` for i in range(count)) on
    `workers` threads, in order, while the launching thread trains those
    already compiled: `next()` hands out a cohort whose programs are ready,
    or, when none is, one that no thread has started (which the caller
    compiles itself), or else waits for the first thread to finish.

    XLA compiles with the GIL released (only tracing and lowering hold it),
    so an accelerator, or a CPU's other cores, keep training meanwhile, and
    several cohorts compile at once on a host with cores to spare. A compilation
    that fails ahead hands out its cohort as not compiled: the cohort's own
    run meets the error again and reports it. `close()` starts no new
    compilation; those in flight finish on their threads (XLA cannot be
    stopped mid-compilation; on a GPU one can take a minute)."""

    def __init__(self, count: int, compile: Callable[[int], float], workers: int):
        self._compile = compile
        self._pending = collections.deque(range(count))
        self._lock = threading.Lock()
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(min(workers, count)):
            threading.Thread(target=self._work, name=f"{COMPILE_THREAD}-{i}").start()

    def _take(self) -> int | None:
        with self._lock:
            if not self._pending:
                return None
            return self._pending.popleft()

    def _work(self) -> None:
        while (i := self._take()) is not None:
            try:
                self._ready.put((i, self._compile(i)))
            except Exception:           # noqa: BLE001 -- the cohort's own run reports it
                self._ready.put((i, None))

    def next(self) -> tuple[int, float | None]:
        """(cohort, its compile seconds, or None when the caller must compile it)."""
        try:
            return self._ready.get_nowait()
        except queue.Empty:
            pass
        i = self._take()
        return (i, None) if i is not None else self._ready.get()

    def close(self) -> None:
        with self._lock:
            self._pending.clear()


def compiling_ahead() -> int:
    """How many compile-ahead threads are still alive (each may be in a
    compilation that cannot be stopped)."""
    return sum(t.name.startswith(COMPILE_THREAD) and t.is_alive()
               for t in threading.enumerate())


def default_compile_workers(cohorts: int) -> int:
    """Threads compiling ahead: one on a CPU, whose cores train too; on an
    accelerator one per host core but the launching thread's, no more than
    the host's available memory holds at `COMPILE_BYTES` each, nor than
    there are cohorts."""
    if jax.default_backend() == "cpu":
        return 1
    cores = host_cores()
    free = available_memory()
    memory = cores if free is None else free // COMPILE_BYTES
    return max(1, min(cores - 1, memory, cohorts))
