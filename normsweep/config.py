"""Grid files: TOML text in, frozen and validated `Config` out.

The grid file is parsed once, here. Nothing in it is ever evaluated as code:
an axis is a number, a list of numbers or a table ``{values = [...]}``,
``{geomspace = [start, stop, num]}`` or ``{linspace = [start, stop, num]}``.
Every error names the file, the key, the value and what is allowed.

Example::

    name = "tiny"
    [train]
    steps = 50
    [grid]
    width = [16, 32]
    depth = [3]
    lr = { geomspace = [0.01, 1.0, 3] }
    seed = [0, 1]
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import math
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import tomli_w

from normsweep import probes
from normsweep.errors import GridError

INITS = ("he", "width")
OUTPUTS = ("softmax", "linear")
PARAMETRIZATIONS = ("standard", "ntk", "mup")
LOSSES = ("mse", "cross_entropy")
DTYPES = ("float32", "float64")
PRECISIONS = ("highest", "high", "default")
PROGRAMS = ("width", "cohort")     # one compiled program per width, or per (width, depth)
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")     # matched whole (fullmatch)
MAX_NAME = 128          # a folder name, with room for the files normsweep writes in it
MAX_GRID_BYTES = 1 << 20        # a grid file is copied into every results file
MAX_NESTING = 8         # tables and lists in one --set value (a grid needs 3)
# control characters (line breaks among them) in a --set item: the effective
# grid is recorded as TOML text, where a line break would end a comment early
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_SEED = 2**31 - 1
# a record's Lanczos basis holds this many vectors, and its tridiagonal matrix
# is squared 24 times; 100 steps already reach 2e-8 of an SVD from a cold start
MAX_LANCZOS_STEPS = 200
SECTIONS = ("data", "model", "train", "record")     # Config's sections of `setting`s
# keys renamed since results folders were first written: {new: old}
ALIASES = {"record.lanczos_steps": "record.power_iters"}
# what a results file holds beyond its settings: raised when normsweep records
# more by default (the margin, the Jacobian at "log"), so that folders written
# before hold other content under another fingerprint. Files store it as the
# attribute `record_format`; files without it are format 1.
RECORD_FORMAT = 2
# the settings that choose which networks of a cohort exist, not what they are
MEMBER_KEYS = ("grid.lr", "grid.seed", "grid.parametrization", "grid.weight_decay",
               "model.parametrization", "train.weight_decay")


def setting(default: Any, check: Callable[[_Parser], Callable]) -> Any:
    """A grid-file key of a section, written once: its default, and `check`,
    which makes its validator for a file's parser (`_Parser`). A section's
    keys, `Config.settings()` and the fingerprint all derive from these."""
    return dataclasses.field(default=default, metadata={"check": check})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training set: `n` points uniform on the unit sphere S^{d-1} in R^d,
    each with a random one-hot target over `k` classes, drawn from `seed`."""
    n: int = setting(1024, lambda p: p.integer(1))
    d: int = setting(16, lambda p: p.integer(2))
    k: int = setting(10, lambda p: p.integer(2))
    seed: int = setting(0, lambda p: p.integer(0, MAX_SEED))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """`init`: "he" draws W_l ~ N(0, 2/fan_in); "width" draws every entry of
    every layer from N(0, 2/width). `output`: "softmax" or "linear" (logits).
    `parametrization`: "standard", "ntk" or "mup" (see model.lr_multipliers)."""
    init: str = setting("he", lambda p: p.choice(INITS))
    output: str = setting("softmax", lambda p: p.choice(OUTPUTS))
    parametrization: str = setting("standard", lambda p: p.choice(PARAMETRIZATIONS))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Full-batch gradient descent for `steps` steps on `loss` in `dtype`.
    `matmul_precision`: "highest" computes float32 matmuls in full float32 on
    every backend; "high"/"default" let a GPU or TPU use TF32/bf16 passes
    (faster, about 1e-3 relative error per product; the same on CPU).
    `weight_decay` λ ≥ 0: each step also subtracts η·λ·W_l (see step.optimizer).
    `programs`: "cohort" compiles one program per (width, depth), "width"
    one per width that trains every depth of the grid
    (`step.Program.shallowest`): fewer compilations, slower training of the
    shallower networks; results agree to rounding."""
    loss: str = setting("mse", lambda p: p.choice(LOSSES))
    steps: int = setting(2000, lambda p: p.integer(1, 10**9))
    dtype: str = setting("float32", lambda p: p.choice(DTYPES))
    matmul_precision: str = setting("highest", lambda p: p.choice(PRECISIONS))
    weight_decay: float = setting(0.0, lambda p: p.nonnegative)
    programs: str = setting("cohort", lambda p: p.choice(PROGRAMS))


def with_probes(cls: type) -> type:
    """`cls` with a `setting` for each probe's schedule and sizes
    (`probes.PROBES`, where each probe is declared once), after its own."""
    for probe in probes.PROBES.values():
        cls.__annotations__[probe.key] = int | str
        setattr(cls, probe.key, setting(probe.default, lambda p: p.probe))
        for key, (default, lo, hi) in probe.sizes.items():
            cls.__annotations__[key] = int
            setattr(cls, key, setting(default, lambda p, lo=lo, hi=hi: p.integer(lo, hi)))
    return cls


@dataclasses.dataclass(frozen=True)
@with_probes
class RecordConfig:
    """Which steps are recorded: "log" (log-spaced, at most `log_points` of
    them, always step 0 and the last step), "all", or an integer stride (every
    stride-th step and the last). `weights` keeps initial and final weights.
    `lanczos_steps`: Lanczos steps (products with WᵀW) per record and
    matrix, warm-started from the previous record (`power_iters` is accepted
    as its old name). `spectra`: the singular values of W_l and W_l − W_l(0)
    and the effective rank of the gradient, at step 0 and the last step.
    Then each probe's keys (`with_probes`): its schedule, 0 (off), a stride
    s (the recorded steps that are multiples of s, and the last step) or
    "log" (`probe_points` of the recorded steps, spread evenly in log(step),
    step 0 and the last included; all of them when there are no more), and
    its sizes."""
    steps: str | int = setting("log", lambda p: p.schedule)
    weights: bool = setting(False, lambda p: p.boolean)
    lanczos_steps: int = setting(10, lambda p: p.integer(1, MAX_LANCZOS_STEPS))
    log_points: int = setting(256, lambda p: p.integer(2, 100_000))
    probe_points: int = setting(16, lambda p: p.integer(2, 100_000))
    spectra: bool = setting(False, lambda p: p.boolean)

    def schedules(self) -> dict[str, int | str]:
        """The probes that are on, by name, with their schedules."""
        return {name: getattr(self, probe.key) for name, probe in probes.PROBES.items()
                if getattr(self, probe.key)}


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """The axes of the sweep, each sorted ascending and free of duplicates.

    `lr` holds η₀; a network of width m trains with η = η₀·m^`lr_width_exponent`.
    """
    width: tuple[int, ...]
    depth: tuple[int, ...]
    lr: tuple[float, ...]
    seed: tuple[int, ...] = (0,)
    lr_width_exponent: float = 0.0
    parametrization: tuple[str, ...] | None = None   # an axis only when given
    weight_decay: tuple[float, ...] | None = None    # an axis only when given
    n: tuple[int, ...] | None = None                 # data axes, only when given: each
    d: tuple[int, ...] | None = None                 # (n, d) is a training set of its own

    def lr_effective(self, width: int) -> np.ndarray:
        """The learning rates η actually used at `width`, one per `lr` value."""
        return np.asarray(self.lr, np.float64) * float(width) ** self.lr_width_exponent

    @property
    def size(self) -> int:
        extra = len(self.parametrization or (0,)) * len(self.weight_decay or (0,)) \
            * len(self.n or (0,)) * len(self.d or (0,))
        return len(self.width) * len(self.depth) * len(self.lr) * len(self.seed) * extra


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole grid file, validated. `text` is the file as read."""
    name: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    record: RecordConfig
    grid: GridConfig
    text: str = dataclasses.field(default="", compare=False, repr=False)
    source: str = dataclasses.field(default="<string>", compare=False, repr=False)

    def settings(self) -> dict[str, Any]:
        """Every setting that shapes a cohort's content, as plain values.

        Two launches into one folder must agree on all of these; the width
        and depth axes may differ (a relaunch may add cohorts).
        """
        out = {f"{name}.{f.name}": getattr(getattr(self, name), f.name)
               for name in SECTIONS for f in dataclasses.fields(getattr(self, name))}
        grid = self.grid
        out.update({"grid.lr": list(grid.lr), "grid.lr.width_exponent": grid.lr_width_exponent,
                    "grid.seed": list(grid.seed),
                    "grid.parametrization": list(grid.parametrization or []),
                    "grid.weight_decay": list(grid.weight_decay or []),
                    # which of [data]'s sizes are axes: that changes the cohorts'
                    # layout (their values, like width's, may grow between launches)
                    "grid.data_axes": [a for a in ("n", "d") if getattr(grid, a)]})
        return out

    def data_sizes(self) -> list[tuple[int, int]]:
        """The (n, d) of every training set of the grid: the product of the
        n and d axes, or [data]'s one value where there is no axis."""
        return [(n, d) for n in (self.grid.n or (self.data.n,))
                for d in (self.grid.d or (self.data.d,))]

    def with_data(self, n: int, d: int) -> Config:
        """This grid with [data]'s n and d set: the settings one training set
        of a grid with n or d axes trains with."""
        return dataclasses.replace(self, data=dataclasses.replace(self.data, n=n, d=d))

    def parametrizations(self) -> tuple[str, ...]:
        """The parametrizations trained: the grid axis, or [model]'s one value."""
        return self.grid.parametrization or (self.model.parametrization,)

    def weight_decays(self) -> tuple[float, ...]:
        """The weight decays trained: the grid axis, or [train]'s one value."""
        return self.grid.weight_decay or (self.train.weight_decay,)

    def member_axes(self) -> tuple[str, ...]:
        """The dims a cohort's members span, outer to inner: parametrization
        and weight_decay only when they are grid axes."""
        return tuple(name for name, on in (("parametrization", self.grid.parametrization),
                                           ("lr", True), ("weight_decay", self.grid.weight_decay),
                                           ("seed", True)) if on)

    def member_values(self) -> dict[str, tuple]:
        """The values each member axis takes, the grid's or the one fixed in
        [model]/[train]: the networks of a cohort are their product."""
        return {"parametrization": self.parametrizations(), "lr": self.grid.lr,
                "weight_decay": self.weight_decays(), "seed": self.grid.seed}

    def core_settings(self) -> dict[str, Any]:
        """`settings()` but the member axes' values (`MEMBER_KEYS`): what the
        networks a folder already holds depend on. Two grids with equal core
        settings differ only in which networks they train."""
        return {k: v for k, v in self.settings().items() if k not in MEMBER_KEYS}

    def fingerprint(self) -> str:
        """A short hash of `settings()` and `RECORD_FORMAT`: equal
        fingerprints combine.

        Settings at their default value are left out of the hash, so a setting
        added to normsweep later (with a default that keeps the old
        behaviour) does not change the fingerprints of existing folders; a
        change of what is recorded by default raises `RECORD_FORMAT`."""
        defaults = default_settings()
        # hashed under a key's first name, so a rename keeps old folders' fingerprints
        kept = [(ALIASES.get(k, k), v) for k, v in self.settings().items()
                if k not in defaults or defaults[k] != v]
        kept.append(("record_format", RECORD_FORMAT))
        return hashlib.sha256(repr(sorted(kept)).encode()).hexdigest()[:16]


def default_settings() -> dict[str, Any]:
    """`Config.settings()` of a grid that sets nothing but its axes (whose
    values are never left out: they have no default)."""
    grid = GridConfig(width=(1,), depth=(2,), lr=(), seed=())
    base = Config("default", DataConfig(), ModelConfig(), TrainConfig(), RecordConfig(), grid)
    return {k: v for k, v in base.settings().items() if k not in ("grid.lr", "grid.seed")}


def load(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Reads and validates the grid file at `path`, with `overrides`
    ("KEY=VALUE", see `parse`) applied."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_GRID_BYTES + 1)
        if len(raw) > MAX_GRID_BYTES:
            raise GridError(str(path), None, str(path),
                            f"{path} is larger than {MAX_GRID_BYTES // 1024} KiB: a grid file "
                            "holds settings and axes, not data")
        text = raw.decode("utf-8")
    except OSError as err:
        reason = {errno.ENOENT: "no such file", errno.EISDIR: "it is a folder",
                  errno.EACCES: "permission denied"}.get(err.errno, err.strerror or str(err))
        raise GridError(str(path), None, str(path), f"cannot read {path}: {reason}") from None
    except UnicodeDecodeError as err:
        raise GridError(str(path), None, str(path),
                        f"cannot read {path}: not UTF-8 text (byte {err.start})") from None
    return parse(text, source=str(path), default_name=path.stem, overrides=overrides)


def override_value(source: str, item: str) -> tuple[list[str], Any]:
    """"KEY=VALUE" as (the key's parts, the value): VALUE is a TOML value
    (`100`, `[0.01, 0.1]`, `"mup"`, `{ geomspace = [1e-3, 1, 4] }`); a bare
    word (`mup`) is taken as a string."""
    bad = CONTROL_RE.search(item)
    if bad:
        raise GridError(source, "--set", item, f"holds the control character {bad.group()!r}: "
                                               "a key or value is one line of printable text")
    key, sep, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
        raise GridError(source, "--set", item, "must be KEY=VALUE with a dotted key, "
                                               "e.g. train.steps=100 or grid.lr='[0.01, 0.1]'")
    if key.count(".") >= MAX_NESTING or _nesting(value) > MAX_NESTING:
        raise GridError(source, "--set", item, f"is nested more than {MAX_NESTING} deep: a "
                                               "grid's keys and values nest at most 3 deep")
    try:
        return key.split("."), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        if re.fullmatch(r"[A-Za-z_][\w.-]*", value):
            return key.split("."), value
        raise GridError(source, key, value, "(--set) is not a TOML value: write numbers as "
                                            "100 or 1e-3, lists as [1, 2], strings as \"text\"")\
            from None


def _nesting(value: str) -> int:
    """The deepest bracket nesting of a TOML value's text (brackets inside
    strings count too: this only bounds the parser's recursion)."""
    depth = deepest = 0
    for char in value:
        depth += char in "[{"
        depth -= char in "]}"
        deepest = max(deepest, depth)
    return deepest


def apply_overrides(raw: dict, overrides: Sequence[str], source: str) -> dict:
    """`raw` (a parsed grid file) with each "KEY=VALUE" of `overrides` set,
    in order. A new list of learning rates keeps the file's width_exponent.
    A key given twice is refused: which one was meant is not known."""
    raw = copy.deepcopy(raw)
    given: dict[str, str] = {}
    for item in overrides:
        parts, value = override_value(source, item)
        key = ".".join(parts)
        if key in given:
            raise GridError(source, key, item, f"is set twice (--set {given[key]} and --set "
                                               f"{item}): give each key once")
        given[key] = item
        table = raw
        for i, part in enumerate(parts[:-1]):
            inner = table.setdefault(part, {})
            if part == "lr" and parts[:i] == ["grid"] and not isinstance(inner, dict):
                inner = table[part] = {"values": inner}     # grid.lr.width_exponent on a list
            if not isinstance(inner, dict):
                raise GridError(source, ".".join(parts[:i + 1]), inner,
                                f"(--set {item}) is a value, not a table")
            table = inner
        old = table.get(parts[-1])
        if parts == ["grid", "lr"] and isinstance(old, dict) and "width_exponent" in old \
                and not isinstance(value, dict):
            value = {"values": value, "width_exponent": old["width_exponent"]}
        table[parts[-1]] = value
    return raw


def parse(text: str, source: str = "<string>", default_name: str | None = None,
          overrides: Sequence[str] = ()) -> Config:
    """Parses grid-file `text`; `source` names it in error messages.

    `overrides` ("KEY=VALUE", as `normsweep launch --set`) replace or add
    keys before validation; the Config's `text` is then the effective grid,
    written out as TOML, so that the results folder records what ran."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_GRID_BYTES:
        raise GridError(source, "(file)", f"{len(text)} characters",
                        f"is larger than {MAX_GRID_BYTES // 1024} KiB: a grid file holds "
                        "settings and axes, not data")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise GridError(source, "(TOML syntax)", _first_line(err), "not valid TOML") from None
    except RecursionError:
        raise GridError(source, "(TOML syntax)", "(nesting)",
                        "tables or arrays nested too deeply") from None
    if overrides:
        source = f"{source} with --set"
        raw = apply_overrides(raw, overrides, source)
        raw.setdefault("name", default_name)
        try:
            comment = CONTROL_RE.sub(lambda m: ascii(m.group())[1:-1],
                                     f"{source} {shlex.join(overrides)}")
            text = f"# {comment}\n" + tomli_w.dumps(raw)
        except (TypeError, ValueError) as err:
            raise GridError(source, "--set", " ".join(overrides), f"gives no valid grid: {err}") \
                from None
    p = _Parser(source)
    p.known(raw, "", {"name", "data", "model", "train", "record", "grid"})
    name = raw.get("name", default_name)
    if name is None:
        raise GridError(source, "name", None, "required: a plain identifier")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", "..") \
            or len(name) > MAX_NAME:
        raise GridError(source, "name", name,
                        "must be a plain identifier of letters, digits, '.', '_' and '-', "
                        f"at most {MAX_NAME} characters")
    data = p.section(raw, "data", DataConfig)
    model = p.section(raw, "model", ModelConfig)
    if model.parametrization == "mup" and model.init != "he":
        raise GridError(source, "model.init", model.init,
                        'parametrization = "mup" sets its own init; leave init at "he"')
    train = p.section(raw, "train", TrainConfig)
    record = p.section(raw, "record", RecordConfig)
    if train.loss == "cross_entropy" and model.output != "softmax":
        raise GridError(source, "train.loss", train.loss,
                        "cross_entropy needs model.output = \"softmax\"")
    grid = p.grid(raw.get("grid"), train.dtype)
    for key, section in (("parametrization", "model"), ("weight_decay", "train"), ("n", "data"),
                         ("d", "data")):
        if getattr(grid, key) is not None and key in raw.get(section, {}):
            raise GridError(source, f"{section}.{key}", raw[section][key],
                            f"give {key} either in [{section}] or as the [grid] axis, not both")
    if "mup" in (grid.parametrization or ()) and model.init != "he":
        raise GridError(source, "model.init", model.init,
                        'a parametrization axis with "mup" needs init = "he" (mup sets its own)')
    smallest = min(grid.n or (data.n,))
    if record.ntk_eigs and record.ntk_points > smallest:
        where = "the smallest grid.n" if grid.n else "data.n"
        raise GridError(source, "record.ntk_points", record.ntk_points,
                        f"must be at most {where} = {smallest}")
    return Config(name, data, model, train, record, grid, text=text, source=source)


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0]


class _Parser:
    """Validators bound to one source file, so every error can name it."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, value: object, allowed: str) -> GridError:
        return GridError(self.source, key, value, allowed)

    def known(self, table: dict, prefix: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                import difflib

                full = f"{prefix}{key}"
                near = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f"did you mean {near[0]}? " if near else ""
                raise self.fail(full, table[key],
                                f"unknown key; {hint}allowed here: {', '.join(sorted(allowed))}")

    def section(self, raw: dict, name: str, cls: type) -> Any:
        """The section `name` of the file as `cls`, each key checked by its
        `setting`'s validator; keys left out take their defaults."""
        fields = {f.name: f.metadata["check"](self) for f in dataclasses.fields(cls)}
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise self.fail(name, table, "must be a table ([" + name + "])")
        given = {}                      # field: the key the file used for it (an alias or its own)
        aliases = {old.split(".", 1)[1]: new.split(".", 1)[1] for new, old in ALIASES.items()
                   if new.startswith(name + ".")}
        self.known(table, name + ".", set(fields) | set(aliases))
        for key in table:
            field = aliases.get(key, key)
            if field in given:
                old = key if key != field else given[field]
                raise self.fail(f"{name}.{key}", table[key],
                                f"{name}.{field} and its old name {name}.{old} are both "
                                "given: give one of them")
            given[field] = key
        values = {field: fields[field](f"{name}.{key}", table[key]) for field, key in given.items()}
        return cls(**values)

    # -- scalar validators: each takes (key, value) and returns the value --
    def integer(self, lo: int, hi: int | None = None):
        def check(key: str, value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, value, f"must be an integer ≥ {lo}")
            if value < lo or (hi is not None and value > hi):
                bound = f"between {lo} and {hi}" if hi is not None else f"≥ {lo}"
                raise self.fail(key, value, f"must be an integer {bound}")
            return value
        return check

    def choice(self, options: tuple[str, ...]):
        def check(key: str, value: object) -> str:
            if value not in options:
                raise self.fail(key, value,
                                "must be one of " + ", ".join(f'"{o}"' for o in options))
            return value
        return check

    def boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, value, "must be true or false")
        return value

    def schedule(self, key: str, value: object) -> str | int:
        if value in ("log", "all"):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise self.fail(key, value, 'must be "log", "all" or a stride (an integer ≥ 1)')

    def probe(self, key: str, value: object) -> str | int:
        if value == "log":
            return value
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**9:
            return value
        raise self.fail(key, value, 'must be 0 (off), "log" or a stride (an integer ≥ 1)')

    # -- the grid --
    def grid(self, table: object, dtype: str = "float32") -> GridConfig:
        if table is None:
            raise self.fail("grid", None, "required: a [grid] table with width, depth and lr")
        if not isinstance(table, dict):
            raise self.fail("grid", table, "must be a table ([grid])")
        self.known(table, "grid.", {"width", "depth", "lr", "seed", "parametrization",
                                    "weight_decay", "n", "d"})
        for key in ("width", "depth", "lr"):
            if key not in table:
                raise self.fail(f"grid.{key}", None, "required")
        width = self.axis("grid.width", table["width"], integer=True, lo=1)
        depth = self.axis("grid.depth", table["depth"], integer=True, lo=2, hi=1000)
        lr, exponent = self.lr_axis(table["lr"])
        seed = self.axis("grid.seed", table.get("seed", [0]), integer=True, lo=0, hi=MAX_SEED)
        if width[-1] > 1_000_000:
            raise self.fail("grid.width", width[-1], "must be at most 1000000")
        info = np.finfo(dtype)
        for m in width:
            eff = np.asarray(lr) * float(m) ** exponent
            if not np.all(np.isfinite(eff)) or np.any(eff <= 0):
                raise self.fail("grid.lr", list(lr),
                                f"lr·width^{exponent} must be finite and > 0 (fails at width {m})")
            # η rounds to 0 (or loses its precision) in the training dtype:
            # the run would silently train with another rate, or none
            for lr0, e in zip(lr, eff):
                if not info.tiny <= e <= info.max:
                    at = f" (lr·width^{exponent:g} = {e:.3g} at width {m})" if exponent else ""
                    raise self.fail("grid.lr", lr0,
                                    f"every learning rate{at} must lie between {info.tiny:.3g} "
                                    f"and {info.max:.3g}, the normal numbers of train.dtype = "
                                    f'"{dtype}"')
        param = None
        if "parametrization" in table:
            param = self.names("grid.parametrization", table["parametrization"], PARAMETRIZATIONS)
        wd = None
        if "weight_decay" in table:
            wd = self.axis("grid.weight_decay", table["weight_decay"], integer=False, lo=0.0)
        n = self.axis("grid.n", table["n"], integer=True, lo=1) if "n" in table else None
        d = self.axis("grid.d", table["d"], integer=True, lo=2) if "d" in table else None
        return GridConfig(width, depth, lr, seed, exponent, param, wd, n, d)

    def names(self, key: str, value: object, options: tuple[str, ...]) -> tuple[str, ...]:
        """An axis of names: a non-empty list of distinct options, in the order given."""
        allowed = "a name or a non-empty list of distinct names from " \
            + ", ".join(f'"{o}"' for o in options)
        if isinstance(value, str):
            value = [value]             # one name: an axis of one
        if not isinstance(value, list) or not value:
            raise self.fail(key, value, allowed)
        for v in value:
            if v not in options:
                raise self.fail(key, v, allowed)
        if len(set(value)) != len(value):
            raise self.fail(key, value, allowed)
        return tuple(value)

    def nonnegative(self, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise self.fail(key, value, "must be a finite number ≥ 0")
        return float(value)

    def lr_axis(self, value: object) -> tuple[tuple[float, ...], float]:
        exponent = 0.0
        if isinstance(value, dict) and "width_exponent" in value:
            value = dict(value)
            exponent = value.pop("width_exponent")
            if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) \
                    or not math.isfinite(exponent) or abs(exponent) > 4:
                raise self.fail("grid.lr.width_exponent", exponent,
                                "must be a finite number between -4 and 4")
        lr = self.axis("grid.lr", value, integer=False, lo=0.0, open_lo=True)
        return lr, float(exponent)

    def axis(self, key: str, value: object, *, integer: bool, lo: float,
             hi: float | None = None, open_lo: bool = False) -> tuple:
        """One axis: a list or a {values|geomspace|linspace} table."""
        kinds = "a list, or a table {values = [...]}, {geomspace = [start, stop, num]} " \
                "or {linspace = [start, stop, num]}"
        if isinstance(value, dict):
            if len(value) != 1 or next(iter(value)) not in ("values", "geomspace", "linspace"):
                extra = " (and width_exponent)" if key == "grid.lr" else ""
                raise self.fail(key, value, f"a table axis has exactly one of values, geomspace, "
                                            f"linspace{extra}")
            (form, spec), = value.items()
            key = f"{key}.{form}"
            values = spec if form == "values" else self.spaced(key, form, spec, integer)
        elif isinstance(value, list):
            values = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [value]            # one value: an axis of one
        else:
            raise self.fail(key, value, f"must be a number or {kinds}")
        if not isinstance(values, list) or not values:
            raise self.fail(key, values, "must be a non-empty list")
        out = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.fail(key, v, "every value must be a number")
            if integer and (isinstance(v, float) and not v.is_integer()):
                raise self.fail(key, v, "every value must be an integer")
            if not math.isfinite(v):
                raise self.fail(key, v, "every value must be finite")
            bad_lo = v <= lo if open_lo else v < lo
            if bad_lo or (hi is not None and v > hi):
                rel = ">" if open_lo else "≥"
                rng = f"{rel} {lo}" + (f" and ≤ {hi}" if hi is not None else "")
                raise self.fail(key, v, f"every value must be {rng}")
            out.append(int(v) if integer else float(v))
        if len(set(out)) != len(out):
            dup = sorted({v for v in out if out.count(v) > 1})
            raise self.fail(key, values, f"values must be distinct (repeated: {dup})")
        return tuple(sorted(out))

    def spaced(self, key: str, form: str, spec: object, integer: bool) -> list:
        if (not isinstance(spec, list) or len(spec) != 3
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in spec)):
            raise self.fail(key, spec, "must be [start, stop, num]")
        start, stop, num = spec
        if not (math.isfinite(start) and math.isfinite(stop)):
            raise self.fail(key, spec, "start and stop must be finite")
        if not isinstance(num, int) or not 1 <= num <= 10_000:
            raise self.fail(key, spec, "num must be an integer between 1 and 10000")
        if form == "geomspace":
            if start <= 0 or stop <= 0:
                raise self.fail(key, spec, "geomspace needs start > 0 and stop > 0")
            values = np.geomspace(start, stop, num)
        else:
            values = np.linspace(start, stop, num)
        if integer:
            rounded = np.rint(values)
            if len(set(rounded.tolist())) != len(rounded):
                raise self.fail(key, spec, "rounds to repeated integers; use fewer points "
                                           "or a list")
            return [int(v) for v in rounded]
        return [float(v) for v in values]
