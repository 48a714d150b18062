"""One member's gradient-descent step: the static `Program`, the traced
hyperparameters, the state, the loss and the update.

Step t evaluates the loss, logits and gradient at W(t) once and applies
W(t+1) = W(t) − η·(c_l·∇_l L + λ·W_l) through optax (`optimizer`: plain
`optax.sgd` when every c_l = 1 and λ = 0). A recorded step measures its
norms from those same quantities (`measure.measured`): no second forward
pass. Width and depth are static (in `Program`), learning rates and keys
traced: one compiled program serves every learning rate.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from normsweep.model import MLP, init_stds, kernels, lr_multipliers, with_kernels
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
    out of the comparison."""
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

    def model(self) -> MLP:
        """The network, drawing unit normals: init_member scales each layer
        by its member's init std (so one program serves every parametrization)."""
        return MLP(dims=self.dims, init_scheme="unit", dtype=self.jdtype)


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
    grads, updates) at W(t). With `frozen` (traced) true, the weights stay as
    they were: the last record measures W(T) and moves nothing. `update_sq`
    is left to the caller, which reads only some steps' (a pass over every
    matrix per step saved)."""
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
    updates, opt_state = optimizer(program, hp).update(grads, state.opt_state, state.params)
    moved = optax.apply_updates(state.params, updates)
    params = jax.tree.map(lambda new, old: jnp.where(moving, new, old), moved, state.params)
    new = state._replace(params=params, opt_state=opt_state, diverged_at=diverged_at)
    return new, (loss, z, grads, updates)
