"""The results database: schema, written == read back, weights, combining."""
from __future__ import annotations

import signal

import numpy as np
import pytest
import xarray as xr

import normsweep
from normsweep import config, plan, dataset, schema, store, train
from normsweep.errors import RunError

CONTRACT = ["frob_norm", "spec_norm", "frob_dist", "spec_dist", "update_norm", "grad_norm",
            "loss", "accuracy", "diverged_at", "inputs", "targets"]


def test_sweep_follows_the_contract(tiny_sweep):
    ds = normsweep.open_sweep(tiny_sweep)
    for name in CONTRACT:
        assert name in ds.variables, name
        attrs = ds[name].attrs
        # short labels for plot axes, the sentence in description, CF units
        # on quantities and none on counts and indices
        assert 0 < len(attrs["long_name"]) <= 32 and len(attrs["description"]) > 10, name
        assert attrs.get("units") == ("1" if name != "diverged_at" else None), name
    for name in ("width", "depth", "seed", "step", "layer"):
        assert "units" not in ds[name].attrs and ds[name].attrs["long_name"], name
    assert ds["lr"].attrs["units"] == "1" and ds["frob_norm"].attrs["long_name"] == "Frobenius norm ‖W‖_F"
    assert ds["frob_norm"].dims == ("width", "depth", "lr", "seed", "step", "layer")
    assert ds["loss"].dims == ("width", "depth", "lr", "seed", "step")
    assert ds["diverged_at"].dims == ("width", "depth", "lr", "seed")
    assert ds["inputs"].dims == ("sample", "feature") and ds["targets"].dims == ("sample", "class")
    assert ds["lr_effective"].dims == ("width", "lr")
    # provenance: versions, host, the command, and each cohort's wall times
    for key in ("normsweep_version", "jax_version", "numpy_version", "netcdf4_version",
                "python_version", "host", "command", "history", "Conventions"):
        assert ds.attrs[key], key
    assert ds.attrs["normsweep_version"] not in ("unknown", "0.1.0")   # from git
    assert ds.attrs["history"].count("\n") == 0 and ds.attrs["command"] in ds.attrs["history"]
    for name in ("train_seconds", "compile_seconds"):
        assert ds[name].dims == ("width", "depth") and ds[name].attrs["units"] == "s"
    assert (ds["train_seconds"] > 0).all() and (ds["compile_seconds"] >= 0).all()
    for key in ("config_toml", "normsweep_version", "jax_version", "jaxlib_version",
                "flax_version", "optax_version", "backend", "device_kind", "created"):
        assert isinstance(ds.attrs[key], str) and ds.attrs[key], key
    assert config.parse(ds.attrs["config_toml"]).name == "tiny"
    assert ds["step"].values[0] == 0 and ds["step"].values[-1] == 30


def test_layers_beyond_depth_are_nan(tiny_sweep):
    ds = normsweep.open_sweep(tiny_sweep)
    shallow = ds["frob_norm"].sel(depth=2)
    assert shallow.sel(layer=2).isnull().all()
    assert shallow.sel(layer=[0, 1]).notnull().all()
    assert ds["frob_norm"].sel(depth=3).notnull().all()


def test_written_equals_read_back(tmp_path):
    c = config.parse('name = "w"\n[data]\nn = 16\nd = 4\nk = 3\n[train]\nsteps = 5\n'
                     '[record]\nweights = true\n[grid]\nwidth = [8]\ndepth = [2, 3]\n'
                     'lr = [0.1, 0.2]\nseed = [0, 1, 2]\n')
    cohort = plan.cohorts(c)[1]
    steps = np.arange(6)
    rng = np.random.default_rng(0)
    recs = {k: rng.normal(size=(6, 6, 3)).astype(np.float32) for k in schema.LAYER_METRICS}
    recs.update({k: rng.normal(size=(6, 6)).astype(np.float32) for k in schema.NETWORK_METRICS})
    ws = [rng.normal(size=(6, a, b)).astype(np.float32) for a, b in ((4, 8), (8, 8), (8, 3))]
    traj = train.Trajectory(recs, np.array([-1, 2, -1, -1, 4, -1]), ws, [w + 1 for w in ws])
    x, y = rng.normal(size=(16, 4)).astype(np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, 16)]
    ds = dataset.cohort_dataset(c, cohort, steps, traj, x, y)
    (tmp_path / "cohorts").mkdir()
    path = store.cohort_path(tmp_path, cohort)
    store.write_netcdf(path, ds, {"weights": dataset.weights_dataset(cohort, traj)})
    back = store.read_cohort(path)
    xr.testing.assert_identical(back.drop_attrs(), ds.drop_attrs())
    assert back.attrs["config_toml"] == ds.attrs["config_toml"]
    # member 4 is (lr index 1, seed index 1): lr 0.2, seed 1
    np.testing.assert_array_equal(back["loss"].sel(lr=0.2, seed=1).values[0, 0], recs["loss"][4])
    assert int(back["diverged_at"].sel(lr=0.2, seed=1).squeeze()) == 4
    got = normsweep.load_weights(tmp_path, width=8, depth=3, lr=0.2, seed=1, which="final")
    for l in range(3):
        np.testing.assert_array_equal(got[l], ws[l][4] + 1)
    assert not list(tmp_path.glob("cohorts/.*")), "temporary file left behind"


def test_load_weights_gives_the_initialisation(tiny_sweep):
    ds = normsweep.open_sweep(tiny_sweep)
    ws = normsweep.load_weights(tiny_sweep, width=24, depth=3, lr=float(ds.lr[1]), seed=1,
                                which="initial")
    assert [w.shape for w in ws] == [(8, 24), (24, 24), (24, 4)]
    frob0 = ds["frob_norm"].sel(width=24, depth=3, seed=1, step=0).isel(lr=1).values
    np.testing.assert_allclose([np.linalg.norm(w) for w in ws], frob0, rtol=1e-5)
    final = normsweep.load_weights(tiny_sweep, width=24, depth=3, lr=float(ds.lr[1]), seed=1)
    dist = ds["frob_dist"].sel(width=24, depth=3, seed=1).isel(lr=1, step=-1).values
    np.testing.assert_allclose([np.linalg.norm(f - w) for f, w in zip(final, ws)], dist, rtol=1e-4)
    with pytest.raises(KeyError, match="lr = 0.123"):
        normsweep.load_weights(tiny_sweep, width=24, depth=3, lr=0.123, seed=1)


def test_open_mfdataset_on_cohorts_equals_sweep(tiny_sweep):
    import warnings
    with warnings.catch_warnings():    # xarray announces future changes of its defaults
        warnings.simplefilter("ignore", FutureWarning)
        mf = xr.open_mfdataset(str(tiny_sweep / "cohorts" / "*.nc"))   # the plain call
    with mf:
        assert mf["inputs"].dims == ("sample", "feature")
        sweep = normsweep.open_sweep(tiny_sweep)
        for name in ("frob_norm", "loss", "diverged_at", "inputs"):
            xr.testing.assert_equal(mf[name].load(), sweep[name])


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    ds = xr.Dataset({"a": ("x", np.arange(3.0))})
    def boom(self, path, *args, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(RunError, match="No space left"):
        store.write_netcdf(tmp_path / "x.nc", ds)
    assert list(tmp_path.iterdir()) == []


def interrupting_writes(monkeypatch, times: int) -> None:
    """Every netCDF write raises SIGINT `times` times before it writes."""
    write = xr.Dataset.to_netcdf

    def interrupted(self, *args, **kwargs):
        for _ in range(times):
            signal.raise_signal(signal.SIGINT)
        return write(self, *args, **kwargs)
    monkeypatch.setattr(xr.Dataset, "to_netcdf", interrupted)


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt, as a launch's handler does."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_during_a_write_lands_once_the_file_is_whole(tmp_path, monkeypatch,
                                                            sigint_raises):
    """A KeyboardInterrupt inside xarray's writer could leave its HDF5 lock
    held and the launch waiting on it for ever: it is delivered after the write."""
    ds = xr.Dataset({"a": ("x", np.arange(3.0))})
    interrupting_writes(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        store.write_netcdf(tmp_path / "x.nc", ds)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [p.name for p in tmp_path.iterdir()] == ["x.nc"]
    with xr.open_dataset(tmp_path / "x.nc") as back:
        xr.testing.assert_equal(back.load().drop_attrs(), ds)
    monkeypatch.undo()
    store.write_netcdf(tmp_path / "y.nc", ds)         # and the next write runs as usual
    assert (tmp_path / "y.nc").exists()


def test_ctrl_c_while_a_file_is_read_lands_once_it_is_closed(tmp_path, sigint_raises):
    ds = xr.Dataset({"a": ("x", np.arange(3.0))})
    store.write_netcdf(tmp_path / "x.nc", ds)
    read = []
    with pytest.raises(KeyboardInterrupt):
        with store.open_checked(tmp_path / "x.nc") as back:
            signal.raise_signal(signal.SIGINT)
            read.append(back["a"].values.tolist())
    assert read == [[0.0, 1.0, 2.0]]            # the block ran to its end first
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_stops_a_write_at_once(tmp_path, monkeypatch, sigint_raises):
    interrupting_writes(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        store.write_netcdf(tmp_path / "x.nc", xr.Dataset({"a": ("x", np.arange(3.0))}))
    assert list(tmp_path.iterdir()) == []            # the temporary is gone too


def test_an_ignored_ctrl_c_stays_ignored_through_a_write(tmp_path, monkeypatch):
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        interrupting_writes(monkeypatch, 1)
        store.write_netcdf(tmp_path / "x.nc", xr.Dataset({"a": ("x", np.arange(3.0))}))
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    assert (tmp_path / "x.nc").exists()


def test_open_sweep_on_a_foreign_folder(tmp_path):
    with pytest.raises(RunError, match="not a normsweep results folder"):
        normsweep.open_sweep(tmp_path)


def test_reading_results_imports_no_training_stack(tiny_sweep):
    """open_sweep and load_weights need xarray and netCDF4, not JAX, Flax or
    optax: a notebook that only reads results starts fast and anywhere."""
    import subprocess
    import sys

    code = ("import sys, normsweep\n"
            f"normsweep.open_sweep({str(tiny_sweep)!r}).close()\n"
            f"normsweep.load_weights({str(tiny_sweep)!r}, width=16, depth=2, lr=0.5, seed=0)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('jax', 'jaxlib', 'flax', 'optax') or m == 'normsweep.train'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("args", [["--help"], ["ls", "{root}"], ["show", "{root}"],
                                  ["analyze", "{root}"], ["table", "{root}"]])
def test_commands_that_read_results_import_no_training_stack(tiny_copy, args):
    """`--help`, `ls`, `show`, `analyze` and `table` start without JAX, Flax
    or optax (only `launch` trains), each in a fresh process."""
    import subprocess
    import sys

    argv = [a.format(root=tiny_copy) for a in args]
    code = ("import sys\nfrom normsweep.cli import main\n"
            f"try:\n    main({argv!r}, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('jax', 'jaxlib', 'flax', 'optax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-2000:] + out.stderr[-2000:]
