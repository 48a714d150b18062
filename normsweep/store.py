"""The results database on disk: owns the dataset schema and every write.

Layout of a results folder (see docs/schema.md)::

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
import datetime
import errno
import fcntl
import importlib.metadata
import os
from pathlib import Path
from typing import Iterator

import jax
import numpy as np
import xarray as xr

from normsweep import train
from normsweep.config import Config
from normsweep.errors import RunError
from normsweep.plan import Cohort

LAYER_DIMS = ("width", "depth", "lr", "seed", "step", "layer")
NET_DIMS = LAYER_DIMS[:-1]

# name: (long_name, units)
VARIABLES = {
    "frob_norm": ("Frobenius norm of W_l(t)", "1"),
    "spec_norm": ("spectral norm (largest singular value) of W_l(t)", "1"),
    "frob_dist": ("Frobenius norm of W_l(t) - W_l(0)", "1"),
    "spec_dist": ("spectral norm of W_l(t) - W_l(0)", "1"),
    "update_norm": ("Frobenius norm of the last update W_l(t) - W_l(t-1)", "1"),
    "grad_norm": ("Frobenius norm of the gradient dL/dW_l at W(t)", "1"),
    "grad_dot_weight": ("inner product <W_l(t), dL/dW_l at W(t)>", "1"),
    "loss": ("training loss at W(t)", "1"),
    "jacobian_frob_norm": ("mean over the data of the Frobenius norm of dF(x_i)/dx_i "
                           "(NaN where not measured)", "1"),
    "jacobian_spec_norm": ("mean over the data of the spectral norm of dF(x_i)/dx_i "
                           "(NaN where not measured)", "1"),
    "sharpness": ("largest-magnitude eigenvalue of the loss Hessian at W(t), preconditioned by "
                  "the per-layer lr multipliers (NaN where not measured)", "1"),
    "ntk_max_eig": ("largest eigenvalue of the empirical NTK Gram matrix of the logits on the "
                    "first ntk_points training points (NaN where not measured)", "1"),
    "ntk_min_eig": ("smallest eigenvalue of the empirical NTK Gram matrix of the logits on the "
                    "first ntk_points training points (NaN where not measured)", "1"),
    "accuracy": ("fraction of training points whose largest output is the target class", "1"),
    "diverged_at": ("first step with a non-finite loss, -1 if none", "step"),
    "inputs": ("training inputs, uniform on the unit sphere", "1"),
    "targets": ("one-hot training targets", "1"),
}
COORDS = {
    "width": ("width m of the hidden layers", "1"),
    "depth": ("number of weight matrices L", "1"),
    "lr": ("learning rate lr as written in the grid (eta_0 when scaled with width)", "1"),
    "lr_effective": ("learning rate eta = lr * width**width_exponent used in training", "1"),
    "seed": ("seed of the initial weights", "1"),
    "parametrization": ("parametrization: standard, ntk or mup (see docs/schema.md)", "1"),
    "weight_decay": ("weight decay lambda: each step subtracts lr_effective * lambda * W_l", "1"),
    "step": ("gradient-descent step; 0 is the initialisation", "step"),
    "layer": ("index l of the weight matrix W_l (0 is the input layer)", "1"),
    "sample": ("training point", "1"),
    "feature": ("input coordinate", "1"),
    "class": ("output class", "1"),
}
# The training data is the same in every cohort: stored as (non-index)
# coordinates so that xr.open_mfdataset keeps one copy of it.
DATA_VARS = ("inputs", "targets")


def run_attrs(config: Config) -> dict:
    """Global attributes: the grid text, versions, backend and device."""
    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    device = jax.devices()[0]
    return {
        "title": f"normsweep sweep {config.name}",
        "name": config.name,
        "config_toml": config.text,
        "config_fingerprint": config.fingerprint(),
        "normsweep_version": version("normsweep"),
        "jax_version": version("jax"), "jaxlib_version": version("jaxlib"),
        "flax_version": version("flax"), "optax_version": version("optax"),
        "xarray_version": xr.__version__,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "Conventions": "CF-1.8",
    }


def _label(ds: xr.Dataset) -> xr.Dataset:
    for name, (long_name, units) in {**VARIABLES, **COORDS}.items():
        if name in ds.variables:
            ds[name].attrs.update(long_name=long_name, units=units)
    return ds


def layer_dims(axes: tuple[str, ...]) -> tuple[str, ...]:
    """Dims of a per-layer variable for member dims `axes` (see Config.member_axes)."""
    return ("width", "depth") + tuple(axes) + ("step", "layer")


def axis_coords(cohort: Cohort) -> dict:
    """Coordinates of a cohort's member dims."""
    kinds = {"parametrization": str, "lr": np.float64, "weight_decay": np.float64,
             "seed": np.int64}
    return {name: np.asarray(cohort.axis_values(name), kinds[name]) for name in cohort.axes}


def cohort_dataset(config: Config, cohort: Cohort, steps: np.ndarray, traj: train.Trajectory,
                   inputs: np.ndarray, targets: np.ndarray) -> xr.Dataset:
    """The labelled Dataset of one cohort's trajectories (members in the
    order of `cohort.axes`)."""
    n_layers = max(config.grid.depth)
    LAYER_DIMS = layer_dims(cohort.axes)
    NET_DIMS = LAYER_DIMS[:-1]

    def shaped(a: np.ndarray) -> np.ndarray:
        # (member, record[, layer]) -> (1, 1, *member dims, record[, layer])
        return a.reshape((1, 1) + cohort.shape + a.shape[1:])

    def padded(a: np.ndarray) -> np.ndarray:
        # layers beyond this cohort's depth are NaN, so every cohort has one layer axis
        pad = np.full(a.shape[:-1] + (n_layers - a.shape[-1],), np.nan, a.dtype)
        return shaped(np.concatenate([a, pad], axis=-1))

    data = {name: (LAYER_DIMS, padded(traj.records[name])) for name in train.LAYER_METRICS}
    data.update({name: (NET_DIMS, shaped(value)) for name, value in traj.records.items()
                 if name not in train.LAYER_METRICS})
    data["diverged_at"] = (NET_DIMS[:-1], shaped(traj.diverged_at.astype(np.int64)))
    coords = {
        "inputs": (("sample", "feature"), np.asarray(inputs)),
        "targets": (("sample", "class"), np.asarray(targets)),
        "width": [cohort.width], "depth": [cohort.depth],
        **axis_coords(cohort), "step": np.asarray(steps, np.int64), "layer": np.arange(n_layers),
        "lr_effective": (("width", "lr"), np.asarray(cohort.lr_effective, np.float64)[None]),
        "sample": np.arange(inputs.shape[0]), "feature": np.arange(inputs.shape[1]),
        "class": np.arange(targets.shape[1]),
    }
    ds = xr.Dataset(data, coords=coords, attrs=run_attrs(config))
    ds.attrs["lr_width_exponent"] = config.grid.lr_width_exponent
    return _label(ds)


def weights_dataset(cohort: Cohort, traj: train.Trajectory) -> xr.Dataset:
    """Initial and final weights: initial_l, final_l with dims
    (*member dims, fan_in_l, fan_out_l); member dims (lr, seed) by default."""
    data = {}
    for which, ws in (("initial", traj.initial), ("final", traj.final)):
        for l, w in enumerate(ws):
            dims = tuple(cohort.axes) + (f"fan_in_{l}", f"fan_out_{l}")
            data[f"{which}_{l}"] = xr.Variable(
                dims, w.reshape(cohort.shape + w.shape[1:]),
                {"long_name": f"{which} weights W_{l}, shape (fan_in, fan_out)", "units": "1"})
    return xr.Dataset(data, coords=axis_coords(cohort))


def _encoding(ds: xr.Dataset) -> dict:
    return {name: {"zlib": True, "complevel": 4} for name in ds.data_vars
            if ds[name].dtype.kind == "f"}


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a hidden temporary path beside `path`; renames it to `path` if
    the block succeeds, removes it otherwise."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_netcdf(path: Path, ds: xr.Dataset, groups: dict[str, xr.Dataset] | None = None) -> None:
    """Writes `ds` (and extra groups) to `path` atomically."""
    try:
        with atomic_path(path) as tmp:
            ds.to_netcdf(tmp, engine="netcdf4", encoding=_encoding(ds))
            for group, gds in (groups or {}).items():
                gds.to_netcdf(tmp, mode="a", group=group, engine="netcdf4",
                              encoding=_encoding(gds))
    except OSError as err:
        raise RunError(f"cannot write {path}: {err.strerror or err}") from None


def write_text(path: Path, text: str) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as err:
        raise RunError(f"cannot write {path}: {err.strerror or err}") from None


@contextlib.contextmanager
def folder_lock(root: Path) -> Iterator[None]:
    """Holds an exclusive lock on the results folder `root` while a launch
    writes to it. The kernel drops the lock when its holder dies, so a crashed
    launch never leaves the folder locked."""
    path = Path(root) / ".lock"
    try:
        f = open(path, "a+")
    except OSError as err:
        raise RunError(f"cannot create {path}: {err.strerror or err}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunError(f"{root} is being written by another launch (pid {holder}); wait for "
                           "it to finish, then launch again to add what is missing") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Removes the hidden temporary files a killed writer left in `root` and
    `root/cohorts`. Call only while holding `folder_lock`: then no writer of
    this folder is alive."""
    removed = []
    for folder in (Path(root), Path(root) / "cohorts", Path(root) / "analysis"):
        for tmp in folder.glob(".*.tmp-*"):
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


def combine(datasets: list[xr.Dataset]) -> xr.Dataset:
    """Cohort datasets → one Dataset over all widths and depths.

    Layers beyond a network's depth are NaN (cohorts written by launches of
    different largest depths are padded to the largest); the training data
    (the same in every cohort) is kept once; attributes are the first cohort's.
    """
    layers = np.arange(max(ds.sizes["layer"] for ds in datasets))
    traj = [ds.drop_vars(DATA_VARS).reindex(layer=layers) for ds in datasets]
    out = xr.combine_by_coords(traj, combine_attrs="drop_conflicts", data_vars="all",
                               coords="different", compat="no_conflicts", join="outer")
    out = out.assign_coords({name: datasets[0][name] for name in DATA_VARS})
    out["diverged_at"] = out["diverged_at"].astype(np.int64)
    out.attrs = dict(datasets[0].attrs)
    out.attrs["created"] = max(ds.attrs.get("created", "") for ds in datasets)
    return _label(out)


def open_sweep(root: str | os.PathLike) -> xr.Dataset:
    """The Dataset of a results folder: `sweep.nc`, or the cohorts finished
    so far when the sweep is incomplete."""
    root = Path(root)
    sweep = root / "sweep.nc"
    if sweep.exists():
        return xr.open_dataset(sweep, engine="netcdf4")
    files = sorted((root / "cohorts").glob("*.nc"))
    if not files:
        raise RunError(f"{root}: no sweep.nc and no cohort files: not a normsweep results folder "
                       "(or nothing has finished yet)")
    return combine([read_cohort(f) for f in files])


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
