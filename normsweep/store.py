"""The results database on disk: every write, every read, and the folder's
safety (marker, lock, temporaries). The names are `schema`'s; the Datasets
written come from `dataset`. Reading imports no JAX.

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
import signal
import stat
import threading
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import xarray as xr

from normsweep.config import Config
from normsweep.errors import GridError, RunError
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


# what reading a damaged netCDF file can raise: HDF5's checksum and format
# errors, and from a damaged attribute or header, anything decoding them does
DAMAGE = (OSError, ValueError, RuntimeError, AttributeError, KeyError, IndexError, TypeError,
          UnicodeError, OverflowError)

DIGEST = "attrs_sha256"


def attrs_digest(ds: xr.Dataset) -> str:
    """SHA-256 of every attribute of `ds` and of its variables (values as
    text), but `DIGEST`: HDF5's checksums cover the data, not the attributes,
    where the grid, the fingerprint and the units live."""
    import hashlib
    import json

    def text(attrs):
        return sorted((str(k), str(v.tolist() if hasattr(v, "tolist") else v))
                      for k, v in attrs.items() if k != DIGEST)
    blob = json.dumps([text(ds.attrs)] + [[str(n), text(v.attrs)]
                                          for n, v in sorted(ds.variables.items())])
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def with_digest(ds: xr.Dataset) -> xr.Dataset:
    out = ds.copy(deep=False)
    out.attrs = {k: v for k, v in ds.attrs.items() if k != DIGEST}
    out.attrs[DIGEST] = attrs_digest(out)
    return out


def check_digest(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """`ds` read from `path`, after checking its attributes against their
    digest (files of earlier versions have none and pass); `RunError` names
    the file otherwise."""
    if DIGEST in ds.attrs and ds.attrs[DIGEST] != attrs_digest(ds):
        raise RunError(f"{path}: its attributes do not match their checksum: the file is "
                       "damaged")
    return ds


@contextlib.contextmanager
def open_checked(path: Path, group: str | None = None,
                 what: str = "netCDF file") -> Iterator[xr.Dataset]:
    """A netCDF file (or its `group`) opened lazily, attributes checked
    (`check_digest`); whatever a damaged file raises, opening or reading it
    in the block, becomes a `RunError` that names it as a `what`. Ctrl-C is
    held back until the file is closed (`interrupts_held`)."""
    where = f"{path}" if group is None else f"{path} (group {group})"
    with interrupts_held():
        try:
            ds = xr.open_dataset(path, group=group, engine="netcdf4")
        except DAMAGE as err:
            raise RunError(f"{where}: not a readable {what} ({type(err).__name__}: {err})") \
                from None
        try:
            yield check_digest(ds, path)
        except DAMAGE as err:
            raise RunError(f"{where}: not a readable {what} ({type(err).__name__}: {err})") \
                from None
        finally:
            ds.close()


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


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Holds Ctrl-C (SIGINT) back until the block ends, then delivers it to
    the handler that was in place. A KeyboardInterrupt raised inside
    xarray's netCDF code can leave its HDF5 lock held, and the next close
    (the writer's own cleanup, or Python's exit) then waits on it for ever.
    A second Ctrl-C is delivered at once. Only in the main thread, the only
    one Python delivers signals to."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    held = []

    def deliver(frame) -> None:
        if callable(previous):
            previous(signal.SIGINT, frame)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)

    def hold(signum, frame) -> None:
        if held:
            deliver(frame)
        held.append(frame)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            deliver(held[0])


def write_failure(path: Path, err: BaseException) -> RunError:
    """A write error that names the file and the cause. HDF5 reports a full
    disk or a vanished folder only as "NetCDF: HDF error", and a vanished
    folder can surface as a permission error: look at the folder instead."""
    folder = path.parent
    blocked = file_on_path(folder)
    if getattr(err, "errno", None) == errno.ENOTDIR or blocked:
        cause = f"{blocked or folder} is a file, not a folder"
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
    """Writes `ds` (and extra groups) to `path` atomically, Ctrl-C held back
    until the file is whole (`interrupts_held`)."""
    try:
        with interrupts_held(), atomic_path(path) as tmp:
            with_digest(ds).to_netcdf(tmp, engine="netcdf4", encoding=_encoding(ds))
            for group, gds in (groups or {}).items():
                with_digest(gds).to_netcdf(tmp, mode="a", group=group, engine="netcdf4",
                                           encoding=_encoding(gds))
    except (OSError, RuntimeError) as err:
        raise write_failure(path, err) from None


def write_text(path: Path, text: str) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as err:
        raise write_failure(path, err) from None


GROW_FILE = "grow.toml"      # the grid of a grow not yet finished (see `sweep.launch`)


def recorded_fingerprint(grid_file: Path) -> str | None:
    """The fingerprint of a grid file (None if missing or unreadable)."""
    from normsweep import config as config_mod

    try:
        return config_mod.load(grid_file).fingerprint()
    except GridError:
        return None


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


def read_cohort(path: Path, *, weights: bool = False) -> xr.Dataset:
    """A cohort file, fully loaded (the file is closed afterwards); with
    `weights`, its "weights" group is read through too, so that its
    checksums are verified (a damaged group raises here, naming the file)."""
    with open_checked(path, what="cohort file") as ds:
        out = ds.load()
    if "width" not in out.dims or "depth" not in out.dims:
        raise RunError(f"{path}: not a cohort file (no width and depth)")
    if weights:
        with open_checked(path, "weights", "cohort file") as group:
            group.load()
    return out


def grid_of(attrs: dict) -> Config | None:
    """The grid that wrote a file, from its attributes (None if unreadable)."""
    from normsweep import config as config_mod

    try:
        return config_mod.parse(str(attrs.get("config_toml", "")), source="cohort file")
    except GridError:
        return None


def covers(big: Config, small: Config) -> bool:
    """Whether the grid `big` holds every network of `small`: the same core
    settings, and each member axis of `big` a superset of `small`'s."""
    if big.core_settings() != small.core_settings():
        return False
    have = big.member_values()
    return all(v in have[axis] for axis, values in small.member_values().items()
               for v in values)


def extended_grid(config: Config, attrs: dict) -> Config | None:
    """The grid that wrote a cohort file (its attributes `attrs`) when that
    grid extends `config` (`covers`; a grow that was interrupted, failed or
    limited by --only leaves such files, beside a grid.toml that still
    records `config`), in the same record format and with every axis of
    `config` an axis of the file too (a fixed setting that became a
    one-value axis changes the layout: that file is rewritten). None
    otherwise."""
    from normsweep import config as config_mod

    if int(attrs.get("record_format", 1)) != config_mod.RECORD_FORMAT:
        return None             # records other quantities: never this grid's
    held = grid_of(attrs)
    if held is None or not covers(held, config):
        return None
    if any(getattr(config.grid, axis) and not getattr(held.grid, axis)
           for axis in ("parametrization", "weight_decay")):
        return None
    return held


def holds(config: Config, attrs: dict) -> bool:
    """The one rule for "done": a cohort file (its attributes `attrs`) holds
    every network of `config`'s cohort of that name when this grid wrote it
    (its fingerprint) or a grid that extends this one did (`extended_grid`)."""
    return attrs.get("config_fingerprint") == config.fingerprint() \
        or extended_grid(config, attrs) is not None


def narrowed(ds: xr.Dataset, config: Config) -> xr.Dataset:
    """A cohort Dataset that `holds` the networks of `config`, cut to them
    and labelled as `config` wrote it: a grown file's extra networks and
    axes left out."""
    if ds.attrs.get("config_fingerprint") == config.fingerprint():
        return ds
    want = config.member_values()
    out = ds
    for axis, values in want.items():
        if axis not in out.dims:
            continue
        as_axis = axis in ("lr", "seed") or bool(getattr(config.grid, axis))
        have = out[axis].values
        if have.dtype.kind in "fc":
            idx = [int(np.flatnonzero(np.isclose(have, v, rtol=1e-12, atol=0))[0])
                   for v in values]
        else:
            idx = [int(np.flatnonzero(have == v)[0]) for v in values]
        out = out.isel({axis: idx}) if as_axis else out.isel({axis: idx[0]}, drop=True)
    out.attrs = {**ds.attrs, "config_toml": config.text,
                 "config_fingerprint": config.fingerprint()}
    return out


def read_cohort_of(config: Config, path: Path) -> xr.Dataset:
    """`read_cohort`, `narrowed` to the networks of `config`."""
    return narrowed(read_cohort(path), config)


def file_attrs(path: Path) -> dict | None:
    """The global attributes of the netCDF file at `path`, checked against
    their digest (None when it is missing, unreadable or damaged)."""
    try:
        with open_checked(path) as ds:
            return dict(ds.attrs)
    except RunError:
        return None


DATA_AXES = ("n", "d")      # the grid's optional axes of the training set's size


def cohort_name(ds: xr.Dataset) -> str:
    """A cohort file's name, from its own dims (`plan.Cohort.name`)."""
    data = "".join(f"{a}{int(ds[a][0])}_" for a in DATA_AXES if a in ds.dims)
    return f"{data}width{int(ds['width'][0])}_depth{int(ds['depth'][0])}"


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
    # the training sets' own dims go with them: cohorts of different n or d
    # must not be concatenated along sample or feature
    traj = [ds.drop_vars(DATA_VARS + ("sample", "feature", "class"), errors="ignore")
            .reindex(layer=layers) for ds in datasets]
    out = xr.combine_by_coords(traj, combine_attrs="drop_conflicts", data_vars="all",
                               coords="different", compat="no_conflicts", join="outer")
    if any(a in datasets[0].dims for a in DATA_AXES):
        # one training set per (n, d): combined over those dims, padded with NaN
        sets = {tuple(int(ds[a][0]) for a in DATA_AXES if a in ds.dims):
                ds.reset_coords(list(DATA_VARS))[list(DATA_VARS)] for ds in datasets}
        full = {dim: np.arange(max(ds.sizes[dim] for ds in sets.values()))
                for dim in ("sample", "feature")}
        data = xr.combine_by_coords([ds.reindex(full) for ds in sets.values()],
                                    combine_attrs="drop")
        out = out.assign_coords({name: data[name] for name in DATA_VARS})
    else:
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


def read_sweep(path: Path) -> xr.Dataset:
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except DAMAGE as err:
        raise RunError(f"{path}: not a readable sweep file ({err})") from None
    try:
        return check_digest(ds, path)
    except RunError:
        ds.close()
        raise


def training_set(ds: xr.Dataset, n: int, d: int) -> xr.Dataset:
    """`ds` (one (n, d) slice of a sweep with n or d axes) with `inputs` and
    `targets` cut to that set's n points and d features: the combined sweep
    pads them with NaN to the largest."""
    return ds.isel(sample=slice(0, n), feature=slice(0, d))


def load_weights(root: str | os.PathLike, *, width: int, depth: int, lr: float, seed: int,
                 which: str = "final", parametrization: str | None = None,
                 weight_decay: float | None = None, n: int | None = None,
                 d: int | None = None) -> list[np.ndarray]:
    """The weights W_l (each (fan_in, fan_out)) of one trained network.

    Needs `[record] weights = true` in the grid. `lr` is the grid's value
    (η₀), matched to a relative tolerance of 1e-9; `which` is "initial" or
    "final". `parametrization`, `weight_decay`, `n` and `d` are needed when
    the grid has them as axes.
    """
    if which not in ("initial", "final"):
        raise ValueError(f"which = {which!r}: must be 'initial' or 'final'")
    data = "".join(f"{a}{int(v)}_" for a, v in (("n", n), ("d", d)) if v is not None)
    path = Path(root) / "cohorts" / f"{data}width{width}_depth{depth}.nc"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no cohort with {data.replace('_', ', ')}"
                                f"width={width}, depth={depth}")
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
    except (RuntimeError, ValueError) as err:
        raise RunError(f"{path}: its weights cannot be read ({err}): the file is damaged; "
                       "launch again to move it aside and recompute it") from None


def _match(ds: xr.Dataset, name: str, value, path: Path) -> int:
    values = ds[name].values
    if values.dtype.kind in "fc":
        hit = np.flatnonzero(np.isclose(values, value, rtol=1e-9, atol=0))
    else:
        hit = np.flatnonzero(values == value)
    if len(hit) != 1:
        raise KeyError(f"{name} = {value!r}: not in {path} (has {values.tolist()})")
    return int(hit[0])
