"""The dataset's names, dims and labels: what training records and what
`store` writes and reads (docs/schema.md is their contract). Imports no
JAX, so that reading results needs none.
"""
from __future__ import annotations

import xarray as xr

from normsweep import probes

LAYER_METRICS = ("frob_norm", "spec_norm", "frob_dist", "spec_dist", "update_norm", "grad_norm",
                 "grad_dot_weight")
NETWORK_METRICS = ("loss", "accuracy", "margin")

LAYER_DIMS = ("width", "depth", "lr", "seed", "step", "layer")
NET_DIMS = LAYER_DIMS[:-1]

# name: (long_name, units, description). long_name is short, for a plot's
# axis (xarray puts it there); the sentence is in `description`. units are
# CF's ("1": a dimensionless quantity; "s": seconds); counts and indices
# (width, step, seed, ...) carry none.
VARIABLES = {
    "frob_norm": ("Frobenius norm ‖W‖_F", "1", "Frobenius norm of W_l(t)"),
    "spec_norm": ("spectral norm ‖W‖₂", "1",
                  "spectral norm (largest singular value) of W_l(t)"),
    "frob_dist": ("‖W − W(0)‖_F", "1", "Frobenius norm of W_l(t) − W_l(0)"),
    "spec_dist": ("‖W − W(0)‖₂", "1", "spectral norm of W_l(t) − W_l(0)"),
    "update_norm": ("update norm ‖ΔW‖_F", "1",
                    "Frobenius norm of the last update W_l(t) − W_l(t−1)"),
    "grad_norm": ("gradient norm ‖∇L‖_F", "1",
                  "Frobenius norm of the gradient ∂L/∂W_l at W(t)"),
    "grad_dot_weight": ("⟨W, ∇L⟩", "1", "inner product ⟨W_l(t), ∂L/∂W_l at W(t)⟩"),
    "loss": ("training loss", "1", "training loss at W(t)"),
    "accuracy": ("training accuracy", "1",
                 "fraction of training points whose largest output is the target class"),
    "margin": ("margin", "1",
               "min over the training points of z_i[y_i] − max_{j≠y_i} z_i[j] of the logits z "
               "(positive when every point is classified right)"),
    "singular_values": ("singular value σ(W)", "1",
                        "singular values of W_l, descending, NaN beyond min(fan_in, fan_out)"),
    "change_singular_values": ("singular value σ(W − W(0))", "1",
                               "singular values of W_l − W_l(0), descending, NaN beyond "
                               "min(fan_in, fan_out)"),
    "gradient_effective_rank": ("effective rank of ∇L", "1",
                                "exp of the entropy of the normalised singular values of "
                                "∂L/∂W_l (Roy & Vetterli), the effective rank of the GD update"),
    **probes.variables(),           # each probe's, declared with it
    "diverged_at": ("divergence step", None,
                    "first step with a non-finite loss, weight or recorded norm, −1 if none"),
    "train_seconds": ("training time", "s",
                      "wall time of the cohort's training, records and all, compilation excluded"),
    "compile_seconds": ("compile time", "s",
                        "wall time of compiling the cohort's programs (0 when found compiled)"),
    "inputs": ("input x", "1", "training inputs, uniform on the unit sphere"),
    "targets": ("target y", "1", "one-hot training targets"),
}
COORDS = {
    "width": ("width m", None, "width of the hidden layers"),
    "depth": ("depth L", None, "number of weight matrices"),
    "lr": ("learning rate", "1",
           "learning rate as written in the grid (η₀ when scaled with width)"),
    "lr_effective": ("learning rate η", "1",
                     "learning rate η = lr · width^width_exponent used in training"),
    "seed": ("seed", None, "seed of the initial weights"),
    "parametrization": ("parametrization", None, "standard, ntk or mup (see docs/schema.md)"),
    "weight_decay": ("weight decay λ", "1",
                     "weight decay: each step also subtracts lr_effective · λ · W_l"),
    "step": ("step", None, "gradient-descent step; 0 is the initialisation"),
    "layer": ("layer l", None, "index of the weight matrix W_l (0 is the input layer)"),
    "spectrum_step": ("step", None, "step at which the spectra were taken (0 and the last)"),
    "singular": ("singular value index", None, "index of a singular value, largest first"),
    "sample": ("training point", None, "index of a training point"),
    "feature": ("input coordinate", None, "index of an input coordinate"),
    "class": ("class", None, "index of an output class"),
}
# The training data is the same in every cohort: stored as (non-index)
# coordinates so that xr.open_mfdataset keeps one copy of it.
DATA_VARS = ("inputs", "targets")


def label(ds: xr.Dataset) -> xr.Dataset:
    """`ds` with every known variable's long_name, description and units."""
    for name, (long_name, units, description) in {**VARIABLES, **COORDS}.items():
        if name in ds.variables:
            attrs = ds[name].attrs
            attrs.pop("units", None)
            attrs.update(long_name=long_name, description=description)
            if units is not None:
                attrs["units"] = units
    return ds


def layer_dims(axes: tuple[str, ...]) -> tuple[str, ...]:
    """Dims of a per-layer variable for member dims `axes` (see Config.member_axes)."""
    return ("width", "depth") + tuple(axes) + ("step", "layer")
