"""Equality of results in the two senses of the determinism promise
(docs/schema.md): an identical run (same grid, chunking, devices, machine
and versions) gives the same bits; another chunking, member count or number
of devices gives the same numbers to float32 rounding where the dynamics are
stable, as the tests' short runs at moderate learning rates are."""
from __future__ import annotations

import numpy as np
import xarray as xr

TIMES = ("train_seconds", "compile_seconds")    # wall times: never the same twice
RTOL = 1e-5     # relative, against the largest magnitude of the record
ATOL = 1e-6     # relative too: the floor for entries far below the largest


def assert_record_close(got, want, name: str, rtol: float = RTOL, scale: float | None = None
                        ) -> None:
    """`got` equals `want` to rounding: same NaNs, values within rtol of each
    entry, or within ATOL of `scale` (default: the record's largest magnitude;
    λ_min of the NTK is accurate to a few ulp of λ_max, its scale)."""
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name}: NaNs")
    if scale is None:
        scale = np.nanmax(np.abs(want)) if np.isfinite(want).any() else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=ATOL * scale, err_msg=name)


def assert_sweeps_close(a: xr.Dataset, b: xr.Dataset, rtol: float = RTOL) -> None:
    """The same variables, coordinates and divergence steps, and records
    equal to rounding (the datasets' own attributes hold their creation
    time and are not compared, nor are the wall times)."""
    a, b = a.drop_vars(TIMES, errors="ignore"), b.drop_vars(TIMES, errors="ignore")
    assert set(a.data_vars) == set(b.data_vars)
    xr.testing.assert_identical(a.coords.to_dataset().drop_attrs(), b.coords.to_dataset().drop_attrs())
    for name in a.data_vars:
        assert a[name].dims == b[name].dims and a[name].attrs == b[name].attrs, name
        if a[name].dtype.kind in "iub":
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
        else:
            assert_record_close(a[name].values, b[name].values, name, rtol)


def assert_sweeps_identical(a: xr.Dataset, b: xr.Dataset) -> None:
    """The same bits in every variable and coordinate but the wall times, and
    the same variable attributes."""
    a, b = a.drop_vars(TIMES, errors="ignore"), b.drop_vars(TIMES, errors="ignore")
    xr.testing.assert_identical(a.drop_attrs(deep=False), b.drop_attrs(deep=False))


def assert_folders_identical(a, b) -> None:
    """`assert_sweeps_identical` on the sweep.nc of results folders `a` and `b`."""
    with xr.open_dataset(a / "sweep.nc") as x, xr.open_dataset(b / "sweep.nc") as y:
        assert_sweeps_identical(x, y)
