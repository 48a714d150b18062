"""Bad input on the command line and in grid files, and grids too large for
the machine: a message that names the key or option, its value and what is
allowed; exit status 2 (1 for a scheduler that cannot be reached); nothing
written."""
from __future__ import annotations

import collections
import shutil

import pytest

from normsweep import config, plan, resources
from normsweep.cli import RichReporter, parse_bytes
from normsweep.errors import GridError
from tests.conftest import TINY, invoke, write_grid


Usage = collections.namedtuple("usage", "total used free")


def test_the_disk_estimate_counts_only_what_is_left_to_write(tiny_copy, tmp_path, monkeypatch):
    cfg = config.load(write_grid(tmp_path, TINY))
    cohorts = plan.cohorts(cfg)
    n = plan.record_count(cfg.train.steps, cfg.record.steps, cfg.record.log_points)
    left = resources.disk_needed(cfg, cohorts, [], n)          # sweep.nc only
    fresh = resources.disk_needed(cfg, cohorts, cohorts, n)
    assert 0 < left < fresh
    free = (left + fresh) // 2
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * fresh, 0, free))
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 0 and "4 already done" in result.output      # a resume
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tmp_path / "new", "--quiet")
    assert result.exit_code == 2 and "4 cohorts left" in result.output     # a fresh launch


@pytest.mark.parametrize("text,value", [("2GB", 2 * 10**9), ("2GiB", 2 * 2**30), ("512 MB", 512e6),
                                        ("1.5kB", 1500), ("4096", 4096)])
def test_memory_budget_units(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["1e400", "0.5", "inf", "nan", "-1GB", "2XB", ""])
def test_a_bad_memory_budget_exits_2(tmp_path, text):
    out = tmp_path / "out"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--memory-budget", text)
    assert result.exit_code == 2 and "--memory-budget" in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("address", ["foo://x", "tcp://host", "local:x", "host:99999",
                                     "tcp://a b:1"])
def test_a_bad_scheduler_address_exits_2_and_writes_nothing(tmp_path, address):
    out = tmp_path / "out"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--scheduler", address)
    assert result.exit_code == 2 and "--scheduler" in result.output and not out.exists()


def test_an_unreachable_scheduler_exits_1_and_writes_nothing(tmp_path, monkeypatch):
    import distributed

    def unreachable(*args, **kwargs):
        raise OSError("Timed out trying to connect to tcp://10.0.0.1:8786")

    monkeypatch.setattr(distributed, "Client", unreachable)
    out = tmp_path / "out"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--scheduler",
                    "tcp://10.0.0.1:8786", "--quiet")
    assert result.exit_code == 1 and "cannot reach the Dask scheduler" in result.output
    assert not out.exists()


def test_rich_markup_in_names_prints_literally(tiny_sweep, tmp_path):
    from rich.console import Console
    from rich.progress import Progress

    root = tmp_path / "root"
    shutil.copytree(tiny_sweep, root / "[bold red]x")
    result = invoke("ls", root)
    assert result.exit_code == 0 and "[bold red]x" in result.output
    result = invoke("show", root / "[bold red]x")
    assert result.exit_code == 0 and "[bold red]x" in result.output
    console = Console(record=True, width=200)
    RichReporter(Progress(console=console)).warn("a[/ and [bold red]x.nc")
    assert "a[/ and [bold red]x.nc" in console.export_text()


@pytest.mark.parametrize("name", ['"tiny\\n"', '"' + "x" * 300 + '"'])
def test_a_bad_name_exits_2_and_leaves_nothing(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, TINY.replace('name = "tiny"', f"name = {name}"))
    result = invoke("launch", grid, "--quiet")
    assert result.exit_code == 2 and "name" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


@pytest.mark.parametrize("change,key", [
    (("n = 64", "n = 100000000"), "data.n"),
    (("d = 8", "d = 100000000"), "data.d"),
    (("steps = 30", "steps = 1000000000"), "record.steps"),
])
def test_a_grid_too_large_for_memory_names_the_key_to_change(tmp_path, change, key):
    text = TINY.replace(*change).replace('steps = "log"', 'steps = "all"')
    out = tmp_path / "out"
    result = invoke("launch", write_grid(tmp_path, text), "--out", out, "--memory-budget", "8GiB",
                    "--quiet")
    assert result.exit_code == 2 and f"{key} = " in result.output, result.output
    assert "memory budget" in result.output and not out.exists()


def test_a_grid_file_nested_too_deeply_or_too_large_exits_2(tmp_path):
    deep = write_grid(tmp_path, TINY + "x = " + "[" * 50_000 + "]" * 50_000 + "\n", "deep.toml")
    big = write_grid(tmp_path, TINY + "# " + "x" * (1 << 20) + "\n", "big.toml")
    for grid, fragment in ((deep, "nested too deeply"), (big, "larger than 1024 KiB")):
        result = invoke("launch", grid, "--out", tmp_path / "out", "--quiet")
        assert result.exit_code == 2 and fragment in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype,lr", [("float32", "1e-46"), ("float32", "1e-39"),
                                      ("float64", "1e-320")])
def test_a_learning_rate_below_the_dtypes_normal_numbers_is_refused(dtype, lr):
    text = TINY.replace("steps = 30", f'steps = 30\ndtype = "{dtype}"').replace(
        "lr = { geomspace = [0.5, 8.0, 3] }", f"lr = [0.1, {lr}]")
    with pytest.raises(GridError, match=r"grid\.lr.*train\.dtype"):
        config.parse(text, source="g.toml")
    config.parse(text.replace(lr, "1e-30" if dtype == "float32" else "1e-300"), source="g.toml")


def test_a_scaled_learning_rate_that_underflows_at_some_width_is_refused():
    text = TINY.replace("lr = { geomspace = [0.5, 8.0, 3] }",
                        "lr = { values = [1e-36], width_exponent = -2 }")
    with pytest.raises(GridError, match="at width 16"):
        config.parse(text, source="g.toml")


def test_grid_too_large_for_memory_is_a_usage_error(tmp_path):
    out = tmp_path / "big"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--memory-budget", "1KiB",
                    "--quiet")
    assert result.exit_code == 2 and "data.n = 64" in result.output and "memory budget" in result.output
    assert not out.exists()


def test_only_the_cohorts_a_launch_trains_need_to_fit_its_memory(tmp_path):
    """--only may leave out a cohort too large for this machine's budget (to
    be launched on another): the launch and its dry run check only the
    cohorts they train, and refuse the whole grid."""
    from normsweep import config, plan
    text = 'name = "wide"\n[data]\nn = 16\nd = 4\nk = 3\n[train]\nsteps = 3\n' \
        '[record]\njacobian_norm = 0\n[grid]\nwidth = [8, 2048]\ndepth = [2]\nlr = [0.1]\n'
    grid = write_grid(tmp_path, text)
    cfg = config.load(grid)
    small, large = (plan.member_bytes(cfg, c, 4) for c in plan.cohorts(cfg))
    budget = str((small + large) // 2)
    out = tmp_path / "wide"
    refused = invoke("launch", grid, "--out", out, "--memory-budget", budget, "--quiet")
    assert refused.exit_code == 2 and "width 2048" in refused.output and not out.exists()
    dry = invoke("launch", grid, "--out", out, "--memory-budget", budget, "--only", "width=8",
                 "--dry-run")
    assert dry.exit_code == 0, dry.output
    memory = dry.output.split("memory: about ")[1].split(" for")[0]
    assert memory.endswith("KiB") and float(memory.split()[0]) * 1024 <= small * 1.01
    done = invoke("launch", grid, "--out", out, "--memory-budget", budget, "--only", "width=8",
                  "--quiet")
    assert done.exit_code == 0 and "1 cohorts still to do (width2048_depth2)" in done.output


def test_grid_too_large_for_disk_is_a_usage_error(tmp_path, monkeypatch):
    import collections
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "disk"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--quiet")
    assert result.exit_code == 2 and "B free" in result.output and "cohorts left" in result.output
    assert not out.exists()


@pytest.mark.parametrize("override, said", [
    ("train.steps=5\n", "control character"),
    ('train.steps=5\ninit = "width"', "control character"),
    ("train.steps=5\r", "control character"),
    ("grid.lr=" + "[" * 2000 + "0.1" + "]" * 2000, "nested more than"),
    ("a.b.c.d.e.f.g.h.i.j=1", "nested more than"),
], ids=["newline", "second-line", "carriage-return", "deep-value", "deep-key"])
def test_set_refuses_control_characters_and_deep_nesting(tmp_path, override, said):
    grid = write_grid(tmp_path, TINY)
    out = tmp_path / "out"
    result = invoke("launch", grid, "--out", out, "--set", override, "--quiet")
    assert result.exit_code == 2 and said in result.output, result.output
    assert not out.exists()
    with pytest.raises(GridError, match=said):      # the Python API's `overrides` too
        config.load(grid, [override])


def test_a_key_set_twice_is_refused(tmp_path):
    grid = write_grid(tmp_path, TINY)
    result = invoke("launch", grid, "--dry-run", "--set", "train.steps=5",
                    "--set", "train.steps=6")
    assert result.exit_code == 2 and "set twice" in result.output


def test_the_recorded_grid_parses_back_whatever_the_source_name(tmp_path):
    odd = tmp_path / "odd\nname.toml"
    odd.write_text(TINY)
    cfg = config.load(odd, ["train.steps=5"])
    assert config.parse(cfg.text).train.steps == 5


def test_only_naming_an_axis_twice_is_refused(tmp_path):
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tmp_path / "o",
                    "--only", "width=16,width=24", "--quiet")
    assert result.exit_code == 2 and "names width twice" in result.output
    assert not (tmp_path / "o").exists()
