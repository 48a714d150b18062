"""Synthetic datasets in the contract's schema with a planted scaling law."""
from __future__ import annotations

import numpy as np
import xarray as xr

STEPS = np.array([0, 1, 2, 5, 10, 20])


def planted(a: float, b: float, *, seeds: int = 4, noise: float = 0.1, rng: int = 0,
            widths=(32, 64, 128, 256), lrs=(0.01, 0.03, 0.1), depth: int = 3,
            diverge: tuple = ()) -> xr.Dataset:
    """frob_dist(T)/frob_norm(0) = 0.5·lr^a·width^b·exp(noise·ε) for every layer.

    `diverge`: (width index, lr index, seed index) triples marked diverged
    (their records NaN, their planted value wildly off so that including
    them would spoil the fit).
    """
    g = np.random.default_rng(rng)
    W, R, S, T, L = len(widths), len(lrs), seeds, len(STEPS), depth
    shape = (W, 1, R, S, T, L)
    law = 0.5 * np.asarray(lrs)[None, :, None] ** a * np.asarray(widths, float)[:, None, None] ** b
    rel = law[:, None, :, :, None] * np.exp(noise * g.normal(size=(W, 1, R, S, L)))
    frob0 = np.ones(shape)
    dist = np.zeros(shape)
    dist[..., -1, :] = rel
    ones = np.ones(shape)
    diverged = -np.ones((W, 1, R, S), np.int64)
    loss = np.tile(np.linspace(10, 1, T), (W, 1, R, S, 1))
    for wi, li, si in diverge:
        diverged[wi, 0, li, si] = 2
        dist[wi, 0, li, si, -1] = 1e6
        loss[wi, 0, li, si, 2:] = np.nan
    dims = ("width", "depth", "lr", "seed", "step", "layer")
    ds = xr.Dataset(
        {"frob_norm": (dims, frob0), "spec_norm": (dims, ones), "frob_dist": (dims, dist),
         "spec_dist": (dims, dist), "update_norm": (dims, ones), "grad_norm": (dims, ones),
         "grad_dot_weight": (dims, ones),
         "loss": (dims[:-1], loss), "accuracy": (dims[:-1], np.full(shape[:-1], 0.5)),
         "diverged_at": (dims[:4], diverged)},
        coords={"width": list(widths), "depth": [depth], "lr": list(lrs), "seed": np.arange(S),
                "step": STEPS, "layer": np.arange(L),
                "lr_effective": (("width", "lr"), np.tile(np.asarray(lrs, float), (W, 1)))})
    return ds
