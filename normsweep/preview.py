"""`normsweep launch --dry-run`: what a launch would do and how long it
would take (from this machine's recorded cohort times, `calibration`, or
else its matmul rate), refused as the launch would refuse it; nothing is
written.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax

from normsweep import calibration, folder, plan
from normsweep.compile_ahead import default_compile_workers
from normsweep.config import Config
from normsweep.errors import RunError
from normsweep.folder import ResultsFolder
from normsweep.resources import check_disk, check_memory, default_budget, disk_needed


@dataclasses.dataclass
class Preview:
    """What a launch of `config` into `root` would do (`preview`): nothing is
    written. `train_flop` counts 6·n·P per network-step (forward and
    backward), for the networks still to train; `done` are cohorts whose
    files already hold every network; each cohort's row says how many of its
    networks are `kept` (on disk) and `new` (to train; 0 where `only` leaves
    it out, `selected` False)."""
    root: Path
    cohorts: list[dict]     # per cohort: name, networks, chunks, networks per chunk, memory,
                            # and what trains its new networks (program, flop, work)
    networks: int
    steps: int
    records: int
    done: list[str]
    memory_bytes: int       # the largest chunk's estimate
    budget_bytes: int
    disk_bytes: int         # what is left to write
    train_flop: float


def kept_networks(config: Config, root: Path, cohort: plan.Cohort) -> int:
    """How many of `cohort`'s networks are already on disk in `root`
    (`ResultsFolder.cohort_state`): a damaged file counts none, as the launch
    recomputes it whole; a file of other settings is refused, as the launch
    refuses it."""
    state = ResultsFolder(root).cohort_state(config, cohort)
    if state.state == folder.FOREIGN:
        raise RunError(state.reason)
    return state.kept


def preview(config: Config, root: Path, *, budget_bytes: int | None = None,
            only: list[dict[str, int]] | None = None) -> Preview:
    """The plan of a launch, with its estimates, refused as the launch would
    refuse it (folder, settings and axes against the folder's grid, memory,
    disk); reads `root` and writes nothing. `only` as `launch`'s: the
    cohorts it leaves out are listed as not selected and cost nothing."""
    root = Path(root)
    if only is not None:
        plan.check_only(config, only)
    folder.check_folder(config, root)
    budget = budget_bytes or default_budget()
    cohorts = plan.cohorts(config)
    n_records = plan.record_count(config.train.steps, config.record.steps,
                                  config.record.log_points)
    check_memory(config, cohorts, n_records, budget, only)
    rows, flop = [], 0.0
    timings = calibration.load(jax.default_backend(), jax.devices()[0].device_kind)
    for c in cohorts:
        chunks = plan.chunking(config, c, n_records, budget)
        kept = kept_networks(config, root, c)
        chosen = plan.selected(c, only)
        new = c.size - kept if chosen else 0    # the time estimate weighs the new networks
        # what trains them: a grow's chunks, padded as the launch pads them
        grow = 0 < new < c.size
        trains = calibration.grow_chunking(config, c, n_records, budget, new, kept, timings) \
            if grow else chunks
        rows.append({"name": c.name, "networks": c.size, "chunks": chunks.count,
                     "per_chunk": chunks.size,
                     "memory": chunks.size * plan.member_bytes(config, c, n_records),
                     "kept": kept, "new": new, "selected": chosen,
                     "program": calibration.program_key(config, c, trains.size),
                     "flop": plan.train_flop(config, c)
                     * (trains.size * trains.count if grow else new) / c.size,
                     "work": plan.record_work(config, c) | {"chunks": trains.count}
                     | plan.chunk_size(config, c, trains.size)})
        flop += rows[-1]["flop"]
    # done: a file that holds every network of this grid (`store.holds`); a
    # file of an earlier grid this one extends still has networks to train
    done = [r["name"] for r in rows if r["kept"] == r["networks"]]
    todo = [c for c, r in zip(cohorts, rows) if r["selected"] and r["name"] not in done]
    where = next(p for p in (root, *root.parents) if p.exists())
    check_disk(config, where, cohorts, todo, n_records)
    need = disk_needed(config, cohorts, todo, n_records)
    return Preview(root, rows, config.grid.size, config.train.steps, n_records, done,
                   max(r["memory"] for r in rows if r["selected"]), budget, need, flop)


# a stored figure for the time estimate: seconds to compile one cohort's programs
# (its init, segment and spectra programs: `program_key`'s compiled program)
COMPILE_SECONDS = {"cpu": 5.0, "gpu": 45.0, "tpu": 45.0}


TRAIN_EFFICIENCY = 0.5          # the estimate assumes half the machine's matmul rate


def matmul_rate() -> float:
    """FLOP/s of a jitted float32 matmul at full precision on the default
    device (1024² on a CPU, 4096² elsewhere), best of 3: a calibration for
    time estimates."""
    size = 1024 if jax.default_backend() == "cpu" else 4096
    a = jax.numpy.ones((size, size), jax.numpy.float32)
    f = jax.jit(lambda x: jax.numpy.matmul(x, x, precision="highest"))
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def compile_seconds() -> float:
    """The stored figure of one cohort's compile time on this backend."""
    return COMPILE_SECONDS.get(jax.default_backend(), 45.0)


def estimate_seconds(p: Preview, rate: float) -> float:
    """An uncalibrated estimate of a launch's wall time: the training FLOPs
    of its new networks at `TRAIN_EFFICIENCY` of `rate`, and
    `compile_seconds()` per program that cohorts with networks to train run."""
    return p.train_flop / (TRAIN_EFFICIENCY * rate) + programs_left(p) * compile_seconds()


def programs_left(p: Preview) -> int:
    """How many programs the cohorts with networks to train compile: one
    per width, or per cohort (`train.programs`)."""
    return len({calibration.compiled(row["program"]) for row in p.cohorts if row["new"] > 0})


def calibrated_estimate(p: Preview) -> tuple[float, float, float, int, int] | None:
    """(wall, training, compile seconds, cohorts it rests on, cohorts of
    shapes not trained here) of the launch `p` plans, from the times this
    machine recorded for earlier cohorts (`calibration.estimate`); None when
    it has recorded none."""
    rows = calibration.load(jax.default_backend(), jax.devices()[0].device_kind)
    todo = [(row["program"], row["flop"], row["work"]) for row in p.cohorts if row["new"] > 0]
    out = calibration.estimate(rows, todo, default_compile_workers(len(todo)))
    return None if out is None else (*out[:3], len(rows), out[3])
