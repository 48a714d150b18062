"""The work of one cohort, shared by the local loop (`launch`) and Dask
tasks (`executors`): its program, its data, whether its file is done,
compiling, training and writing it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from normsweep import plan, records, store, train
from normsweep.config import Config
from normsweep.data import sphere_data
from normsweep.errors import RunError


def program_for(config: Config, cohort: plan.Cohort) -> train.Program:
    return train.Program(dims=cohort.dims(config.data.d, config.data.k), init=config.model.init,
                         output=config.model.output, loss=config.train.loss,
                         dtype=config.train.dtype, lanczos_steps=config.record.lanczos_steps,
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


def damaged_name(path: Path) -> Path:
    """`<name>.damaged`, or `.damaged.1`, `.damaged.2`, … when taken: every
    damaged copy is kept for inspection."""
    out, n = path.with_name(path.name + ".damaged"), 0
    while out.exists() or out.is_symlink():
        n += 1
        out = path.with_name(f"{path.name}.damaged.{n}")
    return out


def cohort_done(config: Config, cohort: plan.Cohort, path: Path,
                warn: Callable[[str], None]) -> bool:
    """True when `path` is a finished cohort of this grid's settings.

    A file that cannot be read (truncated, corrupt, a checksum that does not
    match) is renamed to `damaged_name(path)`, reported, and recomputed; a
    readable file of another grid or cohort is refused (it is never silently
    combined)."""
    if not path.exists():
        return False
    try:
        ds = store.read_cohort(path)
    except RunError as err:
        damaged = damaged_name(path)
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


class Members:
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
    members = Members(config, cohort, len(steps), budget_bytes)
    args, kwargs = members.arguments(members.chunks[0])
    train.compile_members(members.program, x, y, *args, steps, devices, **kwargs)


def train_cohort(config: Config, cohort: plan.Cohort, x, y, steps: np.ndarray,
                 budget_bytes: int, on_steps: Callable[[int], None] | None = None,
                 devices: int | None = 1) -> train.Trajectory:
    """All members of a cohort, in chunks of equal size (one compilation)."""
    members = Members(config, cohort, len(steps), budget_bytes)
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
    ds = records.cohort_dataset(config, cohort, steps, traj, np.asarray(x), np.asarray(y))
    groups = {"weights": records.weights_dataset(cohort, traj)} if config.record.weights else None
    store.write_netcdf(store.cohort_path(root, cohort), ds, groups)
    return int((traj.diverged_at >= 0).sum())
