"""The maths of the parametrizations, without JAX: the init std and the
per-layer rate factor c_l of every layer. The model trains with these and
the analysis reads them, so both import this module and nothing heavier.
"""
from __future__ import annotations

import math


def init_std(init: str, fan_in: int, width: int, fan_out: int | None = None) -> float:
    """Standard deviation of every entry of a layer with `fan_in` inputs.

    "mup" is the maximal-update init for SGD (Yang, Simon & Bernstein 2023,
    with the ReLU gain √2): √(2/fan_in)·min(1, √(fan_out/fan_in)).
    """
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    if init == "width":
        return math.sqrt(2.0 / width)
    if init == "mup":
        return math.sqrt(2.0 / fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
    if init == "unit":
        return 1.0
    raise ValueError(f"init = {init!r}: must be 'he', 'width', 'mup' or 'unit'")


def init_scheme(parametrization: str, init: str) -> str:
    """The init a parametrization draws with: μP sets its own, the others use
    `init`."""
    return "mup" if parametrization == "mup" else init


def layer_dims(d: int, width: int, depth: int, k: int) -> tuple[int, ...]:
    """The layer sizes (d, m, …, m, k) of a network of `depth` weight matrices."""
    return (d,) + (width,) * (depth - 1) + (k,)


def init_stds(parametrization: str, init: str, dims) -> tuple[float, ...]:
    """Per-layer init std of the effective weights W_l (`init_scheme`)."""
    scheme = init_scheme(parametrization, init)
    return tuple(init_std(scheme, fan_in, dims[1], fan_out)
                 for fan_in, fan_out in zip(dims[:-1], dims[1:]))


def lr_multipliers(parametrization: str, init: str, dims) -> tuple[float, ...]:
    """Per-layer factors c_l of the learning rate: W_l ← W_l − η·c_l·∂L/∂W_l.

    standard: c_l = 1.
    ntk:      W_l = s_l·ω_l with ω_l ~ N(0, 1) and GD on ω at rate η, which in
              W's coordinates is c_l = s_l² (s_l the init std of the layer).
    mup:      c_l = fan_out/fan_in (maximal update for SGD; the init is "mup").
    """
    width = dims[1]
    out = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        if parametrization == "standard":
            out.append(1.0)
        elif parametrization == "ntk":
            out.append(init_std(init, fan_in, width) ** 2)
        elif parametrization == "mup":
            out.append(fan_out / fan_in)
        else:
            raise ValueError(f"parametrization = {parametrization!r}")
    return tuple(out)
