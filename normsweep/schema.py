"""The dataset's names, dims and labels: what training records and what
`store` writes and reads (docs/schema.md is their contract). Imports no
JAX, so that reading results needs none.
"""
from __future__ import annotations

import xarray as xr

LAYER_METRICS = ("frob_norm", "spec_norm", "frob_dist", "spec_dist", "update_norm", "grad_norm",
                 "grad_dot_weight")
NETWORK_METRICS = ("loss", "accuracy")

LAYER_DIMS = ("width", "depth", "lr", "seed", "step", "layer")
NET_DIMS = LAYER_DIMS[:-1]

# name: (long_name, units)
VARIABLES = {
    "frob_norm": ("Frobenius norm of W_l(t)", "1"),
    "spec_norm": ("spectral norm (largest singular value) of W_l(t)", "1"),
    "frob_dist": ("Frobenius norm of W_l(t) - W_l(0)", "1"),
    "spec_dist": ("spectral norm of W_l(t) - W_l(0)", "1"),
    "update_norm": ("Frobenius norm of the last update W_l(t) - W_l(t-1)", "1"),
    "grad_norm": ("Frobenius norm of the gradient dL/dW_l at W(t)", "1"),
    "grad_dot_weight": ("inner product <W_l(t), dL/dW_l at W(t)>", "1"),
    "loss": ("training loss at W(t)", "1"),
    "jacobian_frob_norm": ("mean over the data of the Frobenius norm of dF(x_i)/dx_i "
                           "(NaN where not measured)", "1"),
    "jacobian_spec_norm": ("mean over the data of the spectral norm of dF(x_i)/dx_i "
                           "(NaN where not measured)", "1"),
    "sharpness": ("largest-magnitude eigenvalue of the loss Hessian at W(t), preconditioned by "
                  "the per-layer lr multipliers (NaN where not measured)", "1"),
    "ntk_max_eig": ("largest eigenvalue of the empirical NTK Gram matrix of the logits on the "
                    "first ntk_points training points (NaN where not measured)", "1"),
    "ntk_min_eig": ("smallest eigenvalue of the empirical NTK Gram matrix of the logits on the "
                    "first ntk_points training points (NaN where not measured)", "1"),
    "accuracy": ("fraction of training points whose largest output is the target class", "1"),
    "diverged_at": ("first step with a non-finite loss, weight or recorded norm, -1 if none",
                    "step"),
    "inputs": ("training inputs, uniform on the unit sphere", "1"),
    "targets": ("one-hot training targets", "1"),
}
COORDS = {
    "width": ("width m of the hidden layers", "1"),
    "depth": ("number of weight matrices L", "1"),
    "lr": ("learning rate lr as written in the grid (eta_0 when scaled with width)", "1"),
    "lr_effective": ("learning rate eta = lr * width**width_exponent used in training", "1"),
    "seed": ("seed of the initial weights", "1"),
    "parametrization": ("parametrization: standard, ntk or mup (see docs/schema.md)", "1"),
    "weight_decay": ("weight decay lambda: each step subtracts lr_effective * lambda * W_l", "1"),
    "step": ("gradient-descent step; 0 is the initialisation", "step"),
    "layer": ("index l of the weight matrix W_l (0 is the input layer)", "1"),
    "sample": ("training point", "1"),
    "feature": ("input coordinate", "1"),
    "class": ("output class", "1"),
}
# The training data is the same in every cohort: stored as (non-index)
# coordinates so that xr.open_mfdataset keeps one copy of it.
DATA_VARS = ("inputs", "targets")


def label(ds: xr.Dataset) -> xr.Dataset:
    for name, (long_name, units) in {**VARIABLES, **COORDS}.items():
        if name in ds.variables:
            ds[name].attrs.update(long_name=long_name, units=units)
    return ds


def layer_dims(axes: tuple[str, ...]) -> tuple[str, ...]:
    """Dims of a per-layer variable for member dims `axes` (see Config.member_axes)."""
    return ("width", "depth") + tuple(axes) + ("step", "layer")
