"""Compile and training times of the cohorts this machine has run, so that
the dry run estimates a launch from measurements instead of stored figures.

Every cohort a launch trains appends one JSON line to the timings file
(`path`; default ~/.cache/normsweep/timings.jsonl, beside the compile
cache; $NORMSWEEP_TIMINGS moves it, "off" turns it off): the backend and
device kind, the program's shape (`program_key`), the training FLOPs and
the seconds spent compiling and training. `estimate` reads them back. Past
`LIMIT` bytes the oldest lines go. JAX is not imported here: the dry run's
caller passes the backend in.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from normsweep import plan
from normsweep.config import Config

RECENT = 5      # compile times per program shape: the median of the latest few
LIMIT = 4 * 2**20   # the timings file's bytes; past them it keeps its newest half (`_trim`)


def path() -> Path | None:
    """The timings file, or None when $NORMSWEEP_TIMINGS is "off"."""
    where = os.environ.get("NORMSWEEP_TIMINGS", "")
    if where.lower() in ("off", "0", "false", "no"):
        return None
    return Path(where) if where else Path.home() / ".cache" / "normsweep" / "timings.jsonl"


def cache_on() -> bool:
    """Whether launches use the persistent compilation cache
    (`work.enable_compilation_cache`: on unless $NORMSWEEP_JAX_CACHE is "off")."""
    return os.environ.get("NORMSWEEP_JAX_CACHE", "").lower() not in ("off", "0", "false", "no")


def program_shape(config: Config, cohort: plan.Cohort) -> str:
    """What shapes a cohort's compiled programs, but the number of members:
    the layer sizes (the deepest network's the program serves, and the
    depths it serves, `plan.program_depths`), the training set's size,
    dtype, output, loss and the probes that are on."""
    cfg = plan.cohort_config(config, cohort)
    on = ",".join([*cfg.record.schedules(), *(["spectra"] if cfg.record.spectra else [])])
    shallowest, deepest = plan.program_depths(config, cohort)
    served = f" depths={shallowest}-{deepest}" if shallowest < deepest else ""
    return (f"dims={cohort.dims(cfg.data.d, cfg.data.k, deepest)}{served} n={cfg.data.n} "
            f"{cfg.train.dtype} {cfg.model.output} {cfg.train.loss} probes={on or '-'}")


def program_key(config: Config, cohort: plan.Cohort, members: int | None = None) -> str:
    """`program_shape` and the members the program trains (default: the
    whole cohort; a grow trains only the new ones): one compiled program;
    then, in a program that serves several depths, the depth of the
    networks it trains, which sets the training time (`compiled` leaves it
    out). A program of one depth has the key it had before programs
    served several, so that the timings recorded then still count."""
    key = f"{program_shape(config, cohort)} members={members or cohort.size}"
    shallowest, deepest = plan.program_depths(config, cohort)
    return f"{key} depth={cohort.depth}" if shallowest < deepest else key


def compiled(key: str) -> str:
    """The compiled program of a `program_key`: without the networks' depth."""
    return key.rsplit(" depth=", 1)[0]


def record(backend: str, device: str, key: str, flop: float, train_seconds: float,
           compile_seconds: float | None, timing: dict | None = None,
           size: dict | None = None) -> None:
    """Appends one cohort's times (an append of one short line: concurrent
    writers do not interleave), with the wall times of its programs' calls
    (`timing`, as `fit_costs` reads it) and the `size` of one chunk's
    program ("step_flop", "weights"). A file that cannot be written is
    skipped: timings are no reason to fail a launch."""
    where = path()
    if where is None:
        return
    line = json.dumps({"backend": backend, "device": device, "program": key, "flop": flop,
                       "train_seconds": train_seconds, "compile_seconds": compile_seconds,
                       "cache": cache_on(), "time": time.time(), "timing": timing,
                       **(size or {})}) + "\n"
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        with open(where, "a", encoding="utf-8") as f:
            f.write(line)
            end = f.tell()
        if end > LIMIT:
            _trim(where)
    except OSError:
        pass


def _trim(where: Path) -> None:
    """Rewrites the timings file with its newest lines that fill half of
    `LIMIT` (the estimate reads only the latest few per program), each
    marked with whether its compile was a cache hit, which `hits` could not
    tell once the lines before it are gone. Atomic; a line another launch
    appends while this runs may be lost."""
    rows = _rows(where.read_text(encoding="utf-8"))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("backend"), row.get("device")), []).append(row)
    for group in groups.values():
        for row, hit in zip(group, hits(group)):
            row["hit"] = hit
    kept, size = [], 0
    for row in reversed(rows):
        text = json.dumps(row) + "\n"
        size += len(text.encode())
        if size > LIMIT // 2:
            break
        kept.append(text)
    temporary = where.with_name(f"{where.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text("".join(reversed(kept)), encoding="utf-8")
        os.replace(temporary, where)
    finally:
        temporary.unlink(missing_ok=True)


def load(backend: str, device: str) -> list[dict]:
    """The recorded cohorts of this backend and device kind, oldest first
    (lines that do not parse are skipped)."""
    where = path()
    if where is None or not where.exists():
        return []
    try:
        text = where.read_text(encoding="utf-8")
    except OSError:
        return []
    return [row for row in _rows(text)
            if row.get("backend") == backend and row.get("device") == device]


def _rows(text: str) -> list[dict]:
    """The timings file's lines that parse as JSON objects, in order."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


HIT_SHARE = 0.2     # a cache hit's compile time over a miss's, before any hit is recorded:
                    # 0.1–0.5 measured on the quickstart's cohorts (CPU, 2 cores)


def hits(rows: list[dict]) -> list[bool]:
    """Per row, whether its compile was a persistent-cache hit: the same
    program was recorded before, and the cache was on both times (as
    `_trim` marked it, where it did)."""
    seen, out = set(), []
    for r in rows:
        key = compiled(r.get("program", ""))
        out.append(r["hit"] if "hit" in r else bool(r.get("cache")) and key in seen)
        if r.get("cache"):
            seen.add(key)
    return out


def _shape(key: str) -> str:
    """A `program_key` without its members: the program's shape and the
    networks' depth (the training rate's key)."""
    program, _, rest = key.partition(" members=")
    depth = rest.partition(" depth=")[2]
    return f"{program} depth={depth}" if depth else program


def compile_guess(rows: list[dict], key: str) -> float:
    """The compile time of program `key` from `rows`: a cache hit when it
    was compiled before with the cache on (and it is on now), at its own
    latest hits, or `HIT_SHARE` of its misses; else a miss, at the latest
    misses of the same program, of the same shape with other members, of
    the same probes, or of any program, the first of these that has any.
    Programs are compared without the networks' depth (`compiled`); a
    cohort that found its program compiled by another recorded none."""
    key = compiled(key)
    done = [(r, hit) for r, hit in zip(rows, hits(rows)) if r.get("compile_seconds")]
    own = [(r["compile_seconds"], hit) for r, hit in done if compiled(r.get("program", "")) == key]
    if own and cache_on() and any(r.get("cache") for r, _ in done
                                  if compiled(r.get("program", "")) == key):
        warm = [c for c, hit in own if hit][-RECENT:]
        cold = [c for c, hit in own if not hit][-RECENT:]
        return statistics.median(warm) if warm else HIT_SHARE * statistics.median(cold)
    probes = key.split(" probes=")[1].split(" ")[0] if " probes=" in key else None
    shape = key.rsplit(" members=", 1)[0]
    for same in (lambda r: compiled(r.get("program", "")) == key,
                 lambda r: r.get("program", "").rsplit(" members=", 1)[0] == shape,
                 lambda r: probes is not None and f" probes={probes} " in r.get("program", ""),
                 lambda r: True):
        cold = [r["compile_seconds"] for r, hit in done if not hit and same(r)][-RECENT:]
        if cold:
            return statistics.median(cold)
    return 0.0


def _median_rate(timed: list[dict], key: str | None = None) -> float | None:
    """The median training FLOP rate of the latest recorded cohorts of
    program `key`'s shape (any members; of any program for None), or None."""
    rates = [r["flop"] / r["train_seconds"] for r in timed
             if key is None or _shape(r.get("program", "")) == _shape(key)][-4 * RECENT:]
    return statistics.median(rates) if rates else None


def rate_guess(timed: list[dict], key: str) -> float:
    """The training FLOP rate of program `key`: the median rate the latest
    recorded cohorts of its shape achieved (any members), else of any
    program."""
    rate = _median_rate(timed, key) or _median_rate(timed)
    if rate is None:
        raise ValueError("no recorded training time")
    return rate


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients: a coefficient that
    comes out negative is set to 0 and the rest refitted, the most negative
    first."""
    free = list(range(a.shape[1]))
    while True:
        coef = np.zeros(a.shape[1])
        if free:
            coef[free] = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
        if (coef >= 0).all():
            return coef
        free.remove(min(free, key=lambda j: coef[j]))


# what each cost grows with, from one program to another: a step's FLOPs
# ("step_flop", 6·n·P per network) or the weights ("weights", P per network);
# a chunk's. The records' power iterations, the Jacobian (on its own points),
# the NTK (on its own points) and the init work on the weights; a step, the
# sharpness' Hessian products and the activations on the whole training set.
GROWS_WITH = {"step": "step_flop", "sharpness": "step_flop", "activations": "step_flop",
              "record": "weights", "jacobian": "weights", "ntk": "weights", "once": "weights"}
RELIABLE = 0.5      # a step's cost is carried when its standard error is at most this share


def fit_costs(row: dict) -> dict | None:
    """What one chunk of a recorded cohort (one call of its programs) spends:
    seconds per step ("step"), per record on top of its step ("record"), per
    measurement of each probe on top of that (by probe name), and once per
    run (init and spectra, "once"), fitted by non-negative least squares to
    the wall times of its segments (`row["timing"]`: "once" in all, and
    "runs", per chunk the segments of `train.Trajectory.timing`). A rate
    that includes the records does not carry to a grid that records on
    another schedule, or has another shape; these do. The segment with the
    last record (measured, no step taken) is left out. A probe the segments
    cannot tell from the records (due at every record, say) is folded into
    "record". None where steps and records cannot be told apart (a run that
    records every step, or at one stride), or the step's cost is not
    determined within `RELIABLE` (training beside a compilation, say)."""
    timing = row.get("timing") or {}
    segs = [seg for run in timing.get("runs", []) for seg in run[:-1]]
    if not segs:
        return None
    probes = sorted({name for _, _, due, _ in segs for name in due})
    names = ["step", "record", *probes]
    a = np.array([[taken, records, *(due.get(p, 0) for p in probes)]
                  for taken, records, due, _ in segs], np.float64)
    b = np.array([seconds for *_, seconds in segs])

    def separable(cols):
        cols = a[:, cols]
        return np.linalg.matrix_rank(cols / np.linalg.norm(cols, axis=0)) == cols.shape[1]

    cols = [j for j in range(len(names)) if a[:, j].any()]
    while len(cols) > 2 and not separable(cols):
        cols.pop()
    if cols[:2] != [0, 1] or not separable(cols):
        return None
    coef = _nnls(a[:, cols], b)
    free = [i for i, c in enumerate(coef) if c > 0]
    if 0 not in free:
        return None
    # the step's standard error, from the fit's residuals over the free columns
    dof = len(b) - len(free)
    if dof > 0:
        residual = b - a[:, cols] @ coef
        inverse = np.linalg.pinv(a[:, cols][:, free].T @ a[:, cols][:, free])
        if np.sqrt(residual @ residual / dof * inverse[0, 0]) > RELIABLE * coef[0]:
            return None
    out = {names[j]: float(c) for j, c in zip(cols, coef)}
    return out | {"once": timing["once"] / len(timing["runs"])}


NEAR = 4.0      # costs carry from programs within this factor of FLOPs per step


def fitted(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(row, `fit_costs`) of the rows whose costs can be fitted."""
    return [(r, c) for r in rows if r.get("step_flop") and r.get("weights")
            for c in [fit_costs(r)] if c is not None]


def costs_guess(fitted: list[tuple[dict, dict]], key: str, size: dict,
                near: float | None = NEAR) -> dict | None:
    """`fit_costs` for program `key`, whose chunk has `size` ("step_flop",
    "weights"), from the `fitted` rows: the median of its own latest
    costs; else carried from the programs nearest in FLOPs per step (within
    `near`×; None: any), each cost at their seconds per unit of what it
    grows with (`GROWS_WITH`). None when no recorded program qualifies."""
    own = [c for r, c in fitted if r.get("program") == key][-RECENT:]
    if own:
        return {name: statistics.median(c.get(name, 0.0) for c in own)
                for name in set().union(*own)}
    if not fitted:
        return None
    far = [abs(np.log(r["step_flop"] / size["step_flop"])) for r, _ in fitted]
    nearest = min(far)
    if near is not None and nearest > np.log(near):
        return None
    close = [(r, c) for (r, c), d in zip(fitted, far) if d <= nearest + np.log(2)][-4 * RECENT:]
    return {name: size[GROWS_WITH.get(name, "weights")] * statistics.median(
                c[name] / r[GROWS_WITH.get(name, "weights")] for r, c in close if name in c)
            for name in set().union(*(c for _, c in close))}


def train_guess(rows: list[dict], key: str, flop: float, work: dict | None,
                fits: list[tuple[dict, dict]] | None = None) -> float:
    """The training seconds of program `key` over `work` (`plan.record_work`,
    the chunks that run it, "chunks", and a chunk's "step_flop" and
    "weights"; its training FLOPs `flop` in all): by `costs_guess` within
    `NEAR`, else at the FLOP rate of its shape's recorded cohorts, else by
    `costs_guess` from any distance, else at any program's FLOP rate. A
    probe that no recorded program measured counts as its
    `work["steps_per"]` steps (nothing where that has none). `fits`:
    `fitted(rows)`, where the caller has it."""
    timed = [r for r in rows if r.get("train_seconds") and r.get("flop")]
    fits = fitted(rows) if fits is None and work else fits
    costs = costs_guess(fits, key, work) if work else None
    if costs is None and (not work or _median_rate(timed, key) is not None):
        return flop / rate_guess(timed, key)
    costs = costs or costs_guess(fits, key, work, near=None)
    if costs is None:
        return flop / rate_guess(timed, key)
    per_chunk = costs.get("once", 0.0) + work["steps"] * costs["step"] \
        + work["records"] * costs.get("record", 0.0) \
        + sum(n * costs.get(name, work.get("steps_per", {}).get(name, 0) * costs["step"])
              for name, n in work["due"].items())
    return work["chunks"] * per_chunk


def estimate(rows: list[dict], todo: list[tuple], workers: int = 1
             ) -> tuple[float, float, float, int] | None:
    """(wall seconds, training seconds, compile seconds, cohorts of shapes
    `rows` never trained) of a launch that trains `todo` ((program key,
    FLOPs, work or None) per cohort; work as `train_guess` takes it), from
    `rows`: training as `train_guess` has it and compiling as
    `compile_guess` has it. The compile pool (`workers` threads) overlaps
    compiling with training, but not the first compile: wall ≈ first
    compile + max(training, the other compiles / workers). None without a
    recorded rate. Cohorts that share a program (`compiled`) compile it once."""
    timed = [r for r in rows if r.get("train_seconds") and r.get("flop")]
    if not timed or not todo:
        return None
    # a program compiles once, for the first cohort that runs it
    first = {compiled(item[0]): i for i, item in reversed(list(enumerate(todo)))}
    seconds = [compile_guess(rows, item[0]) if first[compiled(item[0])] == i else 0.0
               for i, item in enumerate(todo)]
    fits = fitted(rows)
    train = sum(train_guess(rows, key, flop, rest[0] if rest else None, fits)
                for key, flop, *rest in todo)
    compile_total = sum(seconds)
    wall = seconds[0] + max(train, (compile_total - seconds[0]) / max(1, workers))
    trained = {_shape(r.get("program", "")) for r in timed}
    return wall, train, compile_total, sum(_shape(item[0]) not in trained for item in todo)


def grow_chunking(config: Config, cohort: plan.Cohort, n_records: int, budget_bytes: int,
                  new: int, kept: int, rows: list[dict]) -> plan.Chunking:
    """The chunks that train a grow's `new` networks of `cohort` when `kept`
    are on disk from an earlier launch. Chunks of the size that launch
    compiled (`plan.chunking` of `kept` members), the last padded, so that
    when only seeds or rates were added its programs are found compiled (in
    this process or the persistent cache); unless that takes more chunks,
    or by this machine's recorded times (`rows`) the padding trains for
    longer than compiling a program of the new size takes. Otherwise, and
    with the cache off, chunks as few and as equal as the cohort's size
    allows."""
    whole = plan.chunking(config, cohort, n_records, budget_bytes)
    count = -(-new // whole.size)
    fresh = plan.Chunking(size=-(-new // count), count=count)
    earlier = plan.chunking(config, cohort, n_records, budget_bytes, kept).size
    padded = plan.Chunking(size=earlier, count=-(-new // earlier))
    extra = padded.size * padded.count - new
    if padded == fresh or padded.count > fresh.count or not cache_on():
        return fresh
    timed = [r for r in rows if r.get("train_seconds") and r.get("flop")]
    if extra == 0 or not timed:
        return padded
    fresh_key = program_key(config, cohort, fresh.size)
    padded_key = program_key(config, cohort, padded.size)
    extra_seconds = plan.train_flop(config, cohort) * extra / cohort.size \
        / rate_guess(timed, padded_key)
    worth = extra_seconds + compile_guess(rows, padded_key) <= compile_guess(rows, fresh_key)
    return padded if worth else fresh
