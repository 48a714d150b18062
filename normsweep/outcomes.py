"""What became of each network: fit, still training, failed or diverged.

  diverged  its loss became non-finite (`diverged_at` ≥ 0);
  failed    final loss ≥ initial loss (with a softmax output the loss is
            bounded by n, so a too-large η saturates the network rather
            than overflowing), or stuck: every layer's gradient exactly 0 at
            the last step without fitting (all ReLUs dead, which a linear
            output turns into a loss below the initial one);
  fit       final training accuracy ≥ `fit_accuracy` (default 0.99);
  training  otherwise: the loss fell but the points are not all fitted yet;
  untrained its cohort is not on disk yet (a partial sweep, `diverged_at`
            NaN): counted apart from `ORDER`, in no fit and no figure.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

FIT, TRAINING, FAILED, DIVERGED = "fit", "training", "failed", "diverged"
UNTRAINED = "untrained"
ORDER = (FIT, TRAINING, FAILED, DIVERGED)
FIT_ACCURACY = 0.99


def classify(ds: xr.Dataset, fit_accuracy: float = FIT_ACCURACY) -> xr.DataArray:
    """Outcome per network, dims (width, depth, lr, seed), as strings."""
    first, last = ds["loss"].isel(step=0), ds["loss"].isel(step=-1)
    acc = ds["accuracy"].isel(step=-1)
    out = xr.full_like(ds["diverged_at"], 0, dtype=object).astype(object)
    out[...] = TRAINING
    out = out.where(~(acc >= fit_accuracy), FIT)
    out = out.where(~(last >= first), FAILED)
    if "grad_norm" in ds:
        stuck = (ds["grad_norm"].isel(step=-1).fillna(0) == 0).all("layer")
        out = out.where(~(stuck & ~(acc >= fit_accuracy)), FAILED)
    out = out.where(~(ds["diverged_at"] >= 0), DIVERGED)
    out = out.where(~ds["diverged_at"].isnull(), UNTRAINED)
    return out.rename("outcome")


def usable(outcome: xr.DataArray) -> xr.DataArray:
    """The networks the fits use: those that fit or still train."""
    return outcome.isin([FIT, TRAINING])


def counts(outcome: xr.DataArray) -> dict[str, int]:
    """Networks per outcome of `ORDER`, and of `UNTRAINED`."""
    return {name: int((outcome == name).sum()) for name in ORDER + (UNTRAINED,)}


def largest_stable_lr(ds: xr.Dataset, outcome: xr.DataArray) -> xr.DataArray:
    """Per (width, depth): the largest η at which no seed failed or diverged
    (NaN if every η did)."""
    ok = outcome.isin([FIT, TRAINING]).all("seed")
    lr = ds["lr_effective"].broadcast_like(ok)
    return lr.where(ok).max("lr").rename("largest_stable_lr")


def as_codes(outcome: xr.DataArray) -> xr.DataArray:
    """Outcomes as numbers 0..3 in `ORDER`, for plotting; NaN for untrained."""
    codes = xr.full_like(outcome, np.nan, dtype=np.float64)
    for i, name in enumerate(ORDER):
        codes = codes.where(outcome != name, i)
    return codes
