"""What a recorded step measures, per member: the norms of every layer
and the margin (`measure`), and at the records their schedules pick the
probes: sharpness, the input–output Jacobian, the NTK's extreme
eigenvalues and the change of the preactivations (`measured`); at step 0
and the last, the spectra (`spectra`). Every quantity is a pure function of
the member's state; `train` vmaps them over members.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from normsweep import linalg
from normsweep.model import kernels, with_kernels
from normsweep.probes import PROBES
from normsweep.schema import LAYER_METRICS, NETWORK_METRICS
from normsweep.step import Hyper, Program, State, loss_and_logits

# records that are finite at every step of a member that has not diverged
CHECKED = ("frob_norm", "spec_norm", "frob_dist", "spec_dist", "grad_norm", "loss")


def tree_dot(a, b) -> jax.Array:
    leaves = [linalg.inner(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return sum(leaves[1:], leaves[0])


def tree_scale(a, c):
    return jax.tree.map(lambda u: u * c, a)


def sharpness(program: Program, params, v, x, y, iters: int, lr_mult=None):
    """The largest-magnitude eigenvalue (signed) of the loss Hessian at
    `params`, preconditioned by the member's lr multipliers: C^½ H C^½ with
    C = diag(c_l), so that GD at rate η is stable near a minimum while it is
    below 2/η in every parametrization (for standard, C = I: the plain
    Hessian). By `iters` power iterations on Hessian-vector products from the
    unit vector `v` (a parameter tree). Returns (λ, v)."""
    grad = jax.grad(lambda p: loss_and_logits(program, p, x, y)[0])
    if lr_mult is None:
        lr_mult = jnp.ones((program.depth,), program.jdtype)
    root = jnp.sqrt(lr_mult)

    def precondition(u):
        return with_kernels(u, [k * root[l] for l, k in enumerate(kernels(u))])

    def hvp(u):
        return precondition(jax.jvp(grad, (params,), (precondition(u),))[1])

    def body(_, u):
        hu = hvp(u)
        n = jnp.sqrt(tree_dot(hu, hu))
        return jax.tree.map(lambda new, old: jnp.where(n > 0, new / jnp.where(n > 0, n, 1), old),
                            hu, u)

    v = jax.lax.fori_loop(0, iters, body, v)
    return tree_dot(v, hvp(v)), v


def gradient_sums(params, grads) -> tuple[jax.Array, jax.Array]:
    """Per layer, ‖∇L‖² and ⟨W, ∇L⟩: the records that need the gradient,
    taken where the step has it (`train.record_and_advance`), so that the
    gradient itself never leaves the step."""
    pairs = list(zip(kernels(params), kernels(grads)))
    return (jnp.stack([linalg.sum_squares(g) for _, g in pairs]),
            jnp.stack([linalg.inner(w, g) for w, g in pairs]))


def measure(program: Program, state: State, loss, z, grad_sums, y):
    """The records of a step from W(t) (in `state`), its loss, logits and
    `gradient_sums`. Returns (records, spec_v, dist_v)."""
    ws = list(kernels(state.params))
    ds = [w - w0 for w, w0 in zip(ws, state.params0)]
    # the norms of W and of W − W(0) of every layer, solved together (`spectral_norms`)
    flags = [program.skipped(l) for l in range(len(ws))]
    norms, vectors = linalg.spectral_norms(ws + ds, list(state.spec_v) + list(state.dist_v),
                                            program.lanczos_steps, present=flags * 2)
    depth = len(ws)
    spec_v, dist_v = vectors[:depth], vectors[depth:]
    rec = {"frob_norm": jnp.stack([linalg.frobenius(w) for w in ws]),
           "spec_norm": jnp.stack(norms[:depth]),
           "frob_dist": jnp.stack([linalg.frobenius(d) for d in ds]),
           "spec_dist": jnp.stack(norms[depth:])}
    rec["grad_norm"] = jnp.sqrt(grad_sums[0])
    rec["grad_dot_weight"] = grad_sums[1]
    rec["update_norm"] = jnp.sqrt(state.update_sq)
    rec["loss"] = loss
    rec["accuracy"] = jnp.mean(jnp.argmax(z, -1) == jnp.argmax(y, -1)).astype(loss.dtype)
    rec["margin"] = margin(z, y)
    return rec, tuple(spec_v), tuple(dist_v)


def margin(z: jax.Array, y: jax.Array) -> jax.Array:
    """min_i (z_i[y_i] − max_{j≠y_i} z_i[j]) of the logits z (n, k) against
    one-hot targets y: positive when every point is classified right (the
    margin of Lyu & Li 2019, normalised in the analysis by ‖θ‖^L)."""
    right = jnp.sum(z * y, -1)
    other = jnp.max(jnp.where(y > 0, -jnp.inf, z), -1)
    return jnp.min(right - other)


def preactivations(program: Program, ws, x: jax.Array) -> list[jax.Array]:
    """a_l = h_l W_l of every layer at the weights `ws` (the logits last)."""
    _, found = program.apply(with_kernels(None, ws), x, mutable="intermediates")
    inputs = [found["intermediates"][f"input_{l}"][0] for l in range(program.depth)]
    return [linalg.matmul(h, w) for h, w in zip(inputs, ws)]


def activation_change(program: Program, params, ws0, x: jax.Array) -> jax.Array:
    """Per layer, the mean over points and units of |a_l(t) − a_l(0)|: the
    size of a coordinate's change, which the μP coordinate check plots
    against width (Θ(1) in μP, vanishing in NTK, blowing up in standard)."""
    now, then = preactivations(program, kernels(params), x), preactivations(program, ws0, x)
    return jnp.stack([jnp.mean(jnp.abs(a - b)) for a, b in zip(now, then)])


def effective_rank(s: jax.Array) -> jax.Array:
    """exp of the entropy of the normalised singular values s/Σs (Roy &
    Vetterli 2007): between 1 and the number of nonzero ones."""
    p = s / jnp.sum(s)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0)))


def spectra(program: Program, state: State, x, y, rank: int) -> dict:
    """At W(t) in `state`: per layer the singular values of W_l and of
    W_l − W_l(0), each padded with NaN to `rank` values, and the effective
    rank of ∂L/∂W_l (that of the plain GD update −η·c_l·∂L/∂W_l; at most n).
    NaN for a diverged member."""
    grads = jax.grad(lambda p: loss_and_logits(program, p, x, y)[0])(state.params)
    nan = jnp.full((rank,), jnp.nan, program.jdtype)

    def values(a):
        s = jnp.linalg.svd(a, compute_uv=False)
        return nan.at[:s.shape[0]].set(s)

    def layer(w, w0, g):
        return (values(w), values(w - w0),
                effective_rank(jnp.linalg.svd(g, compute_uv=False)))

    def lacking(w, w0, g):
        return nan, nan, jnp.full((), jnp.nan, program.jdtype)

    per = []
    for l, args in enumerate(zip(kernels(state.params), state.params0, kernels(grads))):
        has = program.skipped(l)        # a slot the network lacks takes no SVD
        per.append(layer(*args) if has is None else jax.lax.cond(has, layer, lacking, *args))
    out = {name: jnp.stack([p[i] for p in per]) for i, name in
           enumerate(("singular_values", "change_singular_values", "gradient_effective_rank"))}
    return {k: jnp.where(state.diverged_at >= 0, jnp.nan, v) for k, v in out.items()}


def output(program: Program, params, x: jax.Array) -> jax.Array:
    """F(x): the softmax of the logits, or the logits for a linear output."""
    z = program.apply(params, x)
    return jax.nn.softmax(z) if program.output == "softmax" else z


def jacobian_norms(program: Program, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Means over the points of ‖∂F(x_i)/∂x_i‖_F and ‖∂F(x_i)/∂x_i‖₂ (each
    Jacobian k×d). The logits' Jacobian J_z comes from forward-mode JVPs; a
    softmax output's is s ⊙ (J_z − 1·(sᵀJ_z)) with s = softmax(z)."""
    def logits(xi):
        return program.apply(params, xi[None])[0]

    jac = jax.vmap(jax.jacfwd(logits))(x)
    if program.output == "softmax":
        s = output(program, params, x)[:, :, None]                            # (n, k, 1)
        sj = jnp.sum(s * jac, axis=1)                                         # sᵀJ_z: (n, d)
        jac = s * (jac - sj[:, None, :])
    frob = jax.vmap(linalg.frobenius)(jac)
    # rolled: a probe measures a few records, and unrolled loops only lengthen compiling
    spec = jax.vmap(lambda j: linalg.spectral_exact(j, rolled=True))(jac)
    return jnp.mean(frob), jnp.mean(spec)


def ntk_gram(program: Program, params, lr_mult: jax.Array, xs: jax.Array) -> jax.Array:
    """The empirical NTK Gram matrix of the logits on the points `xs` (s, d):

        Θ_ij = Σ_l c_l Σ_c ⟨∂z_c(x_i)/∂W_l, ∂z_c(x_j)/∂W_l⟩

    traced over the k logits (neural-tangents' default trace_axes), with the
    member's lr multipliers c_l: the kernel of the function-space dynamics
    dz/dt = −η·Θ·∂L/∂z that this parametrization's GD follows. For a
    bias-free MLP ∂z_c(x_i)/∂W_l = h_l(x_i) ⊗ δ_lc(x_i), so
    Θ = Σ_l c_l (H_l H_lᵀ) ⊙ (Σ_c D_lc D_lcᵀ): k backward passes over s points,
    never the (s·k)×P Jacobian.
    """
    depth = program.depth

    def logits(pert):
        z, found = program.apply({**params, "perturbations": pert}, xs, mutable="intermediates")
        return z, [found["intermediates"][f"input_{l}"][0] for l in range(depth)]

    zero = {f"preactivation_{l}": jnp.zeros((xs.shape[0], w.shape[1]), xs.dtype)
            for l, w in enumerate(kernels(params))}
    z, pullback, inputs = jax.vjp(logits, zero, has_aux=True)
    eye = jnp.eye(z.shape[1], dtype=z.dtype)
    # deltas[l]: (k, s, fan_out_l), ∂z_c(x_i)/∂a_l(x_i) for every class c
    deltas = jax.vmap(lambda c: pullback(jnp.broadcast_to(c, z.shape))[0])(eye)
    gram = jnp.zeros((xs.shape[0], xs.shape[0]), xs.dtype)
    for l in range(depth):
        hh = linalg.matmul(inputs[l], inputs[l].T)
        d = deltas[f"preactivation_{l}"]
        dd = jnp.einsum("csf,ctf->st", d, d, precision=linalg.HIGHEST)
        gram = gram + lr_mult[l] * hh * dd
    return gram


def ntk_eigs(program: Program, params, lr_mult, xs) -> tuple[jax.Array, jax.Array]:
    """(λ_max, λ_min) of `ntk_gram`."""
    gram = ntk_gram(program, params, lr_mult, xs)
    return linalg.extreme_eigenvalues_psd(gram, rolled=True)     # (rolled: as the Jacobian's)


def measured(program: Program, state: State, new: State, out, hp: Hyper, x, y, t, due):
    """The records of step t, from the state before it, the state `new`
    after it and any steps that followed, and step t's (loss, logits,
    `gradient_sums`) `out`: (`new` with its spectral-norm vectors advanced,
    records). A norm that overflows at t rolls `new` back to W(t), as the
    member diverged there. `due` {probe: traced bool} says which of the
    program's probes measure this record."""
    loss, z, grad_sums = out
    rec, spec_v, dist_v = measure(program, state, loss, z, grad_sums, y)
    new = new._replace(spec_v=spec_v, dist_v=dist_v)
    # a norm that overflows (finite weights whose squares do not fit the
    # dtype) diverges the member as a non-finite loss does: frozen from t on
    checked = jnp.concatenate([jnp.ravel(rec[name]) for name in CHECKED])
    overflow = ~jnp.all(jnp.isfinite(checked))
    # diverged by step t (a step after t in `new`'s loop may have diverged it later)
    by_t = (new.diverged_at >= 0) & (new.diverged_at <= t)
    newly = ~by_t & overflow
    new = new._replace(
        params=jax.tree.map(lambda a, b: jnp.where(newly, a, b), state.params, new.params),
        diverged_at=jnp.where(newly, jnp.asarray(t, jnp.int32), new.diverged_at))
    for name in due:
        probe, measurement = PROBES[name], MEASUREMENTS[name]
        if probe.carry:         # its warm start, carried from record to record in the state
            values, carried = jax.lax.cond(
                due[name], lambda v, f=measurement: f(program, state, hp, x, y, v),
                lambda v, n=name: (empty_probe(program, n), v), getattr(state, probe.carry))
            new = new._replace(**{probe.carry: carried})
        else:
            values = jax.lax.cond(due[name], lambda s, f=measurement: f(program, s, hp, x, y),
                                  lambda s, n=name: empty_probe(program, n), state)
        rec.update(zip(probe.records, values))
    # every record is NaN from the member's divergence on
    dead = by_t | newly
    return new, {name: jnp.where(dead, jnp.nan, val) for name, val in rec.items()}


def empty_records(program: Program) -> dict:
    """NaN in every record of a step `program` measures (padding records)."""
    nan = jnp.full((program.depth,), jnp.nan, program.jdtype)
    rec = {name: nan for name in LAYER_METRICS}
    rec.update({name: nan[0] for name in NETWORK_METRICS})
    for name in program.probes:
        rec.update(zip(PROBES[name].records, empty_probe(program, name)))
    return rec


# -- the probes (declared in `probes.PROBES`): measured at the records their
# schedules pick. Each takes (program, state, hp, x, y), and a probe with a
# `carry` also its carried value; it returns its records' values (and the
# new carried value).

def _sharpness(program: Program, s: State, hp: Hyper, x, y, v):
    """(sharpness,) at W(t) by power iteration from the carried vector `v`, and the new `v`."""
    lam, v = sharpness(program, s.params, v, x, y, program.size("sharpness_iters"), hp.lr_mult)
    return (lam,), v


MEASUREMENTS = {
    "sharpness": _sharpness,
    "jacobian": lambda program, s, hp, x, y: jacobian_norms(
        program, s.params, x[:program.size("jacobian_points")]),
    "ntk": lambda program, s, hp, x, y: ntk_eigs(program, s.params, hp.lr_mult,
                                                 x[:program.size("ntk_points")]),
    "activations": lambda program, s, hp, x, y: (
        activation_change(program, s.params, s.params0, x),),
}


def empty_probe(program: Program, name: str) -> tuple:
    """NaN in each record of the probe `name`: a record it does not measure."""
    shape = (program.depth,) if PROBES[name].per_layer else ()
    return tuple(jnp.full(shape, jnp.nan, program.jdtype) for _ in PROBES[name].records)
