"""`normsweep launch`, as a library: grid → plan → train → store.

    config = normsweep.config.load("sweeps/quickstart.toml")
    summary = normsweep.launch.launch(config, Path("results/quickstart"))

Each cohort is trained (in memory-budget chunks that share one compiled
program), written to `DIR/cohorts/<cohort>.nc` atomically, and skipped on a
relaunch. `DIR/sweep.nc` is combined at the end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from normsweep import config as config_mod
from normsweep import plan, store, train
from normsweep.config import Config
from normsweep.data import sphere_data
from normsweep.errors import GridError, RunError


@dataclasses.dataclass
class Summary:
    """What a launch did."""
    root: Path
    cohorts: int
    trained: list[str]
    skipped: list[str]
    networks: int
    diverged: int
    seconds: float


class Reporter:
    """Progress callbacks; the default does nothing (see cli.RichReporter)."""

    def start(self, cohorts: int, skipped: int) -> None: ...
    def cohort(self, name: str, steps: int) -> None: ...
    def advance(self, steps: int) -> None: ...
    def done(self, name: str) -> None: ...

    def warn(self, message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=2)


def default_budget() -> int:
    """Bytes a cohort chunk may use: half an accelerator's memory, or a
    quarter of the host's RAM on CPU."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] * 0.5)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.25)


def program_for(config: Config, cohort: plan.Cohort) -> train.Program:
    return train.Program(dims=cohort.dims(config.data.d, config.data.k), init=config.model.init,
                         output=config.model.output, loss=config.train.loss,
                         dtype=config.train.dtype, power_iters=config.record.power_iters,
                         sharpness_every=config.record.sharpness,
                         sharpness_iters=config.record.sharpness_iters,
                         jacobian_every=config.record.jacobian_norm,
                         parametrization=config.model.parametrization,
                         precision=config.train.matmul_precision,
                         decay=any(wd > 0 for wd in config.weight_decays()),
                         ntk_every=config.record.ntk_eigs, ntk_points=config.record.ntk_points)


def training_data(config: Config):
    dtype = jnp.dtype(config.train.dtype)
    return sphere_data(plan.data_key(config), config.data.n, config.data.d, config.data.k, dtype)


def enable_dtype(config: Config) -> None:
    if config.train.dtype == "float64":
        jax.config.update("jax_enable_x64", True)


def enable_compilation_cache() -> None:
    """A persistent JAX compilation cache, so that relaunching a grid (or a
    Dask worker meeting a cohort shape again) compiles nothing it compiled
    before. Directory: $NORMSWEEP_JAX_CACHE, default ~/.cache/normsweep/jax;
    set NORMSWEEP_JAX_CACHE=off to opt out."""
    where = os.environ.get("NORMSWEEP_JAX_CACHE", "")
    if where.lower() in ("off", "0", "false", "no"):
        return
    path = Path(where) if where else Path.home() / ".cache" / "normsweep" / "jax"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # an unwritable cache is no reason to fail a sweep
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def check_folder(config: Config, root: Path) -> None:
    """Refuses a results folder whose settings would not combine with `config`."""
    grid_file = root / "grid.toml"
    if not root.exists():
        return
    if not root.is_dir():
        raise GridError("--out", "DIR", str(root), "exists and is not a folder")
    if not grid_file.exists():
        # a launch that died before writing grid.toml leaves only these behind
        leftovers = {".lock", "cohorts"}
        if any(p.name not in leftovers or (p.is_dir() and any(p.iterdir()))
               for p in root.iterdir()):
            raise GridError("--out", "DIR", str(root),
                            "is not empty and holds no grid.toml: not a normsweep results folder")
        return
    try:
        previous = config_mod.load(grid_file)
    except GridError as err:
        raise RunError(f"{grid_file} is damaged ({err}); move the folder away or pick another "
                       "--out") from None
    old, new = previous.settings(), config.settings()
    for key in new:
        if old.get(key) != new[key]:
            raise GridError(config.source, key, new[key],
                            f"the results folder {root} was launched with {key} = {old.get(key)!r};"
                            f" use the same value or another --out")


def cohort_done(config: Config, cohort: plan.Cohort, path: Path,
                warn: Callable[[str], None]) -> bool:
    """True when `path` is a finished cohort of this grid's settings.

    A file that cannot be read (truncated, corrupt) is renamed to
    `<name>.nc.damaged`, reported, and recomputed; a readable file of another
    grid or cohort is refused (it is never silently combined)."""
    if not path.exists():
        return False
    try:
        ds = store.read_cohort(path)
    except RunError as err:
        damaged = path.with_name(path.name + ".damaged")
        os.replace(path, damaged)
        warn(f"{err}; moved to {damaged.name} and recomputing")
        return False
    if ds.attrs.get("config_fingerprint") != config.fingerprint():
        raise RunError(f"{path} was written with other settings (fingerprint "
                       f"{ds.attrs.get('config_fingerprint')}, this grid {config.fingerprint()}); "
                       "move it away to recompute it")
    if ds.sizes.get("width") != 1 or int(ds["width"][0]) != cohort.width \
            or int(ds["depth"][0]) != cohort.depth:
        raise RunError(f"{path} does not hold the cohort width={cohort.width}, "
                       f"depth={cohort.depth}; move it away to recompute it")
    return True


def size_text(n: int) -> str:
    """A byte count in the largest binary unit that keeps it ≥ 1 (3.2 MiB)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def check_resources(config: Config, root: Path, cohorts: list[plan.Cohort], n_records: int,
                    budget: int) -> None:
    """Refuses a grid whose smallest compiled program (`Program.min_members`
    networks) exceeds the memory budget, or whose results would not fit on the
    disk (an estimate, before anything runs)."""
    for cohort in cohorts:
        fewest = program_for(config, cohort).min_members()
        need = fewest * plan.member_bytes(config, cohort, n_records)
        if need > budget:
            raise GridError(config.source, "grid.width", cohort.width,
                            f"{fewest} networks of width {cohort.width} and depth "
                            f"{cohort.depth} (the fewest one program trains) need about "
                            f"{size_text(need)}, more than the memory budget "
                            f"{size_text(budget)} (--memory-budget)")
    word = plan.DTYPE_BYTES[config.train.dtype]
    layers = max(config.grid.depth)
    disk = 0
    for cohort in cohorts:
        disk += 2 * cohort.size * n_records * (7 * layers + 2) * word   # cohort file + sweep.nc
        if config.record.weights:
            disk += 2 * cohort.size * plan.member_bytes(config, cohort, 0) // 4
    parent = root
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if disk > free:
        raise GridError(config.source, "grid", f"{config.grid.size} networks",
                        f"the results need about {size_text(disk)} and {parent} has "
                        f"{size_text(free)} free")


class _Members:
    """A cohort's members as `train.train_members` takes them, in chunks of
    equal size (one compilation)."""

    def __init__(self, config: Config, cohort: plan.Cohort, n_records: int, budget_bytes: int):
        self.program = program_for(config, cohort)
        self.chunks = plan.chunking(config, cohort, n_records, budget_bytes).slices(cohort.size)
        self.lrs, seeds = cohort.member_lr(), cohort.member_seed()
        self.wds, self.params = cohort.member_weight_decay(), cohort.member_parametrization()
        self.init_keys, self.power_keys = plan.member_keys(seeds)

    def arguments(self, idx: np.ndarray) -> tuple[tuple, dict]:
        """(lrs, init_keys, power_keys) and the keyword arguments of chunk `idx`."""
        return ((self.lrs[idx], self.init_keys[idx], self.power_keys[idx]),
                {"weight_decay": self.wds[idx], "parametrization": self.params[idx]})


def compile_cohort(config: Config, cohort: plan.Cohort, x, y, steps: np.ndarray,
                   budget_bytes: int, devices: int | None = 1) -> None:
    """Compiles the programs `train_cohort` will run for `cohort`, running
    nothing (`train.compile_members`): its chunks all share one shape."""
    members = _Members(config, cohort, len(steps), budget_bytes)
    args, kwargs = members.arguments(members.chunks[0])
    train.compile_members(members.program, x, y, *args, steps, devices, **kwargs)


def train_cohort(config: Config, cohort: plan.Cohort, x, y, steps: np.ndarray,
                 budget_bytes: int, on_steps: Callable[[int], None] | None = None,
                 devices: int | None = 1) -> train.Trajectory:
    """All members of a cohort, in chunks of equal size (one compilation)."""
    members = _Members(config, cohort, len(steps), budget_bytes)
    parts = []
    for idx in members.chunks:
        args, kwargs = members.arguments(idx)
        parts.append(train.train_members(members.program, x, y, *args, steps,
                                         config.record.weights, on_steps, devices, **kwargs))
    keep = cohort.size

    def cat(arrays):
        return np.concatenate(arrays, axis=0)[:keep]

    records = {k: cat([p.records[k] for p in parts]) for k in parts[0].records}
    weights = {}
    if config.record.weights:
        for which in ("initial", "final"):
            weights[which] = [cat([getattr(p, which)[l] for p in parts])
                              for l in range(cohort.depth)]
    return train.Trajectory(records, cat([p.diverged_at for p in parts]), **weights)


def run_cohort(config: Config, root: Path, cohort: plan.Cohort, x, y, steps: np.ndarray,
               budget: int, on_steps: Callable[[int], None] | None,
               devices: int | None = 1) -> int:
    """Trains one cohort and writes its file; returns how many members diverged."""
    traj = train_cohort(config, cohort, x, y, steps, budget, on_steps, devices)
    ds = store.cohort_dataset(config, cohort, steps, traj, np.asarray(x), np.asarray(y))
    groups = {"weights": store.weights_dataset(cohort, traj)} if config.record.weights else None
    store.write_netcdf(store.cohort_path(root, cohort), ds, groups)
    return int((traj.diverged_at >= 0).sum())


def launch(config: Config, root: Path, *, budget_bytes: int | None = None,
           reporter: Reporter | None = None, scheduler: str | None = None,
           devices: int | None = None, prefetch: int | None = None) -> Summary:
    """Trains every cohort of `config` not yet in `root`, then writes sweep.nc.

    `scheduler`: None trains here; "local[:N]" or a Dask scheduler address
    sends one task per cohort (see `executors`). `devices`: shard each
    cohort's members across this many local devices (None: all).
    `prefetch`: how many cohorts compile ahead while one trains (`train_here`;
    None: `default_prefetch()`, 0: none)."""
    started = time.perf_counter()
    reporter = reporter or Reporter()
    root = Path(root)
    check_folder(config, root)
    enable_dtype(config)
    budget = budget_bytes or default_budget()
    cohorts = plan.cohorts(config)
    steps = plan.record_steps(config.train.steps, config.record.steps, config.record.log_points)
    check_resources(config, root, cohorts, len(steps), budget)
    try:
        (root / "cohorts").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create {root / 'cohorts'}: {err.strerror or err}") from None
    enable_compilation_cache()
    with store.folder_lock(root):
        return _launch_locked(config, root, cohorts, steps, budget, reporter, started, scheduler,
                              devices, prefetch)


COMPILE_THREAD = "normsweep-compile"     # the name prefix of train_here's threads


def train_here(config: Config, root: Path, todo: list[plan.Cohort], steps: np.ndarray,
               budget: int, reporter: Reporter, devices: int | None, prefetch: int) -> None:
    """Trains the cohorts `todo` in this process, one after another, each
    written as it finishes.

    With `prefetch` = p > 0, p background threads compile the programs of
    the next p cohorts (`compile_cohort`) while one trains: XLA compiles a
    program on one host core, so an accelerator, or the other cores, keep
    training meanwhile, and a cohort starts with nothing left to compile.
    The results are those of a launch without it (the same programs run;
    tested). A failed compilation ahead is not reported: the cohort's own
    run meets the error again and reports it. On an error or Ctrl-C this
    returns at once: compilations in flight finish on their threads (XLA
    cannot be stopped mid-compilation; on a GPU one can take a minute), and
    none not yet started begins.
    """
    x, y = training_data(config)
    ahead = ThreadPoolExecutor(prefetch, thread_name_prefix=COMPILE_THREAD) \
        if prefetch > 0 else None
    compiling: dict[int, Future] = {}
    try:
        for i, cohort in enumerate(todo):
            for j in range(i + 1, min(i + 1 + prefetch, len(todo))):
                if j not in compiling:
                    compiling[j] = ahead.submit(compile_cohort, config, todo[j], x, y, steps,
                                                budget, devices)
            if i in compiling:
                # before this cohort's calls, which would otherwise compile it a second time
                with contextlib.suppress(Exception):
                    compiling.pop(i).result()
            n_chunks = plan.chunking(config, cohort, len(steps), budget).count
            reporter.cohort(cohort.name, config.train.steps * n_chunks)
            run_cohort(config, root, cohort, x, y, steps, budget, reporter.advance, devices)
            reporter.done(cohort.name)
    finally:
        if ahead is not None:       # on success nothing is in flight: each cohort waited for its own
            ahead.shutdown(wait=False, cancel_futures=True)


def compiling_ahead() -> int:
    """How many of `train_here`'s compile threads are still alive (each may be
    in a compilation that cannot be stopped)."""
    return sum(t.name.startswith(COMPILE_THREAD) and t.is_alive()
               for t in threading.enumerate())


def default_prefetch() -> int:
    """How many cohorts compile ahead: one on a CPU, whose cores train too;
    on an accelerator up to 4, one per two host cores."""
    if jax.default_backend() == "cpu":
        return 1
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _launch_locked(config, root, cohorts, steps, budget, reporter, started,
                   scheduler, devices, prefetch) -> Summary:
    store.remove_stale_temporaries(root)
    store.write_text(root / "grid.toml", config.text)
    known = {store.cohort_path(root, c).name for c in cohorts}
    for stray in sorted((root / "cohorts").glob("*.nc")):
        if stray.name not in known:
            reporter.warn(f"{stray} is not a cohort of this grid: left alone, not combined")
    todo = [c for c in cohorts
            if not cohort_done(config, c, store.cohort_path(root, c), reporter.warn)]
    skipped = [c.name for c in cohorts if c not in todo]
    reporter.start(len(cohorts), len(skipped))
    if scheduler is not None and todo:
        from normsweep import executors
        executors.run_dask(scheduler, config, root,
                           [(cohorts.index(c), c) for c in todo], budget, reporter.done)
    elif todo:
        train_here(config, root, todo, steps, budget, reporter, devices,
                   default_prefetch() if prefetch is None else prefetch)

    store.remove_stale_temporaries(root)   # left by Dask workers killed mid-write
    sweep = store.combine([store.read_cohort(store.cohort_path(root, c)) for c in cohorts])
    store.write_netcdf(root / "sweep.nc", sweep)
    diverged = int((sweep["diverged_at"] >= 0).sum())
    networks = int(sweep["diverged_at"].size)
    return Summary(root, len(cohorts), [c.name for c in todo], skipped, networks, diverged,
                   time.perf_counter() - started)
