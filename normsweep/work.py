"""The work of one cohort, shared by the local loop (`launch`) and Dask
tasks (`executors`): its program, its data, whether its file is done,
compiling, training and writing it.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from normsweep import calibration, folder, plan, dataset, store, train
from normsweep.config import Config
from normsweep.data import data_key, member_keys, sphere_data
from normsweep.errors import RunError
from normsweep.folder import ResultsFolder
from normsweep.probes import sizes as probe_sizes


def program_for(config: Config, cohort: plan.Cohort) -> train.Program:
    """The compiled program's shape for `cohort`: its dims (the deepest
    network's it serves, `plan.program_depths`), dtype, precision, output
    and loss, and which probes are on with their sizes (their schedules are
    inputs: `RecordConfig.schedules`)."""
    config = plan.cohort_config(config, cohort)
    on = config.record.schedules()
    shallowest, deepest = plan.program_depths(config, cohort)
    return train.Program(dims=cohort.dims(config.data.d, config.data.k, deepest),
                         shallowest=shallowest, init=config.model.init,
                         output=config.model.output, loss=config.train.loss,
                         dtype=config.train.dtype, lanczos_steps=config.record.lanczos_steps,
                         probes=tuple(on), sizes={key: getattr(config.record, key)
                                                  for key in probe_sizes(on)},
                         parametrization=config.model.parametrization,
                         precision=config.train.matmul_precision,
                         decay=any(wd > 0 for wd in config.weight_decays()),
                         spectra=config.record.spectra)


def training_data(config: Config, cohort: plan.Cohort | None = None):
    """The training set of `cohort` (by default the grid's one): every
    training set of a grid is drawn from the data key, so equal (n, d) give
    equal data."""
    if cohort is not None:
        config = plan.cohort_config(config, cohort)
    dtype = jnp.dtype(config.train.dtype)
    return sphere_data(data_key(config.data.seed), config.data.n, config.data.d,
                       config.data.k, dtype)


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
    # every program, however quick to compile: with a threshold, a program
    # just under it on a quiet machine is not stored, and compiles again when
    # a busier one takes it over (a relaunch that missed the cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def damaged_name(path: Path) -> Path:
    """`<name>.damaged`, or `.damaged.1`, `.damaged.2`, … when taken: every
    damaged copy is kept for inspection."""
    out, n = path.with_name(path.name + ".damaged"), 0
    while out.exists() or out.is_symlink():
        n += 1
        out = path.with_name(f"{path.name}.damaged.{n}")
    return out


def settled_state(config: Config, cohort: plan.Cohort, root: Path,
                  warn: Callable[[str], None]) -> folder.CohortState:
    """The cohort's state in the folder (`ResultsFolder.cohort_state`, every
    checksum read through), settled for a launch: a file that cannot be read
    (truncated, corrupt, a checksum that does not match) is renamed to
    `damaged_name(path)`, reported, and counts as missing; a readable file of
    another grid or cohort is refused (it is never silently combined)."""
    state = ResultsFolder(root).cohort_state(config, cohort, verify=True)
    if state.state == folder.DAMAGED:
        damaged = damaged_name(state.path)
        os.replace(state.path, damaged)
        warn(f"{state.reason}; moved to {damaged.name} and recomputing")
        return folder.CohortState(cohort, state.path, folder.MISSING)
    if state.state == folder.FOREIGN:
        raise RunError(state.reason)
    return state


def cohort_done(config: Config, cohort: plan.Cohort, root: Path,
                warn: Callable[[str], None]) -> bool:
    """Whether the folder `root` holds `cohort` of this grid whole (`settled_state`)."""
    return settled_state(config, cohort, root, warn).state == folder.DONE


def held_members(config: Config, cohort: plan.Cohort, path: Path):
    """(the file's dataset, the grid that wrote it, its `diverged_at` laid out
    as `cohort`'s members, NaN for those it lacks) for a cohort file of an
    earlier grid that `config` extends; None when there is no such file."""
    if not path.exists():
        return None
    ds = store.read_cohort(path)
    if ds.attrs.get("config_fingerprint") == config.fingerprint():
        return None
    held = folder.held_grid(config, ds.attrs)
    if held is None:
        return None
    return ds, held, folder.by_member(ds["diverged_at"].isel(width=0, depth=0).astype(np.float64),
                               held, cohort)


class Members:
    """A cohort's members (or those of `subset`, indices into them) as
    `train.train_members` takes them, in chunks of equal size (one
    compilation)."""

    def __init__(self, config: Config, cohort: plan.Cohort, n_records: int, budget_bytes: int,
                 subset: np.ndarray | None = None, chunks: plan.Chunking | None = None):
        self.program = program_for(config, cohort)
        self.depth = cohort.depth
        subset = np.arange(cohort.size) if subset is None else np.asarray(subset)
        if chunks is None:
            chunks = chunking(config, cohort, n_records, budget_bytes, len(subset))
        self.chunks = [subset[idx] for idx in chunks.slices(len(subset))]
        self.lrs, seeds = cohort.member_lr(), cohort.member_seed()
        self.wds, self.params = cohort.member_weight_decay(), cohort.member_parametrization()
        self.init_keys, self.power_keys = member_keys(seeds)
        self.schedules = config.record.schedules()
        self.probe_points = config.record.probe_points

    def arguments(self, idx: np.ndarray) -> tuple[tuple, dict]:
        """(lrs, init_keys, power_keys) and the keyword arguments of chunk `idx`."""
        return ((self.lrs[idx], self.init_keys[idx], self.power_keys[idx]),
                {"weight_decay": self.wds[idx], "parametrization": self.params[idx],
                 "schedules": self.schedules, "probe_points": self.probe_points,
                 "depth": self.depth})


def to_train(config: Config, root: Path, cohort: plan.Cohort, n_records: int,
             budget_bytes: int) -> tuple:
    """(held, subset, chunks): the networks of an earlier grid's file in
    `root` that `config` extends (`held_members`, or None), the members left
    to train (None: all) and the chunks that train them."""
    held = held_members(config, cohort, ResultsFolder(root).cohort_path(cohort))
    if held is None:
        return None, None, chunking(config, cohort, n_records, budget_bytes, cohort.size)
    subset = np.flatnonzero(np.isnan(held[2]))
    chunks = chunking(config, cohort, n_records, budget_bytes, len(subset)) \
        if len(subset) else None
    return held, subset, chunks


def chunking(config: Config, cohort: plan.Cohort, n_records: int, budget_bytes: int,
             new: int) -> plan.Chunking:
    """The chunks that train `new` of `cohort`'s networks: the whole cohort's
    (`plan.chunking`), or a grow's, the others held from an earlier launch
    (`calibration.grow_chunking`, by this machine's recorded times)."""
    if new == cohort.size:
        return plan.chunking(config, cohort, n_records, budget_bytes)
    rows = calibration.load(jax.default_backend(), jax.devices()[0].device_kind)
    return calibration.grow_chunking(config, cohort, n_records, budget_bytes, new,
                                     cohort.size - new, rows)


def compile_cohort(config: Config, cohort: plan.Cohort, x, y, steps: np.ndarray,
                   budget_bytes: int, devices: int | None = 1,
                   subset: np.ndarray | None = None, chunks: plan.Chunking | None = None
                   ) -> float:
    """Compiles the programs `train_cohort` will run for `cohort` (or its
    members `subset`), running nothing (`train.compile_members`): its chunks
    all share one shape. Returns the wall seconds it took (near 0 for
    programs already compiled)."""
    started = time.perf_counter()
    members = Members(config, cohort, len(steps), budget_bytes, subset, chunks)
    args, kwargs = members.arguments(members.chunks[0])
    with _compilers_lock:
        _compilers.setdefault(_compiled(config, cohort, len(members.chunks[0])), cohort.name)
    train.compile_members(members.program, x, y, *args, steps, devices, **kwargs)
    return time.perf_counter() - started


_compilers_lock = threading.Lock()
_compilers: dict[str, str] = {}     # compiled program -> the cohort that compiled it here


def _compiled(config: Config, cohort: plan.Cohort, members: int) -> str:
    """The program that trains `members` networks of `cohort` at a time."""
    return calibration.compiled(calibration.program_key(config, cohort, members))


def compiled_by_another(config: Config, cohort: plan.Cohort, chunks: plan.Chunking) -> bool:
    """Whether this process compiled `cohort`'s program for another cohort
    (a program serving several depths): its compile time is then not the
    program's, and is not recorded for the estimate."""
    with _compilers_lock:
        return _compilers.get(_compiled(config, cohort, chunks.size), cohort.name) != cohort.name


def train_cohort(config: Config, cohort: plan.Cohort, x, y, steps: np.ndarray,
                 budget_bytes: int, on_steps: Callable[[int], None] | None = None,
                 devices: int | None = 1, subset: np.ndarray | None = None,
                 chunks: plan.Chunking | None = None) -> train.Trajectory:
    """All members of a cohort (or those of `subset`, in its order), in chunks
    of equal size (one compilation; `chunks`, default `Members`')."""
    members = Members(config, cohort, len(steps), budget_bytes, subset, chunks)
    parts = []
    for idx in members.chunks:
        args, kwargs = members.arguments(idx)
        parts.append(train.train_members(members.program, x, y, *args, steps,
                                         config.record.weights, on_steps, devices, **kwargs))
    keep = cohort.size if subset is None else len(subset)

    def cat(arrays):
        return np.concatenate(arrays, axis=0)[:keep]

    records = {k: cat([p.records[k] for p in parts]) for k in parts[0].records}
    weights = {}
    if config.record.weights:
        for which in ("initial", "final"):
            weights[which] = [cat([getattr(p, which)[l] for p in parts])
                              for l in range(cohort.depth)]
    spectra = {k: cat([p.spectra[k] for p in parts]) for k in parts[0].spectra} \
        if parts[0].spectra else None
    timing = {"once": sum(p.timing["once"] for p in parts),
              "runs": [p.timing["segments"] for p in parts]}
    return train.Trajectory(records, cat([p.diverged_at for p in parts]), **weights,
                            spectra=spectra, timing=timing)


def run_cohort(config: Config, root: Path, cohort: plan.Cohort, x, y, steps: np.ndarray,
               budget: int, on_steps: Callable[[int], None] | None,
               devices: int | None = 1, compile_seconds: float | None = None,
               chunks: plan.Chunking | None = None) -> int:
    """Compiles (unless `compile_seconds` says it was, ahead, for `chunks`)
    and trains one cohort, and writes its file with both wall times; returns
    how many members diverged. A file of an earlier grid that this one
    extends (`held_members`) keeps its networks: only the others are
    trained, and the file is rewritten with all of them."""
    place = ResultsFolder(root)
    path = place.cohort_path(cohort)
    held, subset, own = to_train(config, root, cohort, len(steps), budget)
    chunks = chunks or own      # (the timings a grow's chunks follow may have moved since)
    if subset is not None and not len(subset):
        # every network is held (a fixed setting became a one-value axis, say):
        # nothing to train, only the file's layout to rewrite
        traj, seconds = none_trained(config, cohort, held), {"train_seconds": 0.0,
                                                              "compile_seconds": 0.0}
    else:
        if compile_seconds is None:
            compile_seconds = compile_cohort(config, cohort, x, y, steps, budget, devices,
                                             subset, chunks)
        started = time.perf_counter()
        traj = train_cohort(config, cohort, x, y, steps, budget, on_steps, devices, subset,
                            chunks)
        seconds = {"train_seconds": time.perf_counter() - started,
                   "compile_seconds": compile_seconds}
        trained = cohort.size if subset is None else chunks.size * chunks.count   # padding too
        calibration.record(jax.default_backend(), jax.devices()[0].device_kind,
                           calibration.program_key(config, cohort, chunks.size),
                           plan.train_flop(config, cohort) * trained / cohort.size,
                           seconds["train_seconds"],
                           None if compiled_by_another(config, cohort, chunks)
                           else compile_seconds, traj.timing,
                           plan.chunk_size(config, cohort, chunks.size))
    if held is not None:
        traj, seconds = merged(config, cohort, held, subset, traj, seconds, path)
    ds = dataset.cohort_dataset(config, cohort, steps, traj, np.asarray(x), np.asarray(y),
                                seconds)
    groups = {"weights": dataset.weights_dataset(cohort, traj)} if config.record.weights else None
    place.write_netcdf(path, ds, groups)
    return int((traj.diverged_at[subset if subset is not None else slice(None)] >= 0).sum())


def none_trained(config: Config, cohort: plan.Cohort, held) -> train.Trajectory:
    """A trajectory of no members with the names, dtypes and trailing shapes
    of the held file's, for `merged` to fill from that file alone."""
    ds, grid, _ = held
    cell = ds.isel(width=0, depth=0)

    def empty(name: str, depth_axis: int | None) -> np.ndarray:
        value = folder.by_member(cell[name], grid, cohort)[:0]
        if depth_axis is not None:
            value = value[(slice(None),) * depth_axis + (slice(0, cohort.depth),)]
        return value

    # the file's records are its variables over `step`, its spectra those
    # over `spectrum_step` (`dataset.cohort_dataset`)
    recs = {name: empty(name, 2 if "layer" in var.dims else None)
            for name, var in cell.data_vars.items() if "step" in var.dims}
    spectra = {name: empty(name, 2) for name, var in cell.data_vars.items()
               if "spectrum_step" in var.dims} or None
    weights = {}
    if config.record.weights:
        dims = cohort.dims(plan.cohort_config(config, cohort).data.d, config.data.k)
        weights = {which: [np.zeros((0, p, q), cell["frob_norm"].dtype)
                           for p, q in zip(dims[:-1], dims[1:])] for which in ("initial", "final")}
    return train.Trajectory(recs, np.zeros(0, np.int64), **weights, spectra=spectra)


def merged(config: Config, cohort: plan.Cohort, held, subset: np.ndarray,
           new: train.Trajectory, seconds: dict, path: Path):
    """The whole cohort's trajectory: the held file's networks and the newly
    trained ones (`subset`), with the wall times of both runs added up."""
    ds, grid, diverged = held
    cell = ds.isel(width=0, depth=0)
    recs = {}
    for name, value in new.records.items():
        old = folder.by_member(cell[name], grid, cohort)
        if "layer" in cell[name].dims:
            old = old[..., :cohort.depth]
        old[subset] = value
        recs[name] = old.astype(value.dtype)
    spectra = None
    if new.spectra is not None:
        spectra = {}
        for name, value in new.spectra.items():
            old = folder.by_member(cell[name], grid, cohort)[:, :, :cohort.depth]
            if value.ndim == 4:
                old = old[..., :value.shape[-1]]
            old[subset] = value
            spectra[name] = old.astype(value.dtype)
    diverged = diverged.copy()
    diverged[subset] = new.diverged_at
    weights = {}
    if config.record.weights:
        with store.open_checked(path, "weights", "cohort file") as held_weights:
            for which in ("initial", "final"):
                layers = []
                for l, w in enumerate(getattr(new, which)):
                    old = folder.by_member(held_weights[f"{which}_{l}"].load(), grid, cohort)
                    old[subset] = w
                    layers.append(old.astype(w.dtype))
                weights[which] = layers
    seconds = {k: v + float(cell[k]) if k in cell else v for k, v in seconds.items()}
    return train.Trajectory(recs, diverged.astype(np.int64), **weights, spectra=spectra), seconds
