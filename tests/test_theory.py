"""The width exponents of `theory.predict` against an independent float64
simulation: a bias-free ReLU network in numpy, each parametrization's init
and per-layer rates written out here by hand, trained by plain GD at three
widths. Nothing of normsweep is used but the predictions under test."""
from __future__ import annotations

import math

import numpy as np
import pytest

from normsweep.analysis import theory

D, K, N = 8, 4, 24
WIDTHS = (64, 256, 1024)
SEEDS = 8


def spec(a: np.ndarray, iterations: int = 100) -> float:
    """‖a‖₂ by power iteration on aᵀa (an SVD of every 1024² matrix is slow)."""
    v = np.random.default_rng(0).standard_normal(a.shape[1])
    for _ in range(iterations):
        v = a.T @ (a @ v)
        v /= np.linalg.norm(v)
    return float(np.linalg.norm(a @ v))


def setting(param: str, dims):
    """(entry stds, rate factors) of each layer, from the definitions."""
    stds, rates = [], []
    for l, (p, q) in enumerate(zip(dims[:-1], dims[1:])):
        if param == "mup":
            stds.append(math.sqrt(2 / p) * min(1.0, math.sqrt(q / p)))
            rates.append(q / p)
        else:
            stds.append(math.sqrt(2 / p))
            rates.append(1.0 if param == "standard" else 2 / p)
    return stds, rates


def grads(ws, x, y):
    """Forward, then backward of ½Σ‖z − y‖² (linear output): dL/dW_l and
    every layer's output."""
    hs, outs = [x], []
    for l, w in enumerate(ws):
        z = hs[-1] @ w
        outs.append(z)
        hs.append(np.maximum(z, 0) if l < len(ws) - 1 else z)
    delta = outs[-1] - y
    gs = [None] * len(ws)
    for l in range(len(ws) - 1, -1, -1):
        gs[l] = hs[l].T @ delta
        if l:
            delta = (delta @ ws[l].T) * (outs[l - 1] > 0)
    return gs, outs


def simulate(param: str, p: float, depth: int, steps: int, eta0: float):
    """Per width: mean over seeds of each measured quantity."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.eye(K)[rng.integers(0, K, N)]
    out = {}
    for m in WIDTHS:
        dims = (D,) + (m,) * (depth - 1) + (K,)
        stds, rates = setting(param, dims)
        eta = eta0 * m ** p
        rows = []
        for seed in range(SEEDS):
            r = np.random.default_rng(100 + seed)
            w0 = [r.standard_normal((a, b)) * s for a, b, s in zip(dims[:-1], dims[1:], stds)]
            ws = [w.copy() for w in w0]
            g, outs0 = grads(ws, x, y)
            first = [eta * c * gl for c, gl in zip(rates, g)]
            _, outs1 = grads([w - f for w, f in zip(ws, first)], x, y)
            for _ in range(steps):
                g, _ = grads(ws, x, y)
                ws = [w - eta * c * gl for w, c, gl in zip(ws, rates, g)]
            moved = [w - v for w, v in zip(ws, w0)]
            theta = sum(np.sum(dw ** 2) / c for dw, c in zip(moved, rates))
            theta0 = sum(np.sum(v ** 2) / c for v, c in zip(w0, rates))
            rows.append({
                "first_update_spec": [spec(f) for f in first],
                "rel_first_step": [np.linalg.norm(f) / np.linalg.norm(v)
                                   for f, v in zip(first, w0)],
                "coordinate": [np.abs(b - a).mean() for a, b in zip(outs0, outs1)],
                "rel_frob_dist": [np.linalg.norm(dw) / np.linalg.norm(v)
                                  for dw, v in zip(moved, w0)],
                "rel_spec_dist": [spec(dw) / spec(v)
                                  for dw, v in zip(moved, w0)],
                "rel_param_dist": [math.sqrt(theta / theta0)],
            })
        # root mean squares over seeds: E‖·‖² is what scales cleanly
        out[m] = {key: np.sqrt(np.mean([np.square(r[key]) for r in rows], 0)) for key in rows[0]}
    return out


def slope(sim, key, index):
    ys = [sim[m][key][index] for m in WIDTHS]
    return np.polyfit(np.log(WIDTHS), np.log(ys), 1)[0]


CASES = [("standard", 0.0, 1e-4), ("standard", -1.0, 0.3), ("ntk", 0.0, 0.1), ("mup", 0.0, 0.05)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{c[0]}{c[1]:+g}" for c in CASES])
def simulated(request):
    param, p, eta0 = request.param
    return param, p, {depth: simulate(param, p, depth, 8, eta0) for depth in (2, 3)}


@pytest.mark.parametrize("metric", ["first_update_spec", "rel_first_step", "coordinate",
                                    "rel_frob_dist", "rel_spec_dist"])
def test_layer_exponents_match_a_float64_simulation(simulated, metric):
    param, p, sims = simulated
    checked = 0
    for depth, sim in sims.items():
        for layer in range(depth):
            role = "input" if layer == 0 else "readout" if layer == depth - 1 else "hidden"
            want = theory.predict(metric, role, param, "he", p, depth)
            if math.isnan(want):
                continue
            got = slope(sim, metric, layer)
            assert abs(got - want) < 0.15, (metric, depth, role, got, want)
            checked += 1
    if metric.startswith("rel_") and metric.endswith("_dist") and param == "standard" and p == 0:
        assert checked == 0         # unstable at large width: no end-of-training law
    else:
        assert checked == 5


def test_whole_vector_exponent_matches_a_float64_simulation(simulated):
    param, p, sims = simulated
    for depth, sim in sims.items():
        want = theory.predict("rel_param_dist", "all", param, "he", p, depth)
        if param == "standard" and p == 0:
            assert math.isnan(want)
            continue
        assert abs(slope(sim, "rel_param_dist", 0) - want) < 0.15, (depth, want)


def test_the_whole_vector_law_depends_on_depth_and_parametrization():
    # the values a wrong single −½ contradicted
    assert theory.predict("rel_param_dist", "all", "standard", "he", -1.0, 2) == -1.0
    assert theory.predict("rel_param_dist", "all", "standard", "he", -1.0, 3) == -1.0
    assert theory.predict("rel_param_dist", "all", "ntk", "he", 0.0, 2) == -0.5
    assert theory.predict("rel_param_dist", "all", "ntk", "he", 0.0, 4) == -1.0


def test_stability_exponent_matches_the_ntk_of_a_simulation():
    """η·Θ's width exponent: the trace of the NTK Gram matrix (Σ_l c_l‖∂z/∂W_l‖²)
    of the simulated network, times η = m^p."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for param, p, _ in CASES:
        traces = []
        for m in WIDTHS:
            dims = (D, m, m, K)
            stds, rates = setting(param, dims)
            r = np.random.default_rng(7)
            ws = [r.standard_normal((a, b)) * s for a, b, s in zip(dims[:-1], dims[1:], stds)]
            # ∂(Σ z)/∂W_l for the summed logits: the gradient of ½‖z − y‖² at y = z − 1
            z = x
            for l, w in enumerate(ws):
                z = z @ w
                z = np.maximum(z, 0) if l < len(ws) - 1 else z
            g, _ = grads(ws, x, z - 1.0)
            traces.append(m ** p * sum(c * np.sum(gl ** 2) for c, gl in zip(rates, g)))
        measured = np.polyfit(np.log(WIDTHS), np.log(traces), 1)[0]
        assert abs(measured - theory.width_exponents(param, "he", p, 3).stability) < 0.15, param


def test_jacobian_at_init_matches_a_simulation():
    rng = np.random.default_rng(2)
    for param, depth, m in (("standard", 3, 256), ("mup", 3, 256), ("mup", 2, 1024)):
        dims = (D,) + (m,) * (depth - 1) + (K,)
        stds, _ = setting(param, dims)
        sq = []
        for _ in range(40):
            ws = [rng.standard_normal((a, b)) * s for a, b, s in zip(dims[:-1], dims[1:], stds)]
            x = rng.standard_normal(D)
            x /= np.linalg.norm(x)
            jac, h = np.eye(D), x
            for l, w in enumerate(ws):
                h = h @ w
                jac = jac @ w
                if l < depth - 1:
                    jac = jac * (h > 0)
                    h = np.maximum(h, 0)
            sq.append(np.sum(jac ** 2))
        want = theory.jacobian_frob_init(param, "he", dims)
        assert abs(math.sqrt(np.mean(sq)) / want - 1) < 0.08, (param, depth)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("loss,output,tol", [("mse", "linear", 0.0), ("mse", "softmax", 0.05),
                                              ("cross_entropy", "softmax", 0.05)])
@pytest.mark.parametrize("param", ["standard", "mup"])
def test_first_order_term_at_init_matches_a_simulation(loss, output, tol, param):
    """Σ_i⟨∂ℓ/∂z_i, z_i⟩ averaged over 1500 random inits and targets, for
    ∂ℓ/∂z written out per loss, against `theory.first_order_init`: within 4
    standard errors of the Monte Carlo mean, plus `tol` for the softmax
    losses' leading-order approximation (none for the linear output, where
    the closed form is exact in expectation)."""
    d, k, n, depth, m = 16, 5, 32, 3, 128
    dims = (d,) + (m,) * (depth - 1) + (k,)
    stds, _ = setting(param, dims)
    rng = np.random.default_rng(3)
    total = []
    for _ in range(1500):
        x = rng.standard_normal((n, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        y = np.eye(k)[rng.integers(0, k, n)]
        z = x
        for l, s in enumerate(stds):
            z = z @ (rng.standard_normal((dims[l], dims[l + 1])) * s)
            z = np.maximum(z, 0) if l < depth - 1 else z
        if loss == "cross_entropy":
            dz = softmax(z) - y
        elif output == "softmax":
            s = softmax(z)
            r = s - y           # (diag s − ssᵀ) r, row by row
            dz = s * r - s * np.sum(s * r, -1, keepdims=True)
        else:
            dz = z - y
        total.append(np.sum(dz * z))
    want = theory.first_order_init(loss, output, param, "he", dims, n)
    sem = np.std(total) / np.sqrt(len(total))
    assert abs(np.mean(total) - want) < 4 * sem + tol * want, (np.mean(total), sem, want)


def test_lr_exponents_match_a_float64_simulation():
    """`theory.predict_lr` against the η slope of a simulated network (η and
    2η from the same W(0)): exactly 1 for the first step at any η, 1 to first
    order for the mean over the first steps (at η far below 2/λ; over 10
    steps at η = 1e-3 the slope here is 0.6), no law (NaN) for the end of
    training."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.eye(K)[rng.integers(0, K, N)]
    dims = (D, 32, 32, K)
    stds, _ = setting("standard", dims)
    w0 = [rng.standard_normal((a, b)) * s for a, b, s in zip(dims[:-1], dims[1:], stds)]

    def measured(eta):
        ws, moves = [w.copy() for w in w0], []
        for _ in range(10):         # the early window: steps 1..10
            g, _ = grads(ws, x, y)
            moves.append([eta * gl for gl in g])
            ws = [w - dw for w, dw in zip(ws, moves[-1])]
        hidden = 1
        return {"first_update_spec": spec(moves[0][hidden]),
                "rel_first_step": np.linalg.norm(moves[0][hidden]) / np.linalg.norm(w0[hidden]),
                "early_update_norm": np.mean([np.linalg.norm(m[hidden]) for m in moves])}

    def slope(metric, eta):
        return math.log(measured(2 * eta)[metric] / measured(eta)[metric]) / math.log(2)

    for metric in theory.ONE_STEP:
        if metric == "early_update_norm":
            assert abs(slope(metric, 1e-6) - theory.predict_lr(metric)) < 0.01
            assert abs(slope(metric, 1e-3) - 1) > 0.2          # first order only
        else:
            assert abs(slope(metric, 0.1) - theory.predict_lr(metric)) < 1e-9, metric
    for metric in ("rel_frob_dist", "rel_spec_dist", "rel_param_dist", "rel_frob_change"):
        assert math.isnan(theory.predict_lr(metric))
