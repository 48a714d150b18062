"""Random-matrix values of weight norms at initialisation.

For W of shape (p, q) = (fan_in, fan_out) with i.i.d. N(0, s²) entries:
  Frobenius:  E‖W‖_F ≈ s·√(pq)·(1 − 1/(4pq))
  spectral:   Bai–Yin edge s·(√p + √q) (also Gordon's upper bound on E‖W‖₂);
              finite size (Johnstone 2001; El Karoui 2003):
              ‖W‖₂² / s² ≈ μ + σ·E[TW₁], μ = (√(p−1) + √q)²,
              σ = (√(p−1) + √q)(1/√(p−1) + 1/√q)^{1/3}, E[TW₁] ≈ −1.2065.
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
