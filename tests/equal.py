"""Equality of records across member counts and chunkings.

Everything is bit-identical except the quantities computed from small
batched matmuls (the exact spectral norms of matrices with a side ≤ 64 and
the eigenvalues of the small NTK Gram matrix): XLA:CPU rounds a batched
matmul of small matrices differently for different batch sizes, by 1–2 ulp.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

ROUNDED = ("spec_norm", "spec_dist", "ntk_max_eig", "ntk_min_eig", "jacobian_spec_norm")


def assert_record_equal(got, want, name: str, scale: float | None = None) -> None:
    """`scale`: the size the rounding error is relative to (default the largest
    |want|); λ_min of the NTK is λ_max − λ_max(λ_max·I − Θ), so its error is a
    few ulp of λ_max."""
    got, want = np.asarray(got), np.asarray(want)
    if name in ROUNDED:
        if scale is None:
            scale = np.nanmax(np.abs(want)) if np.isfinite(want).any() else 1.0
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-6 * scale, err_msg=name)
    else:
        np.testing.assert_array_equal(got, want, err_msg=name)


def assert_sweeps_equal(a: xr.Dataset, b: xr.Dataset) -> None:
    exact = [v for v in a.data_vars if v not in ROUNDED]
    xr.testing.assert_identical(a[exact].drop_attrs(), b[exact].drop_attrs())
    for name in a.data_vars:
        if name in ROUNDED:
            assert a[name].dims == b[name].dims
            scale = float(np.nanmax(b["ntk_max_eig"])) if name == "ntk_min_eig" else None
            assert_record_equal(a[name].values, b[name].values, name, scale)
