"""The `normsweep` command: a thin layer over the Python API.

Exit status: 0 success; 2 bad usage or a bad grid file; 1 a failure at run
time; 130 interrupted (finished cohorts are kept; relaunch to resume).
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from normsweep import folder as folder_mod
from normsweep.errors import GridError, RunError, SweepWarning
from normsweep.folder import ResultsFolder
from normsweep.reporting import Reporter

err_console = Console(stderr=True)


class Commands(click.Group):
    """The command group, which maps the package's errors to exit statuses
    in one place: a `GridError` (bad input, naming its file, key and value)
    is a usage error, status 2; a `RunError` (a run-time failure) status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GridError as err:
            raise click.UsageError(str(err)) from None
        except RunError as err:
            raise click.ClickException(str(err)) from None


OWN_PROCESS = False      # set by `run`: the command owns its process (see `end_launch`)


def end_launch(code: int) -> None:
    """Exits a launch that stopped early with `code`. Where the command owns
    its process (`run`) and compilations still run ahead
    (`compile_ahead.compiling_ahead`), at once: Python's exit would wait for
    each to finish, up to a minute on a GPU, and what a launch keeps is
    already on disk."""
    from normsweep.compile_ahead import compiling_ahead
    if OWN_PROCESS and compiling_ahead():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


class RichReporter:
    """Progress of the sweep and of the cohort in training, each with its time
    left, updated between compiled segments. The sweep's bar counts FLOPs
    (`plan.train_flop`), so that its time left weighs every cohort by its
    cost; it is an estimate that includes the compilations seen so far."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.sweep = self.steps = None
        self.work: dict[str, float] = {}
        self.per_step = self.counted = 0.0
        self.cohorts = self.finished = 0

    def start(self, cohorts: int, skipped: int, work: dict[str, float] | None = None) -> None:
        self.cohorts, self.finished, self.work = cohorts, skipped, dict(work or {})
        self.sweep = self.progress.add_task(self.sweep_label(),
                                            total=sum(self.work.values()) or 1.0)
        if skipped:
            self.progress.console.print(f"{skipped} of {cohorts} cohorts already on disk: skipped")

    def sweep_label(self) -> str:
        return f"sweep: {self.finished}/{self.cohorts} cohorts"

    def cohort(self, name: str, steps: int) -> None:
        if self.steps is not None:
            self.progress.remove_task(self.steps)
        self.per_step, self.counted = self.work.get(name, 0.0) / max(steps, 1), 0.0
        self.steps = self.progress.add_task(f"  {name}", total=steps)

    def advance(self, steps: int) -> None:
        self.progress.advance(self.steps, steps)
        self.progress.advance(self.sweep, steps * self.per_step)
        self.counted += steps * self.per_step

    def done(self, name: str, where: str = "") -> None:
        if where:           # a Dask task: which worker, how long
            self.progress.console.print(escape(f"  {name}: {where}"))
        # what the steps did not count (all of it for a cohort trained by Dask)
        self.progress.advance(self.sweep, max(self.work.get(name, 0.0) - self.counted, 0.0))
        self.counted = 0.0
        self.finished += 1
        self.progress.update(self.sweep, description=self.sweep_label())

    def warn(self, message: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/yellow] {escape(message)}")


class QuietReporter(Reporter):
    """No progress; warnings still go to stderr."""

    def warn(self, message: str) -> None:
        warn(message)


class Interrupt:
    """Ctrl-C (SIGINT) as a flag as well as a KeyboardInterrupt.

    Python drops an exception raised inside a garbage-collector callback, and
    JAX registers one, so a KeyboardInterrupt that lands there would be lost
    (after a traceback on stderr) and the launch would run on. The flag is
    checked again at every progress callback (between compiled segments and
    between cohorts), and the dropped exception is not reported.
    """

    def __init__(self):
        self.seen = False

    def __enter__(self) -> Interrupt:
        self.previous = signal.signal(signal.SIGINT, self.handle)
        self.previous_hook = sys.unraisablehook
        sys.unraisablehook = self.unraisable
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)
        sys.unraisablehook = self.previous_hook

    def unraisable(self, info) -> None:
        if not (self.seen and isinstance(info.exc_value, KeyboardInterrupt)):
            self.previous_hook(info)

    def handle(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt


class InterruptibleReporter:
    """`inner`'s progress callbacks, each after checking `interrupt`."""

    def __init__(self, inner: Reporter, interrupt: Interrupt):
        self.inner, self.interrupt = inner, interrupt

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)
        if name == "warn":
            return method

        def checked(*args, **kwargs):
            self.interrupt.check()
            return method(*args, **kwargs)
        return checked


UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
         "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_bytes(text: str) -> int:
    """A size: a number with an optional unit, binary (KiB, MiB, GiB, TiB; K,
    M, G, T) or decimal (kB, MB, GB, TB); at least one byte, and finite."""
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):].strip()
    try:
        value = float(num) * UNITS[unit]
    except (ValueError, KeyError, OverflowError):
        value = float("nan")
    if not 1 <= value < 2**63:
        raise click.BadParameter(f"{text!r}: give a size of at least one byte, such as 512MiB, "
                                 "4GiB or 2GB", param_hint="--memory-budget")
    return int(value)


class ByteSize(click.ParamType):
    """A size in bytes (`parse_bytes`)."""
    name = "size"

    def convert(self, value, param, ctx):
        return value if isinstance(value, int) else parse_bytes(value)


class SchedulerAddress(click.ParamType):
    """A Dask scheduler address or local[:N] (`executors.parse_scheduler`)."""
    name = "address"

    def convert(self, value, param, ctx):
        from normsweep.executors import parse_scheduler
        try:
            parse_scheduler(value)
        except ValueError:
            self.fail(f"{value!r}: give tcp://HOST:PORT, HOST:PORT or local[:N]", param, ctx)
        return value


class ResultsDir(click.ParamType):
    """A normsweep results folder: one with grid.toml or sweep.nc."""
    name = "dir"

    def convert(self, value, param, ctx):
        path = Path(value)
        if not path.is_dir():
            self.fail(f"{path}: no such folder", param, ctx)
        if not (path / "grid.toml").exists() and not (path / "sweep.nc").exists():
            self.fail(f"{path}: not a normsweep results folder (no grid.toml and no sweep.nc)",
                      param, ctx)
        return path


class OnlyCohorts(click.ParamType):
    """A `--only` selection, "width=M,depth=L" (either or both), as
    {"width": M, "depth": L}; `plan.check_only` checks it against the grid."""
    name = "selection"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        selection = {}
        for pair in value.split(","):
            key, sep, number = (part.strip() for part in pair.partition("="))
            if not sep or key not in ("width", "depth") or not number.isdigit():
                self.fail(f"{pair.strip() or value!r}: must be width=M and/or depth=L, "
                          "comma-separated (e.g. width=256,depth=3)", param, ctx)
            if key in selection:
                self.fail(f"{value!r} names {key} twice: a cohort has one {key}; give each "
                          "selection its own --only (--only width=8 --only width=12)", param, ctx)
            selection[key] = int(number)
        return selection


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


@contextlib.contextmanager
def sweep_warnings():
    """Prints each `SweepWarning` raised in the block as "warning: …"."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SweepWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, SweepWarning):
                    warn(str(w.message))


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="normsweep")
def main() -> None:
    """normsweep: how weight norms move under plain gradient descent.

    \b
    Example:
      normsweep launch sweeps/quickstart.toml
      normsweep show results/quickstart
      normsweep analyze results/quickstart
    """


@main.command()
@click.argument("grid", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Results folder (default: results/<name> from the grid file).")
@click.option("--memory-budget", metavar="SIZE", type=ByteSize(),
              help="Memory one compiled chunk may use, e.g. 2GiB or 2GB (default: a quarter "
                   "of RAM on CPU, half an accelerator's memory).")
@click.option("--scheduler", metavar="ADDRESS", type=SchedulerAddress(),
              help="Run cohorts as Dask tasks: a scheduler address (tcp://host:8786; workers "
                   "must share DIR) or local[:N] for N worker processes here. Needs "
                   "normsweep[dask].")
@click.option("--devices", type=click.IntRange(1), metavar="N",
              help="Shard each cohort's networks across at most N local devices "
                   "(default: all of them).")
@click.option("--compile-workers", type=click.IntRange(0), metavar="N",
              help="Threads compiling the next cohorts while one trains; 0 compiles each as "
                   "it starts (default: 1 on a CPU; on an accelerator one per host core but "
                   "one, as host memory allows).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display; print only the summary.")
@click.option("--dry-run", is_flag=True,
              help="Print the cohorts, networks, steps, records, and estimates of memory, disk "
                   "and time; write nothing.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of GRID, as TOML (train.steps=100, grid.lr='[0.01, 0.1]', "
                   "model.init=width); repeatable. The results folder records the effective "
                   "grid.")
@click.option("--only", multiple=True, metavar="width=M,depth=L", type=OnlyCohorts(),
              help="Train only the cohorts that match (repeatable: any match); the rest of "
                   "the grid stays to do, and sweep.nc is written once it is all done.")
def launch(grid: Path, out: Path | None, memory_budget: int | None, scheduler: str | None,
           devices: int | None, compile_workers: int | None, quiet: bool, dry_run: bool,
           overrides: tuple[str, ...], only: tuple[dict[str, int], ...]) -> None:
    """Train every point of GRID and record norm trajectories.

    Writes OUT/cohorts/<cohort>.nc as each (width, depth) cohort finishes and
    OUT/sweep.nc at the end. Cohorts already on disk are skipped, so running
    the same command again resumes an interrupted sweep. OUT must be new,
    empty, or a normsweep results folder.

    \b
    Example:
      normsweep launch sweeps/quickstart.toml
      normsweep launch sweeps/seed.toml --out /data/seed --quiet
      normsweep launch sweeps/seed.toml --scheduler local:2
      normsweep launch sweeps/seed.toml --dry-run
      normsweep launch sweeps/quickstart.toml --set train.steps=100 --set grid.seed=[0,1,2,3]
      normsweep launch sweeps/seed.toml --only width=1024 --only width=512,depth=3
    """
    from normsweep import config as config_mod
    from normsweep import sweep as launch_mod

    budget = memory_budget
    config = config_mod.load(grid, overrides)
    root = out if out is not None else Path("results") / config.name
    selections = list(only) or None         # checked against the grid by the launch
    command = launch_command(click.get_current_context().params)
    if dry_run:
        from normsweep.preview import preview
        print_preview(grid, config, preview(config, root, budget_bytes=budget, only=selections),
                      command)
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TaskProgressColumn(), TimeElapsedColumn(), TextColumn("left"),
                        TimeRemainingColumn(), console=err_console, disable=quiet)
    reporter = QuietReporter() if quiet else RichReporter(progress)
    try:
        with progress, Interrupt() as interrupt:
            summary = launch_mod.launch(config, root, budget_bytes=budget,
                                        reporter=InterruptibleReporter(reporter, interrupt),
                                        scheduler=scheduler, devices=devices,
                                        compile_workers=compile_workers, command=command,
                                        only=selections)
    except (RunError, OSError, RuntimeError) as err:
        error = click.ClickException(str(err))
        error.show()
        end_launch(error.exit_code)
    except KeyboardInterrupt:
        done = len(list((root / "cohorts").glob("*.nc"))) if (root / "cohorts").exists() else 0
        click.echo(f"interrupted: {done} cohort file(s) are complete in {root}/cohorts; "
                   f"run the same command again to resume", err=True)
        end_launch(130)
    click.echo(f"{summary.cohorts} cohorts ({len(summary.trained)} trained, "
               f"{len(summary.skipped)} already done), {summary.networks} networks "
               f"({summary.new} new, {summary.kept} kept), {summary.diverged} diverged, "
               f"{summary.seconds:.1f} s")
    if summary.left:
        click.echo(f"{len(summary.left)} cohorts still to do ({', '.join(summary.left)}); "
                   f"sweep.nc is written when they are done")
        rest = launch_command({**click.get_current_context().params, "only": ()})
        click.echo(f"next: {rest}")
        return
    click.echo(f"results: {summary.root / 'sweep.nc'}")
    click.echo(f"next: normsweep analyze {summary.root}")


def launch_command(params: dict) -> str:
    """The `normsweep launch` command line that asks for the launch of
    `params` (the command's own, by option name), as sweep.nc records it:
    its options in a fixed order, --dry-run left out."""
    words = ["normsweep", "launch", str(params["grid"])]
    for name in ("out", "memory_budget", "scheduler", "devices", "compile_workers"):
        if params[name] is not None:
            words += ["--" + name.replace("_", "-"), str(params[name])]
    words += ["--quiet"] if params["quiet"] else []
    for item in params["overrides"]:
        words += ["--set", item]
    for item in params["only"]:
        words += ["--only", ",".join(f"{key}={value}" for key, value in item.items())]
    return shlex.join(words)


@main.command()
@click.argument("dir", type=ResultsDir())
@click.option("--fit-accuracy", default=0.99, show_default=True,
              type=click.FloatRange(0, 1),
              help="Training accuracy at which a network counts as fit.")
def analyze(dir: Path, fit_accuracy: float) -> None:
    """Fit scaling laws of the norm changes against η and width; write a report.

    Writes DIR/analysis/: every table as CSV (fits.csv, runs.csv, …) with
    summary.json and fits.nc, the PNG figures, and report.md rendered from
    those tables alone; prints the fit table. Needs the analysis extra
    (matplotlib, jinja2). A sweep with parametrization, weight_decay, n or d
    axes is fitted per slice, and the slices are compared; recorded
    sharpness and NTK eigenvalues get their own sections. On an unfinished
    sweep it warns, analyses the cohorts on disk and names the missing ones
    in the report.

    \b
    Example:
      normsweep analyze results/quickstart
      normsweep analyze results/seed --fit-accuracy 0.95
      normsweep analyze results/lazy-vs-mup
    """
    try:
        from normsweep.analysis import report
    except ImportError as err:
        raise click.ClickException(f"analyze needs matplotlib: pip install 'normsweep[analysis]' "
                                   f"({err})") from None
    with sweep_warnings():
        result = report.analyze(dir, fit_accuracy=fit_accuracy)
    from normsweep.analysis.render import ci

    t = result.table
    slices = [c for c in ("parametrization", "weight_decay", "data_n", "data_d") if c in t.columns]
    table = Table(*slices, "metric", "depth", "layer", "η exponent", "width exponent", "r²", "n",
                  title="metric ≈ C·η^a·m^b (95% intervals over seeds)")
    for _, r in t.iterrows():
        table.add_row(*[f"{r[c]:g}" if c == "weight_decay" else str(r[c]) for c in slices],
                      r.metric, str(r.depth), f"{r.layer} ({r.layer_role})",
                      ci(r.lr_exponent, r.lr_exponent_lo, r.lr_exponent_hi),
                      ci(r.width_exponent, r.width_exponent_lo, r.width_exponent_hi),
                      f"{r.r2:.2f}", str(r.n))
    Console(width=140).print(table)
    click.echo(f"report: {result.report}")


def print_preview(grid: Path, config, p, command: str) -> None:
    """`launch --dry-run`'s output: the plan and its estimates, then the
    `command` that launches it."""
    from normsweep import preview as preview_mod
    from normsweep.store import size_text

    console = Console()
    table = Table("cohort", "networks", "new", "kept", "chunks × networks", "memory per chunk",
                  title=escape(f"{config.name}: dry run, nothing written"))
    for row in p.cohorts:
        table.add_row(row["name"], str(row["networks"]),
                      str(row["new"]) if row["selected"] else "– (--only)", str(row["kept"]),
                      f"{row['chunks']} × {row['per_chunk']}", size_text(row["memory"]))
    console.print(table)
    calibrated = preview_mod.calibrated_estimate(p)
    left = sum(1 for row in p.cohorts if row["new"] > 0)
    if calibrated is not None:
        seconds, train, compiled, earlier, unseen = calibrated
        basis = (f"estimate from {earlier} earlier cohorts on this machine: {train:.0f} s of "
                 f"training by their steps', records' and probes' times, {compiled:.0f} s of "
                 "compiling at their compile times, overlapped by the compile pool")
        if unseen:
            basis += (f"; {unseen} of the {left} cohorts are of shapes not trained here, "
                      "their times carried from other shapes")
    else:
        rate = preview_mod.matmul_rate()
        seconds = preview_mod.estimate_seconds(p, rate)
        basis = (f"uncalibrated: no earlier cohort recorded here; "
                 f"{p.train_flop / 1e12:.3g} TFLOP of training at "
                 f"{preview_mod.TRAIN_EFFICIENCY:.0%} of this machine's matmul rate, "
                 f"{rate / 1e9:.0f} GFLOP/s measured now, plus "
                 f"{preview_mod.compile_seconds():g} s to compile each of "
                 f"{preview_mod.programs_left(p)} programs")
    new = sum(row["new"] for row in p.cohorts)
    kept = sum(row["kept"] for row in p.cohorts if row["selected"])
    console.print(escape(
        f"{len(p.cohorts)} cohorts ({len(p.done)} already in {p.root}), {p.networks} networks "
        f"({new} new, {kept} kept), {p.steps} steps each, {p.records} recorded steps\n"
        f"memory: about {size_text(p.memory_bytes)} for the largest chunk, budget "
        f"{size_text(p.budget_bytes)}\n"
        f"disk: about {size_text(p.disk_bytes)} to write\n"
        f"time: about {seconds / 60:.1f} min for the {left} cohorts left ({basis})"),
        soft_wrap=True)
    click.echo(f"next: {command}")


@main.command()
@click.argument("dir", type=ResultsDir())
@click.option("--step", default="last", show_default=True, metavar="last|N",
              help="The recorded step whose loss, accuracy and norms are shown.")
@click.option("--format", "fmt", type=click.Choice(["csv", "markdown"]), default="csv",
              show_default=True, help="CSV for programs, a markdown table for people.")
@click.option("--fit-accuracy", default=0.99, show_default=True,
              type=click.FloatRange(0, 1),
              help="Training accuracy at which a network counts as fit.")
def table(dir: Path, step: str, fmt: str, fit_accuracy: float) -> None:
    """Print one row per network: its grid coordinates, outcome (fit,
    training, failed, diverged), the first step at which it fits, and at
    --step its loss, accuracy, margin and every layer's norms.

    \b
    Example:
      normsweep table results/quickstart > runs.csv
      normsweep table results/quickstart --step 100 --format markdown
    """
    if step != "last" and not step.isdigit():
        raise click.BadParameter(f"--step {step!r}: must be last or a step number",
                                 param_hint="--step")
    from normsweep.analysis import runs

    try:
        with sweep_warnings():
            ds = folder_mod.open_sweep(dir, partial=True)
        try:
            rows = runs.run_table(ds, step, fit_accuracy)
        finally:
            ds.close()
    except ValueError as err:           # a step that is not recorded
        raise click.BadParameter(str(err), param_hint="--step") from None
    if fmt == "csv":
        click.echo(rows.to_csv(index=False, float_format="%.6g"), nl=False)
    else:
        from normsweep.analysis.render import markdown
        click.echo(markdown(rows, "{:.4g}"))


@main.command(name="ls")
@click.argument("root", required=False, default="results",
                type=click.Path(file_okay=False, path_type=Path))
def ls_cmd(root: Path) -> None:
    """List the sweeps at any depth under ROOT (default: results) and how
    complete each is: cohorts done, networks trained of those planned.

    \b
    Example:
      normsweep ls
      normsweep ls /data/sweeps
    """
    if not root.is_dir():
        raise click.BadParameter(f"{root}: no such folder", param_hint="ROOT")
    from rich.table import Column

    # the path relative to ROOT, whole: folded onto more lines, never cut
    table = Table(Column("sweep", overflow="fold"), "cohorts done", "networks trained/planned",
                  "sweep.nc", "created", title=escape(str(root)))
    found = 0
    for folder in folder_mod.find_results_folders(root):
        found += 1
        name = escape(str(folder.relative_to(root)) if folder != root else folder.name)
        place = ResultsFolder(folder)
        try:
            status = place.status()
        except RunError:
            table.add_row(name, "[red]unreadable grid.toml", "", "", "")
            continue
        done, names = status.done, [c.cohort.name for c in status.cohorts]
        networks = f"{status.kept}/{status.config.grid.size}"
        try:
            summary = place.summary()
        except RunError:
            table.add_row(name, f"{len(done)}/{len(names)}", networks, "[red]unreadable", "")
            continue
        table.add_row(name, f"{len(done)}/{len(names)}", networks,
                      "yes" if summary else "no", escape(summary.get("created", "")))
    if not found:
        click.echo(f"no sweeps under {root}")
        return
    Console().print(table)


def probes(record) -> list[tuple[str, object]]:
    """The probes `record` turns on, and the spectra: what `show` lists
    beside the record schedule."""
    from normsweep.probes import PROBES

    on = [(probe.key, getattr(record, probe.key)) for probe in PROBES.values()
          if getattr(record, probe.key)]
    return on + ([("spectra", "true")] if record.spectra else [])


def print_config(console, config, where: Path) -> None:
    """The settings and axes of a grid, as `show` prints them."""
    g = config.grid
    console.print(f"[bold]{escape(config.name)}[/bold]  ({escape(str(where))})")
    n = f"n axis {list(g.n)}" if g.n else f"n={config.data.n}"
    d = f"d axis {list(g.d)} (on S^(d−1))" if g.d else f"on S^{config.data.d - 1}"
    console.print(escape(f"  data: {n} {d}, k={config.data.k}, seed={config.data.seed}"))
    param = (f"parametrization axis {list(g.parametrization)}" if g.parametrization
             else f"parametrization={config.model.parametrization}")
    decay = (f", weight_decay axis {list(g.weight_decay)}" if g.weight_decay
             else f", weight_decay={config.train.weight_decay:g}" if config.train.weight_decay
             else "")
    console.print(escape(f"  model: init={config.model.init}, output={config.model.output}, "
                         f"{param}; train: loss={config.train.loss}, steps={config.train.steps}, "
                         f"{config.train.dtype}{decay}; record: steps={config.record.steps}"
                         + "".join(f", {key}={value}" for key, value in probes(config.record))))
    scaled = f" × width^{g.lr_width_exponent:g}" if g.lr_width_exponent else ""
    console.print(escape(f"  width {list(g.width)}  depth {list(g.depth)}  seed {list(g.seed)}"))
    console.print(escape(f"  lr {[float(f'{v:.4g}') for v in g.lr]}{scaled}"))


@main.command()
@click.argument("target", metavar="DIR|GRID", type=click.Path(path_type=Path))
def show(target: Path) -> None:
    """Summarise a results folder (its grid, what is done, what diverged), or
    a grid file (its settings and axes, and its results folder if any).

    \b
    Example:
      normsweep show results/quickstart
      normsweep show sweeps/seed.toml
    """
    from normsweep import config as config_mod
    from normsweep import store

    if target.is_file():
        config = config_mod.load(target)
        console = Console()
        print_config(console, config, target)
        folder = Path("results") / config.name
        if store.is_sweep_folder(folder):
            console.print(escape(f"  results: {folder} (normsweep show {folder})"))
        else:
            console.print(escape(f"  not launched into {folder}: normsweep launch {target} "
                                 "--dry-run previews it"))
        return
    dir = target
    if not store.is_sweep_folder(dir) or not (dir / "grid.toml").exists():
        raise click.BadParameter(f"{dir}: not a normsweep results folder (no grid.toml or no "
                                 f"{store.MARKER} marker) and not a grid file",
                                 param_hint="DIR|GRID")
    place = ResultsFolder(dir)
    status = place.status()
    config, done = status.config, status.done
    names = [c.cohort.name for c in status.cohorts]
    try:
        summary, damaged = place.summary(), ""
    except RunError as err:
        summary, damaged = {}, str(err)
    console = Console()
    print_config(console, config, dir)
    console.print(f"  cohorts: {len(done)}/{len(names)} done, {status.kept}/{config.grid.size} "
                  "networks trained"
                  + ("" if len(done) == len(names) else
                     f"; to do: {', '.join(n for n in names if n not in done)}"))
    for c in status.cohorts:
        if c.state in (folder_mod.DAMAGED, folder_mod.FOREIGN):
            console.print(escape(f"  {c.state}: {c.reason}"))
    for path in status.stray:
        console.print(escape(f"  stray: {path} is not a cohort of this grid (left alone)"))
    if summary:
        said = summary["outcomes"]
        console.print(escape(
            f"  sweep.nc: {summary['networks']} networks: {said['fit']} fit, "
            f"{said['training']} still training, {said['failed']} failed, "
            f"{said['diverged']} diverged (`normsweep table` lists them); "
            f"{summary['steps']} recorded steps, created {summary['created']}, "
            f"{summary['backend']} ({summary['device_kind']})"))
    elif damaged:
        console.print(escape(f"  sweep.nc: {damaged}; launch again to rewrite it from the cohort "
                             "files (open_sweep and analyze combine them meanwhile)"))
    else:
        console.print("  sweep.nc: not yet written (launch again to finish)")
    pending = place.grow_file
    if pending.exists():
        grown = place.pending_grow()
        axes = "an unreadable grid" if grown is None else ", ".join(
            f"{axis} = {list(values)}" for axis, values in grown.member_values().items()
            if values != config.member_values()[axis])
        console.print(escape(f"  a grow to {axes} is not finished ({pending}): the folder reads as "
                             "the grid above until it is; launch the grown grid again to "
                             "finish it"))


def run() -> None:
    """The `normsweep` command (its console script, `python -m normsweep.cli`):
    `main` in a process of its own, which it may end without waiting for
    compilations ahead. `main` called from Python (a notebook, a test's
    CliRunner) leaves them to finish in the background instead."""
    global OWN_PROCESS
    OWN_PROCESS = True
    main()


if __name__ == "__main__":
    run()
