"""`normsweep analyze DIR`: every number of the analysis as a table in
DIR/analysis/, the figures, and report.md rendered from those tables alone.

    from normsweep.analysis import report
    result = report.analyze("results/seed")   # writes results/seed/analysis/

`compute` turns the sweep (a `Context`, read once) into tables of plain
numbers and a summary of the scalars; `analyze` writes them (`<name>.csv`,
summary.json, fits.nc), draws the figures, and `render.render_folder`
writes the report from the written files, so that every number in it can
be found in one of them.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from normsweep.analysis import figures as figs
from normsweep import outcomes
from normsweep.analysis import fits, kernel, render, runs, tables, theory
from normsweep.analysis.context import Context
from normsweep.folder import ResultsFolder


@dataclasses.dataclass
class Analysis:
    table: pd.DataFrame
    report: Path
    figures: list[Path]


def analyze(root: str | Path, *, fit_accuracy: float = outcomes.FIT_ACCURACY) -> Analysis:
    """Tables, figures and report.md for the results folder `root`."""
    ctx = Context.load(root, fit_accuracy)
    place = ResultsFolder(ctx.root)
    out = place.subfolder("analysis")
    found, summary, extra = compute(ctx)
    for name, frame in found.items():
        place.write_csv(out / f"{name}.csv", frame)
    place.write_netcdf(out / "fits.nc", fits.to_dataset(ctx.fits))
    drawn = draw(ctx, extra, out)
    summary.update(tables=sorted(found), figures=sorted(p.name for p in drawn))
    place.write_text(out / "summary.json", json.dumps(summary, indent=1, default=_plain))
    report = out / "report.md"
    place.write_text(report, render.render_folder(out))
    return Analysis(ctx.fits, report, drawn)


def _plain(v):
    """numpy scalars as JSON numbers, NaN as null."""
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


def compute(ctx: Context) -> tuple[dict[str, pd.DataFrame], dict, dict]:
    """The analysis as data: (tables by file name, the summary's scalars,
    the arrays the figures need). Tables without rows are left out."""
    ds, cfg, keep, outcome = ctx.ds, ctx.cfg, ctx.keep, ctx.outcome
    g = ctx.grid.grid
    found = {"fits": ctx.fits, "init": tables.init_numbers(ds, cfg),
             "stability": outcomes.largest_stable_lr(ctx.full, ctx.full_outcome)
             .drop_vars("step", errors="ignore").to_dataframe().reset_index(),
             "runs": runs.run_table(ctx.full, "last", ctx.fit_accuracy, ctx.full_outcome)}
    counts = outcomes.counts(outcome)
    summary = {
        "name": cfg.name, "root": str(ctx.root), "fit_accuracy": ctx.fit_accuracy,
        "widths": [int(v) for v in g.width], "depths": [int(v) for v in g.depth],
        "lrs": [float(v) for v in g.lr], "lr_width_exponent": float(g.lr_width_exponent),
        "seeds": [int(v) for v in g.seed], "n": cfg.data.n, "d": cfg.data.d, "k": cfg.data.k,
        "parametrization": ctx.param, "weight_decay": ctx.weight_decay,
        "init": cfg.model.init, "output": cfg.model.output, "loss": cfg.train.loss,
        "dtype": cfg.train.dtype, "steps": ctx.steps,
        "axes": axes(g),
        "reference": ctx.ref_labels, "reference_name": fits.slice_name(ctx.ref_labels),
        "slices": [{"labels": lab, "name": fits.slice_name(lab)} for lab in fits.slices(ctx.full)]
        if ctx.ref_labels else [],
        "counts": counts, "missing": str(ds.attrs.get("cohorts_missing", "")).split()
        if ds.attrs.get("partial") else [],
        **{key: ds.attrs.get(key) for key in ("backend", "device_kind", "jax_version")},
        "regime": theory.regime(ctx.param, cfg.model.init, float(g.lr_width_exponent)),
        "schedule_gaps": fits.schedule_gaps(ds["step"].values),
        "min_networks": fits.MIN_NETWORKS, "homogeneity_p": fits.HOMOGENEITY_P,
        "early_steps": fits.EARLY_STEPS, "converged": kernel.CONVERGED,
        "loss_levels": list(tables.LOSS_LEVELS), "ntk_points": cfg.record.ntk_points,
    }
    extra = {}
    check = tables.identity_check(ds.where(keep), ctx.multipliers, ctx.weight_decay)
    if check:
        extra["check"] = check
        found["identity"] = pd.DataFrame([{k: v for k, v in check.items()
                                           if k not in ("measured", "predicted")}])
    moved = tables.balance(ds, ctx.multipliers, keep)
    if moved:
        extra["moved"] = moved
        found["balance"], found["balance_by_lr"] = moved["table"], moved["by_lr"]
        summary["balance"] = moved["summary"]
    summary["spectrum"] = dict(zip(("depth", "layer"), tables.spectrum_layer(ds)))
    more = {
        "first_step": tables.first_step_terms(ds, cfg),
        "cumulative_terms": tables.cumulative_terms(ds, ctx.multipliers, keep)
        if ctx.weight_decay == 0 else None,
        "stable_ranks": tables.stable_ranks(ds, cfg, keep),
        "spectra": tables.spectra_table(ds, cfg, keep),
        "jacobian": tables.jacobian_table(ds, cfg, keep),
        "fit_norms": tables.fit_norms(ds, outcome, ctx.fit_accuracy),
        "norm_by_loss": tables.norm_by_loss(ds, outcome),
        "norm_growth": tables.norm_growth(ds, outcome, ctx.fit_accuracy)
        if "margin" in ds else None,
        "sharpness": tables.sharpness_table(ds, outcome) if "sharpness" in ds else None,
        "sharpness_stability": tables.stability_against_sharpness(ds, outcome),
        "regimes": regime_table(fits.regimes(ds, ctx.fit_accuracy)),
        "depth_exponents": fits.depth_exponents(ds, ctx.fit_accuracy),
        "local_slopes": tables.local_width_slopes(ds, ctx.fit_accuracy),
        "lazy": lazy_extrapolation(ctx.table, ctx.param, cfg.model.init,
                                   float(g.lr_width_exponent)),
        "data_size": fits.data_size_exponents(ctx.full, ctx.fit_accuracy),
        "ntk": ntk_table(ctx) if "ntk_max_eig" in ctx.full else None,
    }
    summary["kernel_reason"] = kernel.not_applicable(ctx.full, ctx.grid)
    if summary["kernel_reason"] is None:
        more["kernel"] = kernel.kernel_table(ctx.root, ctx.full, ctx.grid)
    lr = tables.coordinate_lr(ctx.full, ctx.full_keep)
    if lr is not None:
        more["coordinates"] = tables.coordinate_slopes(ctx.full, ctx.full_keep, lr, cfg)
    if "activation_change" in ctx.full and ctx.full.sizes["width"] > 1:
        depth = int(ctx.full["depth"].max())
        summary["coordinate"] = {"lr": lr, "depth": depth, "counts": outcomes.counts(
            ctx.full_outcome.sel(depth=depth))}
    extra["coordinate_lr"] = lr
    found.update({name: frame for name, frame in more.items()
                  if frame is not None and len(frame)})
    return found, summary, extra


def axes(grid) -> dict:
    """The grid's parametrization, weight-decay, n and d axes that it has."""
    return {name: list(values) for name, values in (
        ("parametrization", grid.parametrization), ("weight_decay", grid.weight_decay),
        ("n", grid.n), ("d", grid.d)) if values}


def regime_table(regimes: list) -> pd.DataFrame:
    """`fits.regimes` as rows: the exponent of `along` (width or lr) fitted
    in each slice `at`, with its interval and the F test's p of the family."""
    return pd.DataFrame([
        {"metric": metric, "depth": depth, "layer": layer, "along": local.along,
         "at": float(at), "exponent": e, "lo": lo, "hi": hi, "p": local.p,
         "differ": local.differ}
        for metric, depth, layer, *pair in regimes for local in pair
        for at, e, lo, hi in zip(local.at, local.exponent, local.lo, local.hi)])


def lazy_extrapolation(table: pd.DataFrame, param: str, init: str,
                       p: float) -> pd.DataFrame | None:
    """For a standard sweep at an η scaling `p` outside the stable range, the
    fit rows' joint law C·η^a·m^b followed along η ∝ 1/m (b − a: a point
    estimate, valid as far as the law holds jointly) beside the lazy
    prediction (`theory.predict` at width_exponent −1)."""
    if param != "standard" or theory.width_exponents(param, init, p, 3).stable:
        return None
    rows = []
    for metric in ("rel_frob_dist", "rel_spec_dist", "rel_param_dist"):
        for r in table[table.metric == metric].itertuples():
            pred = theory.predict(metric, r.layer_role, param, init, -1.0, int(r.depth))
            if np.isfinite(pred) and np.isfinite(r.lr_exponent):
                rows.append({"metric": metric, "depth": r.depth, "layer": r.layer,
                             "layer_role": r.layer_role,
                             "implied": r.width_exponent - r.lr_exponent, "lazy": pred})
    return pd.DataFrame(rows)


def ntk_table(ctx: Context) -> pd.DataFrame:
    """Per slice, depth and eigenvalue (λ_max, λ_min) of the empirical NTK:
    its median at init at the smallest and largest width, and the power law
    C·η^a·m^b of its relative change |λ(T)/λ(0) − 1| over the networks that
    fit or still train."""
    full, keep, rows = ctx.full, ctx.full_keep, []
    lr_eff = full["lr_effective"].transpose("lr", "width").values
    for lab in fits.slices(full):
        for depth in full["depth"].values:
            for name in ("ntk_max_eig", "ntk_min_eig"):
                y = tables.ntk_change(full, name).where(keep).sel(lab).sel(depth=depth)
                fit = fits.fit_power_law(y.transpose("lr", "width", "seed").values, lr_eff,
                                         full["width"].values)
                lam0 = full[name].isel(step=0).sel(lab).sel(depth=depth)
                rows.append({"slice": fits.slice_name(lab), "depth": int(depth),
                             "eigenvalue": name, "init_smallest_width": float(
                                 lam0.isel(width=0).median()),
                             "init_largest_width": float(lam0.isel(width=-1).median()),
                             "a": fit.a, "a_lo": fit.a_lo, "a_hi": fit.a_hi,
                             "b": fit.b, "b_lo": fit.b_lo, "b_hi": fit.b_hi, "n": fit.n})
    return pd.DataFrame(rows)


def draw(ctx: Context, extra: dict, out: Path) -> list[Path]:
    """The report's figures, each where its data are."""
    ds, cfg, outcome, keep = ctx.ds, ctx.cfg, ctx.outcome, ctx.keep
    drawn = [figs.fig_init(ds, cfg, out), *figs.fig_trajectories(ds, out),
             figs.fig_stability(ds, outcome, out)]
    if ds.sizes["width"] > 1:
        drawn.append(figs.fig_scaling(ds, ctx.table, out, keep))
    if "check" in extra:
        drawn.append(figs.fig_identity(extra["check"], out))
    if "moved" in extra:
        drawn.append(figs.fig_balance(extra["moved"]["moved"], extra["moved"]["summary"]["depth"],
                                      out))
    if "sharpness" in ds:
        drawn.append(figs.fig_sharpness(ds, outcome, out))
    if "jacobian_spec_norm" in ds:
        drawn.append(figs.fig_jacobian(ds, outcome, cfg.model.output == "softmax", out))
    if "singular_values" in ds:
        drawn.append(figs.fig_spectrum(ds, cfg, keep, out))
    if "margin" in ds and bool(((outcome == outcomes.FIT)
                                & tables.separated_at(ds, ctx.fit_accuracy).notnull()).any()):
        drawn.append(figs.fig_margin(ds, outcome, ctx.fit_accuracy, out))
    if ctx.ref_labels:
        drawn.append(figs.fig_comparison(ctx.full, out))
    if "ntk_max_eig" in ctx.full:
        drawn.append(figs.fig_ntk(ctx.full, ctx.full_outcome, out))
    if extra.get("coordinate_lr") is not None and "activation_change" in ctx.full \
            and ctx.full.sizes["width"] > 1:
        drawn.append(figs.fig_coordinates(ctx.full, ctx.full_keep, extra["coordinate_lr"], out))
    return drawn
