"""`normsweep analyze DIR`: the fit table, figures, and a report that answers
the seed question with this sweep's numbers.

    from normsweep.analysis import report
    result = report.analyze("results/seed")   # writes results/seed/analysis/

Writes DIR/analysis/{report.md, fits.csv, fits.nc, *.png}. Every number in
the report is computed here from the sweep; nothing is hard-coded.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from normsweep import config as config_mod  # noqa: E402
from normsweep import model, store  # noqa: E402
from normsweep.analysis import fits, outcomes, theory  # noqa: E402
from normsweep.errors import GridError, RunError  # noqa: E402

# width exponents of the relative distance from init at the end of training,
# by (parametrization, lr width_exponent) of the sweep: the lazy (NTK) regime
# reached by the standard parametrization with η ∝ 1/m or by the NTK one at
# fixed η, and μP's spectral condition (‖ΔW_l‖₂ ∝ ‖W_l‖₂ in every layer)
LAZY = {("rel_frob_dist", "hidden"): -1.0, ("rel_spec_dist", "hidden"): -0.5,
        ("rel_frob_dist", "input"): -1.5, ("rel_spec_dist", "input"): -1.5,
        ("rel_frob_dist", "readout"): -0.5, ("rel_spec_dist", "readout"): -0.5}
PREDICTIONS = {
    ("standard", -1.0): ("lazy training (standard parametrization, η ∝ 1/m)", LAZY),
    ("ntk", 0.0): ("lazy training (NTK parametrization, fixed η)",
                   {**LAZY, ("rel_frob_dist", "input"): -0.5, ("rel_spec_dist", "input"): -0.5}),
    ("mup", 0.0): ("μP's spectral condition (fixed η)",
                   {("rel_spec_dist", "hidden"): 0.0, ("rel_spec_dist", "input"): 0.0,
                    ("rel_spec_dist", "readout"): 0.0, ("rel_frob_dist", "hidden"): -0.5,
                    ("rel_frob_dist", "input"): 0.0, ("rel_frob_dist", "readout"): 0.0}),
}
# width exponent of a hidden layer's first step ‖W(1) − W(0)‖₂ (Yang, Simon &
# Bernstein 2023), by (parametrization, lr width_exponent)
FIRST_STEP = {("standard", 0.0): 0.5, ("standard", -1.0): -0.5, ("ntk", 0.0): -0.5,
              ("mup", 0.0): 0.0}
PARAMETRIZATION_NAMES = {"standard": "the standard parametrization",
                         "ntk": "the NTK parametrization",
                         "mup": "μP (maximal-update parametrization)"}


@dataclasses.dataclass
class Analysis:
    table: pd.DataFrame
    report: Path
    figures: list[Path]


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


# -- at initialisation ------------------------------------------------------

def init_table(ds: xr.Dataset, cfg: config_mod.Config) -> pd.DataFrame:
    """Measured mean ± sd of ‖W_l(0)‖ per layer shape against theory."""
    rows = []
    first = ds.isel(step=0, lr=0)
    for width in ds["width"].values:
        for role in ("input", "hidden", "readout"):
            frob, spec = [], []
            for depth in ds["depth"].values:
                layers = {"input": [0], "readout": [depth - 1],
                          "hidden": list(range(1, depth - 1))}[role]
                for layer in layers:
                    sel = first.sel(width=width, depth=depth, layer=layer)
                    frob += sel["frob_norm"].values.tolist()
                    spec += sel["spec_norm"].values.tolist()
            # the same seed gives the same layer at every depth: count it once
            pairs = np.array([frob, spec]).reshape(2, -1).T
            pairs = np.unique(np.round(pairs[np.isfinite(pairs).all(1)], 6), axis=0)
            if not len(pairs):
                continue
            p = cfg.data.d if role == "input" else int(width)
            q = cfg.data.k if role == "readout" else int(width)
            s2 = theory.init_variance(cfg.model.init, p, int(width))
            f_th, s_edge, s_fin = (theory.frobenius(p, q, s2), theory.spectral_edge(p, q, s2),
                                   theory.spectral_finite(p, q, s2))
            f_m, s_m = pairs[:, 0], pairs[:, 1]
            rows.append({
                "layer": role, "shape": f"{p}×{q}", "width": int(width), "n": len(pairs),
                "‖W‖_F measured": f"{f_m.mean():.3f} ± {f_m.std(ddof=1) if len(f_m) > 1 else 0:.3f}",
                "‖W‖_F theory": f"{f_th:.3f}",
                "rel. err F": f"{(f_m.mean() - f_th) / f_th:+.2%}",
                "‖W‖₂ measured": f"{s_m.mean():.3f} ± {s_m.std(ddof=1) if len(s_m) > 1 else 0:.3f}",
                "‖W‖₂ Bai–Yin": f"{s_edge:.3f}", "‖W‖₂ finite-size": f"{s_fin:.3f}",
                "rel. err 2": f"{(s_m.mean() - s_fin) / s_fin:+.2%}",
            })
    return pd.DataFrame(rows)


# -- per iteration ----------------------------------------------------------

def layer_multipliers(ds: xr.Dataset, cfg, parametrization: str) -> xr.DataArray:
    """c_l of `parametrization` for every (width, depth, layer) of the sweep
    (NaN beyond a network's depth)."""
    out = xr.DataArray(np.full((ds.sizes["width"], ds.sizes["depth"], ds.sizes["layer"]), np.nan),
                       coords={d: ds[d] for d in ("width", "depth", "layer")},
                       dims=("width", "depth", "layer"))
    for i, m in enumerate(ds["width"].values):
        for j, L in enumerate(ds["depth"].values):
            dims = (cfg.data.d,) + (int(m),) * (int(L) - 1) + (cfg.data.k,)
            out.values[i, j, :int(L)] = model.lr_multipliers(parametrization, cfg.model.init, dims)
    return out


def identity_check(ds: xr.Dataset, mult: xr.DataArray | float = 1.0,
                   weight_decay: float = 0.0) -> dict:
    """The exact per-step identity and its layer-independence, measured on
    consecutive recorded steps of the networks given (NaN ones drop out).
    With lr multipliers c_l and weight decay λ the step is W' = (1 − ηλ)W − ηc∇L, so
    ‖W'‖² − ‖W‖² = ((1 − ηλ)² − 1)‖W‖² − 2ηc(1 − ηλ)⟨W, ∇L⟩ + η²c²‖∇L‖²."""
    steps = ds["step"].values
    consecutive = np.flatnonzero(np.diff(steps) == 1)
    if not len(consecutive) or "grad_dot_weight" not in ds:
        return {}
    a = ds.isel(step=consecutive)
    b = ds.isel(step=consecutive + 1).assign_coords(step=a["step"])   # step t+1, labelled t
    eta = ds["lr_effective"]
    shrink = 1 - eta * weight_decay
    measured = b["frob_norm"] ** 2 - a["frob_norm"] ** 2
    first = -2 * eta * mult * a["grad_dot_weight"]
    second = (eta * mult) ** 2 * a["grad_norm"] ** 2
    predicted = (shrink**2 - 1) * a["frob_norm"] ** 2 + shrink * first + second
    scale = a["frob_norm"] ** 2
    rel = np.abs(measured - predicted) / scale
    # a network can blow a weight up to inf with a finite loss (dead ReLUs
    # downstream): such pairs say nothing about the identity
    rel = rel.where(np.isfinite(rel) & np.isfinite(scale))
    gdw = a["grad_dot_weight"]
    depth_ok = ds["layer"] < ds["depth"]
    spread = (gdw.where(depth_ok).max("layer") - gdw.where(depth_ok).min("layer"))
    size = np.abs(gdw).where(depth_ok).max("layer")
    layer_rel = (spread / size).where(size > 0)
    share = (np.abs(second) / np.abs(first)).where(np.abs(first) > 0)
    return {
        "pairs": int(np.isfinite(rel.values).sum()),
        "identity_rel_median": float(np.nanmedian(rel.values)),
        "identity_rel_max": float(np.nanmax(rel.values)),
        "layer_spread_median": float(np.nanmedian(layer_rel.values)),
        "layer_spread_p90": float(np.nanpercentile(layer_rel.values, 90)),
        "second_order_share_median": float(np.nanmedian(share.values)),
        "measured": measured, "predicted": predicted,
        "max_step": int(steps[consecutive[-1] + 1]),
    }


# -- figures ----------------------------------------------------------------

def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def fig_init(ds: xr.Dataset, cfg, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    widths = ds["width"].values
    first = ds.isel(step=0, lr=0)
    depth = int(ds["depth"].max())
    for ax, var, label in ((axes[0], "frob_norm", "‖W_l(0)‖_F"), (axes[1], "spec_norm", "‖W_l(0)‖₂")):
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
                s2 = theory.init_variance(cfg.model.init, p, int(m))
                th.append(theory.frobenius(p, q, s2) if var == "frob_norm"
                          else theory.spectral_finite(p, q, s2))
            ax.plot(widths, th, "--", color=color, label=f"{role} (theory)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log" if var == "frob_norm" else "linear")
        ax.set_xlabel("width m")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].set_title("Frobenius norm at init vs σ√(pq)")
    axes[1].set_title("spectral norm at init vs finite-size edge")
    return _save(fig, out / "init_norms.png")


def fig_trajectories(ds: xr.Dataset, out: Path) -> list[Path]:
    depth = int(ds["depth"].values[len(ds["depth"]) // 2])
    layer = 1 if depth > 2 else 0
    paths = []
    for var in ("frob_norm", "spec_norm", "frob_dist"):
        da = ds[var].sel(depth=depth, layer=layer).mean("seed").isel(step=slice(1, None))
        da = da.assign_coords(lr=[f"{v:.2g}" for v in ds["lr"].values])
        grid = da.plot.line(x="step", hue="lr", col="width", col_wrap=min(5, ds.sizes["width"]),
                            xscale="log", yscale="log", figsize=(14, 3.2))
        grid.fig.suptitle(f"{ds[var].attrs.get('long_name', var)}, layer {layer}, depth {depth} "
                          "(mean over seeds)", y=1.05)
        for ax in grid.axs.flat:
            ax.set_xlabel("step")
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
                        label=f"η₀={lr:.2g}")
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
    ax.set_xlabel("width m")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


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
        ax.set_yticks(range(ds.sizes["lr"]), [f"{v:.2g}" for v in ds["lr"].values], fontsize=7)
        ax.set_xlabel("width m")
        ax.set_ylabel("lr (η₀)")
        ax.set_title(f"depth {depth}", fontsize=9)
    cbar = fig.colorbar(im, ax=axes[0].tolist(), ticks=range(4))
    cbar.ax.set_yticklabels(outcomes.ORDER)
    fig.suptitle("outcome per (width, η): worst over seeds")
    return _save(fig, out / "stability.png")


def last_measured(da: xr.DataArray) -> xr.DataArray:
    """The last finite value along `step` (NaN where there is none)."""
    da = da.transpose(..., "step")
    values = da.values
    measured = np.isfinite(values)
    idx = np.where(measured.any(-1), values.shape[-1] - 1 - np.argmax(measured[..., ::-1], -1), 0)
    last = np.take_along_axis(values, idx[..., None], -1)[..., 0]
    return xr.DataArray(last, dims=da.dims[:-1], coords={d: da[d] for d in da.dims[:-1]})


def sharpness_table(ds: xr.Dataset, outcome: xr.DataArray) -> pd.DataFrame:
    """Per η, over the networks that fit or still train: the median over
    networks of the peak sharpness after step 0 and of its median over the
    second half of training, both in units of the stability threshold 2/η
    (edge of stability: the peak passes 1, the second half hovers near 1)."""
    ratio = (ds["sharpness"] * ds["lr_effective"] / 2).where(outcomes.usable(outcome))
    steps = ds["step"]
    peak = ratio.where(steps > 0).max("step")
    late = ratio.where(steps >= steps[-1] / 2).median("step")
    rows = []
    for lr in ds["lr"].values:
        p, q = peak.sel(lr=lr).values.ravel(), late.sel(lr=lr).values.ravel()
        ok = np.isfinite(q)
        rows.append({"lr": f"{lr:.3g}", "networks": int(ok.sum()),
                     "peak λ·η/2 (median)": _fmt(float(np.nanmedian(p))) if ok.any() else "–",
                     "second-half λ·η/2 (median)": _fmt(float(np.nanmedian(q))) if ok.any()
                     else "–",
                     "IQR": (f"{_fmt(float(np.nanpercentile(q, 25)))}–"
                             f"{_fmt(float(np.nanpercentile(q, 75)))}") if ok.any() else "–"})
    return pd.DataFrame(rows)


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


def fig_identity(check: dict, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    m, p = check["measured"].values.ravel(), check["predicted"].values.ravel()
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


# -- the report -------------------------------------------------------------

def well_trained_table(ds: xr.Dataset, outcome: xr.DataArray) -> pd.DataFrame:
    fit = outcome == outcomes.FIT
    last = ds.isel(step=-1)
    rows = []
    for depth in ds["depth"].values:
        for width in ds["width"].values:
            for lr in ds["lr"].values:
                sel = dict(depth=depth, width=width, lr=lr)
                mask = fit.sel(**sel)
                if not bool(mask.any()):
                    continue
                cell = last.sel(**sel).where(mask)
                row = {"depth": int(depth), "width": int(width), "lr": f"{lr:.3g}",
                       "networks fit": int(mask.sum())}
                for layer in range(int(ds["layer"].size)):
                    if layer < depth:
                        frob = _fmt(float(cell["frob_norm"].sel(layer=layer).mean()))
                        spec = _fmt(float(cell["spec_norm"].sel(layer=layer).mean()))
                    else:
                        frob = spec = ""
                    row[f"‖W_{layer}‖_F"], row[f"‖W_{layer}‖₂"] = frob, spec
                rows.append(row)
    return pd.DataFrame(rows)


def analyze(root: str | Path, *, boot: int = 400, fit_accuracy: float = outcomes.FIT_ACCURACY,
            seed: int = 0) -> Analysis:
    """Fits, figures and report.md for the results folder `root`."""
    root = Path(root)
    sweep = store.open_sweep(root, partial=True)      # warns what is missing
    try:
        full = sweep.load()
    except (OSError, RuntimeError, ValueError) as err:   # a checksum that does not match
        raise RunError(f"{root}/sweep.nc cannot be read ({err}); delete it and launch again "
                       "to rewrite it from the cohort files") from None
    finally:
        sweep.close()
    try:
        cfg = config_mod.parse(full.attrs["config_toml"], source=f"{root} (config_toml)")
    except KeyError:
        raise RunError(f"{root}: the dataset has no config_toml attribute") from None
    except GridError as err:
        raise RunError(f"{root}: the dataset's config_toml is not a valid grid ({err})") from None
    out = root / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    # the first sections describe one slice (standard, no weight decay where
    # the sweep has those axes); the comparison section and those after it
    # cover all slices
    ref_labels = fits.reference_labels(full)
    ds = full.sel(ref_labels) if ref_labels else full
    param = ref_labels.get("parametrization", cfg.model.parametrization)
    wd = ref_labels.get("weight_decay", cfg.train.weight_decay)
    full_outcome = outcomes.classify(full, fit_accuracy)
    outcome = full_outcome.sel(ref_labels) if ref_labels else full_outcome
    keep = outcomes.usable(outcome)
    full_table = fits.fit_sweep(full, boot=boot, seed=seed, fit_accuracy=fit_accuracy)
    table = full_table
    for name, value in ref_labels.items():
        table = table[table[name] == value]
    try:
        with store.atomic_path(out / "fits.csv") as tmp:
            full_table.to_csv(tmp, index=False, float_format="%.6g")
    except OSError as err:
        raise store.write_failure(out / "fits.csv", err) from None
    store.write_netcdf(out / "fits.nc", fits.to_dataset(full_table))
    figures = [fig_init(ds, cfg, out), *fig_trajectories(ds, out),
               fig_scaling(ds, table, out, keep), fig_stability(ds, outcome, out)]
    # networks that fit or still train: a failed one can blow its norms up to
    # where ‖W‖² itself overflows, which says nothing about the identity
    check = identity_check(ds.where(keep), layer_multipliers(ds, cfg, param), wd)
    if check:
        figures.append(fig_identity(check, out))
    if "sharpness" in ds:
        figures.append(fig_sharpness(ds, outcome, out))
    text = render(ds, cfg, table, outcome, check, fit_accuracy, root, param)
    if ref_labels:
        text += "\n".join(_comparison_section(full, full_table, ref_labels))
        figures.append(fig_comparison(full, out))
    if "ntk_max_eig" in full:
        text += "\n".join(_ntk_section(full, full_outcome, cfg, boot, seed))
        figures.append(fig_ntk(full, full_outcome, out))
    store.write_text(out / "report.md", number_sections(text))
    return Analysis(full_table, out / "report.md", figures)


def heading(key: str, title: str) -> str:
    """A section's heading; `number_sections` numbers the sections in the
    order they appear, so that no number is typed into a string."""
    return f"## \x00{key}\x00 {title}"


def ref(key: str) -> str:
    """The number of the section `key`, once `number_sections` has run."""
    return f"\x00ref:{key}\x00"


def number_sections(text: str) -> str:
    """Numbers the `heading`s 1, 2, … in order and fills in the `ref`s; a
    reference to a section the report lacks is an error."""
    keys = re.findall(r"## \x00(\w+)\x00 ", text)
    numbers = {key: i + 1 for i, key in enumerate(keys)}
    text = re.sub(r"## \x00(\w+)\x00 ", lambda m: f"## {numbers[m.group(1)]}. ", text)
    return re.sub(r"\x00ref:(\w+)\x00", lambda m: str(numbers[m.group(1)]), text)


def axes_note(grid) -> str:
    """The header's sentence on the parametrization / weight-decay axes ('' without)."""
    axes = []
    if grid.parametrization:
        axes.append(f"parametrization {list(grid.parametrization)}")
    if grid.weight_decay:
        axes.append(f"weight decay {list(grid.weight_decay)}")
    if not axes:
        return ""
    return (f" The sweep also has the axes {' and '.join(axes)}: sections {ref('init')}–"
            f"{ref('scaling')} describe one slice of it (named in section {ref('compare')}), "
            f"the sections from {ref('compare')} on compare all.")


def render(ds, cfg, table, outcome, check, fit_accuracy, root, param: str = "standard") -> str:
    g = cfg.grid
    counts = outcomes.counts(outcome)
    untrained = counts.pop(outcomes.UNTRAINED)
    total = sum(counts.values())
    T = int(ds["step"].values[-1])
    slices = axes_note(g)
    partial = ""
    if ds.attrs.get("partial"):
        missing = str(ds.attrs.get("cohorts_missing", "")).split()
        partial = (f" **This sweep is partial:** {len(missing)} cohorts are not on disk "
                   f"({', '.join(missing)}), so {untrained} of the grid's networks are "
                   f"untrained and left out of every count, fit and figure below; launch again "
                   "to finish it.")
    where = " in this slice" if slices else ""
    lines = [f"# normsweep report: {cfg.name}", "",
             f"Sweep `{root}`: {total} trained networks{where} — widths {list(g.width)}, "
             f"depths {list(g.depth)}, "
             f"{len(g.lr)} learning rates from {min(g.lr):.3g} to {max(g.lr):.3g}"
             + (f" (× width^{g.lr_width_exponent:g})" if g.lr_width_exponent else "")
             + f", seeds {list(g.seed)}; n = {cfg.data.n} points on S^{cfg.data.d - 1}, "
             f"k = {cfg.data.k}, {PARAMETRIZATION_NAMES[param]}, init `{cfg.model.init}`, "
             f"output `{cfg.model.output}`, "
             f"loss `{cfg.train.loss}`, {T} steps of full-batch GD, {cfg.train.dtype}; "
             f"{ds.attrs.get('backend')} ({ds.attrs.get('device_kind')}), "
             f"jax {ds.attrs.get('jax_version')}." + slices + partial, ""]

    lines += [heading("init", "Norms at initialisation"), "",
              "Measured mean ± sd over seeds (each distinct matrix counted once) against the "
              "random-matrix values for i.i.d. N(0, s²) entries: Frobenius s√(pq)(1 − 1/(4pq)); "
              "spectral: the Bai–Yin edge s(√p + √q) and its finite-size (Tracy–Widom) "
              "correction, against which the relative error is given.", "",
              _md(init_table(ds, cfg)), ""]
    hidden = [m for m in g.width] if max(g.depth) > 2 else []
    if hidden and cfg.model.init in ("he", "width"):
        m = hidden[len(hidden) // 2]
        lines += [f"For a square m×m hidden layer with variance 2/m, E‖W‖_F ≈ √(2m) "
                  f"({math.sqrt(2 * m):.1f} at m = {m}) and ‖W‖₂ → 2√2 ≈ 2.83 from below. A "
                  "quoted E‖W‖_F = 4 applies the spectral edge of a symmetric (Wigner) matrix "
                  "and takes 2/√m as a standard deviation, and '= 2' uses variance 4/m²: neither "
                  "is the Frobenius norm.", ""]
    lines += ["![init](init_norms.png)", ""]

    lines += [heading("training", "During training"), "",
              "Trajectories of ‖W‖_F, ‖W‖₂ and ‖W(t) − W(0)‖_F for one hidden layer, faceted by "
              "width, one line per η (mean over seeds):", "",
              "![frob](trajectory_frob_norm.png)", "", "![spec](trajectory_spec_norm.png)", "",
              "![dist](trajectory_frob_dist.png)", ""]

    lines += [heading("iteration", "Per iteration"), ""]
    if check:
        lines += _identity_prose(check, param)
    else:
        lines += ["No consecutive recorded steps (or no grad_dot_weight): record with "
                  "steps = \"log\" or \"all\" to check the per-step identity.", ""]
    upd = table[table.metric == "early_update_norm"]
    if len(upd):
        lines += [f"The expected change per iteration, mean ‖W(t) − W(t−1)‖_F over steps "
                  f"1–{fits.EARLY_STEPS}, scales as (fits per layer, 95% intervals):", "",
                  _md(_exponents(upd)), ""]
    lines += _first_step_prose(table, param, float(g.lr_width_exponent))

    lines += [heading("trained", "Well-trained networks"), "",
              f"Criterion: training accuracy ≥ {fit_accuracy:g} at the last step. "
              f"{counts[outcomes.FIT]} of {total} networks fit their random targets. Their final "
              "norms (mean over the seeds that fit; layer 0 is the input layer, layer depth − 1 "
              "the readout, the others hidden):", ""]
    wt = well_trained_table(ds, outcome)
    lines += [_md(wt) if len(wt) else "_No network met the criterion: train longer or with a "
              "larger stable η._", ""]
    if cfg.model.output == "softmax":
        lines += ["With a softmax output and one-hot targets the loss has no finite minimiser: "
                  "reaching zero loss needs infinite logit margins, so fitting keeps driving the "
                  "norms up (for cross-entropy ‖θ_t‖ grows like (log t)^{1/L}, Lyu & Li 2019). "
                  "A 'well-trained norm' is therefore a function of the training time, not a "
                  "limit.", ""]

    lines += [heading("stability", "Stability"), "",
              f"Outcomes: {counts[outcomes.FIT]} fit, {counts[outcomes.TRAINING]} still training "
              f"(loss fell), {counts[outcomes.FAILED]} failed ("
              + ("final loss ≥ initial: with a softmax output the loss is bounded by n, so a "
                 "too-large η saturates the network instead of overflowing"
                 if cfg.model.output == "softmax" else
                 "final loss ≥ initial, or stuck with every gradient exactly 0: all ReLUs dead")
              + f"), {counts[outcomes.DIVERGED]} diverged (non-finite loss, weight or norm).",
              "", "Largest η at which no seed failed or diverged:", ""]
    stable = outcomes.largest_stable_lr(ds, outcome)
    st = stable.to_pandas()
    st = st.map(lambda v: _fmt(v)) if hasattr(st, "map") else st
    st.index = [f"width {w}" for w in st.index]
    st.columns = [f"depth {d}" for d in st.columns]
    lines += [_md(st.reset_index().rename(columns={"index": ""})), "",
              "![stability](stability.png)", ""]

    if "sharpness" in ds:
        lines += [heading("edge", "Edge of stability"), "",
                  "Full-batch GD is stable near a minimum only while the top Hessian eigenvalue "
                  "λ < 2/η; under GD the sharpness tends to rise to about 2/η and hover there "
                  "(Cohen et al. 2021). λ·η/2 per learning rate (1 = the threshold), over "
                  "the networks that fit or still train:", "",
                  _md(sharpness_table(ds, outcome)), "", "![sharpness](sharpness.png)", ""]
    lines += [heading("scaling", "Scaling laws"), "",
              "metric ≈ C·η^a·m^b, least squares in log space over the networks that fit or are "
              "still training (diverged and failed ones are left out and counted), 95% intervals "
              "from a bootstrap over seeds within each (η, m) cell.", ""]
    main = table[table.metric.isin(["rel_frob_dist", "rel_spec_dist", "rel_frob_change",
                                    "rel_spec_change"])]
    lines += [_md(_exponents(main)), ""]
    lines += _lazy_section(table, cfg, param)
    lines += ["![scaling](scaling_rel_frob_dist.png)", "",
              "The full table, with prefactors and counts, is in `fits.csv` and `fits.nc`.", ""]
    return "\n".join(lines)


def _first_step_prose(table: pd.DataFrame, param: str, p: float) -> list[str]:
    """The hidden layers' first-step width exponent beside its prediction for
    this parametrization and η scaling (`FIRST_STEP`), when both exist."""
    first = table[(table.metric == "first_update_spec") & (table.layer_role == "hidden")]
    first = first[np.isfinite(first.width_exponent)]
    if not len(first) or (param, p) not in FIRST_STEP:
        return []
    pred = FIRST_STEP[(param, p)]
    found = "; ".join(f"depth {r.depth} layer {r.layer}: {r.width_exponent:+.2f} "
                      f"[{r.width_exponent_lo:+.2f}, {r.width_exponent_hi:+.2f}]"
                      for _, r in first.iterrows())
    return [f"The first step's spectral size ‖W(1) − W(0)‖₂ of a hidden layer against width: "
            f"{found}. Prediction for {PARAMETRIZATION_NAMES[param]} at width_exponent = "
            f"{p:g}: {pred:+.1f} (Yang, Simon & Bernstein 2023).", ""]


def _identity_prose(check: dict, param: str) -> list[str]:
    """Section 3's text on the exact per-step identity, in the terms of `param`:
    the layer-independent quantity is Δ‖W_l‖²/c_l (c_l the per-layer rate
    factor, 1 in every layer only under the standard parametrization)."""
    if param == "standard":
        rule, equal = ("‖W(t+1)‖_F² − ‖W(t)‖_F² = −2η⟨W, ∇L⟩ + η²‖∇L‖²",
                       "every layer's squared norm moves by the same amount up to the η² term")
    else:
        factor = {"ntk": "c_l = s_l², the squared init scale of the layer",
                  "mup": "c_l = fan_out/fan_in"}[param]
        rule = ("‖W_l(t+1)‖_F² − ‖W_l(t)‖_F² = −2ηc_l⟨W_l, ∇L⟩ + η²c_l²‖∇L‖², with the "
                f"per-layer rate factor of {PARAMETRIZATION_NAMES[param]}, {factor}")
        equal = ("Δ‖W_l‖_F²/c_l is the same for every layer up to the η² term; the squared "
                 "norms themselves move by amounts in the ratio of the c_l, not equally")
    return [f"Plain GD obeys {rule}, exactly. Over "
            f"{check['pairs']} consecutive recorded step pairs (steps ≤ {check['max_step']}) "
            f"of the networks that fit or still train, the measured change differs from it by a "
            f"median {_fmt(check['identity_rel_median'], 2)} and at most "
            f"{_fmt(check['identity_rel_max'], 2)} of ‖W(t)‖_F² (float rounding).", "",
            "For a bias-free ReLU network the logits are 1-homogeneous in each W_l, so "
            f"⟨W_l, ∇_{{W_l}}L⟩ = Σ_i⟨∂L/∂z_i, z_i⟩ is the same for every layer: {equal}. "
            "Measured spread of ⟨W_l, ∇L⟩ across layers (max − min over the largest "
            f"|⟨W_l, ∇L⟩|): median {_fmt(check['layer_spread_median'], 2)}, 90th percentile "
            f"{_fmt(check['layer_spread_p90'], 2)}. The second-order term is a median "
            f"{_fmt(check['second_order_share_median'], 2)} of the first-order term.", "",
            "![identity](per_step_identity.png)", ""]


def _exponents(t: pd.DataFrame) -> pd.DataFrame:
    def ci(v, lo, hi):
        return "–" if not np.isfinite(v) else f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    return pd.DataFrame({
        "metric": t.metric, "depth": t.depth, "layer": [f"{l} ({r})" for l, r in zip(t.layer, t.layer_role)],
        "sign": [{1.0: "+", -1.0: "−"}.get(s, "0") for s in t.sign],
        "η exponent a": [ci(*v) for v in zip(t.lr_exponent, t.lr_exponent_lo, t.lr_exponent_hi)],
        "width exponent b": [ci(*v) for v in zip(t.width_exponent, t.width_exponent_lo,
                                                 t.width_exponent_hi)],
        "r²": [_fmt(v, 2) for v in t.r2], "n": t.n})


def _lazy_section(table: pd.DataFrame, cfg, param: str = "standard") -> list[str]:
    """The measured width exponents of the relative distance from init beside
    the predictions for this sweep's parametrization and η scaling
    (`PREDICTIONS`); a sentence, and no numbers, where there are none."""
    p = float(cfg.grid.lr_width_exponent)
    name = PARAMETRIZATION_NAMES[param]
    matched = (param, p) in PREDICTIONS     # else: standard's lazy law, extrapolated along η ∝ 1/m
    if matched:
        regime, predictions = PREDICTIONS[(param, p)]
    elif param == "standard":
        regime, predictions = PREDICTIONS[("standard", -1.0)]
    else:
        return [f"No width-exponent predictions are shown for {name} with "
                f"width_exponent = {p:g}: the lazy (NTK) and μP predictions hold for "
                "width_exponent = 0 under that parametrization.", ""]
    rows = []
    for (metric, role), pred in predictions.items():
        sel = table[(table.metric == metric) & (table.layer_role == role)]
        for _, r in sel.iterrows():
            b, lo, hi = r.width_exponent, r.width_exponent_lo, r.width_exponent_hi
            # with η = η₀·m^p the exponent at fixed η₀ is b + p·a
            if p and np.isfinite(r.lr_exponent):
                b, lo, hi = b + p * r.lr_exponent, lo + p * r.lr_exponent, hi + p * r.lr_exponent
            row = {"metric": metric, "depth": r.depth, "layer": f"{r.layer} ({role})",
                   "measured m-exponent": f"{b:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                   if np.isfinite(b) else "–"}
            if not matched:
                # the fitted joint law C·η^a·m^b, followed along η = η₀/m
                row["implied under η ∝ 1/m (b − a)"] = _fmt(r.width_exponent - r.lr_exponent, 2)
            row["prediction"] = f"{pred:+.1f}"
            if matched:
                row["within interval"] = "yes" if np.isfinite(b) and lo <= pred <= hi else "no"
            rows.append(row)
    if matched:
        head = (f"This sweep used {name} with width_exponent = {p:g}: the setting of "
                f"{regime}. The width exponent of the relative distance from init at fixed η₀ "
                "(b + p·a) against its predictions:")
    else:
        head = (f"The lazy-training predictions for {name} hold for η ∝ 1/m (width_exponent "
                f"= −1); this sweep used width_exponent = {p:g}, so the measured exponent "
                "(at fixed η) is not comparable with them. The column b − a follows the fitted "
                "joint law along η ∝ 1/m: an extrapolation (a point estimate, valid only as far "
                "as the law holds jointly), not a measurement; sweep with width_exponent = −1 "
                "to test the predictions directly:")
    return [head, "", _md(pd.DataFrame(rows)), ""] if rows else []


# -- parametrizations, weight decay and the NTK --------------------------------

COMPARED = ("first_update_spec", "early_update_norm", "rel_frob_dist", "rel_spec_dist")


def _comparison_section(ds: xr.Dataset, table: pd.DataFrame, ref_labels: dict) -> list[str]:
    """Fitted exponents side by side, one column per parametrization/weight-decay slice."""
    labels = fits.slices(ds)
    rows = []
    for (metric, depth, layer), group in table.groupby(["metric", "depth", "layer"], sort=False):
        if metric not in COMPARED:
            continue
        row = {"metric": metric, "depth": depth,
               "layer": f"{layer} ({fits.layer_role(int(layer), int(depth))})"}
        for lab in labels:
            sel = group
            for name, value in lab.items():
                sel = sel[sel[name] == value]
            r = sel.iloc[0]
            b, lo, hi = r.width_exponent, r.width_exponent_lo, r.width_exponent_hi
            row[f"m-exponent, {fits.slice_name(lab)}"] = (f"{b:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                                                          if np.isfinite(b) else "–")
        rows.append(row)
    order = {m: i for i, m in enumerate(COMPARED)}
    rows.sort(key=lambda r: (order[r["metric"]], r["depth"]))
    mup = ""
    first = table[(table.metric == "first_update_spec")]
    if "parametrization" in table.columns and len(first):
        hidden = first[first.layer_role == "hidden"]
        parts = []
        for name, g in hidden.groupby("parametrization", sort=False):
            b = g.width_exponent.dropna()
            if len(b):
                parts.append(f"{name} {b.min():+.2f}" if b.min() == b.max() else
                             f"{name} {b.min():+.2f}…{b.max():+.2f}")
        if parts:
            p = float(ds.attrs.get("lr_width_exponent", 0.0))
            theory_parts = [f"{name} {FIRST_STEP[(name, p)]:+.1f}"
                            for name in hidden.parametrization.unique()
                            if (name, p) in FIRST_STEP]
            mup = ("The width exponent of a hidden layer's first step ‖W(1) − W(0)‖₂, over "
                   "its depths, weight decays and fits: " + "; ".join(parts) + ". "
                   + (f"Theory at width_exponent = {p:g} (Yang, Simon & Bernstein 2023; μP's "
                      "updates have a width-independent spectral size): "
                      + "; ".join(theory_parts) + "." if theory_parts else
                      f"No theory is shown for width_exponent = {p:g}."))
    return ["", heading("compare", "Parametrizations and weight decay side by side"), "",
            f"Sections {ref('init')}–{ref('scaling')} describe the slice "
            f"{fits.slice_name(ref_labels)}. Width exponents b "
            "of metric ≈ C·η^a·m^b per slice (95% bootstrap intervals); the η exponents and "
            "prefactors are in fits.csv.", "", _md(pd.DataFrame(rows)), "", mup, "",
            "![comparison](parametrizations.png)", ""]


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


def ntk_change(ds: xr.Dataset, name: str = "ntk_max_eig") -> xr.DataArray:
    """|λ(T)/λ(0) − 1| of an NTK eigenvalue, over the last step it was measured."""
    da = ds[name].where(ds["diverged_at"] < 0)
    return np.abs(last_measured(da) / da.isel(step=0, drop=True) - 1)


def _ntk_section(ds: xr.Dataset, outcome: xr.DataArray, cfg, boot: int,
                 seed: int) -> list[str]:
    rows = []
    lr_eff = ds["lr_effective"].transpose("lr", "width").values
    keep = outcomes.usable(outcome)
    for lab in fits.slices(ds):
        for depth in ds["depth"].values:
            for name, label in (("ntk_max_eig", "λ_max"), ("ntk_min_eig", "λ_min")):
                y = ntk_change(ds, name).where(keep).sel(lab).sel(depth=depth)
                fit = fits.fit_power_law(y.transpose("lr", "width", "seed").values, lr_eff,
                                         ds["width"].values, boot=boot, rng=seed)
                lam0 = ds[name].isel(step=0).sel(lab).sel(depth=depth)
                rows.append({"slice": fits.slice_name(lab), "depth": int(depth),
                             "eigenvalue": label,
                             "at init (median, smallest → largest m)":
                                 f"{_fmt(float(lam0.isel(width=0).median()))} → "
                                 f"{_fmt(float(lam0.isel(width=-1).median()))}",
                             "relative change: η exponent": _ci(fit.a, fit.a_lo, fit.a_hi),
                             "m exponent": _ci(fit.b, fit.b_lo, fit.b_hi), "n": fit.n})
    return ["", heading("ntk", "The neural tangent kernel"), "",
            f"Empirical NTK of the logits on the first {cfg.record.ntk_points} training points, "
            "traced over the k outputs and weighted by each layer's lr multiplier (the kernel "
            "of the function-space dynamics GD follows). Its relative change |λ(T)/λ(0) − 1| "
            "over training, fitted as C·η^a·m^b over the networks that fit or still train: in "
            "the lazy regime (NTK parametrization, or η ∝ 1/m) the kernel freezes as the width "
            "grows, so b < 0; under μP features and the kernel keep moving (b ≈ 0).", "",
            _md(pd.DataFrame(rows)), "", "![ntk](ntk.png)", ""]


def _ci(v, lo, hi) -> str:
    return "–" if not np.isfinite(v) else f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def fig_ntk(ds: xr.Dataset, outcome: xr.DataArray, out: Path) -> Path:
    """λ_max(t)/λ_max(0) per width, one column per slice; top row at the
    smallest η, bottom row at the largest η at which every network of the
    slice fit or still trains (near the edge: there the kernel can drop at
    once, the catapult of Lewkowycz et al. 2020)."""
    labels = fits.slices(ds)
    depth = int(ds["depth"].values[-1])
    ok = outcomes.usable(outcome).sel(depth=depth)
    fig, axes = plt.subplots(2, len(labels), figsize=(4.2 * len(labels), 6.4), squeeze=False)
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
