"""What one analysis works from, read and parsed once: the sweep, its grid,
the outcome of every network, the fits, and the reference slice the
report describes (the standard parametrization without weight decay, and
the first training set, where the sweep has those axes).

    ctx = Context.load("results/seed")
    ctx.ds, ctx.outcome, ctx.table      # the reference slice
    ctx.full, ctx.full_outcome, ctx.fits  # every slice
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pandas as pd
import xarray as xr

from normsweep import config as config_mod
from normsweep import folder, outcomes, store
from normsweep.analysis import fits, tables
from normsweep.errors import GridError, RunError


@dataclasses.dataclass(frozen=True)
class Context:
    root: Path
    full: xr.Dataset              # every slice of the sweep
    grid: config_mod.Config       # the sweep's own grid
    ds: xr.Dataset                # the reference slice
    cfg: config_mod.Config        # the grid with the reference slice's training set
    ref_labels: dict              # the reference slice's labels ({} without extra axes)
    param: str                    # its parametrization
    weight_decay: float           # and weight decay
    fit_accuracy: float
    full_outcome: xr.DataArray
    outcome: xr.DataArray
    fits: pd.DataFrame            # `fits.fit_sweep` of every slice
    table: pd.DataFrame           # its rows of the reference slice

    @property
    def keep(self) -> xr.DataArray:
        """The reference slice's networks that fit or still train."""
        return outcomes.usable(self.outcome)

    @property
    def full_keep(self) -> xr.DataArray:
        return outcomes.usable(self.full_outcome)

    @functools.cached_property
    def multipliers(self) -> xr.DataArray:
        """c_l of the reference slice's parametrization per (width, depth, layer)."""
        return tables.layer_multipliers(self.ds, self.cfg, self.param)

    @property
    def steps(self) -> int:
        """The last recorded step, T."""
        return int(self.ds["step"].values[-1])

    @classmethod
    def load(cls, root: str | Path, fit_accuracy: float = outcomes.FIT_ACCURACY) -> Context:
        """Reads DIR/sweep.nc (or its cohorts; a partial sweep warns what is
        missing) and parses its grid; RunError when either cannot be read."""
        root = Path(root)
        sweep = folder.open_sweep(root, partial=True)
        try:
            full = sweep.load()
        except (OSError, RuntimeError, ValueError) as err:   # a checksum that does not match
            raise RunError(f"{root}/sweep.nc cannot be read ({err}); delete it and launch "
                           "again to rewrite it from the cohort files") from None
        finally:
            sweep.close()
        try:
            grid = config_mod.parse(full.attrs["config_toml"], source=f"{root} (config_toml)")
        except KeyError:
            raise RunError(f"{root}: the dataset has no config_toml attribute") from None
        except GridError as err:
            raise RunError(f"{root}: the dataset's config_toml is not a valid grid "
                           f"({err})") from None
        ref = fits.reference_labels(full)
        ds, cfg = (full.sel(ref) if ref else full), grid
        if "n" in ref or "d" in ref:
            cfg = grid.with_data(ref.get("n", grid.data.n), ref.get("d", grid.data.d))
            ds = store.training_set(ds, cfg.data.n, cfg.data.d)
        full_outcome = outcomes.classify(full, fit_accuracy)
        table = every = fits.fit_sweep(full, fit_accuracy=fit_accuracy)
        for name, value in ref.items():
            table = table[table[fits.column(name)] == value]
        return cls(root=root, full=full, grid=grid, ds=ds, cfg=cfg, ref_labels=ref,
                   param=ref.get("parametrization", grid.model.parametrization),
                   weight_decay=ref.get("weight_decay", grid.train.weight_decay),
                   fit_accuracy=fit_accuracy, full_outcome=full_outcome,
                   outcome=full_outcome.sel(ref) if ref else full_outcome,
                   fits=every, table=table)
