"""Training a cohort: every member of one `Program`, batched, over the
record schedule.

One compiled program runs all members of a cohort (`jax.vmap`; the member
axis sharded across devices where there are several) and `jax.lax.scan`
walks the record schedule: at each record one loop takes the steps to the
next, and the first of them feeds the record (`measure`), with no host
round-trip. The host regains control only between segments of records
(for progress).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable

from normsweep import cpu

cpu.configure()         # before the backend starts: see normsweep/cpu.py

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from normsweep import measure, linalg, plan, programs
from normsweep.measure import tree_dot, tree_scale, empty_records, gradient_sums, measured
from normsweep.model import (kernels, normals, present, slots, unit_kernels, unit_vectors,
                             with_kernels)
from normsweep.probes import PROBES
from normsweep.schema import LAYER_METRICS
from normsweep.step import Hyper, Program, State, hyper, optimizer, step

SEGMENTS = 16


def init_member(program: Program, hp: Hyper, init_key: jax.Array, power_key: jax.Array,
                x: jax.Array) -> State:
    """W(0) from `init_key` (unit normals times the member's init stds);
    the spectral norms' start vectors from `power_key`, the one for W
    converged by a cold start of `cold_iters` Lanczos steps. In a program
    serving several depths, each slot draws from its layer's keys
    (`model.slots`), and the slots the network lacks are zero (init std 0)."""
    shared = program.shallowest is not None
    depth = program.network_depth if shared else None
    unit = unit_kernels(program.model(), init_key, x[:1], depth)
    ws = tuple(w * hp.init_std[l] for l, w in enumerate(unit))
    params = with_kernels(None, ws)
    dt = program.jdtype
    # the start vectors: unit normals of keys (power_key, l) and (power_key, 1000 + l),
    # l the slot's layer (the keys folded in one batched call: one loop at any depth)
    layer = jnp.arange(program.depth, dtype=jnp.uint32)
    if shared:
        layer = jnp.where(layer == program.depth - 1, jnp.asarray(depth - 1, jnp.uint32), layer)
    folds = jnp.concatenate([layer, 1000 + layer])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(power_key, folds)
    starts = unit_vectors(keys, [w.shape[1] for w in ws] * 2, dt)
    # rolled: a cold start's loop, unrolled on an accelerator, is most of a
    # GPU cohort's compilation (BENCHMARKS.md)
    spec_v = linalg.spectral_norms(list(ws), starts[:program.depth], program.cold_iters,
                                    rolled=True,
                                    present=[program.skipped(l) for l in range(program.depth)])[1]
    dist_v = starts[program.depth:]
    nan = jnp.full((program.depth,), jnp.nan, dt)
    hess_v = ()
    if "sharpness" in program.probes:
        # every layer's start from the key (power_key, 2000), in one batched draw
        hess_v = normals([jax.random.fold_in(power_key, 2000)] * program.depth,
                         [w.shape for w in ws], dt)
        if shared:      # the network's layers only: a lacking slot's is zero
            hess_v = [jnp.where(present(l, depth, program.depth), v, 0)
                      for l, v in enumerate(hess_v)]
        hess_v = with_kernels(None, hess_v)
        hess_v = tree_scale(hess_v, 1 / jnp.sqrt(tree_dot(hess_v, hess_v)))
    return State(params, ws, optimizer(program, hp).init(params), tuple(spec_v), tuple(dist_v),
                 nan, jnp.asarray(-1, jnp.int32), hess_v)


# -- compiled, over all members -------------------------------------------

def per_member(x: jax.Array, members: int) -> jax.Array:
    """The inputs broadcast to one copy per member, for `jax.vmap`. Shared
    inputs (vmap's in_axes None) let XLA fuse the first layer's products of
    all members into one matmul over their columns, slower than a batched
    matmul per member (BENCHMARKS.md)."""
    return jnp.broadcast_to(x, (members,) + x.shape)


def record_and_advance(program: Program, state: State, hp: Hyper, x, y, t, gap, due):
    """One member's record at step t and the steps to the next: steps t to
    t + gap in one loop, of which the first's (loss, logits, `gradient_sums`)
    feed the record (`measured`, from the state at t). gap = −1 marks the last
    record: its step is measured and not taken (`step`'s `frozen`). One copy
    of the step in the program, where a record's own step would be a
    second one to compile."""
    last = gap < 0
    n = jnp.maximum(gap + 1, 1)
    dt = program.jdtype
    zeros = jnp.zeros((program.depth,), dt)
    first = (jnp.zeros((), dt), jnp.zeros((y.shape[0], program.dims[-1]), dt), (zeros, zeros))

    def body(i, carry):
        s, kept = carry
        new, (loss, z, grads, update_sq) = step(program, s, hp, x, y, t + i, frozen=last)
        # the next record reads the run's last update (‖ΔW_l‖² into update_sq);
        # this record, the first step's sums: both in one conditional per step
        keep = (i == n - 1) & ~last

        def ends(kept):
            now = (loss, z, gradient_sums(s.params, grads))
            return (jnp.where(keep, update_sq(), new.update_sq),
                    jax.tree.map(lambda a, b: jnp.where(i == 0, a, b), now, kept))

        update_sq, kept = jax.lax.cond((i == 0) | keep, ends,
                                       lambda kept: (new.update_sq, kept), kept)
        return new._replace(update_sq=update_sq), kept

    new, out = jax.lax.fori_loop(0, n, body, (state, first))
    return measured(program, state, new, out, hp, x, y, t, due)


def run_segment(program: Program, state: State, hp: Hyper, x, y, t, gap, valid, due):
    """For each record r of the segment, for every member: measure step t[r]
    and advance 1 + gap[r] steps (to the next record; `record_and_advance`);
    gap[r] = −1 marks the last record, which is measured and moves nothing.
    Entries with valid[r] False are padding and do nothing; due[probe][r]
    says whether the probe measures record r. t, gap, valid, due are the
    same for every member. Members run batched (`jax.vmap`), which XLA
    partitions across devices as the member axis is placed
    (`shard_members`). Returns (state, records with a leading record axis,
    then the member axis)."""
    members = hp.lr.shape[0]

    def skip(state):
        empty = jax.tree.map(lambda a: jnp.broadcast_to(a, (members,) + a.shape),
                             empty_records(program))
        return state, empty

    def body(state, inp):
        t_r, gap_r, valid_r, due_r = inp

        def go(state):
            def one(s, h, xi):
                return record_and_advance(program, s, h, xi, y, t_r, gap_r, due_r)

            return jax.vmap(one)(state, hp, per_member(x, members))

        return jax.lax.cond(valid_r, go, skip, state)

    return jax.lax.scan(body, state, (t, gap, valid, due))


def _placed_like_members(mesh: Mesh | None, state):
    """`state` with its member axis placed across `mesh`: init_cohort's
    output placed as segment_cohort's is, or XLA would replicate the leaves
    that are constants (update_sq, diverged_at) and the first segment would
    compile for a placement no later one has."""
    if mesh is None:
        return state
    return jax.lax.with_sharding_constraint(state, NamedSharding(mesh, P("members")))


@cpu.jit(static_argnums=(0, 1))
def init_cohort(program: Program, mesh: Mesh | None, hp: Hyper, init_keys, power_keys, x,
                depth):
    """`init_member` of every member, networks of `depth` (`Program.shallowest`)."""
    member = functools.partial(init_member, program.at_depth(depth))
    with jax.default_matmul_precision(program.precision):
        state = jax.vmap(member, (0, 0, 0, None))(hp, init_keys, power_keys, x)
    return _placed_like_members(mesh, state)


@cpu.jit(static_argnums=(0, 1), donate_argnums=2)
def segment_cohort(program: Program, mesh: Mesh | None, state, hp: Hyper, x, y, t, gap, valid,
                   due, depth):
    """`run_segment`, records (member, record, …), networks of `depth`.
    `mesh` is static so that a program is compiled per placement."""
    program = program.at_depth(depth)
    with jax.default_matmul_precision(program.precision):
        state, rec = run_segment(program, state, hp, x, y, t, gap, valid, due)
    return _placed_like_members(mesh, state), jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), rec)


@cpu.jit(static_argnums=(0, 1, 2))
def spectra_cohort(program: Program, mesh: Mesh | None, rank: int, state, x, y, depth):
    """`measure.spectra` of every member: {name: (member, slot[, rank])}."""
    program = program.at_depth(depth)
    with jax.default_matmul_precision(program.precision):
        out = jax.vmap(lambda s, xi: measure.spectra(program, s, xi, y, rank))(
            state, per_member(x, state.diverged_at.shape[0]))
    return out


@dataclasses.dataclass
class Trajectory:
    """Host arrays of one run of members. Layer metrics (member, record, layer),
    network metrics (member, record); weights (member, fan_in, fan_out) per
    layer; `spectra` (with `program.spectra`) {name: (member, 2, layer[, rank])},
    at step 0 and the last. `timing`: the wall seconds of the programs'
    calls, for the time estimate (`calibration.fit_costs`): "once" (init and
    spectra, per run) and per segment [steps taken, records, {probe: records
    it measured}, seconds]."""
    records: dict[str, np.ndarray]
    diverged_at: np.ndarray
    initial: list[np.ndarray] | None = None
    final: list[np.ndarray] | None = None
    spectra: dict[str, np.ndarray] | None = None
    timing: dict | None = None


def layer_records(program: Program) -> set[str]:
    """The records over layers (the last axis: the program's slots)."""
    return set(LAYER_METRICS) | {name for probe in program.probes if PROBES[probe].per_layer
                                 for name in PROBES[probe].records}


def segments(steps: np.ndarray, schedules: dict[str, int | str] | None = None,
             probe_points: int = 16, count: int = SEGMENTS):
    """Splits the records into `count` equal segments (padded) of
    (t, gap, valid, due) arrays (`run_segment`; due {probe: bool array} by
    each probe's schedule in `schedules`, `plan.probe_due`); the last record, the
    last step, has gap −1: it is measured in the last segment, and nothing
    moves past it."""
    t = steps
    gap = np.append(np.diff(steps) - 1, -1)
    size = max(1, math.ceil(len(t) / count))
    pad = size * math.ceil(len(t) / size) - len(t)
    due = {name: np.concatenate([plan.probe_due(steps, every, probe_points), np.zeros(pad, bool)])
           for name, every in (schedules or {}).items()}
    t = np.concatenate([t, np.zeros(pad, t.dtype)]).astype(np.int32)
    gap = np.concatenate([gap, np.zeros(pad, gap.dtype)]).astype(np.int32)
    valid = np.arange(len(t)) < len(steps)
    return [(t[i:i + size], gap[i:i + size], valid[i:i + size],
             {name: d[i:i + size] for name, d in due.items()})
            for i in range(0, len(t), size)]


def member_mesh(devices: int | None) -> Mesh | None:
    """A one-axis mesh ("members") over the first `devices` local devices
    (all of them for None); None when there is only one."""
    available = jax.local_devices()
    count = len(available) if devices is None else min(devices, len(available))
    if count <= 1:
        return None
    return Mesh(np.array(available[:count]), ("members",))


def shard_members(mesh: Mesh | None, hp: Hyper, init_keys, power_keys, x, y):
    """Pads the member axis (repeating the last member) to a multiple of the
    mesh size, and places members across devices, data replicated."""
    size = 1 if mesh is None else mesh.devices.size
    members = len(hp.lr)
    pad = -(-members // size) * size - members
    if pad:
        idx = np.concatenate([np.arange(members), np.full(pad, members - 1)])
        hp, init_keys, power_keys = jax.tree.map(lambda a: a[idx], (hp, init_keys, power_keys))
    if mesh is None:
        return hp, init_keys, power_keys, x, y
    split, whole = NamedSharding(mesh, P("members")), NamedSharding(mesh, P())
    hp, init_keys, power_keys = jax.device_put((hp, init_keys, power_keys), split)
    return hp, init_keys, power_keys, jax.device_put(x, whole), jax.device_put(y, whole)


def placed(program: Program, x, y, lrs, init_keys, power_keys, steps, devices, weight_decay,
            parametrization, depth=None):
    """train_members' arguments checked, padded and placed on its mesh:
    (mesh, hp, init_keys, power_keys, x, y, depth)."""
    if steps[0] != 0 or len(steps) < 2:
        raise ValueError("steps must start at 0 and hold at least two records")
    if weight_decay is not None and np.any(np.asarray(weight_decay) != 0) and not program.decay:
        raise ValueError("weight_decay > 0 needs a Program with decay=True")
    depth = program.depth if depth is None else depth
    if depth not in program.served():
        raise ValueError(f"depth = {depth}: the program serves depths {list(program.served())}")
    hp = hyper(program, lrs, weight_decay, parametrization, depth)
    mesh = member_mesh(devices)
    return (mesh, *shard_members(mesh, hp, init_keys, power_keys, x, y),
            jnp.asarray(depth, jnp.int32))


def probe_schedules(program: Program, schedules: dict | None) -> dict[str, int | str]:
    """Each probe `program` has on, with its schedule from `schedules` (a
    stride or "log"; "log" where not given)."""
    schedules = dict(schedules or {})
    if set(schedules) - set(program.probes):
        raise ValueError(f"schedules for {sorted(set(schedules) - set(program.probes))}: "
                         f"not among the program's probes {program.probes}")
    return {name: schedules.get(name, "log") for name in program.probes}


def compile_members(program: Program, x, y, lrs: np.ndarray, init_keys, power_keys,
                    steps: np.ndarray, devices: int | None = 1, *,
                    weight_decay: np.ndarray | None = None, parametrization=None,
                    schedules: dict | None = None, probe_points: int = 16,
                    depth: int | None = None) -> dict:
    """Compiles, and runs nothing of, the programs that `train_members` with
    the same arguments runs, so that its calls find them compiled (in JAX's
    in-memory cache; the persistent cache too, where enabled). The state is
    never built: each program is lowered against the shapes and placements
    the previous one outputs. `launch` calls this on its compile threads to
    compile the next cohort while one trains (on an accelerator the device
    would otherwise idle for the whole compilation). Thread-safe. Returns
    the compiled programs by name ("init", "segment", and "spectra" when
    recorded), for inspection (the benchmark counts their kernels)."""
    mesh, hp, init_keys, power_keys, x, y, depth = placed(
        program, x, y, lrs, init_keys, power_keys, steps, devices, weight_decay, parametrization,
        depth)
    # the cohorts of one program compile it once: a second thread waits for
    # the first, then finds it compiled (a program serves every depth)
    key = (program, mesh, len(hp.lr), x.shape, y.shape, str(x.dtype),
           len(segments(steps, count=SEGMENTS)[0][0]), tuple(sorted(schedules or {})))
    with _compiling_lock:
        lock = _compiling.setdefault(key, threading.Lock())
    with lock:
        return _compile_members(program, mesh, hp, init_keys, power_keys, x, y, depth, steps,
                                schedules, probe_points)


_compiling_lock = threading.Lock()
_compiling: dict = {}


def _compile_members(program, mesh, hp, init_keys, power_keys, x, y, depth, steps, schedules,
                     probe_points):
    def like_outputs(compiled):
        # on one device a traced program's outputs are uncommitted, like its
        # inputs: no placement
        info = compiled.out_info
        if mesh is not None or programs.exported((program, mesh)):
            return info
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type),
                            info)

    # (the annotations name each program's compilation in a jax.profiler trace)
    with jax.profiler.TraceAnnotation("normsweep compile init"):
        compiled = {"init": programs.lowered(init_cohort, (program, mesh),
                                             (hp, init_keys, power_keys, x, depth)).compile()}
    # every segment has the same shapes
    t, gap, valid, due = segments(steps, probe_schedules(program, schedules), probe_points)[0]
    # init_cohort places its output as segment_cohort does, so one program
    # serves every segment (tested on two devices)
    state = like_outputs(compiled["init"])
    with jax.profiler.TraceAnnotation("normsweep compile segment"):
        compiled["segment"] = programs.lowered(segment_cohort, (program, mesh),
                                               (state, hp, x, y, t, gap, valid, due, depth),
                                               donate=(0,)).compile()
    if program.spectra:
        with jax.profiler.TraceAnnotation("normsweep compile spectra"):
            compiled["spectra"] = programs.lowered(
                spectra_cohort, (program, mesh, plan.spectral_rank(program.dims)),
                (state, x, y, depth)).compile()
    return compiled


def train_members(program: Program, x, y, lrs: np.ndarray, init_keys, power_keys,
                  steps: np.ndarray, keep_weights: bool = False,
                  on_steps: Callable[[int], None] | None = None,
                  devices: int | None = 1, *, weight_decay: np.ndarray | None = None,
                  parametrization=None, schedules: dict | None = None,
                  probe_points: int = 16, depth: int | None = None) -> Trajectory:
    """Trains the members (one per entry of `lrs`) and records at `steps`.

    `steps` must start at 0; its last entry is the number of steps trained.
    `weight_decay` (default 0) and `parametrization` (names; default
    `program.parametrization`) are per member, like `lrs`. `on_steps(n)` is
    called on the host after each segment with the number of steps it
    advanced. `devices`: how many local devices to shard the members across
    (None: all); results equal a one-device run (tested). `schedules`: each
    probe's schedule ({probe: stride or "log"}, "log" by default;
    `probe_points` records at "log"), an input of the compiled program.
    `depth`: the networks' depth, one the program serves (`Program.shallowest`;
    default its own); the trajectory holds the network's layers.
    """
    members = len(lrs)
    mesh, hp, init_keys, power_keys, x, y, depth = placed(
        program, x, y, lrs, init_keys, power_keys, steps, devices, weight_decay, parametrization,
        depth)
    own = slots(int(depth), program.depth)       # the network's layers among the slots
    started = time.perf_counter()
    state = jax.block_until_ready(
        programs.called(init_cohort, (program, mesh), (hp, init_keys, power_keys, x, depth)))
    timing = {"once": time.perf_counter() - started, "segments": []}
    # A copy, not a view: the state's buffers are donated to the next call.
    initial = [np.array(state.params0[l], copy=True)[:members] for l in own] \
        if keep_weights else None
    taken = []

    def take_spectra(state):
        if program.spectra:
            started = time.perf_counter()
            out = programs.called(spectra_cohort,
                                  (program, mesh, plan.spectral_rank(program.dims)),
                                  (state, x, y, depth))
            rank = plan.spectral_rank(program.network_dims(len(own)))
            taken.append({k: np.asarray(v)[:members, own, ...][..., :rank] if v.ndim == 3
                          else np.asarray(v)[:members, own] for k, v in out.items()})
            timing["once"] += time.perf_counter() - started

    take_spectra(state)
    per_layer = layer_records(program)
    chunks = []
    for t, gap, valid, due in segments(steps, probe_schedules(program, schedules),
                                       probe_points):
        started = time.perf_counter()
        state, rec = programs.called(segment_cohort, (program, mesh),
                                     (state, hp, x, y, t, gap, valid, due, depth), donate=(0,))
        chunks.append({k: np.asarray(v)[:members, valid][..., own] if k in per_layer
                       else np.asarray(v)[:members, valid] for k, v in rec.items()})
        taken_steps = int(np.sum(gap[valid] + 1))
        timing["segments"].append([taken_steps, int(valid.sum()),
                                   {k: int(d[valid].sum()) for k, d in due.items()},
                                   time.perf_counter() - started])
        if on_steps is not None:
            on_steps(taken_steps)
    records = {k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0]}
    final = [np.asarray(kernels(state.params)[l])[:members] for l in own] \
        if keep_weights else None
    take_spectra(state)
    spectra = {k: np.stack([taken[0][k], taken[1][k]], axis=1) for k in taken[0]} \
        if taken else None
    return Trajectory(records, np.asarray(state.diverged_at)[:members], initial, final, spectra,
                      timing)
