"""The kernel (lazy-training) prediction of how far training moves the
weights, in numpy from a network's recorded initial weights.

For a linear output trained on ½Σ‖z(x_i) − y_i‖² by gradient descent with
per-layer rate factors c_l, the linearised network f(θ) ≈ f₀ + J(θ − θ₀)
converges to the interpolant closest to θ₀ in the metric C⁻¹:
θ(∞) − θ₀ = C Jᵀ Θ_C⁻¹ r with r = f₀ − y and Θ_C = J C Jᵀ = Σ_l c_l Θ_l, so

    ‖θ(∞) − θ₀‖² = Σ_l c_l² uᵀ Θ_l u,   u = Θ_C⁻¹ r,

which is rᵀΘ⁻¹r when every c_l = 1 (Jacot, Gabriel & Hongler 2018; Lee et
al. 2019). Θ_l is layer l's share of the empirical NTK at W(0):
Θ_l[(i,c),(j,c')] = ⟨h_l(x_i), h_l(x_j)⟩·⟨δ_l^c(x_i), δ_l^c'(x_j)⟩, with h_l
the layer's input and δ_l^c = ∂z_c/∂(h_l W_l) its backpropagated signal.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def ntk_blocks(weights: list[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    """Θ_l, each (n·k, n·k) in float64 with rows ordered (point, class), of
    the ReLU network h_{l+1} = relu(h_l W_l) with linear readout."""
    ws = [np.asarray(w, np.float64) for w in weights]
    hs, pre = [np.asarray(x, np.float64)], []
    for w in ws[:-1]:
        pre.append(hs[-1] @ w)
        hs.append(np.maximum(pre[-1], 0.0))
    n, k = x.shape[0], ws[-1].shape[1]
    delta = np.broadcast_to(np.eye(k), (n, k, k))          # ∂z_c/∂z: (point, class, unit)
    blocks = [None] * len(ws)
    for l in range(len(ws) - 1, -1, -1):
        gram = hs[l] @ hs[l].T                             # (n, n)
        back = np.einsum("icu,jdu->icjd", delta, delta)     # (n, k, n, k)
        blocks[l] = (gram[:, None, :, None] * back).reshape(n * k, n * k)
        if l:
            delta = (delta @ ws[l].T) * (pre[l - 1] > 0)[:, None, :]
    return blocks


def logits(weights: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """z(x) of the ReLU network in float64."""
    h = np.asarray(x, np.float64)
    for w in weights[:-1]:
        h = np.maximum(h @ np.asarray(w, np.float64), 0.0)
    return h @ np.asarray(weights[-1], np.float64)


def kernel_distance(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray,
                    mult=None) -> float:
    """‖θ(∞) − θ₀‖ of the linearised network trained to interpolation from
    `weights` = W(0) on (x, y), with rate factors `mult` (default all 1).
    NaN when Θ_C is singular (fewer parameters than n·k, or dead units)."""
    blocks = ntk_blocks(weights, x)
    c = np.ones(len(blocks)) if mult is None else np.asarray(mult, np.float64)
    theta = sum(cl * b for cl, b in zip(c, blocks))
    r = (logits(weights, x) - np.asarray(y, np.float64)).reshape(-1)
    try:
        u = np.linalg.solve(theta, r)
    except np.linalg.LinAlgError:
        return float("nan")
    if not np.allclose(theta @ u, r, rtol=1e-6, atol=1e-9 * np.abs(r).max()):
        return float("nan")
    return float(np.sqrt(sum(cl ** 2 * u @ b @ u for cl, b in zip(c, blocks))))


CONVERGED = 1e-6      # loss(T)/loss(0) at or below which a network has interpolated
MAX_OUTPUTS = 2048    # n·k above which Θ is too large to build in the analysis


def not_applicable(ds, cfg) -> str | None:
    """Why the kernel prediction does not apply to this sweep, or None."""
    if cfg.model.output != "linear" or cfg.train.loss != "mse":
        return "it is derived for a linear output trained on ½Σ‖z − y‖²"
    if not cfg.record.weights:
        return "it needs the initial weights: `[record] weights = true`"
    outputs = ds.sizes["sample"] * ds.sizes["class"]
    if outputs > MAX_OUTPUTS:
        return f"n·k = {outputs} is above {MAX_OUTPUTS}, too large a kernel to build here"
    return None


def kernel_table(root, ds, cfg, data: dict | None = None) -> pd.DataFrame:
    """Per (parametrization, depth, width, η₀) over the networks without weight
    decay that interpolated (loss(T) ≤ CONVERGED·loss(0)): the kernel
    prediction ‖θ(∞) − θ₀‖ from each seed's W(0) (mean over seeds), the
    measured ‖θ(T) − θ₀‖ over it, and that ratio's mean with its 95% interval
    over seeds (`fits.seed_interval`); the ratio tends to 1 in the lazy limit.
    With n or d axes, per training set too (leading columns data_n, data_d).
    Empty when `not_applicable`."""
    from normsweep import store
    from normsweep.analysis.fits import seed_interval
    from normsweep.parametrization import layer_dims, lr_multipliers

    if not_applicable(ds, cfg):
        return pd.DataFrame()
    axes = [a for a in ("n", "d") if a in ds.dims]
    if axes and data is None:           # one training set at a time
        parts = []
        for n, d in cfg.data_sizes():
            at = {a: v for a, v in (("n", n), ("d", d)) if a in axes}
            part = store.training_set(ds.sel(at), n, d)
            table = kernel_table(root, part, cfg.with_data(n, d), at)
            for i, (a, v) in enumerate(at.items()):
                table.insert(i, f"data_{a}", v)
            parts.append(table)
        return pd.concat(parts, ignore_index=True)
    if "weight_decay" in ds.dims:
        ds = ds.sel(weight_decay=0.0) if 0.0 in ds["weight_decay"].values else ds.isel(
            weight_decay=slice(0, 0))
    elif cfg.train.weight_decay:
        return pd.DataFrame()
    params = (list(ds["parametrization"].values) if "parametrization" in ds.dims
              else [cfg.model.parametrization])
    x, y = ds["inputs"].values, ds["targets"].values
    moved = np.sqrt((ds["frob_dist"].isel(step=-1) ** 2).sum("layer", min_count=1))
    done = ((ds["loss"].isel(step=-1) <= CONVERGED * ds["loss"].isel(step=0))
            & (ds["diverged_at"] < 0))
    rows = []
    for param in params:
        at = {"parametrization": param} if "parametrization" in ds.dims else {}
        for depth in ds["depth"].values:
            for width in ds["width"].values:
                point = dict(at, depth=depth, width=width)
                mult = lr_multipliers(param, cfg.model.init,
                                      layer_dims(cfg.data.d, int(width), int(depth), cfg.data.k))
                pred = {}
                for seed in ds["seed"].values:
                    ws = store.load_weights(root, width=int(width), depth=int(depth),
                                            lr=float(ds["lr"].values[0]), seed=int(seed),
                                            which="initial", **(data or {}),
                                            **({"parametrization": param} if at else {}))
                    pred[int(seed)] = kernel_distance(ws, x, y, mult)
                for lr in ds["lr"].values:
                    sel = dict(point, lr=lr)
                    ok = done.sel(sel)
                    ratios = [float(moved.sel(dict(sel, seed=s))) / p for s, p in pred.items()
                              if bool(ok.sel(seed=s)) and np.isfinite(p)]
                    mean, lo, hi = seed_interval(ratios)
                    rows.append({"parametrization": param, "depth": int(depth),
                                 "width": int(width), "lr": float(lr),
                                 "networks": len(ratios),
                                 "predicted": float(np.nanmean(list(pred.values()))),
                                 "ratio": mean, "ratio_lo": lo, "ratio_hi": hi})
    return pd.DataFrame(rows)
