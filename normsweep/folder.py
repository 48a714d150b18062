"""The results folder as one object.

`ResultsFolder(root)` owns the folder's paths (the recorded grid, the
pending grow, the marker, the lock, cohorts/, sweep.nc, analysis/) and
answers one question for every command: which cohorts of a grid are on disk
(`status`). Launch, the dry run, `open_sweep`, `show`, `ls` and `analyze` all
ask it, so that `cohort_state` is the one rule for "done". Its writes are
`store`'s: a temporary in the same real folder (never through a symbolic
link), then a rename.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from normsweep import outcomes, plan, schema, store
from normsweep.config import RECORD_FORMAT, Config
from normsweep.errors import GridError, RunError, SweepWarning

DONE = "done"            # holds every network of the grid's cohort
GROWABLE = "growable"    # holds an earlier grid's networks that this grid extends
MISSING = "missing"      # no file
DAMAGED = "damaged"      # unreadable, or a checksum that does not match: recomputed
FOREIGN = "foreign"      # a readable file of other settings: never combined, never replaced


@dataclasses.dataclass(frozen=True)
class CohortState:
    """One cohort of a grid in the folder: its `state`, the networks of the
    grid already on disk (`kept`) and, for DAMAGED and FOREIGN, why."""
    cohort: plan.Cohort
    path: Path
    state: str
    kept: int = 0
    reason: str = ""
    attrs: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Status:
    """Every cohort of `config` in the folder, and the cohort files that
    belong to none of them (`stray`)."""
    config: Config
    cohorts: tuple[CohortState, ...]
    stray: tuple[Path, ...]

    def named(self, state: str) -> list[str]:
        return [c.cohort.name for c in self.cohorts if c.state == state]

    @property
    def done(self) -> list[str]:
        return self.named(DONE)

    @property
    def kept(self) -> int:
        """Networks of the grid already trained and readable."""
        return sum(c.kept for c in self.cohorts)


def held_grid(config: Config, attrs: dict) -> Config | None:
    """The grid that wrote a cohort file (its attributes) when `config`
    extends it (the same core settings, every member axis a superset), else
    None."""
    held = store.grid_of(attrs)
    return held if held is not None and store.covers(config, held) else None


MEMBER_ORDER = ("parametrization", "lr", "weight_decay", "seed")   # plan.Cohort's member order


def by_member(da: xr.DataArray, held: Config, cohort: plan.Cohort) -> np.ndarray:
    """`da` (a variable of a cohort file written by the grid `held`) laid out
    as `cohort`'s members, (member, *other dims): NaN for the members the
    file lacks. Axes the file has no dim for take `held`'s one value."""
    fixed = held.member_values()
    for axis in MEMBER_ORDER:
        if axis not in da.dims:
            da = da.expand_dims({axis: list(fixed[axis])})
    da = da.reindex({axis: list(cohort.axis_values(axis)) for axis in MEMBER_ORDER})
    rest = [d for d in da.dims if d not in MEMBER_ORDER]
    values = da.transpose(*MEMBER_ORDER, *rest).values
    return values.reshape((cohort.size,) + values.shape[len(MEMBER_ORDER):])


class ResultsFolder:
    """A results folder: `root/grid.toml`, `cohorts/*.nc`, `sweep.nc`,
    `analysis/`, the marker `.normsweep`, the `.lock` and, during a grow,
    `grow.toml`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ResultsFolder({str(self.root)!r})"

    @property
    def grid_file(self) -> Path:
        return self.root / "grid.toml"

    @property
    def grow_file(self) -> Path:
        return self.root / store.GROW_FILE

    @property
    def sweep_file(self) -> Path:
        return self.root / "sweep.nc"

    def cohort_path(self, cohort: plan.Cohort) -> Path:
        return store.cohort_path(self.root, cohort)

    # --- the folder itself -------------------------------------------------

    def is_results_folder(self) -> bool:
        return store.is_sweep_folder(self.root)

    def mark(self) -> None:
        store.mark_folder(self.root)

    def lock(self):
        """The exclusive lock a launch holds while it writes (`store.folder_lock`)."""
        return store.folder_lock(self.root)

    def remove_stale_temporaries(self) -> list[Path]:
        return store.remove_stale_temporaries(self.root)

    def subfolder(self, name: str, *, create: bool = True) -> Path:
        """`root/name`, refused unless a real folder (`store.real_folder`)."""
        return store.real_folder(self.root, name, create=create)

    # --- the recorded grid -------------------------------------------------

    def recorded_grid(self) -> Config:
        """The grid the folder holds (grid.toml); RunError when damaged."""
        from normsweep import config as config_mod
        try:
            return config_mod.load(self.grid_file)
        except GridError as err:
            raise RunError(f"{self.grid_file} is damaged: {err}") from None

    def pending_grow(self) -> Config | None:
        """The grown grid of a grow not yet finished (grow.toml), or None."""
        from normsweep import config as config_mod
        if not self.grow_file.exists():
            return None
        try:
            return config_mod.load(self.grow_file)
        except GridError:
            return None

    # --- writes ------------------------------------------------------------

    def atomic(self, path: Path):
        """A context giving the temporary to write `path` through
        (`store.atomic_path`), in a real folder of the results folder."""
        return store.atomic_path(self._inside(path))

    def write_text(self, path: Path, text: str) -> None:
        store.write_text(self._inside(path), text)

    def write_netcdf(self, path: Path, ds: xr.Dataset, groups=None) -> None:
        store.write_netcdf(self._inside(path), ds, groups)

    def write_csv(self, path: Path, table: pd.DataFrame) -> None:
        """`table` to `path` atomically, numbers to 6 significant digits."""
        path = self._inside(path)
        try:
            with store.atomic_path(path) as tmp:
                table.to_csv(tmp, index=False, float_format="%.6g")
        except OSError as err:
            raise store.write_failure(path, err) from None

    def _inside(self, path: Path) -> Path:
        """`path` (relative to root, or under it) with its folder checked real."""
        path = Path(path)
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            if path.is_absolute():
                raise ValueError(f"{path} is not inside {self.root}") from None
            rel = path
        if rel.parent == Path("."):
            return self.root / rel.name
        if len(rel.parts) != 2:
            raise ValueError(f"{path}: the results folder has one level of subfolders")
        return self.subfolder(rel.parts[0]) / rel.name

    # --- the one rule for "done" -------------------------------------------

    def cohort_state(self, config: Config, cohort: plan.Cohort, *,
                     verify: bool = False) -> CohortState:
        """Whether `cohort` of `config` is on disk, and how much of it.

        DONE when its file holds every network (`store.holds`: written by
        this grid or by one that extends it); GROWABLE when it holds an
        earlier grid's that this one extends (`kept` counts them); DAMAGED
        when it cannot be read; FOREIGN when it is readable but of another
        cohort, grid or record format. Only the attributes and `diverged_at`
        are read, unless `verify`: then the whole file, weights included
        when the grid keeps them, so that every checksum is checked."""
        path = self.cohort_path(cohort)
        if not path.exists() and not path.is_symlink():
            return CohortState(cohort, path, MISSING)
        try:
            if verify:
                ds = store.read_cohort(path, weights=config.record.weights)
                return self._classify(config, cohort, path, ds)
            with store.open_checked(path, what="cohort file") as ds:
                return self._classify(config, cohort, path, ds)
        except RunError as err:
            return CohortState(cohort, path, DAMAGED, reason=str(err))

    def _classify(self, config: Config, cohort: plan.Cohort, path: Path,
                  ds: xr.Dataset) -> CohortState:
        if "width" not in ds.dims or "depth" not in ds.dims:
            raise RunError(f"{path}: not a cohort file (no width and depth)")
        own = cohort.outer
        if any(ds.sizes.get(dim) != 1 or int(ds[dim][0]) != value for dim, value in own.items()) \
                or any(a in ds.dims and a not in own for a in store.DATA_AXES):
            said = ", ".join(f"{dim}={value}" for dim, value in own.items())
            return CohortState(cohort, path, FOREIGN, reason=(
                f"{path} does not hold the cohort {said}; move it away to recompute it"))
        if store.holds(config, ds.attrs):
            return CohortState(cohort, path, DONE, kept=cohort.size, attrs=dict(ds.attrs))
        held_format = int(ds.attrs.get("record_format", 1))
        if held_format != RECORD_FORMAT:
            return CohortState(cohort, path, FOREIGN, reason=(
                f"{path} was written by a normsweep that records other quantities (record "
                f"format {held_format}, this one {RECORD_FORMAT}); launch into a new folder "
                "(--out), or move the file away to recompute it"))
        held = held_grid(config, ds.attrs)
        if held is None:
            return CohortState(cohort, path, FOREIGN, reason=(
                f"{path} was written with other settings (fingerprint "
                f"{ds.attrs.get('config_fingerprint')}, this grid {config.fingerprint()}); "
                "move it away to recompute it"))
        at = ds["diverged_at"].isel(width=0, depth=0).astype(np.float64)
        kept = int(np.isfinite(by_member(at, held, cohort)).sum())
        return CohortState(cohort, path, GROWABLE, kept=kept, attrs=dict(ds.attrs))

    def summary(self) -> dict:
        """What `ls` and `show` print of sweep.nc: its networks, how many
        diverged, the outcome counts, steps, creation time, backend and
        device; {} when there is none, a RunError when it cannot be read."""
        if not self.sweep_file.exists():
            return {}
        with store.open_checked(self.sweep_file, what="sweep file") as ds:
            at = ds["diverged_at"].values
            return {"networks": int(at.size), "diverged": int((at >= 0).sum()),
                    "outcomes": outcomes.counts(outcomes.classify(ds)),
                    "steps": int(ds.sizes["step"]), "created": str(ds.attrs.get("created", "")),
                    "backend": str(ds.attrs.get("backend")),
                    "device_kind": str(ds.attrs.get("device_kind"))}

    def status(self, config: Config | None = None, *, verify: bool = False) -> Status:
        """Every cohort of `config` (default: the recorded grid) in the
        folder (`cohort_state`), and the cohort files of no cohort of it."""
        config = self.recorded_grid() if config is None else config
        cohorts = plan.cohorts(config)
        states = tuple(self.cohort_state(config, c, verify=verify) for c in cohorts)
        names = {self.cohort_path(c).name for c in cohorts}
        folder = self.root / "cohorts"
        stray = tuple(p for p in sorted(folder.glob("*.nc")) if p.name not in names) \
            if folder.is_dir() else ()
        return Status(config, states, stray)


def find_results_folders(root: str | os.PathLike) -> list[Path]:
    """The results folders at or below `root`, at any depth (not looking
    inside one, nor into hidden folders), sorted by path."""
    found = []
    for here, subdirs, _ in os.walk(root):
        if store.is_sweep_folder(Path(here)):
            found.append(Path(here))
            subdirs.clear()
        else:
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    return sorted(found)


# -- may a launch write here? ----------------------------------------------------

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
    place = ResultsFolder(root)
    if not place.is_results_folder() or not place.grid_file.exists():
        return
    try:
        previous = place.recorded_grid()
    except RunError as err:
        raise RunError(f"{err}; move the folder away or pick another --out") from None
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


# -- reading the folder as one Dataset ----------------------------------------

def open_sweep(root: str | os.PathLike, *, partial: bool = False) -> xr.Dataset:
    """The Dataset of a results folder, checked against its grid.toml, with
    each network's `outcome` (`with_outcome`).

    `sweep.nc` when it holds exactly the cohort files on disk; otherwise the
    cohort files are combined afresh (a stale sweep.nc, left by a launch
    that later added cohorts, is never preferred). Cohort files of other
    settings (fingerprint) or of no cohort of the grid are left out with a
    warning. When cohorts are missing this raises `RunError`, unless
    `partial=True`: then the Dataset holds every network of the grid, those
    not yet trained all NaN (`diverged_at` too, as a float), and its attrs
    `partial = 1` and `cohorts_missing` say so. Warnings are
    `errors.SweepWarning`s.
    """
    return with_outcome(_open_sweep(Path(root), partial))


def _open_sweep(root: Path, partial: bool) -> xr.Dataset:
    root = Path(root)
    place = ResultsFolder(root)
    sweep, grid_file = place.sweep_file, place.grid_file
    if not grid_file.exists():
        if sweep.exists():          # a sweep.nc on its own: nothing to check it against
            return store.read_sweep(sweep)
        raise RunError(f"{root}: no grid.toml and no sweep.nc: not a normsweep results folder")
    status = place.status()
    config, expected = status.config, [c.cohort for c in status.cohorts]
    for stray in status.stray:
        warnings.warn(f"{stray} is not a cohort of {grid_file}: left out", SweepWarning,
                      stacklevel=2)
    present, missing = [], []           # (path, attrs) of the cohorts of this grid on disk
    for c in status.cohorts:
        if c.state == DONE:
            present.append((c.path, c.cohort.name, c.attrs))
            continue
        missing.append(c.cohort.name)
        if c.state == DAMAGED:
            warnings.warn(f"{c.path}: not a readable cohort file ({c.reason}): left out "
                          "(launch again to recompute it)", SweepWarning, stacklevel=2)
        elif c.state == GROWABLE:
            warnings.warn(f"{c.path} holds {c.kept} of the {c.cohort.size} networks of "
                          f"{grid_file} (an earlier, smaller grid's): left out until a launch "
                          "trains the rest", SweepWarning, stacklevel=2)
        elif c.state == FOREIGN:
            warnings.warn(f"{c.reason.split('; ')[0]}: left out", SweepWarning, stacklevel=2)
    if missing and not partial:
        raise RunError(f"{root}: {len(missing)} of {len(expected)} cohorts are not on disk "
                       f"({', '.join(missing)}); launch again to finish the sweep, or open it "
                       "with partial=True")
    if not present:
        raise RunError(f"{root}: none of the {len(expected)} cohorts is on disk yet")
    if sweep.exists() and not missing:
        try:
            ds = store.read_sweep(sweep)
        except RunError as err:     # damaged: the intact cohort files rebuild it
            ds = None
            warnings.warn(f"{err}; combining the cohort files afresh (launch again to rewrite "
                          "it)", SweepWarning, stacklevel=2)
        if ds is not None:
            ids = " ".join(f"{name}:{attrs.get('cohort_id', '')}" for _, name, attrs in present)
            if "cohorts" in ds.attrs:
                fresh = ds.attrs["cohorts"] == ids
            else:   # written by an earlier version: newer than every cohort file
                fresh = all(sweep.stat().st_mtime >= p.stat().st_mtime for p, _, _ in present)
            if fresh and ds.attrs.get("config_fingerprint") == config.fingerprint():
                return ds
            ds.close()
            warnings.warn(f"{sweep} does not hold the cohort files now on disk (it is older): "
                          "combining them afresh; launch again to rewrite it", SweepWarning,
                          stacklevel=2)
    if missing:
        warnings.warn(f"{root} is partial: {len(missing)} of {len(expected)} cohorts are not "
                      f"on disk ({', '.join(missing)}); their networks are NaN", SweepWarning,
                      stacklevel=2)
    out = store.combine([store.read_cohort_of(config, path) for path, _, _ in present], missing)
    if missing:
        out = _with_missing(out, config, expected)
    return out


def with_outcome(ds: xr.Dataset) -> xr.Dataset:
    """`ds` with the variable `outcome`: per network "fit", "training",
    "failed", "diverged" or, in a partial sweep, "untrained"
    (`normsweep.outcomes.classify`, at a training accuracy of 0.99).
    Read from the records, so it costs the first and last records only."""
    if "outcome" in ds or not {"loss", "accuracy", "diverged_at"} <= set(ds.data_vars):
        return ds
    out = outcomes.classify(ds).drop_vars("step", errors="ignore").astype(str)
    out.attrs = {"long_name": "outcome", "units": "1",
                 "description": "fit (training accuracy ≥ 0.99 at the last step), training "
                                "(the loss fell), failed (final loss ≥ initial, or every "
                                "gradient 0), diverged (a non-finite loss, weight or norm), "
                                "untrained (its cohort is not on disk)"}
    return ds.assign(outcome=out)


def _with_missing(ds: xr.Dataset, config: Config, expected: list[plan.Cohort]) -> xr.Dataset:
    """`ds` extended to every width and depth (and n and d) of the grid (NaN
    where untrained)."""
    widths = sorted({c.width for c in expected})
    depths = sorted({c.depth for c in expected})
    out = ds.reindex(width=widths, depth=depths,
                     **{a: sorted({getattr(c, a) for c in expected}) for a in store.DATA_AXES
                        if a in ds.dims})
    out["diverged_at"] = out["diverged_at"].astype(np.float64)
    lr = out["lr"].values.astype(np.float64)
    scale = np.asarray(widths, np.float64)[:, None] ** config.grid.lr_width_exponent
    out = out.assign_coords(lr_effective=(("width", "lr"), lr[None, :] * scale))
    return schema.label(out)
