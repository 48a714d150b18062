"""Scaling-law fits: metric ≈ C · η^a · m^b, per (metric, layer, depth), and per
parametrization and weight decay when the sweep has those axes.

    from normsweep.analysis import fits
    table = fits.fit_sweep(ds)                 # a pandas DataFrame, one row per fit
    one = fits.fit_power_law(y, lr, width)     # y: (lr, width, seed) array

Least squares in log space over the networks kept: for the last-step
metrics those not diverged, not failed and trained (`outcomes.classify`);
for the first-step metrics (`WINDOWS`) those not diverged by the last step
the metric reads, whatever became of them later. 95% intervals treat the
seeds as the independent replicates (`fit_power_law`): a seed's networks
share W(0) at every η. η is the learning rate actually used (`lr_effective`).
Each row also carries the exponent at fixed η₀ along the sweep's η scaling
and the width and η exponents `theory.predict` derives (NaN where none).
Only what the data identify is fitted: with one η value the η exponent is
NaN, with one width the width exponent is NaN, and when η is scaled with
width from a single η₀ (η and m collinear) only the exponent along that path
is fitted, as the width exponent (the `fitted` column says which).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import xarray as xr

from normsweep import outcomes
from normsweep.errors import GridError

EARLY_STEPS = 10
# metrics read from the first steps only, by the last step each reads: a
# network is used for them if it had not diverged by then, whatever came later
WINDOWS = {"first_update_spec": 1, "rel_first_step": 1, "early_update_norm": EARLY_STEPS}
METRICS = {
    "rel_frob_dist": "‖W(T) − W(0)‖_F / ‖W(0)‖_F",
    "rel_spec_dist": "‖W(T) − W(0)‖₂ / ‖W(0)‖₂",
    "rel_frob_change": "(‖W(T)‖_F − ‖W(0)‖_F) / ‖W(0)‖_F (fitted on its magnitude)",
    "rel_spec_change": "(‖W(T)‖₂ − ‖W(0)‖₂) / ‖W(0)‖₂ (fitted on its magnitude)",
    "early_update_norm": f"mean ‖W(t) − W(t−1)‖_F over steps 1..{EARLY_STEPS}",
    "first_update_spec": "‖W(1) − W(0)‖₂, the spectral size of the first step",
    "rel_first_step": "‖W(1) − W(0)‖_F / ‖W(0)‖_F, the first step relative to the init",
    "rel_param_dist": "‖θ(T) − θ(0)‖ / ‖θ(0)‖, every weight together, in the trained "
                      "coordinates θ_l = W_l/√c_l (Lee et al. 2019; one fit per depth, layer −1)",
}
NETWORK_METRICS = ("rel_param_dist",)       # one value per network, not per layer
EXTRA_DIMS = ("parametrization", "weight_decay", "n", "d")
COLUMNS = ["metric", "layer", "depth", "layer_role", "lr_exponent", "lr_exponent_lo",
           "lr_exponent_hi", "width_exponent", "width_exponent_lo", "width_exponent_hi",
           "prefactor", "r2", "n", "sign", "fitted", "excluded_diverged", "excluded_failed",
           "width_exponent_at_lr0", "width_exponent_at_lr0_lo", "width_exponent_at_lr0_hi",
           "n_seeds", "theory_width_exponent", "theory_lr_exponent",
           "width_exponent_limit", "width_exponent_limit_lo", "width_exponent_limit_hi",
           "finite_size_c", "finite_size_gap"]


def layer_role(layer: int, depth: int) -> str:
    if layer < 0:
        return "all"
    return "input" if layer == 0 else "readout" if layer == depth - 1 else "hidden"


def slice_grid(ds: xr.Dataset):
    """(the grid in the slice `ds`'s `config_toml`, the slice's
    parametrization), or None without a readable grid."""
    from normsweep import config as config_mod
    from normsweep.analysis import tables

    try:
        cfg = config_mod.parse(ds.attrs["config_toml"])
    except (KeyError, GridError):
        return None
    return cfg, tables.slice_parametrization(ds, cfg)


def slice_multipliers(ds: xr.Dataset, grid=None) -> xr.DataArray | float:
    """The rate factors c_l of the slice `ds` (one parametrization), from
    `grid` (default `slice_grid(ds)`); 1 for the standard parametrization or
    a dataset without a grid."""
    from normsweep.analysis import tables

    grid = grid or slice_grid(ds)
    if grid is None or grid[1] == "standard":
        return 1.0
    return tables.layer_multipliers(ds, *grid)


def column(dim: str) -> str:
    """The column of a table (fits.csv, …) that labels a slice of `dim`:
    the dim's name, but data_n and data_d for the n and d axes (fits.csv's
    `n` counts the networks of a fit)."""
    return {"n": "data_n", "d": "data_d"}.get(dim, dim)


def extra_dims(ds: xr.Dataset) -> list[str]:
    """The dims beyond (width, depth, lr, seed) that this sweep has: each of
    their values is a slice, fitted on its own."""
    return [d for d in EXTRA_DIMS if d in ds.dims]


def slices(ds: xr.Dataset) -> list[dict]:
    """One label dict per combination of the extra dims ([{}] without them)."""
    out = [{}]
    for dim in extra_dims(ds):
        out = [{**labels, dim: v.item()} for labels in out for v in ds[dim].values]
    return out


def reference_labels(ds: xr.Dataset) -> dict:
    """The slice the main report describes: standard parametrization and no
    weight decay where the sweep has them, else the first value."""
    labels = {}
    if "parametrization" in ds.dims:
        names = [str(v) for v in ds["parametrization"].values]
        labels["parametrization"] = "standard" if "standard" in names else names[0]
    if "weight_decay" in ds.dims:
        labels["weight_decay"] = float(ds["weight_decay"].values.min())
    for dim in ("n", "d"):          # the largest training set, the nearest to the question's
        if dim in ds.dims:
            labels[dim] = int(ds[dim].values.max())
    return labels


def slice_name(labels: dict) -> str:
    names = {"weight_decay": "λ = {:g}", "n": "n = {}", "d": "d = {}"}
    return ", ".join(f"{v}" if k == "parametrization" else names[k].format(v)
                     for k, v in labels.items()) or "all"


def derived_metrics(ds: xr.Dataset, mult: xr.DataArray | float = 1.0) -> xr.Dataset:
    """The fitted quantities, dims (width, depth, lr, seed, layer) at the last
    step; `NETWORK_METRICS` without the layer. `mult`: the per-layer rate
    factors c_l (width, depth, layer), which set the trained coordinates
    θ_l = W_l/√c_l of `rel_param_dist` (1: the weights themselves)."""
    first, last = ds.isel(step=0), ds.isel(step=-1)
    early = ds["update_norm"].sel(step=slice(1, EARLY_STEPS))
    extra = {}
    if 1 in ds["step"].values:
        extra["first_update_spec"] = ds["spec_dist"].sel(step=1, drop=True)
        extra["rel_first_step"] = ds["frob_dist"].sel(step=1, drop=True) / first["frob_norm"]
    return xr.Dataset({
        **extra,
        "rel_frob_dist": last["frob_dist"] / first["frob_norm"],
        "rel_spec_dist": last["spec_dist"] / first["spec_norm"],
        "rel_frob_change": (last["frob_norm"] - first["frob_norm"]) / first["frob_norm"],
        "rel_spec_change": (last["spec_norm"] - first["spec_norm"]) / first["spec_norm"],
        "early_update_norm": early.mean("step"),
        "rel_param_dist": np.sqrt((last["frob_dist"] ** 2 / mult).sum("layer")
                                  / (first["frob_norm"] ** 2 / mult).sum("layer")),
    })


@dataclasses.dataclass
class Fit:
    """One fitted law log y = log C + a log η + b log m."""
    a: float
    a_lo: float
    a_hi: float
    b: float
    b_lo: float
    b_hi: float
    prefactor: float
    r2: float
    n: int
    fitted: str
    c: float = float("nan")         # the width exponent at fixed η₀, b + p·a
    c_lo: float = float("nan")
    c_hi: float = float("nan")
    n_seeds: int = 0                # the independent replicates behind the interval


def seed_interval(per_seed, estimate: float | None = None) -> tuple[float, float, float]:
    """(estimate, lo, hi): the 95% interval estimate ± t·sd/√S over S
    independent replicates (seeds), NaN bounds with fewer than two. The
    estimate defaults to their mean; a pooled fit passes its own."""
    from scipy import stats
    per = np.asarray(per_seed, float)
    per = per[np.isfinite(per)]
    est = float(per.mean()) if estimate is None and per.size else (
        float("nan") if estimate is None else float(estimate))
    if per.size < 2:
        return est, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, per.size - 1) * per.std(ddof=1) / np.sqrt(per.size))
    return est, est - half, est + half


def _solve(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares, batched: design (B, P, k), y and w (B, P)."""
    a = np.einsum("bpi,bp,bpj->bij", design, w, design)
    c = np.einsum("bpi,bp,bp->bi", design, w, y)
    a = a + 1e-12 * np.eye(a.shape[-1])
    return np.linalg.solve(a, c[..., None])[..., 0]


def seed_refits(design: np.ndarray, logy: np.ndarray, ok: np.ndarray, intercepts: int = 1
                ) -> tuple[np.ndarray | None, np.ndarray]:
    """Least squares of `logy` on `design` (…, seed, k) over the points `ok`
    marks, pooled and then refitted on each seed alone: (the pooled
    coefficients, None where the points do not identify them; the (S, k)
    coefficients of the S seeds whose points identify them). Of the first
    `intercepts` columns (indicators: one intercept per η), one that is
    zero on every point of a fit (no network at that η) drops out of it."""
    k, n_s = design.shape[-1], design.shape[-2]
    per_d = np.moveaxis(design, -2, 0).reshape(n_s, -1, k)
    per_y = np.moveaxis(np.where(ok, logy, 0.0), -1, 0).reshape(n_s, -1)
    per_w = np.moveaxis(ok, -1, 0).reshape(n_s, -1).astype(float)

    def identified(d, w):
        rows = d[w > 0]
        active = rows.any(0) | (np.arange(k) >= intercepts)
        return len(rows) > active.sum() and \
            np.linalg.matrix_rank(rows[:, active], tol=1e-9) == active.sum()

    if not identified(per_d.reshape(-1, k), per_w.reshape(-1)):
        return None, np.zeros((0, k))
    beta = _solve(per_d.reshape(1, -1, k), per_y.reshape(1, -1), per_w.reshape(1, -1))[0]
    usable = [s for s in range(n_s) if identified(per_d[s], per_w[s])]
    per = _solve(per_d[usable], per_y[usable], per_w[usable]) if usable else np.zeros((0, k))
    return beta, per


def fit_power_law(y: np.ndarray, lr: np.ndarray, width: np.ndarray, *,
                  lr_width_exponent: float = 0.0) -> Fit:
    """Fits y ≈ C·lr^a·width^b.

    Args:
      y: values of shape (n_lr, n_width, n_seed); NaN, ≤ 0 or inf are left out.
      lr: (n_lr,) or (n_lr, n_width) learning rates actually used.
      width: (n_width,) widths.
      lr_width_exponent: p of the sweep's η = η₀·m^p, for the exponent along
        it at fixed η₀ (`Fit.c`, b + p·a).

    Returns:
      A `Fit`; exponents the data cannot identify are NaN.

    The 95% intervals treat seeds as the independent replicates: a seed fixes
    W(0) for every η of the sweep (and the data are the grid's), so networks
    of one seed at different η are not independent draws (at the first step
    they are exact copies, scaled by η). The law is refitted on each seed's
    networks alone, and the interval is the pooled estimate ± t_{S−1}·sd/√S
    over the S seeds that identify it: exact for normal per-seed errors,
    whatever they share across η. One seed gives no interval (NaN).
    """
    y = np.asarray(y, np.float64)
    n_lr, n_w, n_s = y.shape
    lr = np.broadcast_to(np.asarray(lr, np.float64).reshape(n_lr, -1), (n_lr, n_w))
    log_lr = np.broadcast_to(np.log(lr)[..., None], y.shape)
    log_w = np.broadcast_to(np.log(np.asarray(width, np.float64))[None, :, None], y.shape)
    ok = np.isfinite(y) & (y > 0)
    logy = np.where(ok, np.log(np.where(ok, y, 1.0)), 0.0)
    use_lr = len(np.unique(np.round(log_lr[ok], 12))) > 1
    use_w = len(np.unique(log_w[ok])) > 1
    collinear = False
    if use_lr and use_w:
        # η = η₀·m^p with a single η₀: log η is a linear function of log m
        both = np.stack([np.ones(int(ok.sum())), log_lr[ok], log_w[ok]], -1)
        collinear = np.linalg.matrix_rank(both, tol=1e-9) < 3
        use_lr = use_lr and not collinear
    cols = [np.ones_like(logy)] + ([log_lr] if use_lr else []) + ([log_w] if use_w else [])
    design = np.stack(cols, -1)                     # (n_lr, n_w, n_s, k)
    k = len(cols)
    n = int(ok.sum())
    nan = float("nan")
    fitted = "+".join(["lr"] * use_lr + ["width"] * use_w) or "none"
    if collinear:
        fitted = "width (η scaled with width: one law along η ∝ m^p)"
    beta, per = seed_refits(design, logy, ok) if n > k else (None, None)
    if beta is None:
        return Fit(nan, nan, nan, nan, nan, nan, nan, nan, n, "none (too few points)")
    resid = (logy - design @ beta)[ok]
    total = logy[ok] - logy[ok].mean()
    r2 = 1 - (resid @ resid) / (total @ total) if total @ total > 0 else 1.0

    def coef(j: int | None) -> tuple[float, float, float]:
        return (nan, nan, nan) if j is None else seed_interval(per[:, j], float(beta[j]))

    ja = 1 if use_lr else None
    jb = (2 if use_lr else 1) if use_w else None
    a, b = coef(ja), coef(jb)
    c = (nan, nan, nan)
    if jb is not None:       # along η = η₀·m^p: b + p·a (just b where a is not fitted)
        pa = lr_width_exponent if ja is not None else 0.0
        along = per[:, jb] + pa * (per[:, ja] if ja is not None else 0.0)
        c = seed_interval(along, float(beta[jb] + pa * (beta[ja] if ja is not None else 0.0)))
    return Fit(*a, *b, float(np.exp(beta[0])), float(r2), n, fitted, *c, len(per))


@dataclasses.dataclass
class FiniteWidth:
    """`fit_finite_width`'s result: the limit width exponent at fixed η₀
    with the leading finite-size correction, log y = α(η₀) + b·log m + c/√m
    (the local exponent is b − c/(2√m)), its 95% interval over seeds, c, and
    how far the largest width is from the limit: |c|/(2√m_max), the gap
    between the local and the limit exponent there."""
    b: float
    b_lo: float
    b_hi: float
    c: float
    gap: float
    n_seeds: int


def fit_finite_width(y: np.ndarray, width: np.ndarray) -> FiniteWidth:
    """The width exponent at fixed η₀ with the leading finite-size
    correction (`FiniteWidth`), least squares with one free intercept per η₀
    (row of `y`, shape (n_lr, n_width, n_seed); NaN, ≤ 0 or inf left out).
    Needs three widths or more (else NaN); the interval comes from refits on
    each seed alone, as `fit_power_law`'s. log m and 1/√m are nearly
    collinear over a narrow range of widths, and the interval says so."""
    y = np.asarray(y, np.float64)
    n_lr, n_w, n_s = y.shape
    ok = np.isfinite(y) & (y > 0)
    logy = np.where(ok, np.log(np.where(ok, y, 1.0)), 0.0)
    m = np.asarray(width, np.float64)
    rows = np.broadcast_to(np.eye(n_lr)[:, None, None, :], (n_lr, n_w, n_s, n_lr))
    design = np.concatenate([rows, np.broadcast_to(np.log(m)[None, :, None, None], y.shape + (1,)),
                             np.broadcast_to((1 / np.sqrt(m))[None, :, None, None],
                                             y.shape + (1,))], -1)
    nan = float("nan")
    beta, per = seed_refits(design, logy, ok, n_lr) \
        if len(np.unique(np.nonzero(ok)[1])) >= 3 else (None, None)
    if beta is None:
        return FiniteWidth(nan, nan, nan, nan, nan, 0)
    _, lo, hi = seed_interval(per[:, -2], beta[-2])
    return FiniteWidth(float(beta[-2]), lo, hi, float(beta[-1]),
                       abs(float(beta[-1])) / (2 * np.sqrt(m.max())), len(per))


def fit_sweep(ds: xr.Dataset, *,
              fit_accuracy: float = outcomes.FIT_ACCURACY) -> pd.DataFrame:
    """One row per (metric, layer, depth), and per parametrization and weight
    decay where the sweep has them as axes (leading columns of those names):
    the columns of `COLUMNS`.

    Networks that diverged or failed (see `outcomes.classify`; for the
    first-step metrics of `WINDOWS`, those that diverged within the window)
    are left out and counted in `excluded_diverged` and `excluded_failed`;
    untrained networks of a partial sweep are left out uncounted.
    """
    tables = []
    for labels in slices(ds):
        table = _fit_slice(ds.sel(labels) if labels else ds, fit_accuracy)
        for i, (name, value) in enumerate(labels.items()):
            table.insert(i, column(name), value)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def chosen_networks(ds: xr.Dataset, outcome: xr.DataArray) -> dict:
    """Per metric: (the networks a fit uses, those left out as diverged, those
    left out as failed), as boolean DataArrays."""
    at = ds["diverged_at"]
    chosen = {}
    for metric in METRICS:
        window = WINDOWS.get(metric)
        if window is None:      # last-step metrics: networks that fit or still train
            chosen[metric] = (outcomes.usable(outcome), outcome == outcomes.DIVERGED,
                              outcome == outcomes.FAILED)
        else:                   # NaN (untrained) compares False: left out, not counted
            keep = (at < 0) | (at > window)
            chosen[metric] = (keep, (at >= 0) & (at <= window), xr.zeros_like(keep))
    return chosen


def fitted_quantities(ds: xr.Dataset, fit_accuracy: float,
                      grid=None) -> tuple[xr.Dataset, dict]:
    """What every fit of the slice `ds` reads: the derived metrics (in the
    slice's trained coordinates) and, per metric, `chosen_networks`.
    `grid`: `slice_grid(ds)`, when the caller has it."""
    derived = derived_metrics(ds, slice_multipliers(ds, grid))
    return derived, chosen_networks(ds, outcomes.classify(ds, fit_accuracy))


def _fit_slice(ds: xr.Dataset, fit_accuracy: float) -> pd.DataFrame:
    from normsweep.analysis import theory

    grid = slice_grid(ds)
    derived, chosen = fitted_quantities(ds, fit_accuracy, grid)
    lr_eff = ds["lr_effective"].transpose("lr", "width").values
    setting = None if grid is None else (grid[1], grid[0].model.init,
                                         float(grid[0].grid.lr_width_exponent))
    p = setting[2] if setting else 0.0
    rows = []
    for depth in ds["depth"].values:
        for layer in [-1] + list(range(int(depth))):
            for metric in METRICS:
                if metric not in derived or (layer < 0) != (metric in NETWORK_METRICS):
                    continue
                keep, div, fail = chosen[metric]
                da = derived[metric].where(keep).sel(depth=depth)
                da = da if layer < 0 else da.sel(layer=layer)
                values = da.transpose("lr", "width", "seed").values
                sign = float(np.sign(np.nanmedian(values))) if np.isfinite(values).any() else 0.0
                fit = fit_power_law(np.abs(values), lr_eff, ds["width"].values,
                                    lr_width_exponent=p)
                role = layer_role(layer, int(depth))
                th_m = theory.predict(metric, role, *setting, int(depth)) if setting else np.nan
                # where a limit is predicted: the same exponent with the m^−½ correction
                limit = fit_finite_width(np.abs(values), ds["width"].values) \
                    if np.isfinite(th_m) else FiniteWidth(*[np.nan] * 5, 0)
                rows.append([metric, layer, int(depth), role,
                             fit.a, fit.a_lo, fit.a_hi, fit.b, fit.b_lo, fit.b_hi,
                             fit.prefactor, fit.r2, fit.n, sign, fit.fitted,
                             int(div.sel(depth=depth).sum()), int(fail.sel(depth=depth).sum()),
                             fit.c, fit.c_lo, fit.c_hi, fit.n_seeds, th_m,
                             theory.predict_lr(metric), limit.b, limit.b_lo, limit.b_hi,
                             limit.c, limit.gap])
    return pd.DataFrame(rows, columns=COLUMNS)


def to_dataset(table: pd.DataFrame) -> xr.Dataset:
    """The fit table as a labelled Dataset over (metric, depth, layer)."""
    index = [column(c) for c in EXTRA_DIMS if column(c) in table.columns] \
        + ["metric", "depth", "layer"]
    ds = table.set_index(index).to_xarray()
    for name in ("layer_role", "fitted", "metric"):
        if name in ds:
            ds[name] = ds[name].astype(str)
    ds["layer_role"] = ds["layer_role"].where(ds["layer_role"] != "nan", "")
    ds["fitted"] = ds["fitted"].where(ds["fitted"] != "nan", "")
    ds.attrs["model"] = "metric = prefactor * lr_effective**lr_exponent * width**width_exponent"
    ds.attrs["interval"] = ("95%: pooled estimate ± t(S−1)·sd/√S over the exponents fitted on "
                            "each of the S seeds alone (seeds are the independent replicates)")
    return ds


# -- is one power law enough? ---------------------------------------------------

MIN_NETWORKS = 12       # a fit on fewer networks is flagged in the report
HOMOGENEITY_P = 0.01    # below it, the slices' exponents differ (`local_exponents`)


@dataclasses.dataclass
class Local:
    """Exponents fitted slice by slice (`local_exponents`)."""
    along: str                  # "width": a width exponent per η; "lr": an η exponent per width
    at: list                    # the slice's η or width
    exponent: np.ndarray
    lo: np.ndarray              # 95% interval (least squares, t distribution)
    hi: np.ndarray
    p: float                    # the test that every slice has one exponent (NaN: untestable)

    @property
    def differ(self) -> bool:
        return bool(np.isfinite(self.p) and self.p < HOMOGENEITY_P)


def local_exponents(y: np.ndarray, lr: np.ndarray, width: np.ndarray, along: str,
                    lr0: np.ndarray | None = None) -> Local:
    """log y = c_s + e_s·log x within each slice s: along "width" the width
    exponent at each η (x = m), along "lr" the η exponent at each width
    (x = η), with least-squares 95% intervals, and the p-value of the F test
    of e_s = e for every s (separate intercepts either way). A small p says
    that one power law does not describe the sweep: the exponent drifts
    across slices (lazy at small η, larger near the edge of stability), and
    a pooled exponent averages regimes. `y` (n_lr, n_width, n_seed); NaN,
    ≤ 0 or inf left out; slices with fewer than 3 points or one x skipped.
    `lr0`: the grid's η₀ of each row, which label the slices along "width"
    (by default the first column of `lr`, the rate at the smallest width)."""
    from scipy import stats

    y = np.asarray(y, np.float64)
    n_lr, n_w, n_s = y.shape
    lr = np.broadcast_to(np.asarray(lr, np.float64).reshape(n_lr, -1), (n_lr, n_w))
    x = np.log(np.broadcast_to(np.asarray(width, np.float64)[None, :], (n_lr, n_w))) \
        if along == "width" else np.log(lr)
    if along != "width":                       # slices are widths: put them first
        y, x = y.transpose(1, 0, 2), x.T
    at = list(np.asarray((lr[:, 0] if lr0 is None else lr0) if along == "width" else width))
    ok = np.isfinite(y) & (y > 0)
    logy = np.log(np.where(ok, y, 1.0))
    xs = np.broadcast_to(x[..., None], y.shape)
    est, lo, hi, rss_sep, dof_sep, pooled = [], [], [], 0.0, 0, []
    for s in range(y.shape[0]):
        xv, yv = xs[s][ok[s]], logy[s][ok[s]]
        if len(yv) < 3 or np.ptp(xv) == 0:
            est.append(np.nan), lo.append(np.nan), hi.append(np.nan)
            continue
        pooled.append((xv - xv.mean(), yv - yv.mean()))
        slope, half, rss = centred_slope(*pooled[-1], len(yv) - 2)
        est.append(slope), lo.append(slope - half), hi.append(slope + half)
        rss_sep += rss
        dof_sep += len(yv) - 2
    p = np.nan
    if len(pooled) >= 2 and rss_sep > 0:
        _, _, rss_common = centred_slope(*map(np.concatenate, zip(*pooled)), 0)
        f = ((rss_common - rss_sep) / (len(pooled) - 1)) / (rss_sep / dof_sep)
        p = float(stats.f.sf(f, len(pooled) - 1, dof_sep))
    return Local(along, at, np.array(est), np.array(lo), np.array(hi), p)


def centred_slope(xc: np.ndarray, yc: np.ndarray, dof: int) -> tuple[float, float, float]:
    """The least-squares slope of centred `yc` on centred `xc`, the half-width
    of its 95% t interval on `dof` degrees of freedom (NaN without any), and
    the residual sum of squares."""
    from scipy import stats

    slope = float(xc @ yc / (xc @ xc))
    rss = float((yc - slope * xc) @ (yc - slope * xc))
    half = float(stats.t.ppf(0.975, dof) * np.sqrt(rss / dof / (xc @ xc))) if dof > 0 \
        else np.nan
    return slope, half, rss


REGIME_METRICS = ("rel_frob_dist", "rel_spec_dist", "early_update_norm")


def regimes(ds: xr.Dataset, fit_accuracy: float = outcomes.FIT_ACCURACY
            ) -> list[tuple[str, int, int, Local, Local]]:
    """(metric, depth, layer, width exponents per η, η exponents per width)
    for `REGIME_METRICS` at the deepest depth's first hidden layer (the input
    layer of a depth-2 network), over the networks `fit_sweep` uses."""
    derived, chosen = fitted_quantities(ds, fit_accuracy)
    depth = int(ds["depth"].values[-1])
    layer = 1 if depth > 2 else 0
    lr = ds["lr_effective"].transpose("lr", "width").values
    out = []
    for metric in REGIME_METRICS:
        y = np.abs(derived[metric].where(chosen[metric][0]).sel(depth=depth, layer=layer)
                   .transpose("lr", "width", "seed").values)
        out.append((metric, depth, layer,
                    local_exponents(y, lr, ds["width"].values, "width", ds["lr"].values),
                    local_exponents(y, lr, ds["width"].values, "lr")))
    return out


def schedule_gaps(steps: np.ndarray) -> list[str]:
    """The fitted metrics that the record schedule `steps` cannot give, each
    with what it lacks: `first_update_spec` needs step 1, and
    `early_update_norm` steps 1..EARLY_STEPS (each record's update is the
    step before it alone)."""
    have = set(int(t) for t in steps)
    gaps = []
    if 1 not in have:
        gaps.append("first_update_spec and rel_first_step (need step 1 recorded)")
    missing = [t for t in range(1, EARLY_STEPS + 1) if t not in have]
    if missing:
        gaps.append(f"early_update_norm (averages {EARLY_STEPS - len(missing)} of steps "
                    f"1..{EARLY_STEPS}; missing {missing})")
    return gaps


def common_slope(y: np.ndarray, x: np.ndarray) -> tuple[float, float, float, int]:
    """log y = c_g + e·log x, one intercept per group g (the leading axes of
    `y`, groups × points along x × seeds flattened last two) and one slope e:
    (e, 95% interval, points used). NaN, ≤ 0 or inf values left out; groups
    with fewer than two distinct x left out."""

    y = np.asarray(y, np.float64)
    xs, ys = [], []
    for g in range(y.shape[0]):
        xv = np.broadcast_to(np.log(np.asarray(x, np.float64))[:, None], y[g].shape)
        ok = np.isfinite(y[g]) & (y[g] > 0)
        if len(np.unique(xv[ok])) < 2:
            continue
        lx, ly = xv[ok], np.log(y[g][ok])
        xs.append(lx - lx.mean())
        ys.append(ly - ly.mean())
    n = sum(len(v) for v in xs)
    if not xs or n - len(xs) - 1 < 1:
        return np.nan, np.nan, np.nan, n
    slope, half, _ = centred_slope(np.concatenate(xs), np.concatenate(ys), n - len(xs) - 1)
    return slope, slope - half, slope + half, n


def depth_exponents(ds: xr.Dataset, fit_accuracy: float = outcomes.FIT_ACCURACY) -> pd.DataFrame:
    """With two depths or more: metric ≈ C(η, m)·L^c for the layers every
    depth has (input and readout), each (η, m) cell its own prefactor and
    one depth exponent c (`common_slope`), for the last-step and early
    metrics of `fit_sweep`. Empty with one depth."""
    if ds.sizes["depth"] < 2:
        return pd.DataFrame(columns=["metric", "layer_role", "depth_exponent", "lo", "hi", "n"])
    derived, chosen = fitted_quantities(ds, fit_accuracy)
    rows = []
    for metric in ("rel_frob_dist", "rel_spec_dist", "early_update_norm", "rel_param_dist"):
        keep = chosen[metric][0]
        for role in (["all"] if metric in NETWORK_METRICS else ["input", "readout"]):
            da = derived[metric].where(keep)
            if role == "input":
                da = da.sel(layer=0)
            elif role == "readout":     # layer depth − 1 of each depth
                da = xr.concat([da.sel(depth=[L], layer=int(L) - 1, drop=False)
                                .drop_vars("layer") for L in ds["depth"].values], "depth")
            y = np.abs(da.transpose("lr", "width", "depth", "seed").values)
            y = y.reshape((-1,) + y.shape[2:])             # (η, m) cells × depth × seed
            c, lo, hi, n = common_slope(y, ds["depth"].values)
            rows.append({"metric": metric, "layer_role": role, "depth_exponent": c,
                         "lo": lo, "hi": hi, "n": n})
    return pd.DataFrame(rows)


DATA_SIZE_METRICS = ("rel_first_step", "rel_frob_dist", "rel_spec_dist")


def data_size_exponents(ds: xr.Dataset, fit_accuracy: float = outcomes.FIT_ACCURACY
                        ) -> pd.DataFrame:
    """How width and the number of points trade off, in a sweep with an n
    axis: per metric of `DATA_SIZE_METRICS`, layer and depth, and per slice of
    the other extra dims, log y = α(η) + b·log m + c·log n (one intercept per
    η, least squares over the networks each metric keeps), with 95%
    intervals from each seed's refit (`seed_interval`). `sum` = b + c is 0
    when y depends on m and n through m/n alone. Empty without two n values
    and two widths."""
    if "n" not in ds.dims or ds.sizes["n"] < 2 or ds.sizes["width"] < 2:
        return pd.DataFrame()
    rows = []
    others = [d for d in extra_dims(ds) if d != "n"]
    labelled = [{}]
    for dim in others:
        labelled = [{**lab, dim: v.item()} for lab in labelled for v in ds[dim].values]
    for labels in labelled:
        part = ds.sel(labels) if labels else ds
        values, chosen = fitted_quantities(part, fit_accuracy)
        for metric in DATA_SIZE_METRICS:
            if metric not in values:
                continue
            keep = chosen[metric][0]
            for depth in part["depth"].values:
                for layer in range(int(depth)):
                    y = values[metric].sel(depth=depth, layer=layer).where(
                        keep.sel(depth=depth))
                    y = y.transpose("lr", "width", "n", "seed").values.astype(np.float64)
                    row = _mn_fit(y, part["lr"].values, part["width"].values,
                                  part["n"].values)
                    if row is None:
                        continue
                    rows.append({**{column(k): v for k, v in labels.items()},
                                 "metric": metric, "depth": int(depth),
                                 "layer": layer, "layer_role": layer_role(layer, int(depth)),
                                 **row})
    return pd.DataFrame(rows)


def _mn_fit(y: np.ndarray, lr, width, n) -> dict | None:
    """The law of `data_size_exponents` on y (lr, width, n, seed)."""
    n_lr, n_w, n_n, n_s = y.shape
    ok = (y > 0) & np.isfinite(y)
    logy = np.log(np.where(ok, y, 1.0))
    design = np.zeros((n_lr, n_w, n_n, n_s, n_lr + 2))
    for i in range(n_lr):
        design[i, ..., i] = 1.0
    design[..., n_lr] = np.log(np.asarray(width, float))[None, :, None, None]
    design[..., n_lr + 1] = np.log(np.asarray(n, float))[None, None, :, None]
    beta, per = seed_refits(design, logy, ok, n_lr)
    if beta is None:
        return None
    per = per[:, -2:]
    b, b_lo, b_hi = seed_interval(per[:, 0], beta[-2])
    c, c_lo, c_hi = seed_interval(per[:, 1], beta[-1])
    t, t_lo, t_hi = seed_interval(per.sum(axis=1), beta[-2] + beta[-1])
    return {"width_exponent": b, "width_exponent_lo": b_lo, "width_exponent_hi": b_hi,
            "n_exponent": c, "n_exponent_lo": c_lo, "n_exponent_hi": c_hi,
            "sum": t, "sum_lo": t_lo, "sum_hi": t_hi, "networks": int(ok.sum()),
            "n_seeds": len(per)}
