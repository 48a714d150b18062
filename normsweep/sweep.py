"""`normsweep launch`, as a library: grid → plan → train → store.

    config = normsweep.config.load("sweeps/quickstart.toml")
    summary = normsweep.sweep.launch(config, Path("results/quickstart"))

Each cohort is trained (in memory-budget chunks that share one compiled
program; `work`), written to `DIR/cohorts/<cohort>.nc` atomically, and
skipped on a relaunch. `DIR/sweep.nc` is combined at the end.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import queue
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path
from collections.abc import Callable

import jax
import numpy as np

from normsweep import config as config_mod
from normsweep import calibration, folder, plan, records, store, work
from normsweep.config import Config
from normsweep.errors import GridError, RunError
from normsweep.folder import ResultsFolder
from normsweep.reporting import Reporter, Summary  # noqa: F401 (the launch API's types)


def default_budget() -> int:
    """Bytes a cohort chunk may use: half an accelerator's memory, or a
    quarter of the host's RAM on CPU."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] * 0.5)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.25)


def precheck_folder(root: Path) -> None:
    """Refuses, before anything is written, an --out that cannot be a results
    folder: a file, or a folder with other content and no normsweep marker."""
    if not root.exists() and not root.is_symlink():
        blocked = store.file_on_path(root.parent)
        if blocked is not None:
            raise GridError("--out", "DIR", str(root), f"cannot be made: {blocked} is a file, "
                                                       "not a folder")
        return
    if not root.is_dir():
        raise GridError("--out", "DIR", str(root), "exists and is not a folder")
    if store.is_sweep_folder(root):
        return
    # a launch killed before it marked the folder leaves at most these behind
    leftovers = {".lock", store.MARKER}
    if any(p.name not in leftovers for p in root.iterdir()):
        raise GridError("--out", "DIR", str(root),
                        "is not empty and is not a normsweep results folder (it lacks the "
                        f"{store.MARKER} marker): pick an empty or new folder")


def check_folder(config: Config, root: Path) -> None:
    """Refuses a results folder whose settings would not combine with
    `config`. Call while holding `store.folder_lock(root)`: a launch that
    checks, then writes, under one lock cannot mix with another's cohorts."""
    precheck_folder(root)
    grid_file = root / "grid.toml"
    if not store.is_sweep_folder(root) or not grid_file.exists():
        return
    try:
        previous = config_mod.load(grid_file)
    except GridError as err:
        raise RunError(f"{grid_file} is damaged ({err}); move the folder away or pick another "
                       "--out") from None
    old, new = previous.core_settings(), config.core_settings()
    for key in new:
        if old.get(key) != new[key]:
            raise GridError(config.source, key, new[key],
                            f"the results folder {root} was launched with {key} = {old.get(key)!r};"
                            f" use the same value or another --out")
    # the member axes may gain values (the new networks are trained and
    # combined with the old), never lose one
    held = previous.member_values()
    for axis, values in config.member_values().items():
        dropped = [v for v in held[axis] if v not in values]
        if dropped:
            key = f"grid.{axis}"
            raise GridError(config.source, key, list(values),
                            f"the results folder {root} also holds {axis} = {dropped}: a launch "
                            "may add values to an axis but not drop them; keep them, or use "
                            "another --out")


def check_memory(config: Config, cohorts: list[plan.Cohort], n_records: int,
                 budget: int) -> None:
    """Refuses a grid with a network too large for the memory budget alone,
    naming the grid key whose part of the estimate is largest
    (`plan.member_terms`)."""
    grid = config
    for cohort in cohorts:
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


def make_folder(root: Path) -> list[Path]:
    """Creates `root` and its missing parents; returns those it created
    (deepest first), for `remove_created`."""
    created, p = [], root
    while not p.exists() and not p.is_symlink():
        created.append(p)
        p = p.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        remove_created(created)
        raise store.write_failure(root / "grid.toml", err) from None
    return created


def remove_created(created: list[Path]) -> None:
    """Removes folders `make_folder` created, with the lock file and empty
    cohorts/ a refused launch leaves in them, and nothing else."""
    for made in created:
        for name in (".lock", "cohorts"):
            with contextlib.suppress(OSError):
                p = made / name
                p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        with contextlib.suppress(OSError):
            made.rmdir()


def launch(config: Config, root: Path, *, budget_bytes: int | None = None,
           reporter: Reporter | None = None, scheduler: str | None = None,
           devices: int | None = None, compile_workers: int | None = None,
           command: str | None = None, only: list[dict[str, int]] | None = None) -> Summary:
    """Trains every cohort of `config` not yet in `root`, then writes sweep.nc.

    `scheduler`: None trains here; "local[:N]" or a Dask scheduler address
    sends one task per cohort (see `executors`). `devices`: shard each
    cohort's members across this many local devices (None: all).
    `compile_workers`: threads compiling cohorts ahead while one trains
    (`train_here`; None: `default_compile_workers`, 0: none). `command`: how the launch was
    asked for, recorded in sweep.nc's `command` and `history` (default:
    this process's command line). `only` (`parse_only`): train just the
    cohorts that match one of its selections; sweep.nc is written once every
    cohort of the grid is done."""
    started = time.perf_counter()
    reporter = reporter or Reporter()
    root = Path(root)
    # everything that can be refused from the grid alone, before any write
    precheck_folder(root)
    work.enable_dtype(config)
    budget = budget_bytes or default_budget()
    cohorts = plan.cohorts(config)
    n_records = plan.record_count(config.train.steps, config.record.steps,
                                  config.record.log_points)
    check_memory(config, cohorts, n_records, budget)
    with contextlib.ExitStack() as stack:
        client = None
        if scheduler is not None:
            from normsweep import executors
            client = stack.enter_context(executors.connect(scheduler))
        created = make_folder(root)
        try:
            with ResultsFolder(root).lock():
                check_folder(config, root)     # under the lock: no launch can slip in between
                steps = plan.record_steps(config.train.steps, config.record.steps,
                                          config.record.log_points)
                return _launch_locked(config, root, cohorts, steps, budget, reporter, started,
                                      client, devices, compile_workers, created,
                                      command or shlex.join(sys.argv), only)
        except BaseException:
            if created and not ResultsFolder(root).is_results_folder():
                remove_created(created)     # a refused launch leaves no folder behind
            raise


@dataclasses.dataclass
class Preview:
    """What a launch of `config` into `root` would do (`preview`): nothing is
    written. `train_flop` counts 6·n·P per network-step (forward and
    backward), for the networks still to train; `done` are cohorts whose
    files already hold every network; each cohort's row says how many of its
    networks are `kept` (on disk) and `new` (to train; 0 where `only` leaves
    it out, `selected` False)."""
    root: Path
    cohorts: list[dict]     # per cohort: name, networks, chunks, networks per chunk, memory
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
    check_folder(config, root)
    budget = budget_bytes or default_budget()
    cohorts = plan.cohorts(config)
    n_records = plan.record_count(config.train.steps, config.record.steps,
                                  config.record.log_points)
    check_memory(config, cohorts, n_records, budget)
    rows, flop = [], 0.0
    for c in cohorts:
        chunks = plan.chunking(config, c, n_records, budget)
        kept = kept_networks(config, root, c)
        chosen = selected(c, only)
        new = c.size - kept if chosen else 0    # the time estimate weighs the new networks
        rows.append({"name": c.name, "networks": c.size, "chunks": chunks.count,
                     "per_chunk": chunks.size,
                     "memory": chunks.size * plan.member_bytes(config, c, n_records),
                     "kept": kept, "new": new, "selected": chosen,
                     "program": calibration.program_key(config, c, new or None),
                     "flop": plan.train_flop(config, c) * new / c.size})
        flop += rows[-1]["flop"]
    # done: a file that holds every network of this grid (`store.holds`); a
    # file of an earlier grid this one extends still has networks to train
    done = [r["name"] for r in rows if r["kept"] == r["networks"]]
    todo = [c for c, r in zip(cohorts, rows) if r["selected"] and r["name"] not in done]
    where = next(p for p in (root, *root.parents) if p.exists())
    check_disk(config, where, cohorts, todo, n_records)
    need = disk_needed(config, cohorts, todo, n_records)
    return Preview(root, rows, config.grid.size, config.train.steps, n_records, done,
                   max(r["memory"] for r in rows), budget, need, flop)


# a stored figure for the time estimate: seconds to compile one cohort's programs
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
    `compile_seconds()` per cohort with networks to train."""
    left = sum(1 for row in p.cohorts if row["new"] > 0)
    return p.train_flop / (TRAIN_EFFICIENCY * rate) + left * compile_seconds()


def calibrated_estimate(p: Preview) -> tuple[float, float, float, int] | None:
    """(wall, training, compile seconds, cohorts it rests on) of the launch
    `p` plans, from the times this machine recorded for earlier cohorts
    (`calibration.estimate`); None when it has recorded none."""
    rows = calibration.load(jax.default_backend(), jax.devices()[0].device_kind)
    todo = [(row["program"], row["flop"]) for row in p.cohorts if row["new"] > 0]
    out = calibration.estimate(rows, todo, default_compile_workers(len(todo)))
    return None if out is None else (*out, len(rows))


COMPILE_THREAD = "normsweep-compile"     # the name prefix of the compile-ahead threads
# host memory one compilation may take at its peak: a CPU's measured 170–240
# MiB (widths 256–1024) with room for an accelerator's code generation
COMPILE_BYTES = 1 << 30


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


def train_here(config: Config, root: Path, todo: list[plan.Cohort], steps: np.ndarray,
               budget: int, reporter: Reporter, devices: int | None, workers: int) -> None:
    """Trains the cohorts `todo` in this process, each written as it
    finishes, in the order their programs become ready: `workers` threads
    compile them ahead (`CompileAhead`, `work.compile_cohort`), and the
    launching thread compiles one itself when none is ready and trains it.
    The results are those of a launch compiling each cohort as it starts
    (the same programs run; tested). On an error or Ctrl-C this returns at
    once, starting no new compilation."""
    data = {}           # (n, d) -> the training set: one per size, drawn once

    def data_of(cohort: plan.Cohort):
        size = (cohort.n, cohort.d)
        if size not in data:
            data[size] = work.training_data(config, cohort)
        return data[size]

    for cohort in todo:         # drawn here, before any compile thread needs one
        data_of(cohort)
    ahead = CompileAhead(len(todo), lambda j: work.compile_cohort(
        config, todo[j], *data_of(todo[j]), steps, budget, devices),
        workers) if workers > 0 else None
    try:
        for i in range(len(todo)):
            index, compiled = ahead.next() if ahead is not None else (i, None)
            cohort = todo[index]
            n_chunks = plan.chunking(config, cohort, len(steps), budget).count
            reporter.cohort(cohort.name, config.train.steps * n_chunks)
            work.run_cohort(config, root, cohort, *data_of(cohort), steps, budget,
                            reporter.advance, devices, compiled)
            reporter.done(cohort.name)
    finally:
        if ahead is not None:       # on success nothing is in flight: every cohort was handed out
            ahead.close()


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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 2
    free = available_memory()
    memory = cores if free is None else free // COMPILE_BYTES
    return max(1, min(cores - 1, memory, cohorts))


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


def keep_foreign_sweep(path: Path, reporter: Reporter) -> None:
    """Moves aside (`work.damaged_name`) a sweep.nc that normsweep did not
    write (no `normsweep_version`), or that cannot be read, before a launch
    writes its own: a folder that only looks like a results folder (a stray
    marker, a layout of an earlier version) loses nothing."""
    if not path.exists() and not path.is_symlink():
        return
    attrs = store.file_attrs(path)
    if attrs is not None and "normsweep_version" in attrs and "config_toml" in attrs:
        return
    aside = work.damaged_name(path)
    os.replace(path, aside)
    reporter.warn(f"{path} was not written by normsweep or cannot be read: moved to "
                  f"{aside.name}, and a new sweep.nc written")


def earlier_history(path: Path) -> str:
    """The `history` of the sweep.nc a launch is about to replace ("" if none
    or unreadable): each launch into a folder adds its line."""
    try:
        with store.open_checked(path) as ds:
            return str(ds.attrs.get("history", ""))
    except RunError:
        return ""


def parse_only(config: Config, items: list[str]) -> list[dict[str, int]]:
    """`--only` selections ("width=256,depth=3"; a cohort matches one when it
    has every value named), checked against the grid's axes."""
    out = []
    for item in items:
        selection = {}
        for pair in item.split(","):
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or key not in ("width", "depth"):
                raise GridError("--only", pair.strip() or item, item,
                                "must be width=M and/or depth=L, comma-separated "
                                "(e.g. width=256,depth=3)")
            axis = getattr(config.grid, key)
            try:
                number = int(value)
            except ValueError:
                number = None
            if number not in axis:
                raise GridError("--only", f"grid.{key}", value.strip(),
                                f"must be one of the grid's values {list(axis)}")
            if key in selection:
                raise GridError("--only", key, item,
                                f"names {key} twice: a cohort has one {key}; give each "
                                "selection its own --only (--only width=8 --only width=12)")
            selection[key] = number
        out.append(selection)
    return out


def selected(cohort: plan.Cohort, only: list[dict[str, int]] | None) -> bool:
    return only is None or any(all(getattr(cohort, k) == v for k, v in s.items()) for s in only)


def _launch_locked(config, root, cohorts, steps, budget, reporter, started,
                   client, devices, compile_workers, created, command, only) -> Summary:
    place = ResultsFolder(root)
    place.subfolder("cohorts", create=False)    # a link would send writes elsewhere
    if place.is_results_folder():
        place.remove_stale_temporaries()
    known = {store.cohort_path(root, c).name for c in cohorts}
    for stray in sorted((root / "cohorts").glob("*.nc")):
        if stray.name not in known:
            reporter.warn(f"{stray} is not a cohort of this grid: left alone, not combined")
    states = {c.name: work.settled_state(config, c, root, reporter.warn)
              for c in cohorts if selected(c, only)}
    todo = [c for c in cohorts if c.name in states and states[c.name].state != folder.DONE]
    skipped = [name for name, s in states.items() if s.state == folder.DONE]
    kept = {name: s.kept for name, s in states.items()}
    counts = {"new": sum(c.size - kept[c.name] for c in todo), "kept": sum(kept.values())}
    check_disk(config, root, cohorts, todo, len(steps))
    place.subfolder("cohorts")
    place.mark()
    # a grow changes grid.toml only once every grown network is on disk; until
    # then GROW_FILE records it, and the folder reads as the grid it held
    grid_file, pending = place.grid_file, place.grow_file
    growing = grid_file.exists() and store.recorded_fingerprint(grid_file) != config.fingerprint()
    place.write_text(pending if growing else grid_file, config.text)
    work.enable_compilation_cache()
    # work in FLOPs (`plan.train_flop`), so that the time left weighs each cohort by its cost
    reporter.start(len(cohorts), len(skipped), {c.name: plan.train_flop(config, c) for c in todo})
    if client is not None and todo:
        from normsweep import executors
        executors.run_dask(client, config, root,
                           [(cohorts.index(c), c) for c in todo], budget, reporter.done)
    elif todo:
        train_here(config, root, todo, steps, budget, reporter, devices,
                   default_compile_workers(len(todo)) if compile_workers is None
                   else compile_workers)

    place.remove_stale_temporaries()   # left by Dask workers killed mid-write
    left = [c for c in cohorts if not selected(c, only)
            and not work.cohort_done(config, c, root, reporter.warn)]
    if left:            # a part of the grid, by `only`: the rest stays to do
        files = [store.read_cohort_of(config, store.cohort_path(root, c))
                 for c in cohorts if c not in left]
        at = np.concatenate([ds["diverged_at"].values.ravel() for ds in files])
        return Summary(root, len(cohorts), [c.name for c in todo], skipped, len(at),
                       int((at >= 0).sum()), time.perf_counter() - started,
                       [c.name for c in left], **counts)
    sweep = store.combine([store.read_cohort_of(config, store.cohort_path(root, c))
                           for c in cohorts])
    if growing:                 # every grown network is on disk: the grow is done
        place.write_text(grid_file, config.text)
    sweep.attrs["command"] = command
    keep_foreign_sweep(root / "sweep.nc", reporter)
    sweep.attrs["history"] = "\n".join(filter(None, [
        earlier_history(root / "sweep.nc"),
        f"{records.now()} normsweep {records.package_version('normsweep')}: {command}"]))
    place.write_netcdf(place.sweep_file, sweep)
    if growing or store.recorded_fingerprint(pending) == config.fingerprint():
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
    diverged = int((sweep["diverged_at"] >= 0).sum())
    networks = int(sweep["diverged_at"].size)
    return Summary(root, len(cohorts), [c.name for c in todo], skipped, networks, diverged,
                   time.perf_counter() - started, **counts)
