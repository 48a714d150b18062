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

import numpy as np

TW1_MEAN = -1.2065


def init_variance(init: str, fan_in: int, width: int) -> float:
    """s² of the entries of a layer under `init` ("he" or "width")."""
    return 2.0 / fan_in if init == "he" else 2.0 / width


def frobenius(p: int, q: int, s2: float) -> float:
    return math.sqrt(s2) * math.sqrt(p * q) * (1 - 1 / (4 * p * q))


def spectral_edge(p: int, q: int, s2):
    """s(√p + √q); `s2` may be an array."""
    return np.sqrt(s2) * (math.sqrt(p) + math.sqrt(q))


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


def edge_fluctuation(p: int, q: int, s2):
    """The Tracy–Widom scale of the largest singular value of a p×q matrix
    with i.i.d. N(0, s²) entries, s·(1/√p + 1/√q)^{1/3}/2 (the scale σ of
    `spectral_finite`'s ‖W‖₂², divided by 2‖W‖₂)."""
    return np.sqrt(s2) * (1 / math.sqrt(p) + 1 / math.sqrt(q)) ** (1 / 3) / 2


def outlier_threshold(p: int, q: int, s2, scales: float = 4.0):
    """A singular value above the bulk: beyond the Bai–Yin edge by `scales`
    Tracy–Widom scales (the largest value of a pure noise matrix exceeds it
    with probability below 1e-3: TW₁'s tail beyond 4)."""
    return spectral_edge(p, q, s2) + scales * edge_fluctuation(p, q, s2)


def marchenko_pastur_singular(sigma, p: int, q: int, s2: float):
    """The Marchenko–Pastur density of the singular values of a p×q matrix
    with i.i.d. N(0, s²) entries (normalised over its min(p, q) values):
    with r = min/max and scale s²·max(p, q), the eigenvalues λ = σ² of the
    smaller Gram matrix have density √((λ₊ − λ)(λ − λ₋))/(2π·scale·r·λ) on
    [scale(1 − √r)², scale(1 + √r)²]; σ's density is that times 2σ."""
    big, small = max(p, q), min(p, q)
    r, scale = small / big, s2 * big
    lam = np.asarray(sigma, float) ** 2
    lo, hi = scale * (1 - math.sqrt(r)) ** 2, scale * (1 + math.sqrt(r)) ** 2
    inside = (lam > lo) & (lam < hi)
    dens = np.where(inside, np.sqrt(np.clip((hi - lam) * (lam - lo), 0, None))
                    / (2 * math.pi * scale * r * np.where(lam > 0, lam, 1)), 0.0)
    return dens * 2 * np.asarray(sigma, float)


# Lyu & Li 2019: for an L-homogeneous network trained by gradient descent on
# an exponential-tailed classification loss (cross-entropy), once the data are
# separated ‖θ(t)‖ grows like (log t)^{1/L} and the normalised margin
# q_min/‖θ‖^L rises monotonically
def lyu_li_exponent(depth: int) -> float:
    return 1.0 / depth


# the width exponent of a coordinate's change after the first step, mean
# |a_l(1) − a_l(0)|, at fixed η₀, by (parametrization, lr width_exponent): from
# ΔW_l = −η·c_l·h_lᵀδ_l with Θ(1) coordinates of h_l, ‖h_l‖² ∝ fan_in and δ
# backpropagated through He-scaled weights (Yang & Hu 2021). μP keeps every
# layer Θ(1); the NTK parametrization moves the features like m^−½ and the
# logits Θ(1) (lazy); the standard one at fixed η blows the logits up like m,
# which η ∝ 1/m cures by making everything m times smaller
COORDINATES = {("mup", 0.0): {"input": 0.0, "hidden": 0.0, "readout": 0.0},
               ("ntk", 0.0): {"input": -0.5, "hidden": -0.5, "readout": 0.0},
               ("standard", 0.0): {"input": -0.5, "hidden": 0.5, "readout": 1.0},
               ("standard", -1.0): {"input": -1.5, "hidden": -0.5, "readout": 0.0}}
