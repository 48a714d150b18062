"""The compiled, vmapped training program against an independent reference."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import jax
import jax.numpy as jnp
import pytest
import xarray as xr

from normsweep.data import member_keys
from normsweep import config, linalg, model, plan, sweep, train
from normsweep.data import sphere_data
from tests import equal, reference
from tests.conftest import TINY, write_grid

D, K, N = 8, 4, 48
X, Y = sphere_data(jax.random.key(7), N, D, K, jnp.float32)


def members(lrs, seeds):
    lrs = np.repeat(np.asarray(lrs, np.float64), len(seeds))
    seeds = np.tile(np.asarray(seeds), len(lrs) // len(seeds))
    return lrs, *member_keys(seeds)


def run(program, lrs, seeds, steps, weights=True):
    lr, ik, pk = members(lrs, seeds)
    return train.train_members(program, X, Y, lr, ik, pk, steps, keep_weights=weights)


@contextlib.contextmanager
def compilations():
    """The names of the programs XLA compiles within the block."""
    names = []

    def listener(event, duration, **kw):
        if event.endswith("backend_compile_duration"):
            names.append(kw.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


PROG = train.Program(dims=(D, 24, 24, K))
STEPS = np.arange(21)


@pytest.fixture(scope="module")
def cohort():
    return run(PROG, [0.05, 4.0], [0, 1], STEPS)


CHAOTIC_STEPS = 7      # at η = 4 this net is chaotic: rounding grows past 1e-5 by step 9


def test_vmapped_equals_one_at_a_time(cohort):
    """Every record, at every step at the stable η and at the first steps
    at the chaotic one, where rounding differences have not yet grown (the
    determinism promise, tests/equal.py)."""
    for i, (lr, seed) in enumerate([(0.05, 0), (0.05, 1), (4.0, 0), (4.0, 1)]):
        alone = run(PROG, [lr], [seed], STEPS)
        steps = slice(None) if lr < 0.5 else slice(CHAOTIC_STEPS)
        for name, value in alone.records.items():
            equal.assert_record_close(cohort.records[name][i][steps], value[0][steps], name)


def test_every_record_agrees_whatever_the_member_count():
    """All optional records on (softmax output, a width past EXACT_MAX so the
    hidden layer uses Lanczos): a member alone and among siblings gives the
    same records to rounding."""
    steps = np.array([0, 1, 3, 4, 8])
    lrs, seeds = np.array([0.05, 0.3, 1.0]), np.array([0, 1, 2])
    prog = train.Program(dims=(D, 24, linalg.EXACT_MAX + 8, K),
                         probes=("sharpness", "jacobian", "ntk"), sizes={"ntk_points": 16})
    every = {"sharpness": 3, "jacobian": 3, "ntk": 3}
    trio = train.train_members(prog, X, Y, lrs, *member_keys(seeds), steps, schedules=every)
    assert set(trio.records) >= {"sharpness", "jacobian_spec_norm", "ntk_min_eig"}
    for idx in ([0], [1, 2]):
        part = train.train_members(prog, X, Y, lrs[idx], *member_keys(seeds[idx]), steps,
                                   schedules=every)
        for name, value in part.records.items():
            scale = np.nanmax(trio.records["ntk_max_eig"]) if name == "ntk_min_eig" else None
            equal.assert_record_close(value, trio.records[name][idx], name, scale=scale)


def test_matches_independent_reference(cohort):
    """Plain jax.numpy GD with exact SVD norms gives the same trajectory
    (at a stable η: at η ≥ 0.5 this net is chaotic and rounding differences grow)."""
    i, lr = 1, 0.05
    ref = reference.run([w[i] for w in cohort.initial], X, Y, lr, int(STEPS[-1]))
    rec = cohort.records
    np.testing.assert_allclose(rec["loss"][i], [r["loss"] for r in ref], rtol=1e-4)
    for name in ("frob_norm", "spec_norm", "frob_dist", "spec_dist", "grad_norm",
                 "grad_dot_weight"):
        np.testing.assert_allclose(rec[name][i], [r[name] for r in ref], rtol=1e-3, atol=1e-6,
                                   err_msg=name)
    # update_norm is the norm of the update actually applied: η‖∇L(W(t−1))‖
    np.testing.assert_allclose(rec["update_norm"][i, 1:], lr * rec["grad_norm"][i, :-1],
                               rtol=1e-5)
    assert np.all(np.isnan(rec["update_norm"][:, 0]))
    diff = [r["update_norm"] for r in ref][1:]
    np.testing.assert_allclose(rec["update_norm"][i, 1:], diff, rtol=1e-2)


def test_sparse_records_equal_the_dense_ones_at_their_steps(cohort):
    """Between records the steps run without recording; a record reads the
    update of the step just before it (update_norm) whatever the gap."""
    steps = np.array([0, 1, 4, 5, 11, 20])
    sparse = run(PROG, [0.05, 4.0], [0, 1], steps, weights=False)
    for name, value in sparse.records.items():
        np.testing.assert_allclose(value, cohort.records[name][:, steps], rtol=1e-6,
                                   err_msg=name)
    # the update before a gap's last step differs: reading it would fail above
    dense = cohort.records["update_norm"][0, :, 1]
    assert abs(dense[11] / dense[10] - 1) > 1e-3 and abs(dense[4] / dense[2] - 1) > 1e-3


def test_compiles_once_whatever_the_learning_rates():
    with compilations():
        run(PROG, [0.1, 0.2], [5, 6], STEPS, weights=False)
    with compilations() as again:
        run(PROG, [3.0, 1e-3], [7, 8], STEPS, weights=False)
    assert again == [], "new learning rates compiled a program again"


def test_same_seed_same_initial_weights_at_every_lr(cohort):
    for a, b in ((0, 2), (1, 3)):  # (lr 0.05, seed s) and (lr 4.0, seed s)
        for w in cohort.initial:
            np.testing.assert_array_equal(w[a], w[b])
    assert not np.array_equal(cohort.initial[1][0], cohort.initial[1][1])


def test_divergence_is_contained():
    prog = train.Program(dims=(D, 16, 16, K), output="linear")
    bad = run(prog, [0.05, 1e3], [0], STEPS, weights=False)
    good = run(prog, [0.05, 0.07], [0], STEPS, weights=False)
    at = bad.diverged_at
    assert at[0] == -1 and 0 < at[1] < STEPS[-1]
    assert np.isfinite(bad.records["loss"][1, :at[1]]).all()
    for name, value in bad.records.items():
        assert np.isnan(value[1, at[1]:]).all(), name
        np.testing.assert_array_equal(value[0], good.records[name][0], err_msg=name)
    assert good.diverged_at.tolist() == [-1, -1]


@pytest.mark.parametrize("planted", [-np.inf, -1e20])
def test_a_member_whose_weights_or_norms_overflow_is_diverged(planted):
    """All-negative hidden weights kill every ReLU after them, so the logits
    are 0 and the loss stays finite: an infinite weight, or finite weights
    whose ‖W‖_F² overflows float32, must still mark the member diverged.
    Weight decay moves the finite weights in the steps after the record
    that finds the overflow: the member must be frozen at that record's."""
    prog = train.Program(dims=(D, 16, 16, K), decay=True)
    steps = np.array([0, 4, 8, 12])
    lrs, ik, pk = members([0.05, 0.05], [0])
    mesh, hp, ik, pk, x, y, depth = train.placed(prog, X, Y, lrs, ik, pk, steps, 1, [0.0, 0.1],
                                                 None)
    state = train.init_cohort(prog, mesh, hp, ik, pk, x, depth)
    ws = list(model.kernels(state.params))
    ws[1] = ws[1].at[1].set(planted)          # member 1's hidden layer
    state = state._replace(params=model.with_kernels(state.params, ws))
    ws = [np.array(w) for w in ws]            # (the state's buffers are donated)
    records, diverged = [], None
    for t, gap, valid, due in train.segments(steps):
        state, rec = train.segment_cohort(prog, mesh, state, hp, x, y, t, gap, valid, due, depth)
        records.append({k: np.asarray(v)[:, valid] for k, v in rec.items()})
    diverged = np.asarray(state.diverged_at)[:2]
    loss = np.concatenate([r["loss"] for r in records], 1)
    assert diverged.tolist() == [-1, 0]
    assert np.isfinite(loss[0]).all() and np.isnan(loss[1]).all()
    # frozen from the divergence on: every weight of member 1 is as planted
    for final, planted_w in zip(model.kernels(state.params), ws):
        np.testing.assert_array_equal(np.asarray(final)[1], planted_w[1])


@pytest.mark.parametrize("width", [16, 32])
def test_a_program_serving_several_depths_trains_each_as_its_own_program(width):
    """One program of 4 layer slots trains networks of depth 2 and 3 (the
    depth an input; a lacking hidden layer skipped in a conditional) as
    their own programs do, to rounding: every record and probe, the spectra,
    and W(0) and W(T); a divergence at the same step. Width 32 (a Gram
    matrix of 32 in the Lanczos' place) and rates up to divergence."""
    probes = {"sharpness": 3, "jacobian": "log", "ntk": 4, "activations": 4}
    steps = np.array([0, 1, 2, 4, 7, 12])
    lrs, ik, pk = members([0.02, 0.1, 1e3], [0, 1])
    shared = train.Program(dims=(D, width, width, width, K), probes=tuple(probes),
                           spectra=True, shallowest=2, decay=True, output="linear")
    wd = np.tile([0.0, 0.01], 3)
    for depth in (2, 3):
        own = train.Program(dims=(D,) + (width,) * (depth - 1) + (K,), probes=tuple(probes),
                            spectra=True, decay=True, output="linear")
        a, b = (train.train_members(p, X, Y, lrs, ik, pk, steps, keep_weights=True,
                                    schedules=probes, weight_decay=wd, **kw)
                for p, kw in ((own, {}), (shared, {"depth": depth})))
        np.testing.assert_array_equal(a.diverged_at, b.diverged_at)
        assert (a.diverged_at >= 0).any() and (a.diverged_at < 0).any()
        assert a.records.keys() == b.records.keys() and a.spectra.keys() == b.spectra.keys()
        for name in a.records:
            assert a.records[name].shape == b.records[name].shape, name
            np.testing.assert_allclose(b.records[name], a.records[name], rtol=2e-4, atol=1e-5,
                                       err_msg=name)
        for name in a.spectra:
            assert a.spectra[name].shape == b.spectra[name].shape, name
            np.testing.assert_allclose(b.spectra[name], a.spectra[name], rtol=1e-4, atol=1e-5,
                                       err_msg=name)
        for l in range(depth):
            np.testing.assert_allclose(b.initial[l], a.initial[l], rtol=1e-6, atol=1e-7)
            alive = a.diverged_at < 0
            np.testing.assert_allclose(b.final[l][alive], a.final[l][alive], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="serves depths"):
        train.train_members(shared, X, Y, lrs, ik, pk, steps, depth=5)


def test_the_segment_program_holds_one_copy_of_the_step(monkeypatch):
    """A record's step and the steps to the next record run in one loop: the
    step is traced (and compiled) once per segment program, not once for
    the record and again for the steps between."""
    from normsweep.step import step
    traced = []

    def counted(*args, **kwargs):
        traced.append(1)
        return step(*args, **kwargs)

    monkeypatch.setattr(train, "step", counted)
    prog = train.Program(dims=(D, 16, 16, K), probes=("jacobian",))
    lrs, ik, pk = members([0.05], [0])
    mesh, hp, ik, pk, x, y, depth = train.placed(prog, X, Y, lrs, ik, pk, STEPS, 1, None, None)
    state = train.init_cohort(prog, mesh, hp, ik, pk, x, depth)
    t, gap, valid, due = train.segments(STEPS, {"jacobian": "log"})[0]
    jax.make_jaxpr(lambda s: train.run_segment(prog, s, hp, x, y, t, gap, valid, due))(state)
    assert len(traced) == 1


def test_where_a_run_records_does_not_change_its_trajectory():
    """Recording a step measures it and does not perturb it: every step is
    the same compiled code, so recording every step and recording a few
    give the same weights and records, bit for bit. (A record's step
    compiled apart from the others would round differently, and chaotic
    members grow a last-bit difference to O(1).)"""
    x, y = sphere_data(jax.random.key(3), 256, 16, 10, jnp.float32)
    prog = train.Program(dims=(16, 16, 16, 10))
    lr, ik, pk = members([0.05, 0.5, 2.0], [0, 1])
    every, few = np.arange(21), np.array([0, 1, 2, 5, 11, 20])
    dense = train.train_members(prog, x, y, lr, ik, pk, every, keep_weights=True)
    sparse = train.train_members(prog, x, y, lr, ik, pk, few, keep_weights=True)
    for a, b in zip(dense.final, sparse.final):
        np.testing.assert_array_equal(a, b)
    for name, value in sparse.records.items():
        np.testing.assert_array_equal(dense.records[name][:, few], value, err_msg=name)


def test_record_schedule_subsamples_the_same_trajectory(cohort):
    sparse = run(PROG, [0.05, 4.0], [0, 1], np.array([0, 1, 7, 8, 20]), weights=False)
    for name in ("loss", "frob_norm", "grad_norm", "update_norm", "frob_dist"):
        np.testing.assert_allclose(sparse.records[name], cohort.records[name][:, [0, 1, 7, 8, 20]],
                                   rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("output,loss,init", [("linear", "mse", "he"),
                                              ("softmax", "cross_entropy", "he"),
                                              ("softmax", "mse", "width")])
def test_options_follow_their_definitions(output, loss, init):
    prog = train.Program(dims=(D, 16, 16, K), output=output, loss=loss, init=init)
    steps = np.arange(4)
    traj = run(prog, [0.1], [0], steps)
    ref = reference.run([w[0] for w in traj.initial], X, Y, 0.1, 3, output, loss)
    np.testing.assert_allclose(traj.records["loss"][0], [r["loss"] for r in ref], rtol=1e-4)
    if init == "width":  # every entry N(0, 2/width), the input layer too
        w0 = traj.initial[0][0]
        assert abs(w0.std() - np.sqrt(2 / 16)) < 0.05


def test_spectral_norm_tracks_svd_at_every_record_at_width_1024():
    prog = train.Program(dims=(D, 1024, 1024, K), lanczos_steps=10)
    steps = np.arange(9)
    traj = run(prog, [2.0], [0], steps)
    ref = reference.run([w[0] for w in traj.initial], X, Y, 2.0, 8)
    for name in ("spec_norm", "spec_dist"):
        got = traj.records[name][0, 1:, 1]          # the hidden 1024×1024 layer
        want = np.array([r[name][1] for r in ref])[1:]
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)
    assert traj.records["spec_dist"][0, 0, 1] == 0


def test_segments_cover_every_record_once():
    steps = plan.record_steps(1000, "log", 50)
    segs = train.segments(steps, {"jacobian": "log", "sharpness": 100}, count=7)
    t = np.concatenate([s[0][s[2]] for s in segs])
    gap = np.concatenate([s[1][s[2]] for s in segs])
    np.testing.assert_array_equal(t, steps)
    np.testing.assert_array_equal(t[:-1] + gap[:-1] + 1, steps[1:])
    assert gap[-1] == -1, "the last record moves nothing"
    assert len({len(s[0]) for s in segs}) == 1, "segments must share one shape"
    due = {name: np.concatenate([s[3][name][s[2]] for s in segs]) for name in segs[0][3]}
    assert set(due) == {"jacobian", "sharpness"}
    np.testing.assert_array_equal(steps[due["sharpness"]],
                                  np.union1d(steps[steps % 100 == 0], [1000]))
    logged = steps[due["jacobian"]]
    assert logged[0] == 0 and logged[-1] == 1000 and 12 <= len(logged) <= 16
    # spread evenly in log(step): consecutive ratios within a factor 2 of 1000^(1/14)
    ratios = logged[2:] / logged[1:-1]
    assert np.all((ratios > 1000 ** (1 / 14) / 2) & (ratios < 1000 ** (1 / 14) * 2))


def test_float64_runs_in_float64(tmp_path):
    import subprocess
    import sys
    code = ("import jax; jax.config.update('jax_enable_x64', True)\n"
            "import numpy as np, jax.numpy as jnp\n"
            "from normsweep import train\nfrom normsweep.data import member_keys, sphere_data\n"
            "x, y = sphere_data(jax.random.key(0), 16, 4, 3, jnp.float64)\n"
            "p = train.Program(dims=(4, 8, 3), dtype='float64')\n"
            "ik, pk = member_keys(np.array([0]))\n"
            "t = train.train_members(p, x, y, np.array([0.5]), ik, pk, np.arange(4), True)\n"
            "assert t.records['loss'].dtype == np.float64, t.records['loss'].dtype\n"
            "assert t.final[0].dtype == np.float64\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_grad_dot_weight_is_equal_across_layers(cohort):
    """Euler: the logits are 1-homogeneous in each W_l of a bias-free ReLU
    net, so <W_l, dL/dW_l> = sum_i <dL/dz_i, z_i> for every layer l."""
    g = cohort.records["grad_dot_weight"][:2]       # the stable η = 0.05 members
    np.testing.assert_allclose(g, np.repeat(g[..., :1], g.shape[-1], -1), rtol=1e-3, atol=1e-5)


def test_per_step_identity_of_plain_gd(cohort):
    """‖W(t+1)‖² − ‖W(t)‖² = −2η<W, G> + η²‖G‖², exactly, per layer."""
    r, lr = cohort.records, 0.05
    lhs = r["frob_norm"][:2, 1:] ** 2 - r["frob_norm"][:2, :-1] ** 2
    rhs = -2 * lr * r["grad_dot_weight"][:2, :-1] + lr**2 * r["grad_norm"][:2, :-1] ** 2
    scale = r["frob_norm"][:2, :-1] ** 2
    assert np.abs(lhs - rhs).max() < 1e-5 * scale.max()


def test_members_agree_at_the_reference_size():
    """n = 1024, width 64: a member's records alone, among 3, 5 or 9
    siblings agree to rounding (batched products of other shapes round
    otherwise; the promise is equality to rounding, not to the bit)."""
    x, y = sphere_data(jax.random.key(0), 1024, 16, 10, jnp.float32)
    prog = train.Program(dims=(16, 64, 64, 10))
    lrs, seeds = np.geomspace(0.001, 0.1, 9), np.arange(9)
    steps = np.arange(5)
    nine = train.train_members(prog, x, y, lrs, *member_keys(seeds), steps)
    for count in (1, 3, 5):
        part = train.train_members(prog, x, y, lrs[:count], *member_keys(seeds[:count]), steps)
        for name, value in part.records.items():
            equal.assert_record_close(value, nine.records[name][:count], f"{count}: {name}")


def test_the_programs_loops_do_not_grow_with_depth(monkeypatch):
    # hidden layers of width 20 measured by Lanczos, as wide ones are: each
    # matrix's recursion is a loop of its own unless the matrices of one shape
    # share one loop, which is what keeps a deep network's program small.
    # (A shape no other test compiles: jit's cache does not see EXACT_MAX.)
    monkeypatch.setattr(linalg, "EXACT_MAX", 8)
    lr, ik, pk = members([0.05], [0])
    loops = {}
    for depth in (4, 6):
        program = train.Program(dims=(D,) + (20,) * (depth - 1) + (K,), lanczos_steps=7)
        compiled = train.compile_members(program, X, Y, lr, ik, pk, STEPS)
        loops[depth] = {name: c.as_text().count(" while(") for name, c in compiled.items()}
    assert loops[4]["segment"] == loops[6]["segment"], loops
    # at init, the model draws each layer's weights from a key of its own
    assert loops[6]["init"] - loops[4]["init"] <= 2, loops


def test_the_cpu_compile_options_give_the_defaults_numbers_to_rounding(monkeypatch):
    """On a CPU the programs compile with `cpu.COMPILE_OPTIONS` (faster to
    compile); XLA's defaults give the same records to rounding where the
    dynamics are stable (at η 0.05 and 0.1 they differ by at most 2e-7
    relatively; at 0.5 this network is chaotic: an ulp in W(0) grows to
    1e-5 by step 9)."""
    from normsweep import cpu

    if jax.default_backend() != "cpu":
        assert cpu.compiler_options() == {}         # an accelerator keeps XLA's defaults
        return
    assert cpu.compiler_options() == cpu.COMPILE_OPTIONS     # this XLA takes them
    prog = train.Program(dims=(D, 24, linalg.EXACT_MAX + 8, K), probes=("jacobian",),
                         spectra=True)
    steps, lrs = np.array([0, 1, 4, 9, 20]), np.array([0.05, 0.1])
    keys = member_keys(np.array([0, 1]))
    with compilations() as faster:
        fast = train.train_members(prog, X, Y, lrs, *keys, steps)
    monkeypatch.setattr(cpu, "compiler_options", lambda: {})
    with compilations() as default:
        slow = train.train_members(prog, X, Y, lrs, *keys, steps)
    # each compiled its own init, segment and spectra programs
    def programs(names):
        return sorted(n for n in names if n.endswith("_cohort)"))
    assert programs(faster) == programs(default) == [
        "jit(init_cohort)", "jit(segment_cohort)", "jit(spectra_cohort)"]
    for name, value in slow.records.items():
        equal.assert_record_close(fast.records[name], value, name)
    for name, value in slow.spectra.items():
        np.testing.assert_allclose(fast.spectra[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_results_agree_whatever_the_chunking(tmp_path):
    """A memory budget that splits every cohort into chunks changes the
    records by rounding at most, at learning rates where the dynamics are
    stable (TINY's larger rates are chaotic: there rounding grows, as any
    change of machine or version would make it grow)."""
    text = TINY.replace("lr = { geomspace = [0.5, 8.0, 3] }", "lr = [0.02, 0.1]") \
               .replace("width = [16, 24]", "width = [16]").replace("depth = [2, 3]", "depth = [3]")
    cfg = config.load(write_grid(tmp_path, text))
    per = max(plan.member_bytes(cfg, c, 31) for c in plan.cohorts(cfg))
    budget = int(1.5 * per)
    counts = [plan.chunking(cfg, c, 31, budget).count for c in plan.cohorts(cfg)]
    assert min(counts) >= 2, counts
    sweep.launch(cfg, tmp_path / "whole")
    sweep.launch(cfg, tmp_path / "chunked", budget_bytes=budget)
    with xr.open_dataset(tmp_path / "chunked" / "sweep.nc") as a, \
            xr.open_dataset(tmp_path / "whole" / "sweep.nc") as b:
        equal.assert_sweeps_close(a, b)


def test_the_seed_grids_spectra_do_not_deadlock_a_cpu(tmp_path):
    """XLA's CPU runtime ran the spectra program's independent LAPACK calls
    at once and deadlocked on this cohort of sweeps/seed.toml, every time
    (normsweep/cpu.py); a fresh process, as a user's launch is. Three steps
    and no probes still deadlock without the flag: the spectra program is
    the same."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "normsweep.cli", "launch", str(root / "sweeps" / "seed.toml"),
         "--set", "grid.width=64", "--set", "grid.depth=4", "--set", "grid.lr=[0.001, 0.1]",
         "--set", "train.steps=3", "--set", "record.jacobian_norm=0", "--set", "record.sharpness=0",
         "--out", str(tmp_path / "seed"), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with xr.open_dataset(tmp_path / "seed" / "sweep.nc") as ds:
        assert np.isfinite(ds["singular_values"].isel(spectrum_step=0).values).any()
