"""The results folder against links, locks, odd files and vanishing: every
case ends in a clear message and an exit status, writes nothing through a
link, removes nothing that is not normsweep's own, and leaves what is on
disk intact."""
from __future__ import annotations

import collections
import fcntl
import os
import resource
import shutil
import subprocess
import sys

import pytest

from normsweep import config, folder, store, sweep
from tests.conftest import TINY, invoke, temporaries, write_grid


Usage = collections.namedtuple("usage", "total used free")


@pytest.fixture(scope="module")
def analyzed_copy(tiny_sweep, tmp_path_factory):
    """A copy of the tiny sweep whose analysis/ holds, before `analyze`, a
    link under every name analyze writes, each to a file outside the folder."""
    root = tmp_path_factory.mktemp("planted") / "tiny"
    shutil.copytree(tiny_sweep, root)
    outside = tmp_path_factory.mktemp("outside")
    names = ["report.md", "fits.csv", "fits.nc", "init_norms.png", "stability.png",
             "per_step_identity.png", "scaling_rel_frob_dist.png", "balance.png",
             "spectrum.png", "margin.png", "jacobian.png", "trajectories_frob_norm.png"]
    (root / "analysis").mkdir()
    for name in names:
        (outside / name).write_text("precious")
        (root / "analysis" / name).symlink_to(outside / name)
    result = invoke("analyze", root)
    return root, outside, names, result


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_lock_file_that_leads_elsewhere_is_refused_and_its_target_untouched(
        tiny_copy, tmp_path, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tiny_copy / ".lock").unlink()
    (os.symlink if kind == "symlink" else os.link)(victim, tiny_copy / ".lock")
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 1 and "not normsweep's lock file" in result.output
    assert victim.read_text() == "precious"


def test_the_folder_is_checked_while_the_lock_is_held(tmp_path, monkeypatch):
    """Check, then write, under one lock: otherwise a second launch can pass
    the check and then mix its cohorts into the first's folder."""
    held = []
    real = folder.check_folder

    def check(cfg, root):
        with open(root / ".lock", "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except OSError:
                held.append(True)
        return real(cfg, root)

    monkeypatch.setattr(folder, "check_folder", check)
    cfg = config.parse(TINY.replace("steps = 30", "steps = 3").replace(
        "width = [16, 24]", "width = [16]").replace("depth = [2, 3]", "depth = [2]"))
    sweep.launch(cfg, tmp_path / "out")
    assert held == [True]


def test_a_folder_holding_the_users_own_grid_file_is_not_a_results_folder(tmp_path):
    """`--out .` beside one's grid.toml: refused, every file left as it was."""
    grid = write_grid(tmp_path, TINY)
    mine = {".notes.tmp-1": "draft", ".grid.toml.tmp-7": "an editor's backup", "data.csv": "1,2"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "cohorts").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("launch", grid, "--out", tmp_path, "--quiet")
    assert result.exit_code == 2 and "not a normsweep results folder" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert all((tmp_path / n).read_text() == t for n, t in mine.items())
    assert invoke("show", tmp_path).exit_code == 2


def test_only_temporaries_named_by_normsweep_are_removed(tiny_copy, tmp_path):
    ours = [tiny_copy / ".sweep.nc.normsweep-tmp-123",
            tiny_copy / "cohorts" / ".width16_depth2.nc.normsweep-tmp-9",
            tiny_copy / ".sweep.nc.tmp-99"]                   # an earlier version's
    theirs = [tiny_copy / ".mine.tmp-3", tiny_copy / ".x.normsweep-tmp-abc",
              tiny_copy / "cohorts" / ".notes.tmp"]
    for p in ours + theirs:
        p.write_text("x")
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in ours)
    assert all(p.read_text() == "x" for p in theirs)


def test_a_results_folder_of_an_earlier_version_resumes_and_is_marked(tiny_copy, tmp_path):
    (tiny_copy / store.MARKER).unlink()          # grid.toml, cohorts/ and .lock remain
    assert store.is_sweep_folder(tiny_copy)
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 0 and "4 already done" in result.output
    assert (tiny_copy / store.MARKER).is_file()


def test_a_refused_launch_leaves_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "a" / "b"
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", out, "--quiet")
    assert result.exit_code == 2 and "1000 B free" in result.output
    assert not (tmp_path / "a").exists()


def test_a_vanished_folder_is_named_as_such(tmp_path):
    err = store.write_failure(tmp_path / "gone" / "sweep.nc", PermissionError(13, "denied"))
    assert "the folder" in str(err) and "no longer exists" in str(err)
    assert "denied" not in str(err)


def test_concurrent_launch_is_refused_while_the_folder_is_locked(tiny_copy, tmp_path):
    grid = write_grid(tmp_path, TINY)
    with store.folder_lock(tiny_copy):
        result = invoke("launch", grid, "--out", tiny_copy, "--quiet")
    assert result.exit_code == 1 and "being written by another launch" in result.output
    assert invoke("launch", grid, "--out", tiny_copy, "--quiet").exit_code == 0


def test_lock_held_by_another_process(tiny_copy, tmp_path):
    code = ("import sys, time\nfrom pathlib import Path\nfrom normsweep import store\n"
            "with store.folder_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n"
            "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tiny_copy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
        assert result.exit_code == 1 and f"pid {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()
    # the dead holder's lock is gone
    assert invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet").exit_code == 0


def test_analyze_writes_no_file_through_a_planted_link(analyzed_copy):
    root, outside, names, result = analyzed_copy
    assert result.exit_code == 0, result.output
    assert all((outside / name).read_text() == "precious" for name in names)
    written = [p for p in (root / "analysis").iterdir() if p.name in names and not p.is_symlink()]
    assert {"report.md", "fits.csv", "fits.nc", "init_norms.png"} <= {p.name for p in written}
    assert not temporaries(root)


def test_analyze_refuses_a_linked_analysis_folder(tiny_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tiny_copy / "analysis").symlink_to(elsewhere)
    result = invoke("analyze", tiny_copy)
    assert result.exit_code == 1
    assert "analysis is a symbolic link" in result.output and "Traceback" not in result.output
    assert list(elsewhere.iterdir()) == []


def test_a_file_size_limit_leaves_no_truncated_figure(tiny_copy):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, hard))
    try:
        result = invoke("analyze", tiny_copy)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert result.exit_code == 1, result.output
    assert "file-size limit" in result.output and "cannot write" in result.output
    assert "Traceback" not in result.output
    for png in (tiny_copy / "analysis").glob("*.png"):     # whole PNGs only
        assert png.read_bytes()[-8:] == b"IEND\xaeB`\x82", png
    assert not temporaries(tiny_copy)


def test_analyze_of_a_read_only_folder_exits_1_naming_it(tiny_copy):
    if os.geteuid() == 0:       # root writes anyway: make analysis/ a file instead
        (tiny_copy / "analysis").write_text("not a folder")
        result = invoke("analyze", tiny_copy)
        assert result.exit_code == 1 and "analysis is not a folder" in result.output
        return
    tiny_copy.chmod(0o555)
    try:
        result = invoke("analyze", tiny_copy)
    finally:
        tiny_copy.chmod(0o755)
    assert result.exit_code == 1 and "cannot write" in result.output


def test_analyze_of_an_empty_folder_is_a_usage_error(tmp_path):
    result = invoke("analyze", tmp_path)
    assert result.exit_code == 2 and "not a normsweep results folder" in result.output


def test_a_linked_cohorts_folder_is_refused_and_its_target_untouched(tiny_copy, tmp_path):
    other = tmp_path / "other-cohorts"
    shutil.move(tiny_copy / "cohorts", other)
    (tiny_copy / "cohorts").symlink_to(other)
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    (tiny_copy / "sweep.nc").unlink()
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 1 and "cohorts is a symbolic link" in result.output
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    assert not (tiny_copy / "sweep.nc").exists()


def test_out_below_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tmp_path / "file" / "sub",
                    "--quiet")
    assert result.exit_code == 2 and "is a file, not a folder" in result.output


def test_a_fifo_lock_is_refused_by_name(tiny_copy, tmp_path):
    (tiny_copy / ".lock").unlink()
    os.mkfifo(tiny_copy / ".lock")
    result = invoke("launch", write_grid(tmp_path, TINY), "--out", tiny_copy, "--quiet")
    assert result.exit_code == 1 and ".lock is not a regular file" in result.output
