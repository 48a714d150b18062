"""The numbers of the report, computed from a sweep's Dataset: the init
norms against random-matrix theory, the per-step identity, sharpness and
the norms of the networks that fit. Pure functions of xarray objects that
return tables of plain numbers (snake_case columns, one row per cell, a
`layer_role` beside each `layer`); `report` writes them to DIR/analysis/,
`render` formats them and puts them into words, `figures` into plots.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from normsweep import config as config_mod
from normsweep import parametrization as param_maths
from normsweep import outcomes
from normsweep.analysis import fits, theory


def slice_parametrization(ds: xr.Dataset, cfg: config_mod.Config) -> str:
    """The parametrization of the slice `ds`: its own coordinate where the
    sweep has that axis (and `ds` one value of it), else the grid's."""
    if "parametrization" in ds.coords and ds["parametrization"].size == 1:
        return str(ds["parametrization"].item())
    return cfg.model.parametrization


def init_numbers(ds: xr.Dataset, cfg: config_mod.Config) -> pd.DataFrame:
    """Per layer role and width: the measured mean and sd of ‖W_l(0)‖_F and
    ‖W_l(0)‖₂ over the distinct matrices beside theory for the init of the
    slice's parametrization (μP sets its own): Frobenius s√(pq)(1 − 1/(4pq)),
    the Bai–Yin edge s(√p + √q) and its finite-size value. W_l(0) depends on
    the seed and l alone, so a layer index that several depths share (the
    input, the hidden layers) is one matrix, counted at the shallowest depth
    that has it: its norms, computed in each depth's program, may differ in
    the last bit. Each depth's readout is a matrix of its own."""
    param = slice_parametrization(ds, cfg)
    rows = []
    first = ds.isel(step=0, lr=0)
    first = first.isel({dim: 0 for dim in first["frob_norm"].dims
                        if dim not in ("width", "depth", "layer", "seed")})
    for width in ds["width"].values:
        for role in ("input", "hidden", "readout"):
            pairs, seen = [], set()
            for depth in ds["depth"].values:
                layers = {"input": [0], "readout": [depth - 1],
                          "hidden": list(range(1, depth - 1))}[role]
                for layer in layers:
                    sel = first.sel(width=width, depth=depth, layer=layer)
                    for seed, f, sp in zip(sel["seed"].values, sel["frob_norm"].values,
                                           sel["spec_norm"].values):
                        # (a readout's index is its depth's: one matrix per depth)
                        if np.isfinite([f, sp]).all() and (seed, layer) not in seen:
                            seen.add((seed, layer))
                            pairs.append((f, sp))
            pairs = np.array(pairs, dtype=float).reshape(-1, 2)
            if not len(pairs):
                continue
            p = cfg.data.d if role == "input" else int(width)
            q = cfg.data.k if role == "readout" else int(width)
            s2 = theory.init_variance(cfg.model.init, p, int(width), param, q)
            f_m, s_m = pairs[:, 0], pairs[:, 1]
            rows.append({"layer": role, "p": p, "q": q, "width": int(width), "n": len(pairs),
                         "frob": f_m.mean(), "frob_sd": f_m.std(ddof=1) if len(f_m) > 1 else 0.0,
                         "frob_theory": theory.frobenius(p, q, s2),
                         "spec": s_m.mean(), "spec_sd": s_m.std(ddof=1) if len(s_m) > 1 else 0.0,
                         "spec_edge": theory.spectral_edge(p, q, s2),
                         "spec_finite": theory.spectral_finite(p, q, s2)})
    return pd.DataFrame(rows)


def layer_multipliers(ds: xr.Dataset, cfg, parametrization: str) -> xr.DataArray:
    """c_l of `parametrization` for every (width, depth, layer) of the sweep
    (NaN beyond a network's depth)."""
    out = xr.DataArray(np.full((ds.sizes["width"], ds.sizes["depth"], ds.sizes["layer"]), np.nan),
                       coords={d: ds[d] for d in ("width", "depth", "layer")},
                       dims=("width", "depth", "layer"))
    for i, m in enumerate(ds["width"].values):
        for j, L in enumerate(ds["depth"].values):
            dims = param_maths.layer_dims(cfg.data.d, int(m), int(L), cfg.data.k)
            out.values[i, j, :int(L)] = param_maths.lr_multipliers(
                parametrization, cfg.model.init, dims)
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


def cumulative_terms(ds: xr.Dataset, mult: xr.DataArray | float,
                     keep: xr.DataArray) -> pd.DataFrame | None:
    """Over the whole run, how far GD departs from gradient flow's
    conservation law: at the deepest depth and widest width, over the
    networks `keep` selects (no weight decay), per η₀ and layer, the medians
    of Δ‖W_l‖_F² = ‖W_l(T)‖² − ‖W_l(0)‖² split into its first-order part
    −2η·c_l·Σ_t⟨W_l, ∇_l L⟩ (layer-independent after dividing by c_l, as
    under gradient flow) and its η² part Σ_t ‖W_l(t) − W_l(t−1)‖_F², each
    divided by c_l, and the η² part's share of |Δ‖W_l‖²|. `first_order_check`
    is the same first-order sum from the recorded ⟨W_l, ∇_l L⟩, an independent
    route to it. Needs every step recorded; None otherwise."""
    steps = ds["step"].values
    if "update_norm" not in ds or len(steps) < 2 or not np.all(np.diff(steps) == 1):
        return None
    depth, width = ds["depth"].values.max(), ds["width"].values.max()
    at = dict(depth=depth, width=width)
    d = ds.sel(at).where(keep.sel(at))
    c = mult.sel(at) if isinstance(mult, xr.DataArray) else mult
    total = (d["frob_norm"].isel(step=-1) ** 2 - d["frob_norm"].isel(step=0) ** 2) / c
    second = (d["update_norm"].isel(step=slice(1, None)) ** 2).sum("step", min_count=1) / c
    first = total - second
    check = (-2 * d["lr_effective"] * d["grad_dot_weight"].isel(step=slice(0, -1))
             .sum("step", min_count=1)) if "grad_dot_weight" in d else first * np.nan
    others = [dim for dim in total.dims if dim not in ("lr", "layer")]
    rows = []
    for lr in ds["lr"].values:
        for layer in range(int(depth)):
            sel = dict(lr=lr, layer=layer)
            tot = total.sel(sel)
            if not bool(tot.notnull().any()):
                continue
            share = np.abs(second.sel(sel)) / np.abs(tot)
            rows.append({"depth": int(depth), "width": int(width), "lr": float(lr),
                         "layer": layer, "networks": int(tot.notnull().sum()),
                         "total": float(tot.median(others)),
                         "first_order": float(first.sel(sel).median(others)),
                         "second_order": float(second.sel(sel).median(others)),
                         "first_order_check": float(check.sel(sel).median(others)),
                         "second_order_share": float(share.median(others))})
    return pd.DataFrame(rows) if rows else None


def first_step_terms(ds: xr.Dataset, cfg: config_mod.Config) -> pd.DataFrame | None:
    """The two terms of the first step's Δ‖W_l‖_F² = −2η·c_l⟨W_l, ∇L⟩ +
    η²c_l²‖∇_l L‖² at init, per width and layer of the deepest networks:
    ⟨W_l, ∇L⟩ measured (mean and sd over seeds; W(0) is the same at every η)
    beside its closed form `theory.first_order_init` (the same for every
    layer), ‖∇_l L‖_F² measured (the η² coefficient), and at the smallest η
    the measured Δ‖W_l‖_F² of step 1 (`moved`) beside the sum of the two
    terms with the closed-form first one (`predicted`). None without
    grad_dot_weight or step 1."""
    steps = ds["step"].values
    if "grad_dot_weight" not in ds or 1 not in steps or steps[0] != 0:
        return None
    param = slice_parametrization(ds, cfg)
    depth = int(ds["depth"].values[-1])
    rows = []
    for width in ds["width"].values:
        cell = ds.sel(width=width, depth=depth)
        dims = param_maths.layer_dims(cfg.data.d, int(width), depth, cfg.data.k)
        mult = param_maths.lr_multipliers(param, cfg.model.init, dims)
        closed = theory.first_order_init(cfg.train.loss, cfg.model.output, param,
                                         cfg.model.init, dims, cfg.data.n)
        init = cell.isel(step=0, lr=0)
        eta = float(cell["lr_effective"].isel(lr=0))
        for layer, role in roles(depth):
            at = init.sel(layer=layer)
            gdw, g2 = at["grad_dot_weight"].values, at["grad_norm"].values ** 2
            f0 = cell["frob_norm"].isel(lr=0).sel(layer=layer)
            moved = (f0.sel(step=1) ** 2 - f0.sel(step=0) ** 2).values
            rows.append({"width": int(width), "layer": layer, "layer_role": role,
                         "grad_dot_weight": gdw.mean(),
                         "grad_dot_weight_sd": gdw.std(ddof=1) if len(gdw) > 1 else np.nan,
                         "closed_form": closed, "grad_norm_sq": g2.mean(), "lr": eta,
                         "moved": moved.mean(),
                         "predicted": -2 * eta * mult[layer] * closed
                         + (eta * mult[layer]) ** 2 * g2.mean()})
    return pd.DataFrame(rows)


def last_measured(da: xr.DataArray) -> xr.DataArray:
    """The last finite value along `step` (NaN where there is none)."""
    da = da.transpose(..., "step")
    values = da.values
    measured = np.isfinite(values)
    idx = np.where(measured.any(-1), values.shape[-1] - 1 - np.argmax(measured[..., ::-1], -1), 0)
    last = np.take_along_axis(values, idx[..., None], -1)[..., 0]
    return xr.DataArray(last, dims=da.dims[:-1], coords={d: da[d] for d in da.dims[:-1]})


def sharpness_table(ds: xr.Dataset, outcome: xr.DataArray) -> pd.DataFrame:
    """Per η, over the networks that fit or still train: the medians over
    networks of the sharpness at init, of its peak after step 0 and of its
    median over the second half of training (with that one's quartiles), all
    in units of the stability threshold 2/η. Progressive sharpening starts
    below 1 and rises to it; a start above 1 is a catapult down to it; the
    edge of stability is a second half that hovers near 1 (Cohen et al. 2021)."""
    ratio = (ds["sharpness"] * ds["lr_effective"] / 2).where(outcomes.usable(outcome))
    steps = ds["step"]
    start = ratio.isel(step=0)
    peak = ratio.where(steps > 0).max("step")
    late = ratio.where(steps >= steps[-1] / 2).median("step")
    rows = []
    for lr in ds["lr"].values:
        s, p, q = (a.sel(lr=lr).values.ravel() for a in (start, peak, late))
        ok = np.isfinite(q)

        def stat(v, f=np.nanmedian, *args, ok=ok):
            return float(f(v[ok], *args)) if ok.any() else np.nan
        rows.append({"lr": float(lr), "networks": int(ok.sum()), "at_init": stat(s),
                     "peak": stat(p), "second_half": stat(q),
                     "second_half_q25": stat(q, np.nanpercentile, 25),
                     "second_half_q75": stat(q, np.nanpercentile, 75)})
    return pd.DataFrame(rows)


def first_fit_step(ds: xr.Dataset, fit_accuracy: float) -> xr.DataArray:
    """Per network, the first recorded step at which its training accuracy
    reached `fit_accuracy` (NaN if it never did)."""
    reached = ds["accuracy"] >= fit_accuracy
    steps = ds["step"].broadcast_like(reached).where(reached)
    return steps.min("step")


def fit_norms(ds: xr.Dataset, outcome: xr.DataArray,
              fit_accuracy: float = outcomes.FIT_ACCURACY) -> pd.DataFrame:
    """Per (depth, width, η, layer) with networks that fit: how many, the
    median step at which they first fit, and the layer's mean ‖W_l‖_F at the
    first fit and at the last step, and ‖W_l‖₂ at the last step (how far the
    norms grow once the data are fit)."""
    fit = outcome == outcomes.FIT
    last = ds.isel(step=-1)
    t_fit = first_fit_step(ds, fit_accuracy)
    at_fit = ds["frob_norm"].sel(step=t_fit.fillna(0).astype(int)).where(t_fit.notnull())
    rows = []
    for depth in ds["depth"].values:
        for width in ds["width"].values:
            for lr in ds["lr"].values:
                sel = dict(depth=depth, width=width, lr=lr)
                mask = fit.sel(**sel)
                if not bool(mask.any()):
                    continue
                cell = last.sel(**sel).where(mask)
                step = float(t_fit.sel(**sel).where(mask).median())
                for layer, role in ((i, fits.layer_role(i, int(depth))) for i in range(depth)):
                    rows.append({
                        "depth": int(depth), "width": int(width), "lr": float(lr),
                        "networks": int(mask.sum()), "first_fit_step": step,
                        "layer": layer, "layer_role": role,
                        "frob_at_fit": float(at_fit.sel(**sel, layer=layer).where(mask).mean()),
                        "frob_end": float(cell["frob_norm"].sel(layer=layer).mean()),
                        "spec_end": float(cell["spec_norm"].sel(layer=layer).mean())})
    return pd.DataFrame(rows)


def ntk_change(ds: xr.Dataset, name: str = "ntk_max_eig") -> xr.DataArray:
    """|λ(T)/λ(0) − 1| of an NTK eigenvalue, over the last step it was measured."""
    da = ds[name].where(ds["diverged_at"] < 0)
    return np.abs(last_measured(da) / da.isel(step=0, drop=True) - 1)


def balance(ds: xr.Dataset, mult: xr.DataArray | float, keep: xr.DataArray) -> dict:
    """How the norms moved from init to the last step, signed, at the deepest
    depth, over the networks `keep` selects: per layer (`table`) the median
    change Δ‖W_l‖_F, relative change Δ‖W_l‖_F/‖W_l(0)‖_F and Δ‖W_l‖_F²/c_l;
    per learning rate (`by_lr`) the median over networks of the spread of
    Δ‖W_l‖_F²/c_l across layers (max − min over the largest magnitude); and
    the scalars in `summary`. Plain GD keeps Δ‖W_l‖²/c_l the same in every
    layer up to the η² terms: ⟨W_l, ∇_l L⟩ is layer-independent for a
    bias-free ReLU network. {} without networks."""
    depth = int(ds["depth"].values[-1])
    first, last = ds.isel(step=0), ds.isel(step=-1)
    cell = dict(depth=depth)
    f0 = first["frob_norm"].sel(cell).where(keep.sel(cell))
    f1 = last["frob_norm"].sel(cell).where(keep.sel(cell))
    c = mult.sel(cell) if isinstance(mult, xr.DataArray) else mult
    moved = (f1**2 - f0**2) / c
    layers = ds["layer"] < depth
    moved = moved.where(layers)
    if not np.isfinite(moved.values).any():
        return {}
    size = np.abs(moved).max("layer")
    spread = ((moved.max("layer") - moved.min("layer")) / size).where(size > 0)
    rows = []
    for layer in range(depth):
        sel = dict(layer=layer)
        change = (f1 - f0).sel(sel)
        rows.append({"depth": depth, "layer": layer, "layer_role": fits.layer_role(layer, depth),
                     "change": float(change.median()),
                     "relative_change": float((change / f0.sel(sel)).median()),
                     "squared_change": float(moved.sel(sel).median())})
    rel = ((f1 - f0) / f0).where(layers).median([d for d in f0.dims if d != "layer"])
    most = int(np.abs(rel).fillna(-np.inf).argmax("layer"))
    by_lr = spread.median([d for d in spread.dims if d != "lr"])
    summary = {"depth": depth, "networks": int(np.isfinite(spread.values).sum()),
               "spread_median": float(spread.median()),
               "spread_p90": float(spread.quantile(0.9)),
               # the largest relative move, either way (a signed argmax would name the
               # layer that shrank least), and the layer of smallest norm at init
               "moves_most": most, "moves_most_change": float(rel.isel(layer=most)),
               "smallest_at_init": int(f0.where(layers).median(
                   [d for d in f0.dims if d != "layer"]).fillna(np.inf).argmin("layer"))}
    return {"table": pd.DataFrame(rows), "summary": summary, "moved": moved,
            "by_lr": pd.DataFrame({"lr": by_lr["lr"].values.astype(float),
                                   "spread": by_lr.values.astype(float)})}


def stability_against_sharpness(ds: xr.Dataset, outcome: xr.DataArray) -> pd.DataFrame | None:
    """Per (width, depth): the sharpness at init λ₀ (median over seeds and
    η, all from the same initial weights per seed), η_max·λ₀ for the largest
    stable η (`outcomes.largest_stable_lr`) and η'·λ₀ for the next larger η
    of the grid. GD's stability threshold is λ < 2/η, so the classical
    picture brackets 2 between the two; None without sharpness at step 0."""
    if "sharpness" not in ds or not np.isfinite(ds["sharpness"].isel(step=0)).any():
        return None
    lam0 = ds["sharpness"].isel(step=0).median([d for d in ds["sharpness"].dims
                                                 if d not in ("width", "depth", "step")])
    stable = outcomes.largest_stable_lr(ds, outcome)
    rows = []
    for width in ds["width"].values:
        etas = np.sort(ds["lr_effective"].sel(width=width).values)
        for depth in ds["depth"].values:
            lam = float(lam0.sel(width=width, depth=depth))
            top = float(stable.sel(width=width, depth=depth))
            larger = etas[etas > top] if np.isfinite(top) else etas[:1]
            rows.append({"width": int(width), "depth": int(depth), "sharpness_init": lam,
                         "largest_stable_lr": top, "stable_product": top * lam,
                         "next_product": float(larger[0]) * lam if len(larger) else np.nan})
    return pd.DataFrame(rows)


def stable_ranks(ds: xr.Dataset, cfg: config_mod.Config, keep: xr.DataArray) -> pd.DataFrame:
    """The stable rank ‖A‖_F²/‖A‖₂² (a smooth count of the directions that
    carry A's energy) of W at init and at the last step and of the change
    W(T) − W(0), per layer of the deepest depth at every width: medians over
    the networks `keep` selects, beside the random-matrix value of W(0):
    pq over the finite-size squared spectral norm (`theory.spectral_finite`)
    of a p×q matrix of i.i.d. unit entries, pq/(√p + √q)² in the limit (m/4
    for a square one).
    A stable rank of W − W(0) far below its shape's says the training moved
    the weights along a few directions."""
    depth = int(ds["depth"].values[-1])
    first, last = ds.isel(step=0).sel(depth=depth), ds.isel(step=-1).sel(depth=depth)
    kept = keep.sel(depth=depth)

    def srank(frob, spec):
        return (frob**2 / spec**2).where(kept)

    init = srank(first["frob_norm"], first["spec_norm"])
    end = srank(last["frob_norm"], last["spec_norm"])
    moved = srank(last["frob_dist"], last["spec_dist"])
    rows = []
    for width in ds["width"].values:
        for layer in range(depth):
            p, q = layer_shape(cfg, width, depth, layer)
            cell = dict(width=width, layer=layer)
            rows.append({"width": int(width), "depth": depth, "layer": layer, "p": p, "q": q,
                         "theory": p * q / theory.spectral_finite(p, q, 1.0) ** 2,
                         "init": float(init.sel(cell).median()),
                         "end": float(end.sel(cell).median()),
                         "change": float(moved.sel(cell).median())})
    return pd.DataFrame(rows)


def jacobian_table(ds: xr.Dataset, cfg: config_mod.Config,
                   keep: xr.DataArray | None = None) -> pd.DataFrame | None:
    """Per (width, depth), medians over seeds and η of the input–output
    Jacobian's norms at init and at the last step (where measured; at the
    end over the networks `keep` marks, by default those not diverged: a
    softmax saturated by a failed network has ‖J‖ → 0) beside
    what bounds or predicts them: ‖J‖₂ ≤ Π_l ‖W_l‖₂ for the logits (ReLU
    masks have norm ≤ 1), half that for a softmax output (‖diag(s) − ssᵀ‖₂
    ≤ ½); and E‖J‖_F at init for the slice's parametrization
    (`theory.jacobian_frob_init`: √(2k) for the logits under He init).
    None when the sweep did not record the Jacobian."""
    if "jacobian_frob_norm" not in ds:
        return None
    softmax = cfg.model.output == "softmax"
    param = slice_parametrization(ds, cfg)
    rows = []
    for width in ds["width"].values:
        for depth in ds["depth"].values:
            cell = ds.sel(width=width, depth=depth)
            bound = cell["spec_norm"].sel(layer=slice(0, int(depth) - 1)).prod("layer")
            bound = bound * (0.5 if softmax else 1.0)
            kept = (cell["diverged_at"] < 0) if keep is None else keep.sel(width=width,
                                                                          depth=depth)
            dims = param_maths.layer_dims(cfg.data.d, int(width), int(depth), cfg.data.k)
            rows.append({
                "width": int(width), "depth": int(depth),
                "frob_init": float(cell["jacobian_frob_norm"].isel(step=0).median()),
                "spec_init": float(cell["jacobian_spec_norm"].isel(step=0).median()),
                "bound_init": float(bound.isel(step=0).median()),
                "frob_end": float(last_measured(
                    cell["jacobian_frob_norm"].where(kept)).median()),
                "spec_end": float(last_measured(
                    cell["jacobian_spec_norm"].where(kept)).median()),
                "bound_end": float(bound.isel(step=-1).where(kept).median()),
                "frob_init_theory": theory.jacobian_frob_init(param, cfg.model.init, dims,
                                                              softmax)})
    return pd.DataFrame(rows)


def roles(depth: int) -> list[tuple[int, str]]:
    """(layer, role) of the input, one hidden (when there is one) and the readout layer."""
    return [(0, "input")] + ([(1, "hidden")] if depth > 2 else []) + [(depth - 1, "readout")]


def shown_layer(depth: int) -> tuple[int, str]:
    """The (layer, role) a one-layer table or figure shows: the first hidden
    layer, or the input layer at depth 2."""
    return roles(depth)[1] if depth > 2 else roles(depth)[0]


def largest_usable_lr(ok: xr.DataArray) -> float | None:
    """The largest η₀ at which every network `ok` marks over its other dims
    fits or still trains (None if none)."""
    others = [d for d in ok.dims if d != "lr"]
    good = [lr for lr in ok["lr"].values if bool(ok.sel(lr=lr).all(others))]
    return float(max(good)) if good else None


def measured_steps(da: xr.DataArray, count: int) -> list[int]:
    """The first `count` steps after 0 at which `da` was measured anywhere."""
    return [int(t) for t in da["step"].values
            if t > 0 and bool(da.sel(step=t).notnull().any())][:count]


def local_width_slopes(ds: xr.Dataset, fit_accuracy: float = outcomes.FIT_ACCURACY
                       ) -> pd.DataFrame:
    """The width exponent between adjacent widths, at each η: the slope of
    log(median over seeds) from `width_from` to `width_to`, for the relative
    distance from init of the deepest networks' layers (and of the whole
    parameter vector, layer −1; a hidden layer, or the input layer at depth
    2), for each (metric, layer, η) with at least two finite slopes.
    Finite-width corrections shrink as m grows, so the slope between the two
    largest widths is the best estimate of the limit; a pooled fit weighs
    every width alike. Empty with fewer than 3 widths."""
    if ds.sizes["width"] < 3:
        return pd.DataFrame()
    derived, chosen = fits.fitted_quantities(ds, fit_accuracy)
    depth = int(ds["depth"].max())
    widths = ds["width"].values.astype(float)
    rows = []
    for metric in ("rel_frob_dist", "rel_spec_dist", "rel_param_dist"):
        da = derived[metric].where(chosen[metric][0]).sel(depth=depth)
        cells = [(-1, "all")] if "layer" not in da.dims else [shown_layer(depth)]
        for layer, role in cells:
            for lr in ds["lr"].values:
                cell = da.sel(lr=lr) if layer < 0 else da.sel(lr=lr, layer=layer)
                med = cell.median("seed").values
                slopes = np.diff(np.log(med)) / np.diff(np.log(widths))
                if np.isfinite(slopes).sum() < 2:
                    continue
                rows += [{"metric": metric, "depth": depth, "layer": layer, "layer_role": role,
                          "lr": float(lr), "width_from": int(widths[i]),
                          "width_to": int(widths[i + 1]), "slope": float(v)}
                         for i, v in enumerate(slopes) if np.isfinite(v)]
    return pd.DataFrame(rows)


def param_norm(ds: xr.Dataset) -> xr.DataArray:
    """‖θ(t)‖ = (Σ_l ‖W_l(t)‖_F²)^½, the norm of all the weights."""
    return np.sqrt((ds["frob_norm"] ** 2).sum("layer", min_count=1))


def separated_at(ds: xr.Dataset, fit_accuracy: float) -> xr.DataArray:
    """Per network, the first recorded step from which every later record
    classifies every point right (margin > 0); without a recorded margin,
    the first step at `fit_accuracy`. NaN if never."""
    if "margin" not in ds:
        return first_fit_step(ds, fit_accuracy)
    wrong = ~(ds["margin"] > 0)
    # the last step with a point misclassified, +1 record: the margins stay positive after it
    steps = ds["step"].broadcast_like(wrong)
    last_wrong = steps.where(wrong).max("step")
    after = steps.where(steps > last_wrong.fillna(-1)).min("step")
    return after.where(ds["margin"].isel(step=-1) > 0)


def norm_growth(ds: xr.Dataset, outcome: xr.DataArray,
                fit_accuracy: float = outcomes.FIT_ACCURACY, min_records: int = 4
                ) -> pd.DataFrame:
    """Per (depth, width), over the networks that fit and end with every
    point classified right: the exponent a of ‖θ(t)‖ ∝ (log t)^a from
    when they separate the data (`separated_at`; least squares of log‖θ‖ on
    log log t over the records from then with t ≥ 3, at least `min_records`
    of them), averaged per seed and given with its 95% interval over seeds
    (`fits.seed_interval`: the η values of one seed share W(0)), beside Lyu &
    Li's 1/L; the rate dq_min/d log t of the smallest margin over the same
    records, likewise (→ 1 for cross-entropy, where the loss falls like 1/t
    up to log factors); and the normalised margin q_min/‖θ‖^L at separation
    and at the end (medians; it rises monotonically in Lyu & Li's setting)."""
    t_sep = separated_at(ds, fit_accuracy)
    fit = (outcome == outcomes.FIT) & t_sep.notnull()
    theta = param_norm(ds)
    steps = ds["step"].values.astype(float)
    rows = []
    for depth in ds["depth"].values:
        for width in ds["width"].values:
            sel = dict(depth=depth, width=width)
            mask = fit.sel(sel)
            if not bool(mask.any()):
                continue
            th = theta.sel(sel).where(mask)
            norm_margin = (ds["margin"].sel(sel) / th ** int(depth)) if "margin" in ds else None
            ts = t_sep.sel(sel)
            by_seed, rate_by_seed, at_sep, at_end = {}, {}, [], []
            for idx in zip(*np.nonzero(mask.values)):
                point = dict(zip(mask.dims, idx))
                start = float(ts.isel(point))
                curve = th.isel(point).values
                after = (steps >= max(start, 3)) & np.isfinite(curve)
                if after.sum() >= min_records:
                    x, y = np.log(np.log(steps[after])), np.log(curve[after])
                    by_seed.setdefault(point["seed"], []).append(np.polyfit(x, y, 1)[0])
                    if "margin" in ds:
                        q = ds["margin"].sel(sel).isel(point).values[after]
                        rate_by_seed.setdefault(point["seed"], []).append(
                            np.polyfit(np.log(steps[after]), q, 1)[0])
                if norm_margin is not None:
                    nm = norm_margin.isel(point)
                    at_sep.append(float(nm.sel(step=int(start))))
                    at_end.append(float(nm.isel(step=-1)))
            a, lo, hi = fits.seed_interval([np.mean(v) for v in by_seed.values()])
            rate, rate_lo, rate_hi = fits.seed_interval([np.mean(v) for v in rate_by_seed.values()])
            rows.append({"depth": int(depth), "width": int(width),
                         "networks": int(mask.sum()), "seeds": len(by_seed),
                         "separated_at": float(ts.where(mask).median()),
                         "a": a, "a_lo": lo, "a_hi": hi,
                         "lyu_li": theory.lyu_li_exponent(int(depth)),
                         "margin_rate": rate, "margin_rate_lo": rate_lo,
                         "margin_rate_hi": rate_hi,
                         "margin_at_separation": float(np.median(at_sep)) if at_sep
                         else float("nan"),
                         "margin_at_end": float(np.median(at_end)) if at_end
                         else float("nan")})
    return pd.DataFrame(rows)


LOSS_LEVELS = (1e-1, 1e-2, 1e-3, 1e-4)


def norm_by_loss(ds: xr.Dataset, outcome: xr.DataArray,
                 levels: tuple[float, ...] = LOSS_LEVELS) -> pd.DataFrame:
    """How large the weights are at a given degree of training: per (depth,
    width, η₀) over the networks that fit, at init, at the first record
    where the loss has fallen to `level`·loss(0) for each level, and at the
    end, the medians of ‖θ‖ = (Σ_l ‖W_l‖_F²)^½, of the smallest logit margin
    q_min, and of the step; `networks` counts those that reached the level."""
    fit = outcome == outcomes.FIT
    theta = param_norm(ds)
    rel = ds["loss"] / ds["loss"].isel(step=0)
    steps = ds["step"].broadcast_like(rel)
    has_margin = "margin" in ds
    rows = []
    for depth in ds["depth"].values:
        for width in ds["width"].values:
            for lr in ds["lr"].values:
                sel = dict(depth=depth, width=width, lr=lr)
                mask = fit.sel(sel)
                if not bool(mask.any()):
                    continue
                marks = [("init", xr.zeros_like(mask, dtype=float).where(mask))]
                for level in levels:
                    marks.append((f"loss ≤ {level:g}·loss(0)", steps.sel(sel).where(
                        rel.sel(sel) <= level).min("step").where(mask)))
                marks.append(("end", xr.full_like(mask, float(ds["step"][-1]), dtype=float)
                              .where(mask)))
                for name, at in marks:
                    reached = at.notnull()
                    if not bool(reached.any()):
                        continue
                    step_at = at.fillna(0).astype(int)
                    th = theta.sel(sel).sel(step=step_at).where(reached)
                    q = (ds["margin"].sel(sel).sel(step=step_at).where(reached) if has_margin
                         else None)
                    rows.append({"depth": int(depth), "width": int(width), "lr": float(lr),
                                 "when": name, "networks": int(reached.sum()),
                                 "step": float(at.median()), "theta": float(th.median()),
                                 "margin": float(q.median()) if q is not None
                                 else float("nan")})
    return pd.DataFrame(rows)


def spectrum_layer(ds: xr.Dataset) -> tuple[int, int]:
    """(depth, layer) whose spectra the report shows: a hidden layer of the
    deepest networks, or their input layer at depth 2."""
    depth = int(ds["depth"].max())
    return depth, shown_layer(depth)[0]


def layer_shape(cfg: config_mod.Config, width: int, depth: int, layer: int) -> tuple[int, int]:
    dims = param_maths.layer_dims(cfg.data.d, int(width), depth, cfg.data.k)
    return dims[layer], dims[layer + 1]


def outliers(sv: xr.DataArray, p: int, q: int, s2: xr.DataArray) -> xr.DataArray:
    """How many singular values in `sv` (dim `singular`) lie above the
    noise bulk of a p×q matrix with entry variance `s2` (`theory.outlier_threshold`)."""
    return (sv > theory.outlier_threshold(p, q, s2)).sum("singular").where(
        sv.notnull().any("singular"))


def spectra_table(ds: xr.Dataset, cfg: config_mod.Config, keep: xr.DataArray
                  ) -> pd.DataFrame | None:
    """Per width and layer of the deepest networks, medians over the networks
    that fit or still train: the singular values of W above the
    Marchenko–Pastur bulk (outliers) at init and at the last step (and their
    most at the end), the bulk drawn for the entry variance s² =
    ‖W(0)‖_F²/(pq), and the effective rank of the gradient (that of the GD
    update; at most `rank_bound` = min(n, p, q)) at both steps. None
    without recorded spectra."""
    if "singular_values" not in ds:
        return None
    depth = int(ds["depth"].max())
    rows = []
    for width in ds["width"].values:
        cell = ds.sel(width=width, depth=depth)
        ok = keep.sel(width=width, depth=depth)
        for layer in range(depth):
            p, q = layer_shape(cfg, width, depth, layer)
            s2 = cell["frob_norm"].sel(layer=layer).isel(step=0) ** 2 / (p * q)
            sv = cell["singular_values"].sel(layer=layer)
            count = outliers(sv, p, q, s2).where(ok)
            rank = cell["gradient_effective_rank"].sel(layer=layer).where(ok)
            rows.append({"width": int(width), "depth": depth, "layer": layer, "p": p, "q": q,
                         "outliers_init": float(count.isel(spectrum_step=0).median()),
                         "outliers_end": float(count.isel(spectrum_step=-1).median()),
                         "outliers_end_max": float(count.isel(spectrum_step=-1).max()),
                         "rank_init": float(rank.isel(spectrum_step=0).median()),
                         "rank_end": float(rank.isel(spectrum_step=-1).median()),
                         "rank_bound": min(cfg.data.n, p, q)})
    return pd.DataFrame(rows)


def coordinate_lr(ds: xr.Dataset, keep: xr.DataArray) -> float | None:
    """The η₀ of the coordinate check: the largest at which every network of
    the deepest depth fits or still trains (None if none)."""
    return largest_usable_lr(keep.sel(depth=int(ds["depth"].max())))


def coordinate_slopes(ds: xr.Dataset, keep: xr.DataArray, lr: float, cfg,
                      steps: int = 3) -> pd.DataFrame | None:
    """The μP coordinate check as numbers: at η₀ = `lr` and the first
    `steps` measured steps, the width exponent of mean |a_l(t) − a_l(0)|
    (least squares over widths of the median over seeds), per
    parametrization, layer of the deepest networks and step, beside the
    prediction (`theory.predict`'s "coordinate"). None without
    `activation_change` or with fewer than 2 widths."""
    if "activation_change" not in ds or ds.sizes["width"] < 2:
        return None
    depth = int(ds["depth"].max())
    da = ds["activation_change"].sel(depth=depth, lr=lr).where(keep.sel(depth=depth, lr=lr))
    measured = measured_steps(da, steps)
    params = list(ds["parametrization"].values) if "parametrization" in ds.dims else \
        [cfg.model.parametrization]
    logm = np.log(ds["width"].values.astype(float))
    rows = []
    for param in params:
        cell = da.sel(parametrization=param) if "parametrization" in da.dims else da
        others = [d for d in cell.dims if d not in ("width", "step", "layer")]
        for layer, role in roles(depth):
            predicted = theory.predict("coordinate", role, str(param), cfg.model.init,
                                       float(cfg.grid.lr_width_exponent), depth)
            for t in measured:
                med = cell.sel(step=t, layer=layer).median(others).values
                ok = np.isfinite(med) & (med > 0)
                rows.append({"parametrization": str(param), "lr": float(lr), "depth": depth,
                             "layer": layer, "layer_role": role, "step": t,
                             "exponent": float(np.polyfit(logm[ok], np.log(med[ok]), 1)[0])
                             if ok.sum() >= 2 else np.nan, "predicted": predicted})
    return pd.DataFrame(rows)
