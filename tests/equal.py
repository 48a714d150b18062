"""Equality of records across member counts and chunkings: bit for bit,
every record (spectral norms and NTK eigenvalues included)."""
from __future__ import annotations

import numpy as np
import xarray as xr


def assert_record_equal(got, want, name: str) -> None:
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)


def assert_sweeps_equal(a: xr.Dataset, b: xr.Dataset) -> None:
    """Identical data, coordinates and variable attributes (the dataset's own
    attributes hold its creation time)."""
    a, b = a.copy(), b.copy()
    a.attrs, b.attrs = {}, {}
    xr.testing.assert_identical(a, b)
