"""One member's gradient-descent step: the static `Program`, the traced
hyperparameters, the state, the loss and the update.

Step t evaluates the loss, logits and gradient at W(t) once and applies
W(t+1) = W(t) − η·(c_l·∇_l L + λ·W_l) through optax (`optimizer`: plain
`optax.sgd` when every c_l = 1 and λ = 0). A recorded step measures its
norms from those same quantities (`measure.measured`): no second forward
pass. Width and the layers are static (in `Program`), learning rates and
keys traced: one compiled program serves every learning rate, and with
`Program.shallowest` every depth up to its own (the depth traced too).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from normsweep import linalg
from normsweep.model import (MLP, init_stds, kernels, lr_multipliers, present, slots,
                             with_kernels)
from normsweep.probes import PROBES, sizes as probe_sizes

COLD_ITERS = 100


@dataclasses.dataclass(frozen=True)
class Program:
    """What shapes a cohort's compiled program, and nothing else: jit keys
    its cache on a Program, so two cohorts with equal Programs share one
    compilation. Which records a probe measures is an input (`train.segments`
    from its schedule), so only whether it is on (`probes`) is here: grids
    that differ only in a probe's stride share their programs; `sizes` holds
    the sizes of those on ({key: value}, `probes.Probe.sizes`; defaults where
    not given). `init` and `parametrization` are defaults of the host-side
    `hyper` (each member's init stds and lr multipliers are traced), left
    out of the comparison.

    `shallowest` below the depth: the program serves every network of depth
    `shallowest` to len(dims) − 1 at this width (`model.slots`): its layers
    are slots, and the network's own depth is an input of the compiled
    programs, set inside their trace (`at_depth`)."""
    dims: tuple[int, ...]
    init: str = dataclasses.field(default="he", compare=False)
    output: str = "softmax"
    loss: str = "mse"
    dtype: str = "float32"
    lanczos_steps: int = 10
    cold_iters: int = COLD_ITERS
    probes: tuple[str, ...] = ()        # `probes.PROBES` that are on, sorted
    sizes: Any = ()                     # their sizes: {key: value}, stored sorted
    parametrization: str = dataclasses.field(default="standard", compare=False)
    precision: str = "highest"
    decay: bool = False                 # any member with weight decay > 0
    spectra: bool = False           # singular values at step 0 and the last (`measure.spectra`)
    shallowest: int | None = None       # the shallowest network served; None: only len(dims) − 1
    # the network's depth, traced, inside a program's trace (`at_depth`); not its shape
    network_depth: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        on = tuple(sorted(set(self.probes)))
        unknown = set(on) - set(PROBES)
        if unknown:
            raise ValueError(f"unknown probes {sorted(unknown)}: the probes are "
                             f"{sorted(PROBES)}")
        defaults = probe_sizes(on)
        sizes = {**defaults, **dict(self.sizes)}
        if set(sizes) != set(defaults):
            raise ValueError(f"sizes {sorted(set(sizes) - set(defaults))}: not of the "
                             f"probes on, {list(on)}")
        if self.shallowest is not None and not 2 <= self.shallowest <= self.depth:
            raise ValueError(f"shallowest = {self.shallowest}: must be in [2, {self.depth}]")
        if self.shallowest == self.depth:
            object.__setattr__(self, "shallowest", None)
        object.__setattr__(self, "probes", on)
        object.__setattr__(self, "sizes", tuple(sorted(sizes.items())))

    def size(self, key: str) -> int:
        """A probe's size setting (`jacobian_points`, …)."""
        return dict(self.sizes)[key]

    @property
    def depth(self) -> int:
        return len(self.dims) - 1

    @property
    def jdtype(self):
        return jnp.dtype(self.dtype)

    def model(self, reverse_only: bool = False) -> MLP:
        """The network, drawing unit normals: init_member scales each layer
        by its member's init std (so one program serves every parametrization)."""
        return MLP(dims=self.dims, init_scheme="unit", dtype=self.jdtype,
                   shallowest=self.shallowest, reverse_only=reverse_only)

    def apply(self, params, x, reverse_only: bool = False, **kwargs):
        """`model().apply` for the network of depth `network_depth`;
        `reverse_only`: differentiated in reverse mode only (`MLP`)."""
        return self.model(reverse_only).apply(params, x, self.network_depth, **kwargs)

    def at_depth(self, depth) -> Program:
        """This program inside a trace, for a network of (traced) `depth`."""
        return dataclasses.replace(self, network_depth=depth)

    def skipped(self, slot: int):
        """None for a slot every network served has, else whether the
        network of `network_depth` has it (traced; `model.present`)."""
        if self.shallowest is None or not self.shallowest - 1 <= slot < self.depth - 1:
            return None
        return present(slot, self.network_depth, self.depth)

    def served(self) -> range:
        """The depths of the networks this program trains."""
        return range(self.shallowest or self.depth, self.depth + 1)

    def network_dims(self, depth: int | None = None) -> tuple[int, ...]:
        """The layer sizes of the network of `depth` (default the deepest)."""
        depth = self.depth if depth is None else depth
        return self.dims[:depth] + self.dims[-1:]


class Hyper(NamedTuple):
    """Per-member hyperparameters, traced (one compiled program for all):
    learning rate η, weight decay λ, and per-layer lr multipliers c_l and
    init stds s_l (depth,) from the member's parametrization."""
    lr: jax.Array
    weight_decay: jax.Array
    lr_mult: jax.Array
    init_std: jax.Array


def hyper(program: Program, lrs, weight_decay=None, parametrization=None,
          depth: int | None = None) -> Hyper:
    """Host-side `Hyper` of members with rates `lrs`, weight decays (default
    0) and parametrization names (default `program.parametrization`), for
    networks of `depth` (default the program's): a slot the network lacks
    (`model.slots`) has init std 0 and lr multiplier 0, and stays zero."""
    members = len(lrs)
    names = list(parametrization) if parametrization is not None \
        else [program.parametrization] * members
    wd = np.zeros(members) if weight_decay is None else np.asarray(weight_decay, np.float64)
    dt = program.jdtype
    dims = program.network_dims(depth)
    where = slots(len(dims) - 1, program.depth)
    mult, std = np.zeros((2, members, program.depth))
    mult[:, where] = [lr_multipliers(n, program.init, dims) for n in names]
    std[:, where] = [init_stds(n, program.init, dims) for n in names]
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


def loss_and_logits(program: Program, params, x: jax.Array, y: jax.Array,
                    reverse_only: bool = False):
    """The training loss at `params` and the logits it was computed from.

    mse: ½ Σ_i ‖F(x_i) − y_i‖² with F = softmax(logits) or the logits.
    cross_entropy: −Σ_i log softmax(logits_i)[y_i].
    `reverse_only`: differentiated in reverse mode only (the step's gradient).
    """
    z = program.apply(params, x, reverse_only)
    if program.loss == "cross_entropy":
        return -jnp.sum(y * jax.nn.log_softmax(z)), z
    f = jax.nn.softmax(z) if program.output == "softmax" else z
    return 0.5 * jnp.sum(jnp.square(f - y)), z


def optimizer(program: Program, hp: Hyper) -> optax.GradientTransformation:
    """W_l ← W_l − η·(c_l·∂L/∂W_l + λ·W_l): `optax.sgd` (no momentum) after
    the member's per-layer lr multipliers c_l and, in programs with `decay`,
    `optax.add_decayed_weights`. With every c_l = 1 (× 1 is exact) and no
    decay, the update is plain `optax.sgd`'s to the bit."""
    def by_layer(grads, params=None):
        return with_kernels(grads, [g * hp.lr_mult[l] for l, g in enumerate(kernels(grads))])

    parts = [optax.stateless(by_layer)]
    if program.decay:
        parts.append(optax.add_decayed_weights(hp.weight_decay))
    return optax.chain(*parts, optax.sgd(hp.lr))


def step(program: Program, state: State, hp: Hyper, x, y, t, frozen=False):
    """One gradient-descent step from W(t) by `optimizer`:
        W_l ← W_l − η·(c_l·∂L/∂W_l + λ·W_l). Returns the new state and (loss, logits,
    grads, update_sq) at W(t). With `frozen` (traced) true, the weights stay as
    they were: the last record measures W(T) and moves nothing. `update_sq()`
    gives ‖W_l(t+1) − W_l(t)‖² per layer where it is called: the caller reads
    only some steps' (a pass over every matrix per step saved), except in a
    slot that a network may lack, where it is summed in the slot's
    conditional (outside it, the update would be written out every step)."""
    (loss, z), grads = jax.value_and_grad(loss_and_logits, argnums=1, has_aux=True)(
        program, state.params, x, y, True)
    ws, gs = kernels(state.params), kernels(grads)
    shared = [l for l in range(len(ws)) if program.skipped(l) is None]
    skip = [l for l in range(len(ws)) if program.skipped(l) is not None]
    # a weight can overflow while dead ReLUs downstream keep the loss finite
    finite = functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(ws[l])) for l in shared],
                              jnp.isfinite(loss))
    for l in skip:          # a slot the network lacks is zero: no pass over it
        finite &= jax.lax.cond(program.skipped(l), lambda w: jnp.all(jnp.isfinite(w)),
                               lambda w: jnp.asarray(True), ws[l])
    diverged_at = jnp.where((state.diverged_at < 0) & ~finite,
                            jnp.asarray(t, jnp.int32), state.diverged_at)
    alive = diverged_at < 0
    moving = jnp.logical_and(alive, jnp.logical_not(frozen))

    def advance(idx):
        # the optimizer on the slots `idx`, as (new weights, ‖update‖² thunks):
        # it keeps no state (plain SGD), so a slot's update is the same
        # whichever slots share the call
        sub = optimizer(program, hp._replace(lr_mult=hp.lr_mult[np.asarray(idx)]))
        params = with_kernels(None, [ws[l] for l in idx])
        updates, _ = sub.update(with_kernels(None, [gs[l] for l in idx]), sub.init(params),
                                params)
        moved = optax.apply_updates(params, updates)
        return [jnp.where(moving, new, old) for new, old in zip(kernels(moved), kernels(params))], \
            [lambda u=u: linalg.sum_squares(u) for u in kernels(updates)]

    if jax.tree.leaves(state.opt_state):
        raise ValueError("the step's optimizer must keep no state (plain SGD)")
    new_ws, sq = [None] * len(ws), [None] * len(ws)
    for l, w, u in zip(shared, *advance(shared)):
        new_ws[l], sq[l] = w, u

    def present_slot(l):
        (w,), (u,) = advance([l])
        return w, u()

    for l in skip:
        new_ws[l], u_sq = jax.lax.cond(program.skipped(l), functools.partial(present_slot, l),
                                       lambda l=l: (ws[l], jnp.zeros((), ws[l].dtype)))
        sq[l] = lambda u_sq=u_sq: u_sq
    new = state._replace(params=with_kernels(None, new_ws), diverged_at=diverged_at)
    return new, (loss, z, grads, lambda: jnp.stack([f() for f in sq]))
