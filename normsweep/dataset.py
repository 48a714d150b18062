"""Labelled Datasets from trained cohorts: a cohort's trajectories and its
weights, with the run's provenance in the attributes (names: `schema`).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import platform
import socket
import uuid
from typing import TYPE_CHECKING

import jax
import numpy as np
import xarray as xr

from normsweep import config as config_mod
from normsweep import plan
from normsweep.config import Config
from normsweep.plan import Cohort
from normsweep.schema import label, layer_dims

if TYPE_CHECKING:
    from normsweep.train import Trajectory


def now() -> str:
    """The time, UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def package_version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_attrs(config: Config) -> dict:
    """Global attributes: the grid text, the versions of normsweep (from git,
    by setuptools-scm), Python and the libraries that shape the numbers, the
    host, backend and device."""
    device = jax.devices()[0]
    return {
        "title": f"normsweep sweep {config.name}",
        "name": config.name,
        "config_toml": config.text,
        "config_fingerprint": config.fingerprint(),
        "record_format": config_mod.RECORD_FORMAT,
        "normsweep_version": package_version("normsweep"),
        "jax_version": package_version("jax"), "jaxlib_version": package_version("jaxlib"),
        "flax_version": package_version("flax"), "optax_version": package_version("optax"),
        "xarray_version": xr.__version__, "numpy_version": np.__version__,
        "netcdf4_version": package_version("netCDF4"), "python_version": platform.python_version(),
        "host": socket.gethostname(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "created": now(),
        "Conventions": "CF-1.8",
    }


def pad_to(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """`a` padded with NaN along `axis` to `size`."""
    shape = list(a.shape)
    shape[axis] = size - a.shape[axis]
    return np.concatenate([a, np.full(shape, np.nan, a.dtype)], axis=axis)


def sweep_spectral_rank(config: Config) -> int:
    """The most singular values a layer of the sweep has: the length of the
    `singular` dim, the same in every cohort so that they combine."""
    return max(plan.spectral_rank(c.dims(plan.cohort_config(config, c).data.d, config.data.k))
               for c in plan.cohorts(config))


def axis_coords(cohort: Cohort) -> dict:
    """Coordinates of a cohort's member dims."""
    kinds = {"parametrization": str, "lr": np.float64, "weight_decay": np.float64,
             "seed": np.int64}
    return {name: np.asarray(cohort.axis_values(name), kinds[name]) for name in cohort.axes}


def cohort_dataset(config: Config, cohort: Cohort, steps: np.ndarray, traj: Trajectory,
                   inputs: np.ndarray, targets: np.ndarray,
                   seconds: dict[str, float] | None = None) -> xr.Dataset:
    """The labelled Dataset of one cohort's trajectories (members in the
    order of `cohort.axes`); `seconds` ("train_seconds", "compile_seconds")
    become variables over (width, depth), so that sweep.nc holds every
    cohort's."""
    n_layers = max(config.grid.depth)
    spectral_rank = sweep_spectral_rank(config)
    LAYER_DIMS = layer_dims(cohort.data_axes + cohort.axes)
    NET_DIMS = LAYER_DIMS[:-1]
    OUTER = (1,) * (2 + len(cohort.data_axes))      # width, depth[, n][, d]: one cohort

    def shaped(a: np.ndarray) -> np.ndarray:
        # (member, record[, layer]) -> (1, 1[, 1, 1], *member dims, record[, layer])
        return a.reshape(OUTER + cohort.shape + a.shape[1:])

    def padded(a: np.ndarray) -> np.ndarray:
        # layers beyond this cohort's depth are NaN, so every cohort has one layer axis
        return shaped(pad_to(a, -1, n_layers))

    # (member, record, layer) per layer, (member, record) per network
    data = {name: (LAYER_DIMS, padded(value)) if value.ndim == 3 else (NET_DIMS, shaped(value))
            for name, value in traj.records.items()}
    for name, value in (traj.spectra or {}).items():
        # (member, 2, layer[, rank]): the layers, and the singular values to the
        # sweep's most, padded with NaN
        value, dims = pad_to(value, 2, n_layers), NET_DIMS[:-1] + ("spectrum_step", "layer")
        if value.ndim == 4:
            value, dims = pad_to(value, 3, spectral_rank), dims + ("singular",)
        data[name] = (dims, shaped(value))
    data["diverged_at"] = (NET_DIMS[:-1], shaped(traj.diverged_at.astype(np.int64)))
    outer = ("width", "depth") + cohort.data_axes
    for name, value in (seconds or {}).items():
        data[name] = (outer, np.full(OUTER, value, np.float64))
    # the training set, over the n and d dims of a grid with such axes
    lead = (1,) * len(cohort.data_axes)
    coords = {
        "inputs": (cohort.data_axes + ("sample", "feature"),
                   np.asarray(inputs).reshape(lead + np.shape(inputs))),
        "targets": (cohort.data_axes + ("sample", "class"),
                    np.asarray(targets).reshape(lead + np.shape(targets))),
        **{name: [value] for name, value in cohort.outer.items()},
        **axis_coords(cohort), "step": np.asarray(steps, np.int64), "layer": np.arange(n_layers),
        **({"spectrum_step": np.asarray([steps[0], steps[-1]], np.int64),
            "singular": np.arange(spectral_rank)} if traj.spectra else {}),
        "lr_effective": (("width", "lr"), np.asarray(cohort.lr_effective, np.float64)[None]),
        "sample": np.arange(inputs.shape[0]), "feature": np.arange(inputs.shape[1]),
        "class": np.arange(targets.shape[1]),
    }
    ds = xr.Dataset(data, coords=coords, attrs=run_attrs(config))
    ds.attrs["lr_width_exponent"] = config.grid.lr_width_exponent
    # names this file: sweep.nc lists the ids it was combined from (`open_sweep`)
    ds.attrs["cohort_id"] = uuid.uuid4().hex
    return label(ds)


def weights_dataset(cohort: Cohort, traj: Trajectory) -> xr.Dataset:
    """Initial and final weights: initial_l, final_l with dims
    (*member dims, fan_in_l, fan_out_l); member dims (lr, seed) by default."""
    data = {}
    for which, ws in (("initial", traj.initial), ("final", traj.final)):
        for l, w in enumerate(ws):
            dims = tuple(cohort.axes) + (f"fan_in_{l}", f"fan_out_{l}")
            data[f"{which}_{l}"] = xr.Variable(
                dims, w.reshape(cohort.shape + w.shape[1:]),
                {"long_name": f"{which} weights W_{l}", "units": "1",
                 "description": f"{which} weights W_{l}, shape (fan_in, fan_out)"})
    return xr.Dataset(data, coords=axis_coords(cohort))
