"""The probes: quantities measured only at the records their schedules
pick, each declared once here. Imports no JAX: the grid file's keys
(`config.RecordConfig`), the dataset's variables (`schema.VARIABLES`, which
docs/schema.md documents) and `show` read these declarations; the
measurement is `measure.MEASUREMENTS[name]`.

Adding a probe: its `Probe` here, its measurement in `measure`, its rows in
docs/schema.md, and a test.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Probe:
    """`key`: the `[record]` key of its schedule (0 off, a stride, or "log"),
    `default` that schedule's default. `sizes`: its other `[record]` keys,
    integers {key: (default, lowest, highest)}, which shape the compiled
    program. `records`: its dataset variables {name: (long_name, units,
    description)}, over (…, step, layer) when `per_layer`, else (…, step).
    `carry`: the `State` field it warm-starts from, record to record."""
    key: str
    default: int | str
    records: dict[str, tuple[str, str, str]]
    per_layer: bool = False
    sizes: dict[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)
    carry: str | None = None


NOT_MEASURED = " (NaN where not measured)"

PROBES = {
    "sharpness": Probe(
        "sharpness", 0,
        {"sharpness": ("sharpness λ_max", "1",
                       "largest-magnitude eigenvalue of the loss Hessian at W(t), "
                       "preconditioned by the per-layer lr multipliers" + NOT_MEASURED)},
        sizes={"sharpness_iters": (20, 1, 1000)}, carry="hess_v"),
    "jacobian": Probe(
        "jacobian_norm", "log",
        {"jacobian_frob_norm": ("Jacobian norm ‖∂F/∂x‖_F", "1",
                                "mean over the data of the Frobenius norm of ∂F(x_i)/∂x_i"
                                + NOT_MEASURED),
         "jacobian_spec_norm": ("Jacobian norm ‖∂F/∂x‖₂", "1",
                                "mean over the data of the spectral norm of ∂F(x_i)/∂x_i"
                                + NOT_MEASURED)},
        sizes={"jacobian_points": (64, 1, 10**9)}),
    "ntk": Probe(
        "ntk_eigs", 0,
        {"ntk_max_eig": ("NTK λ_max", "1",
                         "largest eigenvalue of the empirical NTK Gram matrix of the logits on "
                         "the first ntk_points training points" + NOT_MEASURED),
         "ntk_min_eig": ("NTK λ_min", "1",
                         "smallest eigenvalue of the empirical NTK Gram matrix of the logits on "
                         "the first ntk_points training points" + NOT_MEASURED)},
        sizes={"ntk_points": (32, 1, 256)}),
    "activations": Probe(
        "activations", 0,
        {"activation_change": ("mean |a(t) − a(0)|", "1",
                               "mean over the data and units of |a_l(t) − a_l(0)|, a_l = h_l W_l "
                               "the preactivations of layer l (the logits for the last; NaN "
                               "where not measured)")},
        per_layer=True),
}


def variables() -> dict[str, tuple[str, str, str]]:
    """Every probe's dataset variables, by name."""
    return {name: label for probe in PROBES.values() for name, label in probe.records.items()}


def sizes(on) -> dict[str, int]:
    """The size keys of the probes `on` (names), at their defaults."""
    return {key: spec[0] for name in on for key, spec in PROBES[name].sizes.items()}
