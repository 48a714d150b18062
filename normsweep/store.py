"""The results database on disk: every write, every read, and the folder's
safety (marker, lock, temporaries). The names are `schema`'s; the Datasets
written come from `records`. Reading imports no JAX.

Layout of a results folder (see docs/schema.md)::

    DIR/.normsweep       the marker of a results folder
    DIR/grid.toml        the grid as launched
    DIR/cohorts/*.nc     one file per cohort, written once, atomically
    DIR/sweep.nc         all cohorts combined
    DIR/analysis/        written by `normsweep analyze`

A cohort file holds the cohort's trajectories in the root group and, when
`[record] weights = true`, its initial and final weights in the group
"weights". Files are written to a hidden temporary name in the same folder
and renamed into place (`os.replace`), so a file under its final name is
always complete. netCDF holds no code: nothing read from a results folder is
ever executed.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import xarray as xr

from normsweep.config import Config
from normsweep.errors import GridError, RunError, SweepWarning
from normsweep.plan import Cohort
from normsweep.schema import DATA_VARS, label

def _encoding(ds: xr.Dataset) -> dict:
    """Every numeric variable and coordinate carries a Fletcher-32 checksum,
    which HDF5 verifies on every read (a flipped bit is a read error, not a
    wrong number); floats are also compressed."""
    out = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "fiub" and var.ndim:
            out[name] = {"fletcher32": True}     # netCDF-C picks the chunks
            if var.dtype.kind == "f":
                out[name].update(zlib=True, complevel=4)
    return out


TEMP_RE = re.compile(r"\.(.+)\.normsweep-tmp-\d+")
# the temporaries of earlier versions, which named only these files
LEGACY_TEMP_RE = re.compile(r"\.(grid\.toml|sweep\.nc|report\.md|fits\.nc|fits\.csv"
                            r"|width\d+_depth\d+\.nc)\.tmp(-\d+)?")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a hidden temporary path beside `path`; renames it to `path` if
    the block succeeds, removes it otherwise. The temporary's name
    (`TEMP_RE`) is one that only normsweep makes; it is created here, empty,
    as a new regular file (whatever had its name is removed first, a planted
    link included), so the block writes to no file reached through a link.
    The rename replaces a link at `path` itself, never its target."""
    tmp = path.with_name(f".{path.name}.normsweep-tmp-{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644))
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_failure(path: Path, err: BaseException) -> RunError:
    """A write error that names the file and the cause. HDF5 reports a full
    disk or a vanished folder only as "NetCDF: HDF error", and a vanished
    folder can surface as a permission error: look at the folder instead."""
    folder = path.parent
    if getattr(err, "errno", None) == errno.ENOTDIR or file_on_path(folder):
        cause = f"{file_on_path(folder) or folder} is a file, not a folder"
    elif not folder.is_dir():
        cause = f"the folder {folder} no longer exists"
    else:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        if getattr(err, "errno", None) == errno.ENOSPC or free == 0:
            cause = "No space left on the device"
        elif getattr(err, "errno", None) == errno.EDQUOT:
            cause = "disk quota exceeded"
        elif getattr(err, "errno", None) == errno.EFBIG or (
                not isinstance(err, OSError) and _file_size_limit() is not None):
            # HDF5 reports the limit only as "NetCDF: HDF error"
            limit = _file_size_limit()
            cause = ("the file is larger than this process may write" if limit is None else
                     f"the process's file-size limit ({size_text(limit)}, ulimit -f) stops it")
        elif isinstance(err, OSError):
            cause = err.strerror or str(err)
        else:
            cause = str(err)
        if free is not None and free < (1 << 30):
            cause += f" ({size_text(free)} free on its device)"
    return RunError(f"cannot write {path}: {cause}")


def file_on_path(folder: Path) -> Path | None:
    """The first part of `folder`'s path that is an existing file (not a
    folder), or None."""
    for part in reversed([folder, *folder.parents]):
        if part.exists() and not part.is_dir():
            return part
    return None


def _file_size_limit() -> int | None:
    """The soft RLIMIT_FSIZE in bytes, or None when there is none."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def real_folder(root: Path, name: str, *, create: bool = True) -> Path:
    """`root/name`, a folder of the results folder, checked to be a real
    folder and not a symbolic link (which would send normsweep's writes and
    renames to files outside `root`); created when missing and `create`.
    Raises `RunError` naming the path otherwise."""
    path = Path(root) / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return path
        try:
            path.mkdir()
        except OSError as err:
            raise write_failure(path / ".", err) from None
        return path
    if stat.S_ISLNK(info.st_mode):
        raise RunError(f"{path} is a symbolic link: normsweep writes only into real folders "
                       "inside the results folder; remove the link (or replace it by a folder) "
                       "and try again")
    if not stat.S_ISDIR(info.st_mode):
        raise RunError(f"{path} is not a folder; move it away and try again")
    return path


def size_text(n: int) -> str:
    """A byte count in the largest binary unit that keeps it ≥ 1 (3.2 MiB)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def write_netcdf(path: Path, ds: xr.Dataset, groups: dict[str, xr.Dataset] | None = None) -> None:
    """Writes `ds` (and extra groups) to `path` atomically."""
    try:
        with atomic_path(path) as tmp:
            ds.to_netcdf(tmp, engine="netcdf4", encoding=_encoding(ds))
            for group, gds in (groups or {}).items():
                gds.to_netcdf(tmp, mode="a", group=group, engine="netcdf4",
                              encoding=_encoding(gds))
    except (OSError, RuntimeError) as err:
        raise write_failure(path, err) from None


def write_text(path: Path, text: str) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as err:
        raise write_failure(path, err) from None


MARKER = ".normsweep"
MARKER_TEXT = "normsweep results folder\n"


def is_sweep_folder(root: Path) -> bool:
    """Whether normsweep made `root`: it holds the marker file that only
    normsweep writes, or (a folder of an earlier version) the grid.toml,
    cohorts/ and .lock that every launch of those versions left."""
    root = Path(root)
    if _regular(root / MARKER):
        return True
    return _regular(root / "grid.toml") and (root / "cohorts").is_dir() \
        and _regular(root / ".lock")


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def mark_folder(root: Path) -> None:
    """Writes the marker that makes `root` a results folder (`is_sweep_folder`)."""
    if not _regular(Path(root) / MARKER):
        write_text(Path(root) / MARKER, MARKER_TEXT)


@contextlib.contextmanager
def folder_lock(root: Path) -> Iterator[None]:
    """Holds an exclusive lock on the results folder `root` while a launch
    writes to it. The kernel drops the lock when its holder dies, so a crashed
    launch never leaves the folder locked. `root/.lock` is opened without
    following a symbolic link and without truncating it, and refused unless
    it is a regular file with no other name (so that no file elsewhere can
    be reached through it); only then, locked, does it take the holder's pid."""
    path = Path(root) / ".lock"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunError(f"{path} is a symbolic link, not normsweep's lock file; remove it "
                           "and launch again") from None
        raise write_failure(path, err) from None
    info = os.fstat(fd)         # before fdopen, which refuses a FIFO with its own words
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else \
            f"a file with {info.st_nlink} names (a hard link)"
        raise RunError(f"{path} is {what}, not normsweep's lock file; remove it and "
                       "launch again")
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            holder = f.read(32).strip() or "unknown"
            raise RunError(f"{root} is being written by another launch (pid {holder}); wait for "
                           "it to finish, then launch again to add what is missing") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Removes the hidden temporary files a killed writer left in the results
    folder `root` (and its cohorts/ and analysis/): only files whose names
    normsweep makes (`TEMP_RE`, and those of earlier versions). Call only
    while holding `folder_lock` on a folder that `is_sweep_folder`: then no
    writer of this folder is alive."""
    removed = []
    for folder in (Path(root), Path(root) / "cohorts", Path(root) / "analysis"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for tmp in folder.iterdir():
            if (TEMP_RE.fullmatch(tmp.name) or LEGACY_TEMP_RE.fullmatch(tmp.name)) \
                    and _regular(tmp):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def cohort_path(root: Path, cohort: Cohort) -> Path:
    return Path(root) / "cohorts" / f"{cohort.name}.nc"


def read_cohort(path: Path) -> xr.Dataset:
    """A cohort file, fully loaded (the file is closed afterwards)."""
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return ds.load()
    except (OSError, ValueError, RuntimeError) as err:
        raise RunError(f"{path}: not a readable cohort file ({err})") from None


def cohort_fingerprint(path: Path) -> str | None:
    """The `config_fingerprint` of the cohort file at `path` (None when it is
    missing or unreadable)."""
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return ds.attrs.get("config_fingerprint")
    except (OSError, ValueError, RuntimeError):
        return None


def cohort_name(ds: xr.Dataset) -> str:
    return f"width{int(ds['width'][0])}_depth{int(ds['depth'][0])}"


def combine(datasets: list[xr.Dataset], missing: list[str] = ()) -> xr.Dataset:
    """Cohort datasets → one Dataset over all widths and depths.

    Layers beyond a network's depth are NaN (cohorts written by launches of
    different largest depths are padded to the largest); the training data
    (the same in every cohort) is kept once; attributes are the first
    cohort's, with `cohorts` listing "name:cohort_id" of each. `missing`
    names cohorts not yet trained: the result is then marked `partial`, and
    the networks of width × depth cells without a cohort have NaN for every
    variable, `diverged_at` included (never a made-up step).
    """
    layers = np.arange(max(ds.sizes["layer"] for ds in datasets))
    traj = [ds.drop_vars(DATA_VARS).reindex(layer=layers) for ds in datasets]
    out = xr.combine_by_coords(traj, combine_attrs="drop_conflicts", data_vars="all",
                               coords="different", compat="no_conflicts", join="outer")
    out = out.assign_coords({name: datasets[0][name] for name in DATA_VARS})
    untrained = bool(out["diverged_at"].isnull().any())
    if untrained and not missing:
        raise RunError("the cohorts do not cover every (width, depth) of their axes, and none "
                       "is said to be missing")
    out["diverged_at"] = out["diverged_at"].astype(np.float64 if untrained else np.int64)
    out.attrs = {k: v for k, v in datasets[0].attrs.items() if k != "cohort_id"}
    out.attrs["created"] = max(ds.attrs.get("created", "") for ds in datasets)
    out.attrs["host"] = " ".join(sorted({ds.attrs.get("host", "unknown") for ds in datasets}))
    out.attrs["cohorts"] = " ".join(f"{cohort_name(ds)}:{ds.attrs.get('cohort_id', '')}"
                                    for ds in datasets)
    if missing:
        out.attrs["partial"] = 1
        out.attrs["cohorts_missing"] = " ".join(missing)
    return label(out)


def _read_sweep(path: Path) -> xr.Dataset:
    try:
        return xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError, RuntimeError) as err:
        raise RunError(f"{path}: not a readable sweep file ({err})") from None


def open_sweep(root: str | os.PathLike, *, partial: bool = False) -> xr.Dataset:
    """The Dataset of a results folder, checked against its grid.toml.

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
    from normsweep import config as config_mod
    from normsweep import plan

    root = Path(root)
    sweep, grid_file = root / "sweep.nc", root / "grid.toml"
    if not grid_file.exists():
        if sweep.exists():          # a sweep.nc on its own: nothing to check it against
            return _read_sweep(sweep)
        raise RunError(f"{root}: no grid.toml and no sweep.nc: not a normsweep results folder")
    try:
        config = config_mod.load(grid_file)
    except GridError as err:
        raise RunError(f"{grid_file} is damaged: {err}") from None
    expected = plan.cohorts(config)
    names = {cohort_path(root, c).name for c in expected}
    for stray in sorted((root / "cohorts").glob("*.nc")):
        if stray.name not in names:
            warnings.warn(f"{stray} is not a cohort of {grid_file}: left out", SweepWarning,
                          stacklevel=2)
    present, missing = [], []           # (path, attrs) of the cohorts of this grid on disk
    for c in expected:
        path = cohort_path(root, c)
        if not path.exists():
            missing.append(c.name)
            continue
        try:
            with xr.open_dataset(path, engine="netcdf4") as ds:
                attrs, name = dict(ds.attrs), cohort_name(ds)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            warnings.warn(f"{path}: not a readable cohort file ({err}): left out (launch again "
                          "to recompute it)", SweepWarning, stacklevel=2)
            missing.append(c.name)
            continue
        if attrs.get("config_fingerprint") != config.fingerprint() or name != c.name:
            warnings.warn(f"{path} was written with other settings than {grid_file} "
                          f"(fingerprint {attrs.get('config_fingerprint')}, grid "
                          f"{config.fingerprint()}): left out", SweepWarning, stacklevel=2)
            missing.append(c.name)
            continue
        present.append((path, c.name, attrs))
    if missing and not partial:
        raise RunError(f"{root}: {len(missing)} of {len(expected)} cohorts are not on disk "
                       f"({', '.join(missing)}); launch again to finish the sweep, or open it "
                       "with partial=True")
    if not present:
        raise RunError(f"{root}: none of the {len(expected)} cohorts is on disk yet")
    if sweep.exists() and not missing:
        ds = _read_sweep(sweep)
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
    out = combine([read_cohort(path) for path, _, _ in present], missing)
    if missing:
        out = _with_missing(out, config, expected)
    return out


def _with_missing(ds: xr.Dataset, config: Config, expected: list[Cohort]) -> xr.Dataset:
    """`ds` extended to every width and depth of the grid (NaN where untrained)."""
    widths = sorted({c.width for c in expected})
    depths = sorted({c.depth for c in expected})
    out = ds.reindex(width=widths, depth=depths)
    out["diverged_at"] = out["diverged_at"].astype(np.float64)
    lr = out["lr"].values.astype(np.float64)
    scale = np.asarray(widths, np.float64)[:, None] ** config.grid.lr_width_exponent
    out = out.assign_coords(lr_effective=(("width", "lr"), lr[None, :] * scale))
    return label(out)


def load_weights(root: str | os.PathLike, *, width: int, depth: int, lr: float, seed: int,
                 which: str = "final", parametrization: str | None = None,
                 weight_decay: float | None = None) -> list[np.ndarray]:
    """The weights W_l (each (fan_in, fan_out)) of one trained network.

    Needs `[record] weights = true` in the grid. `lr` is the grid's value
    (η₀), matched to a relative tolerance of 1e-9; `which` is "initial" or
    "final". `parametrization` and `weight_decay` are needed when the grid
    has them as axes.
    """
    if which not in ("initial", "final"):
        raise ValueError(f"which = {which!r}: must be 'initial' or 'final'")
    path = Path(root) / "cohorts" / f"width{width}_depth{depth}.nc"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no cohort with width={width}, depth={depth}")
    try:
        with xr.open_dataset(path, group="weights", engine="netcdf4") as ds:
            point = ds.isel(lr=_match(ds, "lr", lr, path))
            if seed not in ds["seed"].values:
                raise KeyError(f"seed = {seed}: not in {path} (has {ds['seed'].values.tolist()})")
            point = point.sel(seed=seed)
            for name, value in (("parametrization", parametrization),
                                ("weight_decay", weight_decay)):
                if name in ds.dims:
                    if value is None:
                        raise KeyError(f"{path} has a {name} axis "
                                       f"({ds[name].values.tolist()}): give {name}=")
                    point = point.isel({name: _match(ds, name, value, path)})
                elif value is not None:
                    raise KeyError(f"{name} = {value!r}: {path} has no {name} axis")
            return [point[f"{which}_{l}"].values for l in range(depth)]
    except OSError as err:
        raise FileNotFoundError(f"{path} holds no weights; launch with [record] weights = true "
                                f"({err})") from None


def _match(ds: xr.Dataset, name: str, value, path: Path) -> int:
    values = ds[name].values
    if values.dtype.kind in "fc":
        hit = np.flatnonzero(np.isclose(values, value, rtol=1e-9, atol=0))
    else:
        hit = np.flatnonzero(values == value)
    if len(hit) != 1:
        raise KeyError(f"{name} = {value!r}: not in {path} (has {values.tolist()})")
    return int(hit[0])
