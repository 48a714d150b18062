"""Equality of records across member counts and chunkings: bit for bit on a
CPU, every record (spectral norms and NTK eigenvalues included). That is the
CPU contract (docs/schema.md); on an accelerator (benchmarks/gpu.sh runs some
of these tests there) the records must agree to float32 rounding."""
from __future__ import annotations

import jax
import numpy as np
import xarray as xr

EXACT = jax.default_backend() == "cpu"


def assert_record_equal(got, want, name: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if EXACT:
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        scale = np.nanmax(np.abs(want)) if np.isfinite(want).any() else 1.0
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale, err_msg=name)


def assert_sweeps_equal(a: xr.Dataset, b: xr.Dataset) -> None:
    """Identical data, coordinates and variable attributes (the dataset's own
    attributes hold its creation time)."""
    a, b = a.copy(), b.copy()
    a.attrs, b.attrs = {}, {}
    if EXACT:
        xr.testing.assert_identical(a, b)
    else:
        xr.testing.assert_allclose(a, b, rtol=1e-5)
