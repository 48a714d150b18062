"""From a validated `Config` to the work to do: cohorts, record steps, keys.

A *cohort* is every grid point that shares (width, depth): one compiled
program, vmapped over its *members*, the (lr, seed) pairs in row-major order
(lr outer, seed inner); with a parametrization or weight-decay axis in the
grid, the (parametrization, lr, weight_decay, seed) tuples, in that order.
A cohort whose members do not fit the memory budget is split into equal
*chunks* (the last padded by repeating a member), so all chunks of a cohort
run the same compiled program. No JAX here: reading results plans too
(the keys are `data.data_key` and `data.member_keys`).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from normsweep.config import Config
from normsweep.errors import GridError

DTYPE_BYTES = {"float32": 4, "float64": 8}


@dataclasses.dataclass(frozen=True)
class Cohort:
    """The grid points of one (width, depth)."""
    width: int
    depth: int
    lr: tuple[float, ...]            # η₀, as in the grid
    lr_effective: tuple[float, ...]  # η used at this width
    seed: tuple[int, ...]
    parametrization: tuple[str, ...] = ("standard",)
    weight_decay: tuple[float, ...] = (0.0,)
    axes: tuple[str, ...] = ("lr", "seed")   # the member dims, outer to inner
    n: int | None = None             # the training set's size, where the grid has an n axis
    d: int | None = None             # its dimension, where the grid has a d axis

    @property
    def name(self) -> str:
        data = "".join(f"{a}{v}_" for a, v in (("n", self.n), ("d", self.d)) if v is not None)
        return f"{data}width{self.width}_depth{self.depth}"

    @property
    def data_axes(self) -> tuple[str, ...]:
        """"n" and "d" where the grid has those axes: dims of the cohort's
        variables, after width and depth."""
        return tuple(a for a in ("n", "d") if getattr(self, a) is not None)

    @property
    def outer(self) -> dict[str, int]:
        """The cohort's own dims and values: width, depth, and n and d
        where the grid has those axes."""
        return {"width": self.width, "depth": self.depth,
                **{a: v for a, v in (("n", self.n), ("d", self.d)) if v is not None}}

    @property
    def size(self) -> int:
        return len(self.parametrization) * len(self.lr) * len(self.weight_decay) * len(self.seed)

    @property
    def shape(self) -> tuple[int, ...]:
        """The member dims' sizes, in the order of `axes`."""
        return tuple(len(self.axis_values(name)) for name in self.axes)

    def axis_values(self, name: str) -> tuple:
        return getattr(self, name)

    def _members(self, values, position: int) -> np.ndarray:
        full = (len(self.parametrization), len(self.lr), len(self.weight_decay), len(self.seed))
        shape = [1, 1, 1, 1]
        shape[position] = full[position]
        return np.broadcast_to(np.asarray(values).reshape(shape), full).reshape(-1)

    def member_parametrization(self) -> np.ndarray:
        return self._members(np.asarray(self.parametrization, object), 0)

    def member_lr(self) -> np.ndarray:
        """Effective η of each member."""
        return self._members(np.asarray(self.lr_effective, np.float64), 1)

    def member_weight_decay(self) -> np.ndarray:
        return self._members(np.asarray(self.weight_decay, np.float64), 2)

    def member_seed(self) -> np.ndarray:
        return self._members(np.asarray(self.seed, np.int64), 3)

    def dims(self, d: int, k: int, depth: int | None = None) -> tuple[int, ...]:
        """Layer sizes (d, m, ..., m, k): layer l maps dims[l] → dims[l+1];
        of a network of `depth` (default the cohort's) at its width."""
        return (d,) + (self.width,) * ((depth or self.depth) - 1) + (k,)


def program_depths(config: Config, cohort: Cohort) -> tuple[int, int]:
    """(shallowest, deepest): the depths of the networks that the compiled
    program training `cohort` serves: every depth of the grid at its width
    with `train.programs = "width"`, its own with "cohort"."""
    depths = config.grid.depth if config.train.programs == "width" else (cohort.depth,)
    return min(depths), max(depths)


def spectral_rank(dims) -> int:
    """How many singular values the largest layer of a network with layer
    sizes `dims` has: max_l min(dims[l], dims[l+1])."""
    return max(min(a, b) for a, b in zip(dims[:-1], dims[1:]))


def cohorts(config: Config) -> list[Cohort]:
    """The cohorts of a grid: by training set (n, then d, where those are
    axes), then width, then depth."""
    g = config.grid
    return [Cohort(m, L, g.lr, tuple(float(x) for x in g.lr_effective(m)), g.seed,
                   config.parametrizations(), config.weight_decays(), config.member_axes(),
                   n if g.n else None, d if g.d else None)
            for n, d in config.data_sizes() for m in g.width for L in g.depth]


def cohort_config(config: Config, cohort: Cohort) -> Config:
    """The settings `cohort` trains with: the grid's, with [data]'s n and d
    set to the cohort's where the grid has those axes."""
    if cohort.n is None and cohort.d is None:
        return config
    return config.with_data(cohort.n or config.data.n, cohort.d or config.data.d)


def record_steps(total: int, schedule: str | int, log_points: int = 256) -> np.ndarray:
    """The steps recorded in a run of `total` steps; step 0 is the initialisation.

    "all": every step 0..total. An integer s: 0, s, 2s, ... and `total`.
    "log": 0, then about `log_points` steps spaced evenly in log(step), and
    `total`; every step when total + 1 ≤ log_points.
    """
    if schedule == "all" or (schedule == "log" and total + 1 <= log_points):
        steps = np.arange(total + 1)
    elif schedule == "log":
        # oversample the log grid until, after rounding merges the small
        # steps, `log_points` distinct steps remain
        num = log_points
        while True:
            steps = np.unique(np.concatenate([[0], np.floor(np.geomspace(1, total, num)), [total]]))
            if len(steps) >= log_points:
                steps = steps[:log_points - 1].tolist() + [total]
                steps = np.asarray(steps)
                break
            num += log_points - len(steps)
    else:
        steps = np.unique(np.concatenate([np.arange(0, total + 1, int(schedule)), [total]]))
    return steps.astype(np.int64)


def probe_due(steps: np.ndarray, every: int | str, points: int) -> np.ndarray:
    """Which of the recorded `steps` a probe with schedule `every` measures:
    the multiples of a stride, or for "log" about `points` of them spread
    evenly in log(step) (the recorded step nearest each of a geometric
    sequence from 1 to the last step; all of them when there are no more);
    step 0 and the last always."""
    due = np.zeros(len(steps), bool)
    if not every:
        return due
    if every == "log" and len(steps) <= points:
        due[:] = True
    elif every == "log":
        if steps[-1] >= 1:
            targets = np.log(np.geomspace(1, steps[-1], max(points - 1, 1)))
            with np.errstate(divide="ignore"):
                logs = np.log(np.asarray(steps, np.float64))      # step 0: −inf, never nearest
            due[np.abs(logs[None, :] - targets[:, None]).argmin(axis=1)] = True
    else:
        due = np.asarray(steps) % int(every) == 0
    due[0] = due[-1] = True
    return due


def record_work(config: Config, cohort: Cohort) -> dict:
    """What training one network of `cohort` runs: its steps, its records,
    per probe on how many records it measures (`probe_due`), and "steps_per"
    the cost of one sharpness measurement in steps, for a machine that has
    recorded none: `sharpness_iters` Hessian-vector products, each about
    two steps' forward and backward passes."""
    config = cohort_config(config, cohort)
    steps = record_steps(config.train.steps, config.record.steps, config.record.log_points)
    return {"steps": int(steps[-1]), "records": len(steps),
            "due": {name: int(probe_due(steps, every, config.record.probe_points).sum())
                    for name, every in config.record.schedules().items()},
            "steps_per": {"sharpness": 2 * config.record.sharpness_iters}}


def record_count(total: int, schedule: str | int, log_points: int = 256) -> int:
    """len(record_steps(total, schedule, log_points)), computed without
    building the array (a grid may ask for 10⁹ records; refuse it from this)."""
    if schedule == "all" or (schedule == "log" and total + 1 <= log_points):
        return total + 1
    if schedule == "log":
        return log_points
    every = int(schedule)
    return total // every + 1 + (total % every != 0)


def train_flop(config: Config, cohort: Cohort) -> float:
    """The FLOPs of training a cohort: 6·n·P per network-step (forward 2nP,
    backward 4nP; P the number of weights)."""
    steps = cohort_config(config, cohort).train.steps
    return chunk_size(config, cohort, cohort.size)["step_flop"] * steps


def chunk_size(config: Config, cohort: Cohort, members: int) -> dict[str, float]:
    """The size of a program that trains `members` networks of `cohort`,
    for the time estimate: the FLOPs of one step ("step_flop", 6·n·P per
    network) and the weights ("weights", P per network)."""
    config = cohort_config(config, cohort)
    dims = cohort.dims(config.data.d, config.data.k)
    weights = members * sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return {"step_flop": 6.0 * config.data.n * weights, "weights": float(weights)}


def member_terms(config: Config, cohort: Cohort, n_records: int) -> dict[str, int]:
    """`member_bytes` split by the grid key that drives each part: the input
    layer (data.d), the other weights (grid.width), the activations (data.n)
    and the records (record.steps), so a refusal can name the key to change."""
    config = cohort_config(config, cohort)
    # the program's layers: a shallower network in a program of several
    # depths holds the deepest one's (`program_depths`)
    deepest = program_depths(config, cohort)[1]
    dims = cohort.dims(config.data.d, config.data.k, deepest)
    word = DTYPE_BYTES[config.train.dtype]
    inner = sum(a * b for a, b in zip(dims[1:-1], dims[2:]))
    return {"data.d": 8 * dims[0] * dims[1] * word,
            "grid.width": (8 * inner + 4 * sum(dims[1:])) * word,
            "data.n": 4 * config.data.n * sum(dims[1:]) * word,
            "record.steps": n_records * (7 * deepest + 2) * word}


def member_bytes(config: Config, cohort: Cohort, n_records: int) -> int:
    """A generous estimate of the device memory one member needs."""
    return sum(member_terms(config, cohort, n_records).values())


@dataclasses.dataclass(frozen=True)
class Chunking:
    """How a cohort's members are split: `count` chunks of `size` members."""
    size: int
    count: int

    def slices(self, members: int) -> list[np.ndarray]:
        """Member indices per chunk; the last is padded with its last member."""
        out = []
        for c in range(self.count):
            idx = np.arange(c * self.size, min((c + 1) * self.size, members))
            pad = np.full(self.size - len(idx), idx[-1])
            out.append(np.concatenate([idx, pad]).astype(np.int64))
        return out


def chunking(config: Config, cohort: Cohort, n_records: int, budget_bytes: int,
             members: int | None = None) -> Chunking:
    """The fewest equal chunks whose members (`members` of the cohort's;
    default all of them) fit `budget_bytes` together."""
    per = member_bytes(config, cohort, n_records)
    fit = max(1, budget_bytes // per)
    members = cohort.size if members is None else members
    count = math.ceil(members / fit)
    size = math.ceil(members / count)
    return Chunking(size=size, count=count)


def check_only(config: Config, only: list[dict[str, int]]) -> list[dict[str, int]]:
    """`--only` selections ({"width": 256, "depth": 3}; a cohort matches one
    when it has every value named; parsed by the CLI's `OnlyCohorts`),
    checked against the grid's axes."""
    for selection in only:
        for key, number in selection.items():
            axis = getattr(config.grid, key)
            if number not in axis:
                raise GridError("--only", f"grid.{key}", number,
                                f"must be one of the grid's values {list(axis)}")
    return only


def selected(cohort: Cohort, only: list[dict[str, int]] | None) -> bool:
    return only is None or any(all(getattr(cohort, k) == v for k, v in s.items()) for s in only)
