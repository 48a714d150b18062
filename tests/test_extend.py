"""Extending a finished sweep along its member axes: only the new networks
train, and the folder then holds what a launch of the whole grid gives."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import normsweep
from normsweep import config, sweep
from normsweep.errors import GridError
from tests import equal

SMALL = """\
name = "grow"
[data]
n = 32
d = 6
k = 3
[train]
steps = 12
[record]
steps = "all"
weights = true
spectra = true
[grid]
width = [8]
depth = [2, 3]
lr = [0.05]
seed = [0]
"""


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The extended grid launched at once: the reference."""
    root = tmp_path_factory.mktemp("whole") / "grow"
    sweep.launch(config.parse(SMALL, default_name="grow",
                              overrides=["grid.lr=[0.05, 0.1]", "grid.seed=[0, 1]",
                                         "grid.weight_decay=[0.0, 0.01]"]), root)
    return root


def test_added_seeds_lrs_and_weight_decays_train_only_the_new_networks(whole, tmp_path):
    root = tmp_path / "grow"
    sweep.launch(config.parse(SMALL), root)
    before = normsweep.open_sweep(root)
    grown = config.parse(SMALL, overrides=["grid.lr=[0.05, 0.1]", "grid.seed=[0, 1]",
                                           "grid.weight_decay=[0.0, 0.01]"])
    summary = sweep.launch(grown, root, command="grow it")
    assert summary.networks == 16 and sorted(summary.trained) == ["width8_depth2",
                                                                 "width8_depth3"]
    with xr.open_dataset(root / "sweep.nc") as got, \
            xr.open_dataset(whole / "sweep.nc") as want:
        equal.assert_sweeps_close(got, want)
        # the old networks' records are kept as they were, bit for bit
        for name in ("frob_norm", "spec_dist", "loss"):
            kept = got[name].sel(lr=[0.05], seed=[0], weight_decay=0.0)
            np.testing.assert_array_equal(kept.values, before[name].values, err_msg=name)
        assert config.parse(got.attrs["config_toml"]).settings() == grown.settings()
        assert got.attrs["history"].count("\n") == 1 and got.attrs["history"].endswith("grow it")
    assert config.load(root / "grid.toml").settings() == grown.settings()
    ws = normsweep.load_weights(root, width=8, depth=3, lr=0.1, seed=1, weight_decay=0.01)
    ref = normsweep.load_weights(whole, width=8, depth=3, lr=0.1, seed=1, weight_decay=0.01)
    for a, b in zip(ws, ref):
        equal.assert_record_close(a, b, "final weights")
    again = sweep.launch(grown, root)                   # and now it is done
    assert again.trained == [] and len(again.skipped) == 2


def test_dropping_a_value_or_changing_a_setting_is_refused(whole):
    for override, key in (("grid.seed=[1]", "grid.seed"), ("train.steps=13", "train.steps"),
                          ("grid.lr=[0.05]", "grid.lr")):
        base = {"grid.lr": "[0.05, 0.1]", "grid.seed": "[0, 1]", "grid.weight_decay": "[0.0, 0.01]"}
        base[override.split("=")[0]] = override.split("=")[1]      # each key given once
        changed = config.parse(SMALL, overrides=[f"{k}={v}" for k, v in base.items()])
        with pytest.raises(GridError, match=key) as info:
            sweep.launch(changed, whole)
        assert "another --out" in str(info.value)


def test_a_dry_run_counts_a_grown_cohort_as_still_to_train(tmp_path):
    from click.testing import CliRunner

    from normsweep.cli import main
    grid = tmp_path / "grow.toml"
    grid.write_text(SMALL)
    root = tmp_path / "grow"
    sweep.launch(config.load(grid), root)
    run = lambda *extra: CliRunner().invoke(main, ["launch", str(grid), "--out", str(root),
                                                   "--dry-run", *extra])
    assert "(2 already in" in run().output
    grown = run("--set", "grid.seed=[0, 1]")
    assert grown.exit_code == 0 and "(0 already in" in grown.output, grown.output
    said = " ".join(grown.output.split())
    assert "4 networks (2 new, 2 kept)" in said and "width8_depth2 │ 2 │ 1 │ 1" in said, said


def test_the_dry_run_is_the_launchs_own_plan(tmp_path):
    """It refuses what the launch refuses, follows --only, and counts the
    new and kept networks the launch then reports."""
    from click.testing import CliRunner

    from normsweep.cli import main
    grid = tmp_path / "grow.toml"
    grid.write_text(SMALL.replace("steps = 12", "steps = 4"))
    root = tmp_path / "grow"
    sweep.launch(config.load(grid), root)

    def run(*extra):
        result = CliRunner().invoke(main, ["launch", str(grid), "--out", str(root), *extra])
        return result.exit_code, " ".join(result.output.split())
    for refused, key in ((["--set", "train.steps=5"], "train.steps"),
                         (["--set", "grid.lr=[0.1]"], "grid.lr")):
        code, said = run("--dry-run", *refused)
        assert code == 2 and key in said and "another --out" in said, said
    code, said = run("--dry-run", "--set", "grid.seed=[0, 1, 2]", "--only", "depth=2")
    assert code == 0 and "width8_depth3 │ 3 │ – (--only) │ 1" in said, said
    assert "(2 new, 1 kept)" in said
    code, said = run("--quiet", "--set", "grid.seed=[0, 1, 2]", "--only", "depth=2")
    assert code == 0 and "(2 new, 1 kept)" in said, said


def test_a_folder_written_with_an_older_record_format_is_refused_and_kept(tmp_path,
                                                                          monkeypatch):
    """Files of a normsweep that recorded less by default (no margin, no
    Jacobian) must not pass for this version's: the launch stops with the
    record formats named, exit status 1, and the files stay as they were."""
    from click.testing import CliRunner
    from normsweep import cli
    grid = tmp_path / "grid.toml"
    grid.write_text(SMALL.replace("depth = [2, 3]", "depth = [2]"))
    root = tmp_path / "old"
    monkeypatch.setattr(config, "RECORD_FORMAT", 1)
    sweep.launch(config.load(grid), root)
    before = {p: p.read_bytes() for p in root.rglob("*.nc")}
    monkeypatch.undo()
    result = CliRunner().invoke(cli.main, ["launch", str(grid), "--out", str(root)])
    assert result.exit_code == 1
    assert "record format 1, this one 2" in result.output and "new folder" in result.output
    assert {p: p.read_bytes() for p in root.rglob("*.nc")} == before


@pytest.mark.parametrize("axis", ["grid.parametrization=standard", "grid.weight_decay=[0.0]"])
def test_a_fixed_setting_made_a_one_value_axis_rewrites_the_layout(tmp_path, axis):
    """Nothing new to train: the folder then holds what a fresh launch of
    the grid with that axis gives, bit for bit."""
    small = SMALL.replace("steps = 12", "steps = 4").replace("depth = [2, 3]", "depth = [2]")
    root, fresh = tmp_path / "grown", tmp_path / "fresh"
    sweep.launch(config.parse(small, default_name="grow"), root)
    grown = config.parse(small, default_name="grow", overrides=[axis])
    summary = sweep.launch(grown, root)
    assert summary.networks == 1
    sweep.launch(grown, fresh)
    with xr.open_dataset(root / "sweep.nc") as a, xr.open_dataset(fresh / "sweep.nc") as b:
        assert a["frob_norm"].dims == b["frob_norm"].dims and len(a["frob_norm"].dims) == 7
        for name in ("frob_norm", "spec_norm", "loss", "grad_norm", "singular_values"):
            np.testing.assert_array_equal(a[name].values, b[name].values)
    name = axis.split("=")[0].split(".")[1]
    point = {name: "standard" if name == "parametrization" else 0.0}
    ws = normsweep.load_weights(root, width=8, depth=2, lr=0.05, seed=0, **point)
    ref = normsweep.load_weights(fresh, width=8, depth=2, lr=0.05, seed=0, **point)
    for a, b in zip(ws, ref):
        np.testing.assert_array_equal(a, b)


def test_a_grow_cut_short_leaves_the_earlier_sweep_whole(tmp_path):
    """A grow limited by --only (as one interrupted or failed part-way would
    leave it): grid.toml still records the earlier grid, which reads,
    relaunches and shows as before; the grow finishes later."""
    from click.testing import CliRunner

    from normsweep.cli import main
    small = SMALL.replace("steps = 12", "steps = 4")
    first = config.parse(small, default_name="grow")
    grown = config.parse(small, default_name="grow", overrides=["grid.seed=[0, 1]"])
    root = tmp_path / "grow"
    sweep.launch(first, root)
    with xr.open_dataset(root / "sweep.nc") as ds:
        before = ds.load()
    part = sweep.launch(grown, root, only=[{"depth": 2}])
    assert part.left == ["width8_depth3"]
    assert config.load(root / "grid.toml").fingerprint() == first.fingerprint()
    assert config.load(root / "grow.toml").fingerprint() == grown.fingerprint()
    for partial in (False, True):
        with pytest.warns(normsweep.errors.SweepWarning, match="combining them afresh"):
            ds = normsweep.open_sweep(root, partial=partial).load()
        assert ds.attrs.get("partial") is None and list(ds["seed"].values) == [0]
        np.testing.assert_array_equal(ds["frob_norm"].values, before["frob_norm"].values)
    again = sweep.launch(first, root)              # the earlier grid: nothing to do
    assert again.trained == [] and len(again.skipped) == 2
    with xr.open_dataset(root / "sweep.nc") as ds:
        np.testing.assert_array_equal(ds["frob_norm"].values, before["frob_norm"].values)
    shown = " ".join(CliRunner().invoke(main, ["show", str(root)]).output.split())
    assert "2/2 done, 2/2 networks trained" in shown and "a grow to seed = [0, 1]" in shown
    done = sweep.launch(grown, root)
    assert done.trained == ["width8_depth3"] and not (root / "grow.toml").exists()
    assert config.load(root / "grid.toml").fingerprint() == grown.fingerprint()
    ds = normsweep.open_sweep(root)
    assert list(ds["seed"].values) == [0, 1]
    np.testing.assert_array_equal(ds["frob_norm"].sel(seed=[0]).values, before["frob_norm"].values)


def test_a_grow_by_seeds_compiles_nothing_and_equals_a_whole_launch(tmp_path, monkeypatch):
    """The new networks train padded to the earlier launch's member count,
    whose programs are already compiled: the grow compiles none, and its
    networks equal those of a launch of the whole grid."""
    import jax

    monkeypatch.setenv("NORMSWEEP_TIMINGS", str(tmp_path / "timings.jsonl"))
    text = SMALL.replace("depth = [2, 3]", "depth = [2]").replace("seed = [0]", "seed = [0, 1]")
    grown = config.parse(text, overrides=["grid.seed=[0, 1, 2]"])
    sweep.launch(config.parse(text), tmp_path / "grow")
    names = []

    def listener(event, duration, **kw):
        if event.endswith("backend_compile_duration") and "_cohort" in kw.get("fun_name", ""):
            names.append(kw["fun_name"])

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        summary = sweep.launch(grown, tmp_path / "grow")
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert summary.trained == ["width8_depth2"] and names == []
    sweep.launch(grown, tmp_path / "whole")
    with xr.open_dataset(tmp_path / "grow" / "sweep.nc") as got, \
            xr.open_dataset(tmp_path / "whole" / "sweep.nc") as want:
        equal.assert_sweeps_close(got, want)


def test_a_grow_pads_only_where_the_padding_costs_less_than_a_compile(monkeypatch):
    """`calibration.grow_chunking`: one seed added to 3 trains in the earlier
    launch's chunk of 3 (two of them padding) with nothing recorded, or when
    the recorded compile time exceeds the padding's training; in a chunk of
    its own when compiling is cheaper, or when that would take more chunks."""
    from normsweep import calibration, plan
    monkeypatch.setenv("NORMSWEEP_JAX_CACHE", "on")
    cfg = config.parse(SMALL, overrides=["grid.depth=[2]", "grid.seed=[0, 1, 2, 3]"])
    cohort = plan.cohorts(cfg)[0]
    flop = plan.train_flop(cfg, cohort)

    def chunks(rows, new=1, budget=2**30):
        return calibration.grow_chunking(cfg, cohort, 13, budget, new, cohort.size - new, rows)

    assert chunks([]) == plan.Chunking(size=3, count=1)

    def rows(train_seconds, compile_seconds):
        # the earlier launch's program (3 members) compiled and trained here;
        # training runs at flop/train_seconds for the whole cohort of 4
        return [{"program": calibration.program_key(cfg, cohort, 3), "flop": flop,
                 "train_seconds": train_seconds, "compile_seconds": compile_seconds,
                 "cache": True}]
    # padding: 2 members of 4 → half of train_seconds; a new program: compile_seconds
    assert chunks(rows(train_seconds=1.0, compile_seconds=5.0)) == plan.Chunking(3, 1)
    assert chunks(rows(train_seconds=30.0, compile_seconds=5.0)) == plan.Chunking(1, 1)
    # three new networks where the memory holds one at a time: three chunks either way
    one = plan.member_bytes(cfg, cohort, 13)
    assert chunks([], new=3, budget=one) == plan.Chunking(1, 3)
    monkeypatch.setenv("NORMSWEEP_JAX_CACHE", "off")     # nothing to find compiled
    assert chunks([]) == plan.Chunking(1, 1)
