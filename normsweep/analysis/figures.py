"""The report's figures: each a function of the sweep (and the fit table or
outcomes it shows) that writes one PNG into the analysis folder and
returns its path.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from normsweep import outcomes
from normsweep.analysis import fits, tables, theory  # noqa: E402


def _save(fig, path: Path) -> Path:
    """Writes `fig` to `path` (in a results folder's analysis/) as the
    folder writes every file: a temporary beside it, renamed into place
    (never a partial PNG, never through a link)."""
    from normsweep import store
    from normsweep.folder import ResultsFolder

    try:
        with ResultsFolder(path.parents[1]).atomic(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    except OSError as err:
        raise store.write_failure(path, err) from None
    finally:
        plt.close(fig)
    return path


def fig_init(ds: xr.Dataset, cfg, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    widths = ds["width"].values
    first = ds.isel(step=0, lr=0)
    depth = int(ds["depth"].max())
    for ax, var, label in ((axes[0], "frob_norm", "‖W_l(0)‖_F"),
                           (axes[1], "spec_norm", "‖W_l(0)‖₂")):
        for role, layer, color in (("input", 0, "C0"), ("hidden", 1, "C1"),
                                   ("readout", depth - 1, "C2")):
            if role == "hidden" and depth < 3:
                continue
            vals = first[var].sel(depth=depth, layer=layer)
            ax.errorbar(widths, vals.mean("seed"), vals.std("seed"), fmt="o", color=color,
                        label=f"{role} (measured)")
            th = []
            for m in widths:
                p = cfg.data.d if role == "input" else int(m)
                q = cfg.data.k if role == "readout" else int(m)
                s2 = theory.init_variance(cfg.model.init, p, int(m),
                                          tables.slice_parametrization(ds, cfg), q)
                th.append(theory.frobenius(p, q, s2) if var == "frob_norm"
                          else theory.spectral_finite(p, q, s2))
            ax.plot(widths, th, "--", color=color, label=f"{role} (theory)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log" if var == "frob_norm" else "linear")
        ax.set_xlabel("width m")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].set_title(f"Frobenius norm at init vs σ√(pq), depth {depth}")
    axes[1].set_title(f"spectral norm at init vs finite-size edge, depth {depth}")
    fig.suptitle("mean ± sd over seeds; the report's table pools every depth", fontsize=8)
    return _save(fig, out / "init_norms.png")


def fig_trajectories(ds: xr.Dataset, out: Path) -> list[Path]:
    depth = int(ds["depth"].values[len(ds["depth"]) // 2])
    layer = 1 if depth > 2 else 0
    paths = []
    for var in ("frob_norm", "spec_norm", "frob_dist"):
        da = ds[var].sel(depth=depth, layer=layer).mean("seed").isel(step=slice(1, None))
        da = da.assign_coords(lr=[f"{v:.3g}" for v in ds["lr"].values]).rename(lr="η₀")
        grid = da.plot.line(x="step", hue="η₀", col="width", col_wrap=min(5, ds.sizes["width"]),
                            xscale="log", yscale="log", figsize=(14, 3.2))
        name = ds[var].attrs.get("long_name", var)
        grid.fig.suptitle(f"{name}, layer {layer}, depth {depth} (mean over seeds)", y=1.05)
        for ax in grid.axs.flat:
            ax.set_xlabel("step")
            ax.set_ylabel(_label(ds[var]) if ax in grid.axs[:, 0] else "")
        paths.append(_save(grid.fig, out / f"trajectory_{var}.png"))
    return paths


def fig_scaling(ds: xr.Dataset, table: pd.DataFrame, out: Path, keep: xr.DataArray) -> Path:
    derived = fits.derived_metrics(ds).where(keep)
    depth = int(ds["depth"].max())
    roles = [(0, "input")] + ([(1, "hidden")] if depth > 2 else []) + [(depth - 1, "readout")]
    fig, axes = plt.subplots(1, len(roles), figsize=(5 * len(roles), 4), squeeze=False)
    widths = ds["width"].values.astype(float)
    for ax, (layer, role) in zip(axes[0], roles):
        row = table[(table.metric == "rel_frob_dist") & (table.layer == layer)
                    & (table.depth == depth)].iloc[0]
        da = derived["rel_frob_dist"].sel(depth=depth, layer=layer)
        if np.isfinite(row.width_exponent):
            ax.plot([], [], "k-", lw=1, label=(
                f"fit: m^{row.width_exponent:.2f} [{row.width_exponent_lo:.2f}, "
                f"{row.width_exponent_hi:.2f}]" + (f", η^{row.lr_exponent:.2f} "
                f"[{row.lr_exponent_lo:.2f}, {row.lr_exponent_hi:.2f}]"
                if np.isfinite(row.lr_exponent) else "")))
        for i, lr in enumerate(ds["lr"].values):
            vals = da.sel(lr=lr)
            if not np.isfinite(vals).any():
                continue
            ax.errorbar(widths, vals.mean("seed"), vals.std("seed"), fmt="o", color=f"C{i}",
                        label=f"η₀ = {lr:.3g}")
            if np.isfinite(row.width_exponent):
                eta = ds["lr_effective"].sel(lr=lr).values
                a = row.lr_exponent if np.isfinite(row.lr_exponent) else 0.0
                ax.plot(widths, row.prefactor * eta**a * widths**row.width_exponent, "-",
                        color=f"C{i}", lw=1)
        _against_width(ax, "‖W(T) − W(0)‖_F / ‖W(0)‖_F", f"{role} layer {layer}, depth {depth}")
    return _save(fig, out / "scaling_rel_frob_dist.png")


def _against_width(ax, ylabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _short_log_axis(ax.yaxis)
    ax.set_xlabel("width m")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    # below the panel: inside it the legend covers the points
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
              frameon=False)


def _short_log_axis(axis) -> None:
    """Ticks labelled at 1, 2 and 5 × 10^k: a log axis spanning less than a
    decade otherwise shows one label, or none."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _label(da: xr.DataArray) -> str:
    """An axis label: the variable's long name, with its units unless they are "1"."""
    units = da.attrs.get("units", "1")
    name = da.attrs.get("long_name", da.name)
    return name if units in ("1", "") else f"{name} [{units}]"


def fig_stability(ds: xr.Dataset, outcome: xr.DataArray, out: Path) -> Path:
    codes = outcomes.as_codes(outcome)
    # per cell, the worst outcome over seeds
    worst = codes.max("seed")
    depths = ds["depth"].values
    fig, axes = plt.subplots(1, len(depths), figsize=(3.2 * len(depths), 3.2), squeeze=False)
    cmap = matplotlib.colors.ListedColormap(["#2ca02c", "#9ecae1", "#ff7f0e", "#d62728"])
    for ax, depth in zip(axes[0], depths):
        im = ax.imshow(worst.sel(depth=depth).transpose("lr", "width").values, origin="lower",
                       cmap=cmap, vmin=-0.5, vmax=3.5, aspect="auto")
        ax.set_xticks(range(ds.sizes["width"]), ds["width"].values, fontsize=7)
        ax.set_yticks(range(ds.sizes["lr"]), [f"{v:.3g}" for v in ds["lr"].values], fontsize=7)
        ax.set_xlabel("width m")
        ax.set_ylabel("lr (η₀)" if ax is axes[0, 0] else "")
        ax.set_title(f"depth {depth}", fontsize=9)
    cbar = fig.colorbar(im, ax=axes[0].tolist(), ticks=range(4))
    cbar.ax.set_yticklabels(outcomes.ORDER)
    fig.suptitle("outcome per (width, η): worst over seeds", y=1.04)
    return _save(fig, out / "stability.png")


def fig_sharpness(ds: xr.Dataset, outcome: xr.DataArray, out: Path) -> Path:
    """Sharpness over time at the largest width and depth, one line per η
    (mean over the seeds that fit or still train), each beside its 2/η."""
    width, depth = int(ds["width"].values[-1]), int(ds["depth"].values[-1])
    kept = ds["sharpness"].where(outcomes.usable(outcome))
    fig, ax = plt.subplots(figsize=(6, 4))
    positive = True
    for i, lr in enumerate(ds["lr"].values):
        da = kept.sel(width=width, depth=depth, lr=lr).mean("seed").dropna("step")
        if not da.size:
            continue
        positive = positive and bool((da > 0).all())
        eta = float(ds["lr_effective"].sel(width=width, lr=lr))
        ax.plot(da["step"], da, "o-", ms=3, color=f"C{i}", label=f"η = {eta:.3g}")
        ax.axhline(2 / eta, color=f"C{i}", ls="--", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("top Hessian eigenvalue λ")
    ax.set_yscale("log" if positive else "symlog")
    ax.set_title(f"sharpness (dashed: 2/η), width {width}, depth {depth}; networks that fit "
                 "or still train", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out / "sharpness.png")


def identity_pairs(check: dict) -> tuple[np.ndarray, np.ndarray]:
    """(measured, predicted) per-step changes of `tables.identity_check`, one
    pair per network, step and layer: the predicted array is laid out in the
    measured one's dims first (broadcasting orders them differently)."""
    measured = check["measured"]
    predicted = check["predicted"].broadcast_like(measured).transpose(*measured.dims)
    return measured.values.ravel(), predicted.values.ravel()


def fig_identity(check: dict, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    m, p = identity_pairs(check)
    ok = np.isfinite(m) & np.isfinite(p)
    ax.scatter(np.abs(p[ok]), np.abs(m[ok]), s=3, alpha=0.4)
    lo = max(np.abs(p[ok]).min(), 1e-12)
    hi = np.abs(p[ok]).max()
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|−2η⟨W,∇L⟩ + η²‖∇L‖²|")
    ax.set_ylabel("|‖W(t+1)‖_F² − ‖W(t)‖_F²| measured")
    ax.set_title("per-step change of ‖W_l‖_F²", fontsize=9)
    ax.legend()
    return _save(fig, out / "per_step_identity.png")


def fig_comparison(ds: xr.Dataset, out: Path) -> Path:
    """First-step ‖ΔW‖₂ of the first hidden layer (or the input layer) against
    width, one line per slice, at each slice's smallest η, mean over seeds."""
    depth = int(ds["depth"].values[-1])
    layer = 1 if depth > 2 else 0
    fig, ax = plt.subplots(figsize=(5.5, 4))
    steps = ds["step"].values
    if 1 in steps:
        for i, lab in enumerate(fits.slices(ds)):
            da = ds["spec_dist"].sel(lab).sel(step=1, depth=depth, layer=layer).isel(lr=0)
            ax.plot(ds["width"], da.mean("seed"), "o-", color=f"C{i}", label=fits.slice_name(lab))
    _against_width(ax, "‖W(1) − W(0)‖₂", f"first step, layer {layer}, depth {depth}, smallest η")
    return _save(fig, out / "parametrizations.png")


def fig_ntk(ds: xr.Dataset, outcome: xr.DataArray, out: Path) -> Path:
    """λ_max(t)/λ_max(0) per width, one column per slice; top row at the
    smallest η, bottom row at the largest η at which every network of the
    slice fit or still trains (near the edge: there the kernel can drop at
    once, the catapult of Lewkowycz et al. 2020)."""
    labels = fits.slices(ds)
    depth = int(ds["depth"].values[-1])
    ok = outcomes.usable(outcome).sel(depth=depth)
    fig, axes = plt.subplots(2, len(labels), figsize=(4.2 * len(labels), 6.4), squeeze=False,
                             layout="constrained")     # the rows' labels clear of each other
    for col, lab in enumerate(labels):
        part = ok.sel(lab)
        stable = part.all([d for d in part.dims if d != "lr"])
        lrs = ds["lr"].values[stable.values]
        for row, lr in enumerate((ds["lr"].values[0], lrs[-1] if len(lrs) else None)):
            ax = axes[row, col]
            if lr is None:
                ax.set_axis_off()
                continue
            for i, m in enumerate(ds["width"].values):
                da = ds["ntk_max_eig"].sel(lab).sel(width=m, depth=depth, lr=lr)
                da = (da / da.isel(step=0)).mean("seed").dropna("step")
                ax.plot(da["step"], da, "o-", ms=2, color=f"C{i}", label=f"m = {m}")
            ax.set_xlabel("step")
            ax.set_ylabel("NTK λ_max(t) / λ_max(0)", fontsize=8)
            which = "smallest" if row == 0 else "largest stable"
            ax.set_title(f"{fits.slice_name(lab)}, {which} η₀ = {lr:.3g}", fontsize=8)
            ax.legend(fontsize=7)
    return _save(fig, out / "ntk.png")


def fig_balance(moved: xr.DataArray, depth: int, out: Path) -> Path:
    """Δ‖W_l‖_F²/c_l of every layer against the input layer's, one point per
    network: on the diagonal when the layers stay balanced."""
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    x = moved.sel(layer=0).values.ravel()
    lims = []
    for layer in range(1, depth):
        y = moved.sel(layer=layer).values.ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=6, alpha=0.5, label=f"layer {layer}", color=f"C{layer}")
        lims += [x[ok], y[ok]]
    both = np.concatenate(lims) if lims else np.zeros(1)
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="equal")
    if lo > 0:          # all grew: the spread is a ratio
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("Δ‖W_0‖_F² / c_0 (input layer)")
    ax.set_ylabel("Δ‖W_l‖_F² / c_l")
    ax.set_title(f"balance from init to the last step, depth {depth}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out / "balance.png")


def fig_jacobian(ds: xr.Dataset, outcome: xr.DataArray, softmax: bool, out: Path) -> Path:
    """‖∂F/∂x‖₂ over the measured steps at the deepest depth, one panel per
    width, one line per η (median over the seeds that fit or still train),
    each beside its bound Π_l‖W_l‖₂ (halved for a softmax output), dashed."""
    depth = int(ds["depth"].max())
    widths = ds["width"].values
    fig, axes = plt.subplots(1, len(widths), figsize=(3.4 * len(widths), 3.4), squeeze=False,
                             sharey=True)
    kept = ds.where(outcomes.usable(outcome)).sel(depth=depth)
    bound = kept["spec_norm"].sel(layer=slice(0, depth - 1)).prod("layer", min_count=1)
    bound = bound * (0.5 if softmax else 1.0)
    for ax, width in zip(axes[0], widths):
        for i, lr in enumerate(ds["lr"].values):
            da = kept["jacobian_spec_norm"].sel(width=width, lr=lr).median("seed")
            measured = da.notnull()
            if not bool(measured.any()):
                continue
            steps = da["step"].values[measured.values]
            ax.plot(np.maximum(steps, 0.5), da.values[measured.values], "o-", ms=3,
                    color=f"C{i}", label=f"η₀ = {lr:.3g}")
            b = bound.sel(width=width, lr=lr).median("seed").values[measured.values]
            ax.plot(np.maximum(steps, 0.5), b, "--", lw=0.8, color=f"C{i}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step (0 drawn at 0.5)")
        ax.set_title(f"width {width}, depth {depth}", fontsize=9)
    axes[0, 0].set_ylabel("‖∂F/∂x‖₂ (mean over points)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("input–output Jacobian over training (dashed: the bound "
                 + ("½Π‖W_l‖₂)" if softmax else "Π‖W_l‖₂)"), y=1.02)
    return _save(fig, out / "jacobian.png")


def fig_spectrum(ds: xr.Dataset, cfg, keep: xr.DataArray, out: Path) -> Path:
    """Left: the singular values of one layer of the widest, deepest
    networks at init and at the end (pooled over the seeds of the largest η₀
    at which they all fit or still train) against the Marchenko–Pastur
    density for the measured entry variance, the outlier threshold dotted.
    Right: the largest singular values of the change W(T) − W(0)."""
    from normsweep.analysis.tables import largest_usable_lr, layer_shape, spectrum_layer
    depth, layer = spectrum_layer(ds)
    width = int(ds["width"].max())
    p, q = layer_shape(cfg, width, depth, layer)
    cell = ds.sel(width=width, depth=depth, layer=layer)
    lr = largest_usable_lr(keep.sel(width=width, depth=depth))
    lr = ds["lr"].values[0] if lr is None else lr
    cell = cell.sel(lr=lr)
    s2 = float((cell["frob_norm"].isel(step=0) ** 2).mean()) / (p * q)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    sv = cell["singular_values"]
    top = float(sv.max())
    bins = np.linspace(0, top * 1.02, 50)
    for i, (which, label) in enumerate(((0, "init"), (-1, "end"))):
        vals = sv.isel(spectrum_step=which).values.ravel()
        ax.hist(vals[np.isfinite(vals)], bins=bins, density=True, alpha=0.45, color=f"C{i}",
                label=f"W at {label}")
    grid = np.linspace(1e-6, top * 1.02, 400)
    ax.plot(grid, theory.marchenko_pastur_singular(grid, p, q, s2), "k-", lw=1,
            label="Marchenko–Pastur")
    ax.axvline(theory.outlier_threshold(p, q, s2), color="k", ls=":", lw=1,
               label="outlier threshold")
    ax.set_xlabel("singular value σ")
    ax.set_ylabel("density")
    ax.set_title(f"layer {layer} ({p}×{q}), width {width}, depth {depth}, η₀ = {lr:.3g}",
                 fontsize=9)
    ax.legend(fontsize=7)
    change = cell["change_singular_values"].isel(spectrum_step=-1)
    for j, seed in enumerate(change[change.dims[0]].values if change.ndim > 1 else [None]):
        vals = (change.sel({change.dims[0]: seed}) if seed is not None else change).values
        vals = vals[np.isfinite(vals)][:30]
        bx.plot(np.arange(1, len(vals) + 1), vals, "o-", ms=3, color=f"C{j}")
    bx.set_ylim(bottom=0)
    bx.set_xlabel("index i")
    bx.set_ylabel("σ_i(W(T) − W(0))")
    bx.set_title("the change's largest singular values (one line per seed)", fontsize=9)
    return _save(fig, out / "spectrum.png")


def fig_coordinates(ds: xr.Dataset, keep: xr.DataArray, lr: float, out: Path,
                    steps: int = 3) -> Path:
    """The μP coordinate check (as the mup package draws it): mean
    |a_l(t) − a_l(0)| against width at the first `steps` measured steps,
    one panel per parametrization, one colour per layer (median over
    seeds, η₀ = `lr`)."""
    from normsweep.analysis.tables import measured_steps, roles
    depth = int(ds["depth"].max())
    da = ds["activation_change"].sel(depth=depth, lr=lr).where(keep.sel(depth=depth, lr=lr))
    params = list(ds["parametrization"].values) if "parametrization" in ds.dims else [None]
    measured = measured_steps(da, steps)
    fig, axes = plt.subplots(1, len(params), figsize=(4.4 * len(params), 3.6), squeeze=False,
                             layout="constrained")
    widths = ds["width"].values
    for ax, param in zip(axes[0], params):
        cell = da.sel(parametrization=param) if param is not None else da
        others = [d for d in cell.dims if d not in ("width", "step", "layer")]
        for c, (layer, role) in enumerate(roles(depth)):
            for k, t in enumerate(measured):
                ax.plot(widths, cell.sel(step=t, layer=layer).median(others), "o-", ms=3,
                        color=f"C{c}", alpha=0.4 + 0.6 * (k + 1) / len(measured),
                        label=f"layer {layer} ({role})" if k == len(measured) - 1 else None)
        _against_width(ax, "mean |a_l(t) − a_l(0)|",
                       f"{param or 'this sweep'}: steps {', '.join(map(str, measured))} "
                       "(darker later)")
    fig.suptitle(f"coordinate check, depth {depth}, η₀ = {lr:.3g}", y=1.02)
    return _save(fig, out / "coordinates.png")


def fig_margin(ds: xr.Dataset, outcome: xr.DataArray, fit_accuracy: float, out: Path) -> Path:
    """For the networks that fit and separate the data, at the widest width
    of each depth: ‖θ(t)‖ against log t (log–log, where (log t)^{1/L} is a
    line of slope 1/L) and the normalised margin q_min/‖θ‖^L over time."""
    from normsweep.analysis.tables import param_norm, separated_at
    fit = (outcome == outcomes.FIT) & separated_at(ds, fit_accuracy).notnull()
    theta = param_norm(ds)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = ds["step"].values
    late = steps >= 3
    for i, depth in enumerate(ds["depth"].values):
        width = int(ds["width"].max())
        mask = fit.sel(depth=depth, width=width)
        if not bool(mask.any()):
            continue
        th = theta.sel(depth=depth, width=width).where(mask)
        nm = (ds["margin"].sel(depth=depth, width=width) / th ** int(depth)).where(mask)
        others = [d for d in th.dims if d != "step"]
        med = th.median(others).values
        ax.plot(np.log(steps[late]), med[late], "-", color=f"C{i}", label=f"depth {depth}")
        ref = med[late][np.isfinite(med[late])]
        if ref.size:
            x = np.log(steps[late])
            ax.plot(x, ref[-1] * (x / x[-1]) ** (1 / int(depth)), ":", color=f"C{i}", lw=1)
        bx.plot(np.maximum(steps, 0.5), nm.median(others), "-", color=f"C{i}",
                label=f"depth {depth}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        _short_log_axis(axis)
    ax.set_xlabel("log t")
    ax.set_ylabel("‖θ(t)‖ (median over networks that separate)")
    ax.set_title(f"weight norm, width {int(ds['width'].max())} (dotted: (log t)^(1/L))",
                 fontsize=9)
    ax.legend(fontsize=7)
    bx.set_xscale("log")
    bx.set_xlabel("step")
    bx.set_ylabel("normalised margin q_min / ‖θ‖^L")
    bx.set_title("normalised margin of the networks that separate the data", fontsize=9)
    bx.legend(fontsize=7)
    return _save(fig, out / "margin.png")
