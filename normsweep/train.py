"""Training a cohort: pure JAX, state in, trajectory out.

One member (one (η, seed) pair) is written as plain functions of its state;
one compiled program runs all members of a cohort (`jax.vmap`, or for wide
networks on a CPU a loop over members: `over_members`) and `jax.lax.scan`
walks the record schedule. Width and depth are static (in
`Program`), learning rates and keys are traced: a cohort compiles once,
whatever its learning rates.

Step t evaluates the loss, logits and gradient at W(t) once; a recorded step
measures the norms from those same quantities (no second forward pass), then
applies the update W(t+1) = W(t) − η∇L(W(t)) with `optax.sgd` (no momentum,
no decay). Between records the loop runs plain steps with no host round-trip.
The host regains control only between segments of records (for progress).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import threading
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from normsweep import metrics
from normsweep.schema import LAYER_METRICS, NETWORK_METRICS
from normsweep.model import (MLP, init_stds, kernels, lr_multipliers, normals, unit_kernels,
                             with_kernels)

# records that are finite at every step of a member that has not diverged
CHECKED = ("frob_norm", "spec_norm", "frob_dist", "spec_dist", "grad_norm", "loss")
COLD_ITERS = 100
MIN_MEMBERS = 2         # members a program trains at least (Program.min_members)
MIN_BATCHED_MEMBERS = 4 # the same, for programs that batch their members' steps
MAP_MIN_WIDTH = 256
SEGMENTS = 16

# Trace counts per jitted function; tests assert a cohort compiles once.
TRACES: collections.Counter = collections.Counter()
_TRACES_LOCK = threading.Lock()     # launch traces the next cohort on a background thread


def _traced(program_name: str) -> None:
    with _TRACES_LOCK:
        TRACES[program_name] += 1


@dataclasses.dataclass(frozen=True)
class Program:
    """Everything static about a cohort's compiled program."""
    dims: tuple[int, ...]
    init: str = "he"
    output: str = "softmax"
    loss: str = "mse"
    dtype: str = "float32"
    lanczos_steps: int = 10
    cold_iters: int = COLD_ITERS
    sharpness_every: int = 0
    sharpness_iters: int = 20
    jacobian_every: int = 0
    parametrization: str = "standard"   # the default of train_members' `parametrization`
    precision: str = "highest"
    decay: bool = False                 # any member with weight decay > 0
    ntk_every: int = 0
    ntk_points: int = 32
    layout: str = "auto"                # how members run: see member_layout

    def member_layout(self) -> str:
        """How the compiled program runs its members' training steps (see
        `over_members`): "vmap" (batched) or "map" (a loop over members, each
        one's matmuls unbatched). "auto" is "map" on a CPU when the widest
        layer is at least MAP_MIN_WIDTH, where XLA:CPU's unbatched matmuls
        outrun its batched ones (BENCHMARKS.md), and "vmap" otherwise: small
        matrices and accelerators need the batch. Records are always
        measured batched."""
        if self.layout not in ("auto", "vmap", "map"):
            raise ValueError(f"layout {self.layout!r}: use 'auto', 'vmap' or 'map'")
        if self.layout != "auto":
            return self.layout
        wide = max(self.dims[1:-1], default=0) >= MAP_MIN_WIDTH
        return "map" if wide and jax.default_backend() == "cpu" else "vmap"

    def min_members(self) -> int:
        """The fewest members one program trains (fewer are padded): XLA
        compiles a member axis of size 1 differently (it drops the unit
        dimension, and with it the batched form of every product), and on a
        CPU its batched products of the reference setting (n = 1024, widths
        64–128) rounded differently with 2 or 3 members than with 4 to 40,
        which agreed bit for bit (tested). The loop over members ("map")
        runs each member's step alone, so 2 suffice there for the records."""
        return MIN_BATCHED_MEMBERS if self.member_layout() == "vmap" else MIN_MEMBERS

    @property
    def depth(self) -> int:
        return len(self.dims) - 1

    @property
    def jdtype(self):
        return jnp.dtype(self.dtype)

    def model(self) -> MLP:
        """The network, drawing unit normals: init_member scales each layer
        by its member's init std (so one program serves every parametrization).
        On a CPU its readout layer's weight gradient takes XLA:CPU's faster
        form (`model.thin_matmul`)."""
        return MLP(dims=self.dims, init_scheme="unit", dtype=self.jdtype,
                   thin_grads=jax.default_backend() == "cpu")


class Hyper(NamedTuple):
    """Per-member hyperparameters, traced (one compiled program for all):
    learning rate η, weight decay λ, and per-layer lr multipliers c_l and
    init stds s_l (depth,) from the member's parametrization."""
    lr: jax.Array
    weight_decay: jax.Array
    lr_mult: jax.Array
    init_std: jax.Array


def hyper(program: Program, lrs, weight_decay=None, parametrization=None) -> Hyper:
    """Host-side `Hyper` of members with rates `lrs`, weight decays (default
    0) and parametrization names (default `program.parametrization`)."""
    members = len(lrs)
    names = list(parametrization) if parametrization is not None \
        else [program.parametrization] * members
    wd = np.zeros(members) if weight_decay is None else np.asarray(weight_decay, np.float64)
    dt = program.jdtype
    mult = np.array([lr_multipliers(n, program.init, program.dims) for n in names], np.float64)
    std = np.array([init_stds(n, program.init, program.dims) for n in names], np.float64)
    return Hyper(jnp.asarray(lrs, dt), jnp.asarray(wd, dt), jnp.asarray(mult, dt),
                 jnp.asarray(std, dt))


class State(NamedTuple):
    """One member's training state. `update_sq[l]` = ‖W_l(t) − W_l(t−1)‖_F²
    (NaN before the first step); `diverged_at` = −1 or the first step at
    which the loss, a weight or a recorded norm was not finite (the member's
    weights are frozen from then on)."""
    params: Any
    params0: tuple
    opt_state: Any
    spec_v: tuple
    dist_v: tuple
    update_sq: jax.Array
    diverged_at: jax.Array
    hess_v: Any = ()


def loss_and_logits(program: Program, params, x: jax.Array, y: jax.Array):
    """The training loss at `params` and the logits it was computed from.

    mse: ½ Σ_i ‖F(x_i) − y_i‖² with F = softmax(logits) or the logits.
    cross_entropy: −Σ_i log softmax(logits_i)[y_i].
    """
    z = program.model().apply(params, x)
    if program.loss == "cross_entropy":
        return -jnp.sum(y * jax.nn.log_softmax(z)), z
    f = jax.nn.softmax(z) if program.output == "softmax" else z
    return 0.5 * jnp.sum(jnp.square(f - y)), z


def init_member(program: Program, hp: Hyper, init_key: jax.Array, power_key: jax.Array,
                x: jax.Array) -> State:
    """W(0) from `init_key` (unit normals times the member's init stds);
    the spectral norms' start vectors from `power_key`, the one for W
    converged by a cold start of `cold_iters` Lanczos steps."""
    unit = unit_kernels(program.model(), init_key, x[:1])
    ws = tuple(w * hp.init_std[l] for l, w in enumerate(unit))
    params = with_kernels(None, ws)
    dt = program.jdtype
    # the start vectors: unit normals of keys (power_key, l) and (power_key, 1000 + l)
    starts = normals([jax.random.fold_in(power_key, i) for i in range(program.depth)]
                     + [jax.random.fold_in(power_key, 1000 + i) for i in range(program.depth)],
                     [(w.shape[1],) for w in ws] * 2, dt)
    starts = [v / jnp.linalg.norm(v) for v in starts]
    # rolled: a cold start's loop, unrolled on an accelerator, is most of a
    # GPU cohort's compilation (BENCHMARKS.md)
    spec_v = [metrics.spectral(w, v, program.cold_iters, rolled=True)[1]
              for w, v in zip(ws, starts)]
    dist_v = starts[program.depth:]
    nan = jnp.full((program.depth,), jnp.nan, dt)
    hess_v = ()
    if program.sharpness_every:
        hess_v = jax.tree.map(lambda w: jax.random.normal(jax.random.fold_in(power_key, 2000),
                                                          w.shape, dt), params)
        hess_v = _tree_scale(hess_v, 1 / jnp.sqrt(_tree_dot(hess_v, hess_v)))
    return State(params, ws, optax.sgd(1.0).init(params), tuple(spec_v), tuple(dist_v),
                 nan, jnp.asarray(-1, jnp.int32), hess_v)


def _tree_dot(a, b) -> jax.Array:
    leaves = [metrics.inner(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return sum(leaves[1:], leaves[0])


def _tree_scale(a, c):
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
        n = jnp.sqrt(_tree_dot(hu, hu))
        return jax.tree.map(lambda new, old: jnp.where(n > 0, new / jnp.where(n > 0, n, 1), old),
                            hu, u)

    v = jax.lax.fori_loop(0, iters, body, v)
    return _tree_dot(v, hvp(v)), v


def step(program: Program, state: State, hp: Hyper, x, y, t, frozen=False, keep_update=True):
    """One gradient-descent step from W(t):
        W_l ← W_l − η·c_l·∂L/∂W_l − η·λ·W_l
    (c_l the member's lr multipliers, λ its weight decay; the decay term only
    in programs with `decay`). Returns the new state and (loss, logits,
    grads) at W(t). With `frozen` (traced) true, the weights and the last
    update stay as they were: the last record measures W(T) and moves
    nothing. ‖ΔW_l‖² goes into `update_sq` only where `keep_update` (traced)
    is true: the next record reads the last step's, so a run of steps between
    records sums only its last update's squares (a pass over every matrix
    per step saved)."""
    lr = hp.lr
    (loss, z), grads = jax.value_and_grad(loss_and_logits, argnums=1, has_aux=True)(
        program, state.params, x, y)
    # a weight can overflow while dead ReLUs downstream keep the loss finite
    finite = functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(w))
                                                for w in kernels(state.params)],
                              jnp.isfinite(loss))
    diverged_at = jnp.where((state.diverged_at < 0) & ~finite,
                            jnp.asarray(t, jnp.int32), state.diverged_at)
    alive = diverged_at < 0
    moving = jnp.logical_and(alive, jnp.logical_not(frozen))
    updates, opt_state = optax.sgd(lr).update(grads, state.opt_state, state.params)
    ups = [u * hp.lr_mult[l] for l, u in enumerate(kernels(updates))]   # × 1 is exact
    if program.decay:
        ups = [u - (lr * hp.weight_decay) * w for u, w in zip(ups, kernels(state.params))]
    updates = with_kernels(updates, ups)
    moved = optax.apply_updates(state.params, updates)
    params = jax.tree.map(lambda new, old: jnp.where(moving, new, old), moved, state.params)
    update_sq = jax.lax.cond(jnp.logical_and(keep_update, jnp.logical_not(frozen)),
                             lambda ups: jnp.stack([metrics.sum_squares(u) for u in ups]),
                             lambda _: state.update_sq, kernels(updates))
    new = state._replace(params=params, opt_state=opt_state, update_sq=update_sq,
                         diverged_at=diverged_at)
    return new, (loss, z, grads)


def gradient_sums(params, grads) -> tuple[jax.Array, jax.Array]:
    """Per layer, ‖∇L‖² and ⟨W, ∇L⟩: the records that need the gradient,
    taken where the step has it (`recorded_step`), so that the gradient
    itself never leaves the step."""
    pairs = list(zip(kernels(params), kernels(grads)))
    return (jnp.stack([metrics.sum_squares(g) for _, g in pairs]),
            jnp.stack([metrics.inner(w, g) for w, g in pairs]))


def measure(program: Program, state: State, loss, z, grad_sums, y):
    """The records of a step from W(t) (in `state`), its loss, logits and
    `gradient_sums`. Returns (records, spec_v, dist_v)."""
    rec = {name: [] for name in ("frob_norm", "spec_norm", "frob_dist", "spec_dist")}
    spec_v, dist_v = [], []
    for w, w0, v, dv in zip(kernels(state.params), state.params0, state.spec_v, state.dist_v):
        d = w - w0
        s, v = metrics.spectral(w, v, program.lanczos_steps)
        ds, dv = metrics.spectral(d, dv, program.lanczos_steps)
        spec_v.append(v)
        dist_v.append(dv)
        rec["frob_norm"].append(metrics.frobenius(w))
        rec["spec_norm"].append(s)
        rec["frob_dist"].append(metrics.frobenius(d))
        rec["spec_dist"].append(ds)
    rec = {name: jnp.stack(vals) for name, vals in rec.items()}
    rec["grad_norm"] = jnp.sqrt(grad_sums[0])
    rec["grad_dot_weight"] = grad_sums[1]
    rec["update_norm"] = jnp.sqrt(state.update_sq)
    rec["loss"] = loss
    rec["accuracy"] = jnp.mean(jnp.argmax(z, -1) == jnp.argmax(y, -1)).astype(loss.dtype)
    return rec, tuple(spec_v), tuple(dist_v)


def output(program: Program, params, x: jax.Array) -> jax.Array:
    """F(x): the softmax of the logits, or the logits for a linear output."""
    z = program.model().apply(params, x)
    return jax.nn.softmax(z) if program.output == "softmax" else z


def jacobian_norms(program: Program, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Means over the points of ‖∂F(x_i)/∂x_i‖_F and ‖∂F(x_i)/∂x_i‖₂ (each
    Jacobian k×d). The logits' Jacobian J_z comes from forward-mode JVPs; a
    softmax output's is s ⊙ (J_z − 1·(sᵀJ_z)) with s = softmax(z), its sum
    taken in a fixed order (through `jax.jacfwd` of the softmax the sum's
    rounding depends on the number of members)."""
    logits = lambda xi: program.model().apply(params, xi[None])[0]
    jac = jax.vmap(jax.jacfwd(logits))(x)
    if program.output == "softmax":
        s = output(program, params, x)[:, :, None]                            # (n, k, 1)
        sj = metrics.tree_sum(metrics.rounded(s * jac).swapaxes(1, 2))       # sᵀJ_z: (n, d)
        jac = s * (jac - sj[:, None, :])
    frob = jax.vmap(metrics.frobenius)(jac)
    spec = jax.vmap(metrics.spectral_exact)(jac)
    return metrics.tree_sum(frob) / len(x), metrics.tree_sum(spec) / len(x)


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
    ws = kernels(params)
    depth = len(ws)

    def logits(pert):
        h, inputs = xs, []
        for l, w in enumerate(ws):
            inputs.append(h)
            a = jnp.matmul(h, w, precision=metrics.HIGHEST) + pert[l]
            h = jax.nn.relu(a) if l < depth - 1 else a
        return h, inputs

    zero = [jnp.zeros((xs.shape[0], w.shape[1]), xs.dtype) for w in ws]
    z, pullback, inputs = jax.vjp(logits, zero, has_aux=True)
    eye = jnp.eye(z.shape[1], dtype=z.dtype)
    # deltas[l]: (k, s, fan_out_l), ∂z_c(x_i)/∂a_l(x_i) for every class c
    deltas = jax.vmap(lambda c: pullback(jnp.broadcast_to(c, z.shape))[0])(eye)
    gram = jnp.zeros((xs.shape[0], xs.shape[0]), xs.dtype)
    for l in range(depth):
        hh = metrics.matmul(inputs[l], inputs[l].T)
        dd = jnp.einsum("csf,ctf->st", deltas[l], deltas[l], precision=metrics.HIGHEST)
        gram = gram + lr_mult[l] * hh * dd
    return gram


def ntk_eigs(program: Program, params, lr_mult, xs) -> tuple[jax.Array, jax.Array]:
    """(λ_max, λ_min) of `ntk_gram`."""
    return metrics.extreme_eigenvalues_psd(ntk_gram(program, params, lr_mult, xs))


def measured(program: Program, state: State, new: State, out, hp: Hyper, x, y, t,
             last=False):
    """The records of step t, from the state before it, the state after it
    and the step's (loss, logits, `gradient_sums`) `out`: (state at t+1 with its
    spectral-norm vectors advanced, records). Sharpness, Jacobian and NTK
    are measured when t is a multiple of their strides or `last` (traced:
    the final record)."""
    loss, z, grad_sums = out
    rec, spec_v, dist_v = measure(program, state, loss, z, grad_sums, y)
    new = new._replace(spec_v=spec_v, dist_v=dist_v)
    # a norm that overflows (finite weights whose squares do not fit the
    # dtype) diverges the member as a non-finite loss does: frozen from t on
    overflow = ~functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(rec[name]))
                                                   for name in CHECKED])
    newly = (new.diverged_at < 0) & overflow
    new = new._replace(
        params=jax.tree.map(lambda a, b: jnp.where(newly, a, b), state.params, new.params),
        diverged_at=jnp.where(newly, jnp.asarray(t, jnp.int32), new.diverged_at))
    if program.sharpness_every:
        due = jnp.logical_or(last, t % program.sharpness_every == 0)
        lam, hess_v = jax.lax.cond(
            due, lambda v: sharpness(program, state.params, v, x, y, program.sharpness_iters,
                                     hp.lr_mult),
            lambda v: (jnp.full((), jnp.nan, program.jdtype), v), state.hess_v)
        rec["sharpness"] = lam
        new = new._replace(hess_v=hess_v)
    if program.jacobian_every:
        rec["jacobian_frob_norm"], rec["jacobian_spec_norm"] = _at_stride(
            program, program.jacobian_every, t, last, state.params,
            lambda p: jacobian_norms(program, p, x))
    if program.ntk_every:
        rec["ntk_max_eig"], rec["ntk_min_eig"] = _at_stride(
            program, program.ntk_every, t, last, state.params,
            lambda p: ntk_eigs(program, p, hp.lr_mult, x[:program.ntk_points]))
    # every record is NaN from the member's divergence on
    dead = (new.diverged_at >= 0) & (new.diverged_at <= t)
    return new, {name: jnp.where(dead, jnp.nan, val) for name, val in rec.items()}


def _at_stride(program: Program, every: int, t, last, params, measure_pair):
    """measure_pair(params) at multiples of `every` and the last step; a pair
    of NaNs otherwise (lax.cond: the work is skipped, not masked)."""
    nan = jnp.full((), jnp.nan, program.jdtype)
    due = jnp.logical_or(last, t % every == 0)
    return jax.lax.cond(due, measure_pair, lambda p: (nan, nan), params)


def empty_records(program: Program) -> dict:
    nan = jnp.full((program.depth,), jnp.nan, program.jdtype)
    rec = {name: nan for name in LAYER_METRICS}
    rec.update({name: nan[0] for name in NETWORK_METRICS})
    if program.sharpness_every:
        rec["sharpness"] = nan[0]
    if program.jacobian_every:
        rec["jacobian_frob_norm"] = rec["jacobian_spec_norm"] = nan[0]
    if program.ntk_every:
        rec["ntk_max_eig"] = rec["ntk_min_eig"] = nan[0]
    return rec


# -- compiled, over all members -------------------------------------------

def per_member(x: jax.Array, members: int) -> jax.Array:
    """The inputs repeated once per member (for the vmap layout).

    With inputs shared across members, vmap turns the first layer's x @ W_0
    (and its gradient) into one matmul over all members' columns, whose
    blocking, and so whose rounding, depends on the number of members. With
    a copy per member every product is a batched matmul of fixed shape, so a
    member's trajectory does not depend on how many siblings it has (chunking
    and cohort size leave results bit-identical; tested).
    """
    return jnp.broadcast_to(x, (members,) + x.shape)


def over_members(mesh: Mesh | None, fn, batched: tuple, x, shared: tuple, layout: str = "vmap"):
    """fn(*batched_i, x, *shared) for every member i (the leading axis of each
    leaf of `batched`), stacked along a new leading axis.

    Layout "vmap": one batched computation for all members (x copied per
    member, see `per_member`); across devices, XLA partitions the batch.
    Layout "map": a loop over members inside the program (`jax.lax.map`), each
    member's matmuls unbatched; across devices, `jax.shard_map` gives each
    device its own members to loop over. Either way a member's computation
    has the same shape whatever the number of members, so the same bits.
    """
    if layout == "vmap":
        members = jax.tree.leaves(batched)[0].shape[0]
        return jax.vmap(lambda *b: fn(*b, *shared))(*batched, per_member(x, members))

    def loop(batched, x, shared):
        return jax.lax.map(lambda b: fn(*b, x, *shared), batched)

    if mesh is None:
        return loop(batched, x, shared)
    # check_vma off: the loop's carry mixes per-device values and constants,
    # which the check would have to be told are per-device (they are)
    return jax.shard_map(loop, mesh=mesh, in_specs=(P("members"), P(), P()),
                         out_specs=P("members"), check_vma=False)(batched, x, shared)


def recorded_step(program: Program, mesh: Mesh | None, state: State, hp: Hyper, x, y, t,
                  last):
    """Every member's step t in the program's `member_layout`, measured
    batched (a record is many small operations, which a loop over members
    would issue once per member): (states at t+1, records of t). With `last`
    (traced) true, t is the final record: its step is measured and not
    taken (`step`'s `frozen`)."""
    def take_step(s, h, xi, t, last):
        new, (loss, z, grads) = step(program, s, h, xi, y, t, frozen=last)
        return new, (loss, z, gradient_sums(s.params, grads))

    def record(s, new, out, h, xi, t, last):
        return measured(program, s, new, out, h, xi, y, t, last)

    new, out = over_members(mesh, take_step, (state, hp), x, (t, last), program.member_layout())
    return over_members(mesh, record, (state, new, out, hp), x, (t, last))


def run_segment(program: Program, mesh: Mesh | None, state: State, hp: Hyper, x, y, t, gap,
                valid):
    """For each record r of the segment, for every member: measure step t[r],
    then advance 1 + gap[r] steps (to the next record); gap[r] = −1 marks the
    last record, which is measured and moves nothing. Entries with valid[r]
    False are padding and do nothing. t, gap, valid are the same for every
    member. Every step runs in the program's `member_layout`, the records
    are measured batched (`recorded_step`). Returns (state, records with a
    leading record axis, then the member axis)."""
    members = hp.lr.shape[0]
    layout = program.member_layout()

    def advance(s, h, xi, t0, n):
        # only the last step's update is read (by the next record)
        return jax.lax.fori_loop(
            0, n, lambda i, s: step(program, s, h, xi, y, t0 + i, keep_update=i == n - 1)[0], s)

    def skip(state):
        empty = jax.tree.map(lambda a: jnp.broadcast_to(a, (members,) + a.shape),
                             empty_records(program))
        return state, empty

    def body(state, inp):
        t_r, gap_r, valid_r = inp

        def advance_all(state):
            return over_members(mesh, advance, (state, hp), x, (t_r + 1, gap_r), layout)

        def go(state):
            state, rec = recorded_step(program, mesh, state, hp, x, y, t_r, gap_r < 0)
            if layout == "map":
                # a loop over members copies every member's state in and out,
                # even to advance 0 steps (the next step is recorded too)
                return jax.lax.cond(gap_r > 0, advance_all, lambda s: s, state), rec
            return advance_all(state), rec

        return jax.lax.cond(valid_r, go, skip, state)

    return jax.lax.scan(body, state, (t, gap, valid))


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_cohort(program: Program, mesh: Mesh | None, hp: Hyper, init_keys, power_keys, x):
    _traced("init")
    member = functools.partial(init_member, program)
    with jax.default_matmul_precision(program.precision):
        state = over_members(mesh, member, (hp, init_keys, power_keys), x, ())
    if mesh is None:
        return state
    # placed as segment_cohort places its output: XLA would replicate the
    # leaves that are constants (update_sq, diverged_at), and the first
    # segment would compile for a placement no later one has
    return jax.lax.with_sharding_constraint(state, NamedSharding(mesh, P("members")))


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def segment_cohort(program: Program, mesh: Mesh | None, state, hp: Hyper, x, y, t, gap, valid):
    """`run_segment`, records (member, record, …)."""
    _traced("segment")
    with jax.default_matmul_precision(program.precision):
        state, rec = run_segment(program, mesh, state, hp, x, y, t, gap, valid)
    return state, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), rec)


@dataclasses.dataclass
class Trajectory:
    """Host arrays of one run of members. Layer metrics (member, record, layer),
    network metrics (member, record); weights (member, fan_in, fan_out) per layer."""
    records: dict[str, np.ndarray]
    diverged_at: np.ndarray
    initial: list[np.ndarray] | None = None
    final: list[np.ndarray] | None = None


def segments(steps: np.ndarray, count: int = SEGMENTS):
    """Splits the records into `count` equal segments (padded) of
    (t, gap, valid) arrays (`run_segment`); the last record, the last step,
    has gap −1: it is measured in the last segment, and nothing moves past it."""
    t = steps
    gap = np.append(np.diff(steps) - 1, -1)
    size = max(1, math.ceil(len(t) / count))
    pad = size * math.ceil(len(t) / size) - len(t)
    t = np.concatenate([t, np.zeros(pad, t.dtype)]).astype(np.int32)
    gap = np.concatenate([gap, np.zeros(pad, gap.dtype)]).astype(np.int32)
    valid = np.arange(len(t)) < len(steps)
    return [(t[i:i + size], gap[i:i + size], valid[i:i + size]) for i in range(0, len(t), size)]


def member_mesh(devices: int | None) -> Mesh | None:
    """A one-axis mesh ("members") over the first `devices` local devices
    (all of them for None); None when there is only one."""
    available = jax.local_devices()
    count = len(available) if devices is None else min(devices, len(available))
    if count <= 1:
        return None
    return Mesh(np.array(available[:count]), ("members",))


def shard_members(mesh: Mesh | None, hp: Hyper, init_keys, power_keys, x, y,
                  min_members: int):
    """Pads the member axis (repeating the last member) to a multiple of the
    mesh size and to at least `min_members` (`Program.min_members`: fewer
    round differently from the same members among more siblings), and
    places members across devices, data replicated."""
    size = 1 if mesh is None else mesh.devices.size
    members = len(hp.lr)
    pad = max(min_members, -(-members // size) * size) - members
    if pad:
        idx = np.concatenate([np.arange(members), np.full(pad, members - 1)])
        hp, init_keys, power_keys = jax.tree.map(lambda a: a[idx], (hp, init_keys, power_keys))
    if mesh is None:
        return hp, init_keys, power_keys, x, y
    split, whole = NamedSharding(mesh, P("members")), NamedSharding(mesh, P())
    hp, init_keys, power_keys = jax.device_put((hp, init_keys, power_keys), split)
    return hp, init_keys, power_keys, jax.device_put(x, whole), jax.device_put(y, whole)


def _placed(program: Program, x, y, lrs, init_keys, power_keys, steps, devices, weight_decay,
            parametrization):
    """train_members' arguments checked, padded and placed on its mesh:
    (mesh, hp, init_keys, power_keys, x, y)."""
    if steps[0] != 0 or len(steps) < 2:
        raise ValueError("steps must start at 0 and hold at least two records")
    if weight_decay is not None and np.any(np.asarray(weight_decay) != 0) and not program.decay:
        raise ValueError("weight_decay > 0 needs a Program with decay=True")
    hp = hyper(program, lrs, weight_decay, parametrization)
    mesh = member_mesh(devices)
    return (mesh, *shard_members(mesh, hp, init_keys, power_keys, x, y, program.min_members()))


def compile_members(program: Program, x, y, lrs: np.ndarray, init_keys, power_keys,
                    steps: np.ndarray, devices: int | None = 1, *,
                    weight_decay: np.ndarray | None = None, parametrization=None) -> dict:
    """Compiles, and runs nothing of, the programs that `train_members` with
    the same arguments runs, so that its calls find them compiled (in JAX's
    in-memory cache; the persistent cache too, where enabled). The state is
    never built: each program is lowered against the shapes and placements
    the previous one outputs. `launch` calls this on a background thread to
    compile the next cohort while one trains (on an accelerator the device
    would otherwise idle for the whole compilation). Thread-safe. Returns
    the compiled programs by name ("init", "segment"), for
    inspection (the benchmark counts their kernels)."""
    mesh, hp, init_keys, power_keys, x, y = _placed(program, x, y, lrs, init_keys, power_keys,
                                                    steps, devices, weight_decay, parametrization)

    def like_outputs(compiled):
        # on one device train_members' arrays are uncommitted: no placement
        info = compiled.out_info
        if mesh is not None:
            return info
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type),
                            info)

    # (the annotations name each program's compilation in a jax.profiler trace)
    with jax.profiler.TraceAnnotation("normsweep compile init"):
        compiled = {"init": init_cohort.lower(program, mesh, hp, init_keys, power_keys, x).compile()}
    t, gap, valid = segments(steps)[0]          # every segment has the same shapes
    # init_cohort places its output as segment_cohort does, so one program
    # serves every segment (tested on two devices)
    with jax.profiler.TraceAnnotation("normsweep compile segment"):
        compiled["segment"] = segment_cohort.lower(program, mesh, like_outputs(compiled["init"]),
                                                   hp, x, y, t, gap, valid).compile()
    return compiled


def train_members(program: Program, x, y, lrs: np.ndarray, init_keys, power_keys,
                  steps: np.ndarray, keep_weights: bool = False,
                  on_steps: Callable[[int], None] | None = None,
                  devices: int | None = 1, *, weight_decay: np.ndarray | None = None,
                  parametrization=None) -> Trajectory:
    """Trains the members (one per entry of `lrs`) and records at `steps`.

    `steps` must start at 0; its last entry is the number of steps trained.
    `weight_decay` (default 0) and `parametrization` (names; default
    `program.parametrization`) are per member, like `lrs`. `on_steps(n)` is
    called on the host after each segment with the number of steps it
    advanced. `devices`: how many local devices to shard the members across
    (None: all); results equal a one-device run (tested).
    """
    members = len(lrs)
    mesh, hp, init_keys, power_keys, x, y = _placed(program, x, y, lrs, init_keys, power_keys,
                                                    steps, devices, weight_decay, parametrization)
    state = init_cohort(program, mesh, hp, init_keys, power_keys, x)
    # A copy, not a view: the state's buffers are donated to the next call.
    initial = [np.array(w, copy=True)[:members] for w in state.params0] if keep_weights else None
    chunks = []
    for t, gap, valid in segments(steps):
        state, rec = segment_cohort(program, mesh, state, hp, x, y, t, gap, valid)
        chunks.append({k: np.asarray(v)[:members, valid] for k, v in rec.items()})
        if on_steps is not None:
            on_steps(int(np.sum(gap[valid] + 1)))
    records = {k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0]}
    final = [np.asarray(w)[:members] for w in kernels(state.params)] if keep_weights else None
    return Trajectory(records, np.asarray(state.diverged_at)[:members], initial, final)
