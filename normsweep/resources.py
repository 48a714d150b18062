"""What a launch asks of the machine, checked before anything runs: the
memory budget of a cohort chunk, the memory one network needs, the disk the
files need, the host memory available, and the matmul rate that the dry
run's uncalibrated estimate rests on.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax

from normsweep import plan, store
from normsweep.config import Config
from normsweep.errors import GridError


def default_budget() -> int:
    """Bytes a cohort chunk may use: half an accelerator's memory, or a
    quarter of the host's RAM on CPU."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] * 0.5)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.25)


def check_memory(config: Config, cohorts: list[plan.Cohort], n_records: int,
                 budget: int, only: list[dict[str, int]] | None = None) -> None:
    """Refuses a grid with a network too large for the memory budget alone,
    naming the grid key whose part of the estimate is largest
    (`plan.member_terms`). Only the cohorts a launch trains (`only`,
    `plan.selected`) need to fit: those it leaves out may be launched on
    another machine."""
    grid = config
    for cohort in (c for c in cohorts if plan.selected(c, only)):
        config = plan.cohort_config(grid, cohort)
        terms = plan.member_terms(config, cohort, n_records)
        need = sum(terms.values())
        if need > budget:
            key = max(terms, key=terms.get)
            value = {"data.d": config.data.d, "data.n": config.data.n,
                     "grid.width": cohort.width, "record.steps": config.record.steps}[key]
            what = {"data.d": f"the input layer ({config.data.d} × {cohort.width})",
                    "grid.width": f"the weights of width {cohort.width}",
                    "data.n": f"the activations of {config.data.n} training points",
                    "record.steps": f"{n_records} recorded steps"}[key]
            raise GridError(config.source, key, value,
                            f"one network of width {cohort.width} and depth "
                            f"{cohort.depth} needs about "
                            f"{store.size_text(need)}, mostly for {what}: more than the memory "
                            f"budget {store.size_text(budget)} (--memory-budget)")


def disk_needed(config: Config, cohorts: list[plan.Cohort], todo: list[plan.Cohort],
                n_records: int) -> int:
    """Bytes a launch still writes: the cohort files of `todo` and sweep.nc
    (all `cohorts`); an upper estimate (compression only shrinks them)."""
    word = plan.DTYPE_BYTES[config.train.dtype]
    layers = max(config.grid.depth)

    def size(cohort: plan.Cohort) -> int:
        out = cohort.size * n_records * (7 * layers + 2) * word
        if config.record.weights:
            terms = plan.member_terms(config, cohort, 0)      # 8 words per weight
            out += cohort.size * (terms["data.d"] + terms["grid.width"]) // 4
        return out

    return sum(size(c) for c in todo) + sum(size(c) for c in cohorts)


def check_disk(config: Config, root: Path, cohorts: list[plan.Cohort], todo: list[plan.Cohort],
               n_records: int) -> None:
    """Refuses a launch whose remaining files (`disk_needed`) would not fit on
    the disk, before anything runs."""
    need = disk_needed(config, cohorts, todo, n_records)
    free = shutil.disk_usage(root).free
    if need > free:
        raise GridError(config.source, "grid", f"{config.grid.size} networks",
                        f"the {len(todo)} cohorts left and sweep.nc need about "
                        f"{store.size_text(need)} and {root} has {store.size_text(free)} free")


# host memory one compilation may take at its peak: a CPU's measured 170–240
# MiB (widths 256–1024) with room for an accelerator's code generation
COMPILE_BYTES = 1 << 30


def host_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS
    says; else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 2


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation: Linux's
    MemAvailable (free memory and what the page cache would give back),
    else the free pages; None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
