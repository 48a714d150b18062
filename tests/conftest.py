"""Shared fixtures. Strict dtype and rank promotion, as in Equinox: a silent
float64 upcast or a broadcast between mismatched ranks is a bug here."""
from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

# xdist's workers share the machine's cores: in each, OpenBLAS (numpy's, and
# the LAPACK under jax's CPU linear algebra) runs on one thread, or the
# workers' threads oversubscribe the cores (BENCHMARKS.md). Set before numpy
# loads; the tests' child processes inherit it.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402


def session_folder(prefix: str) -> str:
    """A temporary folder that this process removes as it exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# launches record their timings (normsweep.calibration) in the session's own
# file, never in the user's ~/.cache, and the dry run reads only those
os.environ["NORMSWEEP_TIMINGS"] = os.path.join(session_folder("normsweep-timings-"),
                                               "timings.jsonl")
# and compile into the session's own persistent cache, never the user's (a
# test's child processes and xdist's workers inherit it)
if "NORMSWEEP_JAX_CACHE" not in os.environ:
    os.environ["NORMSWEEP_JAX_CACHE"] = session_folder("normsweep-jax-")

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

TINY = textwrap.dedent("""\
    name = "tiny"
    [data]
    n = 64
    d = 8
    k = 4
    seed = 3
    [train]
    steps = 30
    [record]
    steps = "log"
    weights = true
    spectra = true
    activations = "log"
    [grid]
    width = [16, 24]
    depth = [2, 3]
    lr = { geomspace = [0.5, 8.0, 3] }
    seed = [0, 1]
    """)


def invoke(*args):
    """The `normsweep` command in this process, wide enough that rich never
    wraps a path."""
    from click.testing import CliRunner

    from normsweep.cli import main
    return CliRunner(env={"COLUMNS": "400"}).invoke(main, [str(a) for a in args],
                                                    catch_exceptions=False)


def temporaries(root: Path) -> list[Path]:
    """The temporary files normsweep names (this version's and earlier ones') below `root`."""
    from normsweep import store
    return [p for p in root.rglob(".*") if store.TEMP_RE.fullmatch(p.name)
            or store.LEGACY_TEMP_RE.fullmatch(p.name)]


def write_grid(folder: Path, text: str, name: str = "grid.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` run once per test session, shared by its xdist workers:
    the first worker to ask builds it under a lock, the others wait and read."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent          # the session's folder above each worker's own
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    """A launched tiny sweep, shared read-only by the tests that inspect one."""
    from normsweep import config, sweep

    def build(root):
        root.mkdir()
        sweep.launch(config.load(write_grid(tmp_path_factory.mktemp("grids"), TINY)), root / "tiny")
    return built_once(tmp_path_factory, "tiny-sweep", build) / "tiny"


@pytest.fixture(scope="session")
def analyzed(tiny_sweep, tmp_path_factory):
    """A copy of the tiny sweep after `normsweep analyze`, and what it printed."""
    from click.testing import CliRunner

    from normsweep.cli import main

    def build(folder):
        folder.mkdir()
        shutil.copytree(tiny_sweep, folder / "tiny")
        result = CliRunner().invoke(main, ["analyze", str(folder / "tiny")],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        (folder / "output.txt").write_text(result.output)
    folder = built_once(tmp_path_factory, "tiny-analyzed", build)
    return folder / "tiny", (folder / "output.txt").read_text()


@pytest.fixture
def tiny_copy(tiny_sweep, tmp_path) -> Path:
    """A private copy of the tiny sweep, for tests that alter it."""
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_sweep, dst)
    return dst
