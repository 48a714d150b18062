"""normsweep: how weight norms move under plain gradient descent.

    import normsweep
    summary = normsweep.launch("sweeps/quickstart.toml", overrides=["train.steps=100"])
    normsweep.analyze(summary.root)                         # writes DIR/analysis/
    ds = normsweep.open_sweep(summary.root)                 # an xarray Dataset
    ws = normsweep.load_weights(summary.root, width=32, depth=3,
                                lr=0.5, seed=0, which="final")

Reading results imports no JAX; `launch` and `analyze` import what they need
when called.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING
from collections.abc import Sequence

import importlib.metadata

from normsweep.errors import GridError, RunError
from normsweep.folder import open_sweep
from normsweep.store import load_weights

try:
    __version__ = importlib.metadata.version("normsweep")     # from git, by setuptools-scm
except importlib.metadata.PackageNotFoundError:                 # a copy that is not installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from normsweep.analysis.report import Analysis
    from normsweep.config import Config
    from normsweep.sweep import Summary

__all__ = ["launch", "analyze", "open_sweep", "load_weights", "GridError", "RunError",
           "__version__"]


def launch(grid: str | os.PathLike | Config, out: str | os.PathLike | None = None, *,
           overrides: Sequence[str] = (), **options) -> Summary:
    """`normsweep launch` from Python: trains every network of `grid` (a grid
    file, TOML text, or a `config.Config`) not yet in `out` (default
    results/<name>), writes the results folder and returns its `Summary`.
    `overrides` are `--set`'s "KEY=VALUE"; `options` are `sweep.launch`'s
    (budget_bytes, scheduler, devices, compile_workers, reporter). Bad input
    raises `GridError` (as the command line's exit status 2), failures
    `RunError` (exit status 1)."""
    from pathlib import Path

    from normsweep import config as config_mod
    from normsweep import sweep

    if isinstance(grid, config_mod.Config):
        if overrides:
            grid = config_mod.parse(grid.text, grid.source, grid.name, overrides)
        cfg = grid
    elif isinstance(grid, str) and "\n" in grid:
        cfg = config_mod.parse(grid, "<string>", overrides=overrides)
    else:
        cfg = config_mod.load(grid, overrides)
    root = Path(out) if out is not None else Path("results") / cfg.name
    return sweep.launch(cfg, root, **options)


def analyze(root: str | os.PathLike, **options) -> Analysis:
    """`normsweep analyze` from Python: fits, figures and report.md in
    ROOT/analysis; returns the fit table, the report's path and the
    figures' paths. `options`: fit_accuracy. Needs the
    analysis extra (matplotlib, pandas)."""
    from normsweep.analysis.report import analyze as run

    return run(root, **options)
