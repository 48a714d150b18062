"""An independent, one-network-at-a-time implementation of the reference
setting, written with plain jax.numpy (no Flax, no optax, no vmap), and exact
norms from numpy's SVD. Tests compare normsweep against it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def forward(ws, x):
    h = x
    for l, w in enumerate(ws):
        # full float32, as normsweep computes by default (a GPU's default is TF32)
        h = jnp.matmul(h, w, precision=jax.lax.Precision.HIGHEST)
        if l < len(ws) - 1:
            h = jax.nn.relu(h)
    return h


def loss(ws, x, y, output="softmax", kind="mse"):
    z = forward(ws, x)
    if kind == "cross_entropy":
        return -jnp.sum(y * jax.nn.log_softmax(z))
    f = jax.nn.softmax(z) if output == "softmax" else z
    return 0.5 * jnp.sum((f - y) ** 2)


def run(ws0, x, y, lr, steps, output="softmax", kind="mse"):
    """Plain gradient descent; returns per-step dicts of exact norms."""
    grad = jax.jit(jax.value_and_grad(loss), static_argnums=(3, 4))
    ws = [jnp.asarray(w) for w in ws0]
    prev = None
    out = []
    for t in range(steps + 1):
        value, gs = grad(ws, x, y, output, kind)
        rec = {"loss": float(value), "frob_norm": [], "spec_norm": [], "frob_dist": [],
               "spec_dist": [], "grad_norm": [], "update_norm": [], "grad_dot_weight": []}
        for l, (w, w0, g) in enumerate(zip(ws, ws0, gs)):
            w, w0, g = np.asarray(w, np.float64), np.asarray(w0, np.float64), np.asarray(g)
            rec["frob_norm"].append(np.linalg.norm(w))
            rec["spec_norm"].append(np.linalg.norm(w, 2))
            rec["frob_dist"].append(np.linalg.norm(w - w0))
            rec["spec_dist"].append(np.linalg.norm(w - w0, 2))
            rec["grad_norm"].append(np.linalg.norm(g))
            rec["grad_dot_weight"].append(float(np.sum(w * g)))
            rec["update_norm"].append(np.nan if prev is None else np.linalg.norm(w - prev[l]))
        out.append(rec)
        prev = [np.asarray(w, np.float64) for w in ws]
        ws = [w - lr * g for w, g in zip(ws, gs)]
    return out
