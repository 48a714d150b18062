"""Random-matrix values of weight norms at initialisation.

For W of shape (p, q) = (fan_in, fan_out) with i.i.d. N(0, s²) entries:
  Frobenius:  E‖W‖_F ≈ s·√(pq)·(1 − 1/(4pq))
  spectral:   Bai–Yin edge s·(√p + √q) (also Gordon's upper bound on E‖W‖₂);
              finite size (Johnstone 2001; El Karoui 2003):
              ‖W‖₂² / s² ≈ μ + σ·E[TW₁], μ = (√(p−1) + √q)²,
              σ = (√(p−1) + √q)(1/√(p−1) + 1/√q)^{1/3}, E[TW₁] ≈ −1.2065.

And the width exponents of how far gradient descent moves the weights,
derived in one place (`width_exponents`, `predict`) from per-layer scaling
rules, for every parametrization, η scaling and depth.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from normsweep import parametrization as param_maths

TW1_MEAN = -1.2065


def init_variance(init: str, fan_in: int, width: int, parametrization: str = "standard",
                  fan_out: int | None = None) -> float:
    """s² of the entries of a layer under `init` ("he" or "width"), or under
    μP's own init when `parametrization` is "mup" (then `fan_out` is needed)."""
    scheme = param_maths.init_scheme(parametrization, init)
    return param_maths.init_std(scheme, fan_in, width, fan_out) ** 2


def jacobian_frob_init(parametrization: str, init: str, dims, softmax: bool = False) -> float:
    """E‖∂F/∂x‖_F at init, to leading order, for layer sizes `dims` = (d, m, …, k).

    J = W_{L−1}ᵀ D_{L−1} ⋯ D_1 W_0ᵀ with ReLU masks D that keep half the units
    (for a column w of the next layer E[‖w‖² | ⟨h, w⟩ > 0] = E‖w‖²), and
    E‖AW‖_F² = ‖A‖_F²·s²·q for W (p×q) of i.i.d. N(0, s²) entries, so
    E‖J‖_F² = d·Π_l s_l²·q_l · 2^−(L−1): 2k under He init whatever the width,
    2k²/m under μP (its readout has s² = 2k/m²). A softmax at small logits
    multiplies by diag(s) − ssᵀ ≈ (I − 11ᵀ/k)/k: ‖·‖_F² by (k − 1)/k³."""
    stds = param_maths.init_stds(parametrization, init, dims)
    sq = dims[0] * math.prod(s * s * q for s, q in zip(stds, dims[1:])) / 2 ** (len(stds) - 1)
    k = dims[-1]
    return math.sqrt(sq * (k - 1) / k ** 3 if softmax else sq)


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


def logit_variance(parametrization: str, init: str, dims) -> float:
    """E z² of a logit at init for inputs on the unit sphere: a preactivation
    of layer 0 has variance s_0²‖x‖² = s_0², and each later layer multiplies
    it by s_l²·fan_in_l/2 (half a ReLU's input passes, symmetrically). Exact
    in expectation at any width."""
    stds = param_maths.init_stds(parametrization, init, dims)
    var = stds[0] ** 2
    for s, fan_in in zip(stds[1:], dims[1:-1]):
        var *= s * s * fan_in / 2
    return var


def first_order_init(loss: str, output: str, parametrization: str, init: str, dims,
                     n: int) -> float:
    """E Σ_i⟨∂ℓ/∂z_i, z_i⟩ at init, for n points and random one-hot targets
    independent of the network. By Euler's theorem (the logits z are
    1-homogeneous in each W_l of a bias-free ReLU network) this is ⟨W_l, ∇_l L⟩
    for every layer, so the first step moves every ‖W_l‖_F² by
    −2η·c_l·(this) + η²·c_l²·‖∇_l L‖² (Du, Hu & Lee 2018's balancedness).
    With σ² = `logit_variance` and E⟨y, z⟩ = 0:
      linear output, ½‖z − y‖²:  ⟨z − y, z⟩ → n·k·σ²  (exact in expectation);
      softmax, ½‖s − y‖²:  (s − y)ᵀ(diag s − ssᵀ)z ≈ ‖z − z̄‖²/k² → n(k − 1)σ²/k²;
      cross-entropy: ⟨s − y, z⟩ ≈ ‖z − z̄‖²/k → n(k − 1)σ²/k;
    the last two to leading order in σ² (small logits, as He init gives)."""
    k = dims[-1]
    var = logit_variance(parametrization, init, dims)
    if loss == "cross_entropy":
        return n * (k - 1) * var / k
    if output == "softmax":
        return n * (k - 1) * var / k ** 2
    return n * k * var


# -- width exponents, derived from per-layer scaling rules --------------------
#
# Shapes: input d×m, hidden m×m, readout m×k, with d, k, n fixed and m → ∞.
# Each layer has an entry std s_l ∝ m^σ_l and a rate factor c_l ∝ m^γ_l
# (read off `parametrization`), and η ∝ m^p. Then, to leading order:
#   forward coordinates  A_0 = 0,  A_{l+1} = A_l + σ_l + ½[fan_in_l = m]
#   backward coordinates D_L = 0 (∂ℓ/∂z is Θ(1) at init),
#                        D_l = D_{l+1} + σ_l + ½[fan_out_l = m]   (at z_l = h_{l−1}W_{l−1})
#   gradient G_l = Σ_i h_i δ_iᵀ has rank ≤ n, so ‖G_l‖_F ≍ ‖G_l‖₂ ∝ m^g_l,
#                        g_l = A_l + ½[fan_in = m] + D_{l+1} + ½[fan_out = m]
#   one step             ‖ΔW_l‖ = η·c_l·‖G_l‖ ∝ m^(p + γ_l + g_l)
#   init norms           ‖W_l(0)‖_F ∝ m^(σ_l + ½[fan_in = m] + ½[fan_out = m]),
#                        ‖W_l(0)‖₂ ∝ m^(σ_l + ½[fan_in = m or fan_out = m])
#   coordinate change    Δz_{l+1}: own term h_lΔW_l ∝ m^(p + γ_l + 2A_l + [fan_in = m] + D_{l+1}),
#                        carried term Δh_l·W_l ∝ m^(C_l + σ_l + ½[fan_in = m]); C the larger.
#   stability            η·Θ(NTK) ∝ m^(p + max_l(γ_l + 2g_l)): bounded iff ≤ 0.
# Where η·Θ stays bounded, training needs O(1) steps or fewer, so the total
# move ‖W(T) − W(0)‖ at a fixed T scales as one step: the lazy laws of Jacot
# et al. and Lee et al. (standard with η ∝ 1/m, NTK at fixed η), and μP's
# spectral condition (Yang, Simon & Bernstein 2023). Where it grows, the
# sweep leaves the stable range at large width and only the one-step laws hold.

# a width large enough that min(1, √(m/d)) and the like have saturated
_M1, _M2 = 2.0 ** 20, 2.0 ** 24


@dataclasses.dataclass(frozen=True)
class LayerExponents:
    """Width exponents of one layer (see the derivation above)."""
    role: str
    std: float
    rate: float
    frob0: float
    spec0: float
    grad: float
    step: float
    coordinate: float


@dataclasses.dataclass(frozen=True)
class Exponents:
    """`width_exponents`' result: the layers, and the exponent of η·Θ."""
    layers: tuple[LayerExponents, ...]
    stability: float

    @property
    def stable(self) -> bool:
        return self.stability <= 1e-9

    def role(self, role: str) -> LayerExponents | None:
        return next((layer for layer in self.layers if layer.role == role), None)


def _slope(f) -> float:
    return math.log(f(_M2) / f(_M1)) / math.log(_M2 / _M1)


def width_exponents(parametrization: str, init: str, lr_width_exponent: float,
                    depth: int) -> Exponents:
    """The width exponents of every layer of a depth-`depth` network under
    `parametrization` and `init`, trained at η ∝ m^`lr_width_exponent`."""
    d, k = 16, 10       # fixed sizes: they set constants, not exponents

    def dims(m):
        return param_maths.layer_dims(d, m, depth, k)

    sigma = [_slope(lambda m, l=l: param_maths.init_stds(parametrization, init, dims(m))[l])
             for l in range(depth)]
    gamma = [_slope(lambda m, l=l: param_maths.lr_multipliers(parametrization, init, dims(m))[l])
             for l in range(depth)]
    fan_in_m = [l > 0 for l in range(depth)]
    fan_out_m = [l < depth - 1 for l in range(depth)]
    A = [0.0]
    for l in range(depth):
        A.append(A[l] + sigma[l] + 0.5 * fan_in_m[l])
    D = [0.0] * (depth + 1)
    for l in range(depth - 1, 0, -1):
        D[l] = D[l + 1] + sigma[l] + 0.5 * fan_out_m[l]
    p = lr_width_exponent
    layers, carried = [], -math.inf
    for l in range(depth):
        g = A[l] + 0.5 * fan_in_m[l] + D[l + 1] + 0.5 * fan_out_m[l]
        own = p + gamma[l] + 2 * A[l] + 1.0 * fan_in_m[l] + D[l + 1]
        carried = max(own, carried + sigma[l] + 0.5 * fan_in_m[l])
        role = "input" if l == 0 else "readout" if l == depth - 1 else "hidden"
        layers.append(LayerExponents(
            role, sigma[l], gamma[l], sigma[l] + 0.5 * fan_in_m[l] + 0.5 * fan_out_m[l],
            sigma[l] + 0.5 * (fan_in_m[l] or fan_out_m[l]), g, p + gamma[l] + g, carried))
    stability = p + max(layer.rate + 2 * layer.grad for layer in layers)
    return Exponents(tuple(layers), stability)


def predict(metric: str, role: str, parametrization: str, init: str,
            lr_width_exponent: float, depth: int) -> float:
    """The width exponent of `metric` for the layer `role` ("all" for
    `rel_param_dist`) at fixed η₀, i.e. along the sweep's η = η₀·m^p; NaN
    where the derivation gives none (a role the depth lacks, a metric it
    does not cover, or an end-of-training metric of a sweep whose η·Θ grows
    with width)."""
    ex = width_exponents(parametrization, init, lr_width_exponent, depth)
    if metric == "rel_param_dist":
        if role != "all" or not ex.stable:
            return math.nan
        moved = max(2 * layer.step - layer.rate for layer in ex.layers)
        held = max(2 * layer.frob0 - layer.rate for layer in ex.layers)
        return 0.5 * (moved - held)
    layer = ex.role(role)
    if layer is None:
        return math.nan
    if metric in ("rel_frob_dist", "rel_spec_dist") and not ex.stable:
        return math.nan
    value = {"rel_frob_dist": layer.step - layer.frob0,
             "rel_spec_dist": layer.step - layer.spec0,
             "first_update_spec": layer.step, "early_update_norm": layer.step,
             "rel_first_step": layer.step - layer.frob0,
             "coordinate": layer.coordinate}.get(metric, math.nan)
    return float(value) + 0.0


ONE_STEP = ("first_update_spec", "rel_first_step", "early_update_norm")


def predict_lr(metric: str) -> float:
    """The η exponent of `metric`: 1 for the `ONE_STEP` metrics (ΔW =
    −η·c·G exactly at the first step, to first order over the first few),
    NaN for the rest (it depends on how far training has gone)."""
    return 1.0 if metric in ONE_STEP else math.nan


def regime(parametrization: str, init: str, lr_width_exponent: float) -> str:
    """In words, what the sweep's parametrization and η scaling do as m grows."""
    ex = width_exponents(parametrization, init, lr_width_exponent, 3)
    if not ex.stable:
        return (f"η·Θ grows like m^{ex.stability:+.2g}: at large width this η leaves the stable "
                "range, so only the one-step laws are predicted")
    if ex.stability < -1e-9:
        return f"η·Θ shrinks like m^{ex.stability:+.2g}: training slows with width"
    if parametrization == "mup":
        return "μP: stable, and every layer's spectral move Θ(its init) (feature learning)"
    return "lazy training: η·Θ is Θ(1), and the weights move less as m grows"
