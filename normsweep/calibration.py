"""Compile and training times of the cohorts this machine has run, so that
the dry run estimates a launch from measurements instead of stored figures.

Every cohort a launch trains appends one JSON line to the timings file
(`path`; default ~/.cache/normsweep/timings.jsonl, beside the compile
cache; $NORMSWEEP_TIMINGS moves it, "off" turns it off): the backend and
device kind, the program's shape (`program_key`), the training FLOPs and
the seconds spent compiling and training. `estimate` reads them back. JAX
is not imported here: the dry run's caller passes the backend in.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from normsweep import plan
from normsweep.config import Config

RECENT = 5      # compile times per program shape: the median of the latest few


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
    the layer sizes, the training set's size, dtype, output, loss and the
    probes that are on."""
    cfg = plan.cohort_config(config, cohort)
    on = ",".join([*cfg.record.schedules(), *(["spectra"] if cfg.record.spectra else [])])
    return (f"dims={cohort.dims(cfg.data.d, cfg.data.k)} n={cfg.data.n} "
            f"{cfg.train.dtype} {cfg.model.output} {cfg.train.loss} probes={on or '-'}")


def program_key(config: Config, cohort: plan.Cohort, members: int | None = None) -> str:
    """`program_shape` and the members the program trains (default: the
    whole cohort; a grow trains only the new ones): one compiled program."""
    return f"{program_shape(config, cohort)} members={members or cohort.size}"


def record(backend: str, device: str, key: str, flop: float, train_seconds: float,
           compile_seconds: float | None) -> None:
    """Appends one cohort's times (an append of one short line: concurrent
    writers do not interleave). A file that cannot be written is skipped:
    timings are no reason to fail a launch."""
    where = path()
    if where is None:
        return
    line = json.dumps({"backend": backend, "device": device, "program": key, "flop": flop,
                       "train_seconds": train_seconds, "compile_seconds": compile_seconds,
                       "cache": cache_on(), "time": time.time()}) + "\n"
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        with open(where, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError:
        pass


def load(backend: str, device: str) -> list[dict]:
    """The recorded cohorts of this backend and device kind, oldest first
    (lines that do not parse are skipped)."""
    where = path()
    if where is None or not where.exists():
        return []
    rows = []
    try:
        text = where.read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("backend") == backend \
                and row.get("device") == device:
            rows.append(row)
    return rows


HIT_SHARE = 0.2     # a cache hit's compile time over a miss's, before any hit is recorded:
                    # 0.1–0.5 measured on the quickstart's cohorts (CPU, 2 cores)


def hits(rows: list[dict]) -> list[bool]:
    """Per row, whether its compile was a persistent-cache hit: the same
    program was recorded before, and the cache was on both times."""
    seen, out = set(), []
    for r in rows:
        key = r.get("program")
        out.append(bool(r.get("cache")) and key in seen)
        if r.get("cache"):
            seen.add(key)
    return out


def _shape(key: str) -> str:
    return key.rsplit(" members=", 1)[0]


def compile_guess(rows: list[dict], key: str) -> float:
    """The compile time of program `key` from `rows`: a cache hit when it
    was compiled before with the cache on (and it is on now), at its own
    latest hits, or `HIT_SHARE` of its misses; else a miss, at the latest
    misses of the same program, of the same shape with other members, of
    the same probes, or of any program, the first of these that has any."""
    compiled = [(r, hit) for r, hit in zip(rows, hits(rows)) if r.get("compile_seconds")]
    own = [(r["compile_seconds"], hit) for r, hit in compiled if r.get("program") == key]
    if own and cache_on() and any(r.get("cache") for r, _ in compiled
                                  if r.get("program") == key):
        warm = [c for c, hit in own if hit][-RECENT:]
        cold = [c for c, hit in own if not hit][-RECENT:]
        return statistics.median(warm) if warm else HIT_SHARE * statistics.median(cold)
    probes = key.split(" probes=")[1].split(" ")[0] if " probes=" in key else None
    for same in (lambda r: r.get("program") == key,
                 lambda r: _shape(r.get("program", "")) == _shape(key),
                 lambda r: probes is not None and f" probes={probes} " in r.get("program", ""),
                 lambda r: True):
        cold = [r["compile_seconds"] for r, hit in compiled if not hit and same(r)][-RECENT:]
        if cold:
            return statistics.median(cold)
    return 0.0


def rate_guess(timed: list[dict], key: str) -> float:
    """The training FLOP rate of program `key`: the median rate the latest
    recorded cohorts of its shape achieved (any members), else of any
    program."""
    for same in (lambda r: _shape(r.get("program", "")) == _shape(key), lambda r: True):
        rates = [r["flop"] / r["train_seconds"] for r in timed if same(r)][-4 * RECENT:]
        if rates:
            return statistics.median(rates)
    raise ValueError("no recorded training time")


def estimate(rows: list[dict], todo: list[tuple[str, float]], workers: int = 1
             ) -> tuple[float, float, float] | None:
    """(wall seconds, training seconds, compile seconds) of a launch that
    trains `todo` ((program key, FLOPs) per cohort), from `rows`: training at
    `rate_guess`'s FLOP rate and compiling as `compile_guess` has it. The
    compile pool (`workers` threads) overlaps compiling with training, but
    not the first compile: wall ≈ first compile + max(training, the other compiles / workers). None
    without a recorded rate."""
    timed = [r for r in rows if r.get("train_seconds") and r.get("flop")]
    if not timed or not todo:
        return None
    seconds = [compile_guess(rows, key) for key, _ in todo]
    train = sum(flop / rate_guess(timed, key) for key, flop in todo)
    compile_total = sum(seconds)
    wall = seconds[0] + max(train, (compile_total - seconds[0]) / max(1, workers))
    return wall, train, compile_total


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
