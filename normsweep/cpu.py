"""What XLA's CPU backend needs from normsweep, and nothing else.

XLA's CPU runtime runs a program's independent operations at once on its
thread pool (the "concurrency-optimized scheduler"). The spectra program
(`train.spectra_cohort`: batched LAPACK SVDs of every layer, of its change
and of its gradient) then deadlocks with jaxlib 0.10.2: every thread waits
on a futex and none runs. Seen on 2 cores with sweeps/seed.toml's
width-64, depth-4 cohort, six members or more, every time; a per-program
compiler option does not reach it, so the flag goes into XLA_FLAGS before
the backend starts. The scheduler only orders independent operations: the
numbers are the same.
"""
from __future__ import annotations

import os

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def configure() -> None:
    """Adds `FLAG` to XLA_FLAGS (unless the user set that option), for the
    backend that starts after this. Other backends ignore xla_cpu options."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
