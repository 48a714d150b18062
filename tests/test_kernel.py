"""The kernel prediction of ‖θ(∞) − θ₀‖ (`analysis/kernel.py`) against a
Jacobian from JAX autodiff and against gradient descent on the linearised
network run to convergence, both in float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normsweep.analysis import kernel


def _net(rng, dims, n):
    g = np.random.default_rng(rng)
    ws = [g.normal(size=(a, b)) * np.sqrt(2 / a) for a, b in zip(dims[:-1], dims[1:])]
    x = g.normal(size=(n, dims[0]))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.eye(dims[-1])[g.integers(0, dims[-1], n)]
    return ws, x, y


def _jacobians(ws, x):
    """Per-layer Jacobians of the flattened logits, (n·k, size of W_l)."""
    def f(params):
        h = jnp.asarray(x)
        for w in params[:-1]:
            h = jax.nn.relu(h @ w)
        return (h @ params[-1]).reshape(-1)
    with jax.enable_x64(True):
        jac = jax.jacfwd(f)([jnp.asarray(w, jnp.float64) for w in ws])
        return [np.asarray(j).reshape(j.shape[0], -1) for j in jac]


@pytest.mark.parametrize("dims", [(4, 16, 3), (5, 12, 12, 3)])
def test_ntk_blocks_equal_the_autodiff_jacobian_products(dims):
    ws, x, _ = _net(0, dims, 6)
    jac = _jacobians(ws, x)
    for block, j in zip(kernel.ntk_blocks(ws, x), jac):
        np.testing.assert_allclose(block, j @ j.T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mult", [None, (0.5, 0.02, 2.0)])
def test_distance_equals_linearised_gradient_descent_run_to_convergence(mult):
    ws, x, y = _net(1, (4, 20, 20, 3), 5)
    jac = np.concatenate(_jacobians(ws, x), axis=1)
    sizes = [w.size for w in ws]
    c = np.repeat(np.ones(3) if mult is None else np.asarray(mult), sizes)
    r0 = kernel.logits(ws, x).reshape(-1) - y.reshape(-1)
    ntk = (jac * c) @ jac.T
    lr = 1.0 / np.linalg.eigvalsh(ntk).max()
    delta = np.zeros(jac.shape[1])
    for _ in range(200_000):
        resid = r0 + jac @ delta
        if np.abs(resid).max() < 1e-12:
            break
        delta -= lr * c * (jac.T @ resid)
    assert np.abs(r0 + jac @ delta).max() < 1e-10
    predicted = kernel.kernel_distance(ws, x, y, mult)
    assert predicted == pytest.approx(np.linalg.norm(delta), rel=1e-8)


def test_too_few_parameters_give_nan():
    ws, x, y = _net(2, (2, 1, 3), 8)       # 5 parameters, 24 outputs: Θ singular
    assert np.isnan(kernel.kernel_distance(ws, x, y))


def test_a_lazy_network_meets_the_kernel_prediction_in_the_report(tmp_path):
    """End to end: NTK-parametrized networks with a linear output trained to
    interpolation move by the kernel's √(rᵀΘ⁻¹r) (closer at the wider width),
    and the report and kernel.csv say so."""
    import pandas as pd
    from normsweep import config, sweep
    from normsweep.analysis import report
    text = ('name = "k"\n[data]\nn = 8\nd = 8\nk = 3\n[model]\noutput = "linear"\n'
            'parametrization = "ntk"\n[train]\nsteps = 400\n[record]\nweights = true\n'
            'jacobian_norm = 0\n[grid]\nwidth = [16, 32]\ndepth = [2]\nlr = [0.5]\n'
            'seed = [0, 1, 2]\n')
    sweep.launch(config.parse(text), tmp_path / "k")
    report.analyze(tmp_path / "k")
    table = pd.read_csv(tmp_path / "k" / "analysis" / "kernel.csv")
    assert list(table["networks"]) == [3, 3]
    gap = (table["ratio"] - 1).abs()          # measured 0.93 and 0.95
    assert gap.iloc[1] < 0.1 and gap.iloc[1] < gap.iloc[0]
    assert table["ratio_lo"].iloc[1] < 1 < table["ratio_hi"].iloc[1]
    assert (table["ratio_lo"] < table["ratio"]).all() and (table["ratio"] < table["ratio_hi"]).all()
    text = (tmp_path / "k" / "analysis" / "report.md").read_text()
    assert "Distance travelled against the kernel prediction" in text


def test_without_initial_weights_the_report_says_why(analyzed):
    import types
    from normsweep.analysis import render
    cfg = types.SimpleNamespace(model=types.SimpleNamespace(output="linear"),
                                train=types.SimpleNamespace(loss="mse"),
                                record=types.SimpleNamespace(weights=False))
    reason = kernel.not_applicable(None, cfg)
    assert "weights = true" in reason
    t, s = render.read_folder(analyzed[0] / "analysis")
    s.update(output="linear", kernel_reason=reason)
    assert reason in render.render(t, s, block="kernel")
