"""`normsweep launch`, as a library: grid → plan → train → store.

    config = normsweep.config.load("sweeps/quickstart.toml")
    summary = normsweep.sweep.launch(config, Path("results/quickstart"))

Each cohort is trained (in memory-budget chunks that share one compiled
program; `work`), written to `DIR/cohorts/<cohort>.nc` atomically, and
skipped on a relaunch. `DIR/sweep.nc` is combined at the end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from normsweep import folder, plan, dataset, store, work
from normsweep.compile_ahead import CompileAhead, default_compile_workers
from normsweep.config import Config
from normsweep.errors import RunError
from normsweep.folder import ResultsFolder
from normsweep.reporting import Reporter, Summary  # noqa: F401 (the launch API's types)
from normsweep.resources import check_disk, check_memory, default_budget


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


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """One launch as decided before its first write: the grid, the folder,
    the cohorts and the record steps, the memory budget, where and how it
    trains, and what it records of itself."""
    config: Config
    root: Path
    cohorts: list[plan.Cohort]
    steps: np.ndarray
    budget: int
    devices: int | None
    compile_workers: int | None
    command: str
    only: list[dict[str, int]] | None

    def selected(self) -> list[plan.Cohort]:
        return [c for c in self.cohorts if plan.selected(c, self.only)]


def launch(config: Config, root: Path, *, budget_bytes: int | None = None,
           reporter: Reporter | None = None, scheduler: str | None = None,
           devices: int | None = None, compile_workers: int | None = None,
           command: str | None = None, only: list[dict[str, int]] | None = None) -> Summary:
    """Trains every cohort of `config` not yet in `root`, then writes sweep.nc.

    `scheduler`: None trains here; "local[:N]" or a Dask scheduler address
    sends one task per cohort (see `executors`). `devices`: shard each
    cohort's members across this many local devices (None: all).
    `compile_workers`: threads compiling cohorts ahead while one trains
    (`train_here`; None: `default_compile_workers`, 0: none). `command`:
    how the launch was asked for, recorded in sweep.nc's `command` and `history` (default:
    this process's command line). `only` (`plan.check_only`): train just the
    cohorts that match one of its selections; sweep.nc is written once every
    cohort of the grid is done."""
    started = time.perf_counter()
    reporter = reporter or Reporter()
    root = Path(root)
    # everything that can be refused from the grid alone, before any write
    folder.precheck_folder(root)
    work.enable_dtype(config)
    budget = budget_bytes or default_budget()
    if only is not None:
        plan.check_only(config, only)
    cohorts = plan.cohorts(config)
    n_records = plan.record_count(config.train.steps, config.record.steps,
                                  config.record.log_points)
    check_memory(config, cohorts, n_records, budget, only)
    with contextlib.ExitStack() as stack:
        client = None
        if scheduler is not None:
            from normsweep import executors
            client = stack.enter_context(executors.connect(scheduler))
        created = make_folder(root)
        try:
            with ResultsFolder(root).lock():
                # under the lock: no launch can slip in between
                folder.check_folder(config, root)
                steps = plan.record_steps(config.train.steps, config.record.steps,
                                          config.record.log_points)
                return _launch_locked(LaunchPlan(
                    config, root, cohorts, steps, budget, devices, compile_workers,
                    command or shlex.join(sys.argv), only), reporter, started, client)
        except BaseException:
            if created and not ResultsFolder(root).is_results_folder():
                remove_created(created)     # a refused launch leaves no folder behind
            raise


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
    # what each cohort trains (a grow's new networks), read here: HDF5 on one thread
    planned = [work.to_train(config, root, c, len(steps), budget)[1:] for c in todo]

    def compile_ahead(j: int) -> float:
        subset, chunks = planned[j]
        if subset is not None and not len(subset):
            return 0.0
        return work.compile_cohort(config, todo[j], *data_of(todo[j]), steps, budget, devices,
                                   subset, chunks)

    ahead = CompileAhead(len(todo), compile_ahead, workers) if workers > 0 else None
    try:
        for i in range(len(todo)):
            index, compiled = ahead.next() if ahead is not None else (i, None)
            cohort = todo[index]
            n_chunks = (planned[index][1] or plan.chunking(config, cohort, len(steps), budget)
                        ).count
            reporter.cohort(cohort.name, config.train.steps * n_chunks)
            work.run_cohort(config, root, cohort, *data_of(cohort), steps, budget,
                            reporter.advance, devices, compiled, planned[index][1])
            reporter.done(cohort.name)
    finally:
        if ahead is not None:       # on success nothing is in flight: every cohort was handed out
            ahead.close()


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


def _launch_locked(lp: LaunchPlan, reporter: Reporter, started: float, client) -> Summary:
    """The launch `lp` under the folder's lock: the cohorts left to train,
    trained here or on the Dask `client`, then sweep.nc once all are done."""
    config, root, cohorts, steps, budget = lp.config, lp.root, lp.cohorts, lp.steps, lp.budget
    chosen = lp.selected()
    place = ResultsFolder(root)
    place.subfolder("cohorts", create=False)    # a link would send writes elsewhere
    if place.is_results_folder():
        place.remove_stale_temporaries()
    known = {store.cohort_path(root, c).name for c in cohorts}
    for stray in sorted((root / "cohorts").glob("*.nc")):
        if stray.name not in known:
            reporter.warn(f"{stray} is not a cohort of this grid: left alone, not combined")
    states = {c.name: work.settled_state(config, c, root, reporter.warn)
              for c in chosen}
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
        train_here(config, root, todo, steps, budget, reporter, lp.devices,
                   default_compile_workers(len(todo)) if lp.compile_workers is None
                   else lp.compile_workers)

    place.remove_stale_temporaries()   # left by Dask workers killed mid-write
    left = [c for c in cohorts if c not in chosen
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
    sweep.attrs["command"] = lp.command
    keep_foreign_sweep(root / "sweep.nc", reporter)
    sweep.attrs["history"] = "\n".join(filter(None, [
        earlier_history(root / "sweep.nc"),
        f"{dataset.now()} normsweep {dataset.package_version('normsweep')}: {lp.command}"]))
    place.write_netcdf(place.sweep_file, sweep)
    if growing or store.recorded_fingerprint(pending) == config.fingerprint():
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
    diverged = int((sweep["diverged_at"] >= 0).sum())
    networks = int(sweep["diverged_at"].size)
    return Summary(root, len(cohorts), [c.name for c in todo], skipped, networks, diverged,
                   time.perf_counter() - started, **counts)
