"""The run table: one row per network, as W&B's runs table or Optuna's
`trials_dataframe()` give them (`normsweep table`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from normsweep import outcomes
from normsweep.analysis.tables import first_fit_step

PER_LAYER = ("frob_norm", "spec_norm", "frob_dist")


def recorded_step(ds: xr.Dataset, step: str | int) -> int:
    """`step` ("last" or a number) as a recorded step of `ds`; ValueError
    naming the nearest recorded ones otherwise."""
    steps = ds["step"].values
    if step == "last":
        return int(steps[-1])
    step = int(step)
    if step not in steps:
        near = steps[np.argsort(np.abs(steps - step))[:2]]
        raise ValueError(f"step {step} is not recorded; the nearest recorded steps are "
                         f"{', '.join(str(int(s)) for s in sorted(near))} (of "
                         f"{int(steps[0])}…{int(steps[-1])})")
    return step


def run_table(ds: xr.Dataset, step: str | int = "last",
              fit_accuracy: float = outcomes.FIT_ACCURACY,
              outcome: xr.DataArray | None = None) -> pd.DataFrame:
    """One row per network of the sweep `ds`: its grid coordinates (and
    `lr_effective`), `outcome` (`outcomes.classify`), `first_fit_step` (the
    first recorded step at `fit_accuracy`, NaN if never), and at `step`: the
    loss, accuracy, margin where recorded (the step in `at_step`), and each layer's ‖W_l‖_F,
    ‖W_l‖₂ and ‖W_l − W_l(0)‖_F as columns `frob_norm_<l>`, … (NaN beyond a
    network's depth). Untrained networks of a partial sweep are left out.
    `outcome`: `outcomes.classify(ds, fit_accuracy)`, when the caller has it."""
    at = recorded_step(ds, step)
    point = ds.sel(step=at)
    if outcome is None:
        outcome = outcomes.classify(ds, fit_accuracy)
    cols = {"outcome": outcome.astype(str),
            "lr_effective": ds["lr_effective"].broadcast_like(outcome),
            "first_fit_step": first_fit_step(ds, fit_accuracy),
            "at_step": xr.full_like(outcome, at, dtype=np.int64)}
    for name in ("loss", "accuracy", "margin"):
        if name in point:
            cols[name] = point[name].drop_vars("step", errors="ignore")
    for name in PER_LAYER:
        for layer in point["layer"].values:
            cols[f"{name}_{int(layer)}"] = point[name].sel(layer=layer, drop=True).drop_vars(
                "step", errors="ignore")
    cols = {name: da.drop_vars("step", errors="ignore") for name, da in cols.items()}
    frame = xr.Dataset(cols).to_dataframe().reset_index()
    keep = [c for c in frame.columns if c in outcome.dims or c in cols]
    frame = frame[keep]
    return frame[frame["outcome"] != outcomes.UNTRAINED].reset_index(drop=True)
