"""Random-matrix values of weight norms at initialisation.

For W of shape (p, q) = (fan_in, fan_out) with i.i.d. N(0, s²) entries:
  Frobenius:  E‖W‖_F ≈ s·√(pq)·(1 − 1/(4pq))
  spectral:   Bai–Yin edge s·(√p + √q) (also Gordon's upper bound on E‖W‖₂);
              finite size (Johnstone 2001; El Karoui 2003):
              ‖W‖₂² / s² ≈ μ + σ·E[TW₁], μ = (√(p−1) + √q)²,
              σ = (√(p−1) + √q)(1/√(p−1) + 1/√q)^{1/3}, E[TW₁] ≈ −1.2065.

And the width exponents that the lazy (NTK) regime and μP predict for how
far training moves the weights, by parametrization and η scaling.
"""
from __future__ import annotations

import math

TW1_MEAN = -1.2065


def init_variance(init: str, fan_in: int, width: int) -> float:
    """s² of the entries of a layer under `init` ("he" or "width")."""
    return 2.0 / fan_in if init == "he" else 2.0 / width


def frobenius(p: int, q: int, s2: float) -> float:
    return math.sqrt(s2) * math.sqrt(p * q) * (1 - 1 / (4 * p * q))


def spectral_edge(p: int, q: int, s2: float) -> float:
    return math.sqrt(s2) * (math.sqrt(p) + math.sqrt(q))


def spectral_finite(p: int, q: int, s2: float) -> float:
    if min(p, q) < 2:
        return spectral_edge(p, q, s2)
    a, b = math.sqrt(p - 1), math.sqrt(q)
    mu = (a + b) ** 2
    sigma = (a + b) * (1 / a + 1 / b) ** (1 / 3)
    return math.sqrt(s2 * max(mu + sigma * TW1_MEAN, 0.0))


# width exponents of the relative distance from init at the end of training,
# by (parametrization, lr width_exponent) of the sweep: the lazy (NTK) regime
# reached by the standard parametrization with η ∝ 1/m or by the NTK one at
# fixed η, and μP's spectral condition (‖ΔW_l‖₂ ∝ ‖W_l‖₂ in every layer)
LAZY = {("rel_param_dist", "all"): -0.5,      # Lee et al. 2019: every weight, 1/√width
        ("rel_frob_dist", "hidden"): -1.0, ("rel_spec_dist", "hidden"): -0.5,
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
