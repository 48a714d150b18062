"""report.md from the tables `report.analyze` wrote, and nothing else: the
CSV files and summary.json of DIR/analysis/ go in, the markdown comes out
of the template `templates/report.md.j2`.

    text = render.render_folder("results/seed/analysis")

Formatting lives here: `fmt`, `ci`, `verdict` and `markdown` for single
numbers and tables, and `shown`, which turns each table of plain numbers
into the table the report prints (labels, units, intervals). The template
holds the prose; the sections number themselves in the order they appear.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

TEMPLATE = "report.md.j2"


# -- one number, one table ------------------------------------------------------

def fmt(x, digits: int = 3) -> str:
    """`x` to `digits` significant digits; '–' for a missing or infinite value."""
    if x is None or isinstance(x, str) or not np.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def ci(v, lo, hi, signed: bool = True) -> str:
    """An estimate and its interval; the estimate alone where there is none.
    Exponents are `signed`; ratios are not, and keep three decimals."""
    if v is None or not np.isfinite(v):
        return "–"
    f = "{:+.2f}" if signed else "{:.3f}"
    return (f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]" if np.isfinite(lo)
            and np.isfinite(hi) else f"{f.format(v)} (no interval)")


def verdict(value, lo, hi, predicted) -> str:
    """Whether `predicted` lies in the interval [lo, hi] of `value`."""
    if value is None or not np.isfinite(value):
        return "–"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval (one seed)"
    return "yes" if lo <= predicted <= hi else "no"


def lr(v) -> str:
    return f"{v:.3g}"


def markdown(df: pd.DataFrame, float_format: str | None = None) -> str:
    """`df` as a markdown table: cells as they are, or floats in
    `float_format` and NaN blank when it is given."""
    def cell(v) -> str:
        if float_format is None or not isinstance(v, float):
            return str(v)
        return "" if np.isnan(v) else float_format.format(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    return fmt(v) if isinstance(v, (float, np.floating)) else str(v)


def show(df: pd.DataFrame, spec: list) -> str:
    """`df` as the report's markdown table: `spec` lists (label, column) or
    (label, function of the row) pairs; a column's cells are formatted by
    type (integers whole, floats to 3 digits)."""
    cols = {}
    for label, how in spec:
        cols[label] = [_cell(getattr(r, how)) if isinstance(how, str) else how(r)
                       for r in df.itertuples()]
    return markdown(pd.DataFrame(cols))


def layer(r) -> str:
    return f"{r.layer} ({r.layer_role})" if r.layer >= 0 else "all"


def interval(name: str, signed: bool = True):
    """The cell of `name` with its `_lo` and `_hi` columns as an interval."""
    return lambda r: ci(getattr(r, name), getattr(r, f"{name}_lo"), getattr(r, f"{name}_hi"),
                        signed)


# -- the report's tables --------------------------------------------------------

def exponents(t: pd.DataFrame) -> str:
    """Fit rows as the report's table: the exponents, the width exponent at
    fixed η₀ where η scales with width, the prediction, and the sample (n
    networks, S independent seeds)."""
    spec = [("metric", "metric"), ("depth", "depth"), ("layer", layer),
            ("sign", lambda r: {1.0: "+", -1.0: "−"}.get(r.sign, "0")),
            ("η exponent a", interval("lr_exponent")),
            ("width exponent b", interval("width_exponent"))]
    if bool(np.any(np.abs(t.width_exponent_at_lr0 - t.width_exponent) > 1e-12)):
        spec.append(("at fixed η₀ (b + p·a)", interval("width_exponent_at_lr0")))
    spec += [("theory", lambda r: f"{r.theory_width_exponent:+.1f}"
              if np.isfinite(r.theory_width_exponent) else "–"),
             ("r²", lambda r: fmt(r.r2, 2)), ("n", "n"), ("S", "n_seeds")]
    return show(t, spec)


THEORY_METRICS = ("rel_frob_dist", "rel_spec_dist", "rel_param_dist", "rel_first_step",
                  "first_update_spec")
COMPARED = ("first_update_spec", "early_update_norm", "rel_frob_dist", "rel_spec_dist")


def theory_rows(t: pd.DataFrame) -> pd.DataFrame:
    rows = t[t.metric.isin(THEORY_METRICS) & np.isfinite(t.theory_width_exponent)]
    order = {m: i for i, m in enumerate(THEORY_METRICS)}
    return rows.iloc[np.argsort([order[m] for m in rows.metric], kind="stable")]


def theory_table(t: pd.DataFrame) -> str:
    spec = [("metric", "metric"), ("depth", "depth"), ("layer", layer),
            ("measured m-exponent", interval("width_exponent_at_lr0")),
            ("prediction", lambda r: f"{r.theory_width_exponent:+.1f}"),
            ("within interval", lambda r: verdict(
                r.width_exponent_at_lr0, r.width_exponent_at_lr0_lo,
                r.width_exponent_at_lr0_hi, r.theory_width_exponent))]
    if "width_exponent_limit" in t:
        spec += [("limit, with c/√m", interval("width_exponent_limit")),
                 ("gap at largest m", lambda r: fmt(r.finite_size_gap, 2))]
    return show(t, spec)


def init_table(t: pd.DataFrame) -> str:
    return show(t, [
        ("layer", "layer"), ("shape", lambda r: f"{r.p}×{r.q}"), ("width", "width"), ("n", "n"),
        ("‖W‖_F measured", lambda r: f"{r.frob:.3f} ± {r.frob_sd:.3f}"),
        ("‖W‖_F theory", lambda r: f"{r.frob_theory:.3f}"),
        ("rel. err F", lambda r: f"{(r.frob - r.frob_theory) / r.frob_theory:+.2%}"),
        ("‖W‖₂ measured", lambda r: f"{r.spec:.3f} ± {r.spec_sd:.3f}"),
        ("‖W‖₂ Bai–Yin", lambda r: f"{r.spec_edge:.3f}"),
        ("‖W‖₂ finite-size", lambda r: f"{r.spec_finite:.3f}"),
        ("rel. err 2", lambda r: f"{(r.spec - r.spec_finite) / r.spec_finite:+.2%}")])


def first_step_table(t: pd.DataFrame) -> str:
    eta = t["lr"].iloc[0]
    return show(t, [
        ("width", "width"), ("layer", layer),
        ("⟨W_l, ∇L⟩ measured", lambda r: f"{fmt(r.grad_dot_weight)} ± "
         f"{fmt(r.grad_dot_weight_sd, 2)}" if np.isfinite(r.grad_dot_weight_sd)
         else fmt(r.grad_dot_weight)),
        ("closed form", "closed_form"), ("‖∇_l L‖_F² measured", "grad_norm_sq"),
        (f"Δ‖W_l‖_F², step 1, η = {eta:.3g}", "moved"),
        ("−2ηc·closed + η²c²‖∇‖²", "predicted")])


def fit_norms_table(t: pd.DataFrame) -> str:
    """One row per (depth, width, η), the layers side by side."""
    rows = []
    for (depth, width, eta), g in t.groupby(["depth", "width", "lr"], sort=False):
        row = {"depth": depth, "width": width, "lr": lr(eta),
               "networks fit": int(g.networks.iloc[0]),
               "first fit at step": _cell(g.first_fit_step.iloc[0])}
        for r in g.itertuples():
            row[f"‖W_{r.layer}‖_F"] = f"{fmt(r.frob_at_fit)} → {fmt(r.frob_end)}"
            row[f"‖W_{r.layer}‖₂"] = fmt(r.spec_end)
        rows.append(row)
    return markdown(pd.DataFrame(rows).fillna(""))


def by_loss_table(t: pd.DataFrame, levels) -> str:
    """‖θ‖ (the margin) by degree of training, at the widest width of each depth."""
    shown = t[t["width"] == t.groupby("depth")["width"].transform("max")].copy()
    shown["cell"] = [f"{fmt(a)} ({fmt(q, 2)})" if np.isfinite(q) else fmt(a)
                     for a, q in zip(shown["theta"], shown["margin"])]
    shown["η₀"] = [lr(v) for v in shown["lr"]]
    table = shown.pivot_table(index=["depth", "width", "η₀"], columns="when", values="cell",
                              aggfunc="first", sort=False)
    order = ["init"] + [f"loss ≤ {level:g}·loss(0)" for level in levels] + ["end"]
    return markdown(table[[c for c in order if c in table.columns]].fillna("–").reset_index())


def growth_table(t: pd.DataFrame) -> str:
    return show(t, [
        ("depth", "depth"), ("width", "width"),
        ("networks (seeds)", lambda r: f"{r.networks} ({r.seeds})"),
        ("separated at step", "separated_at"),
        ("a in ‖θ‖ ∝ (log t)^a", interval("a")), ("1/L", lambda r: fmt(r.lyu_li, 2)),
        ("verdict (1/L in interval)", lambda r: verdict(r.a, r.a_lo, r.a_hi, r.lyu_li)),
        ("dq_min/d log t", interval("margin_rate", signed=False)),
        ("q/‖θ‖^L at separation", "margin_at_separation"), ("at the end", "margin_at_end")])


def kernel_shown(t: pd.DataFrame) -> str:
    spec = [(c.replace("data_", ""), c) for c in ("data_n", "data_d") if c in t]
    if t["parametrization"].nunique() > 1:
        spec.append(("parametrization", "parametrization"))
    return show(t, spec + [
        ("depth", "depth"), ("width", "width"), ("η₀", lambda r: lr(r.lr)),
        ("networks", "networks"), ("predicted ‖θ(∞) − θ₀‖", "predicted"),
        ("measured / predicted", interval("ratio", signed=False)),
        ("verdict (1 in interval)", lambda r: verdict(r.ratio, r.ratio_lo, r.ratio_hi, 1.0))])


def stability_table(t: pd.DataFrame) -> str:
    wide = t.pivot(index="width", columns="depth", values="largest_stable_lr")
    wide = wide.map(fmt)
    wide.index = [f"width {w}" for w in wide.index]
    wide.columns = [f"depth {d}" for d in wide.columns]
    return markdown(wide.reset_index().rename(columns={"index": ""}))


def regime_rows(t: pd.DataFrame) -> tuple[str, list[str], list[str]]:
    """The slice-by-slice exponents as a table, a sentence per family whose
    exponents drift (F test), and the metrics of those families."""
    rows, drift, drifting = [], [], set()
    for (metric, depth, lay), g in t.groupby(["metric", "depth", "layer"], sort=False):
        row = {"metric": metric, "depth, layer": f"{depth}, {lay}"}
        for along, title, label, p in (("width", "width exponent at each η", "η₀", "p"),
                                       ("lr", "η exponent at each width", "m", "p ")):
            fam = g[g.along == along]
            finite = fam[np.isfinite(fam.exponent)]
            row[title] = "; ".join(f"{label} {r.at:.3g}: {ci(r.exponent, r.lo, r.hi)}"
                                   for r in finite.itertuples()) or "–"
            row[p] = fmt(fam.p.iloc[0], 2) if len(fam) else "–"
            if len(finite) and bool(fam.differ.iloc[0]):
                what = "width exponent across η" if along == "width" else \
                    "η exponent across widths"
                drifting.add(metric)
                drift.append(f"- `{metric}`: the {what} drifts from "
                             f"{finite.exponent.iloc[0]:+.2f} to {finite.exponent.iloc[-1]:+.2f} "
                             f"(p = {fmt(fam.p.iloc[0], 2)}): the pooled exponent averages "
                             "regimes; read the slices.")
        rows.append(row)
    return markdown(pd.DataFrame(rows)), drift, sorted(drifting)


def local_table(t: pd.DataFrame) -> tuple[str, list[str]]:
    """The local width slopes per (metric, layer, η), and the rows whose
    slope still moves by more than 0.1 from the smallest to the largest widths."""
    rows, moving = [], []
    for (metric, lay, role, eta), g in t.groupby(["metric", "layer", "layer_role", "lr"],
                                                 sort=False):
        name = f"{lay} ({role})" if lay >= 0 else "all"
        rows.append({"metric": metric, "layer": name, "η₀": lr(eta),
                     "local slopes": ", ".join(f"{r.width_from}→{r.width_to}: {r.slope:+.2f}"
                                               for r in g.itertuples())})
        first, last = g.slope.iloc[0], g.slope.iloc[-1]
        if abs(last - first) > 0.1:
            moving.append(f"{metric} layer {name} at η₀ {lr(eta)}: {first:+.2f} → {last:+.2f}")
    return markdown(pd.DataFrame(rows)), moving


def comparison(fits_rows: pd.DataFrame, slices: list) -> str:
    """Width exponents b per slice, one column per slice."""
    from normsweep.analysis.fits import column
    rows = []
    for (metric, depth, lay, role), g in fits_rows.groupby(
            ["metric", "depth", "layer", "layer_role"], sort=False):
        if metric not in COMPARED:
            continue
        row = {"metric": metric, "depth": depth, "layer": f"{lay} ({role})"}
        for sl in slices:
            sel = g
            for name, value in sl["labels"].items():
                sel = sel[np.isclose(sel[column(name)], value) if isinstance(value, float)
                          else sel[column(name)] == value]
            r = sel.iloc[0]
            row[f"m-exponent, {sl['name']}"] = ci(r.width_exponent, r.width_exponent_lo,
                                                  r.width_exponent_hi)
        rows.append(row)
    order = {m: i for i, m in enumerate(COMPARED)}
    rows.sort(key=lambda r: (order[r["metric"]], r["depth"]))
    return markdown(pd.DataFrame(rows))


def first_step_parts(fits_rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Per parametrization, the range of a hidden layer's first-step width
    exponent, and the theory for it."""
    hidden = fits_rows[(fits_rows.metric == "first_update_spec")
                       & (fits_rows.layer_role == "hidden")]
    if "parametrization" not in hidden:
        return [], []
    parts, theory = [], []
    for name, g in hidden.groupby("parametrization", sort=False):
        b = g.width_exponent.dropna()
        if len(b):
            parts.append(f"{name} {b.min():+.2f}" if b.min() == b.max() else
                         f"{name} {b.min():+.2f}…{b.max():+.2f}")
        if g.theory_width_exponent.notna().any():
            theory.append(f"{name} {g.theory_width_exponent.dropna().iloc[0]:+.1f}")
    return parts, theory


SPECS = {
    "stable_ranks": [("width", "width"), ("layer", "layer"), ("shape", lambda r: f"{r.p}×{r.q}"),
                     ("theory W(0)", "theory"), ("W(0)", "init"), ("W(T)", "end"),
                     ("W(T) − W(0)", "change")],
    "spectra": [("width", "width"), ("layer", "layer"), ("shape", lambda r: f"{r.p}×{r.q}"),
                ("outliers at init", "outliers_init"), ("outliers at end", "outliers_end"),
                ("max at end", "outliers_end_max"), ("eff. rank ∇L at init", "rank_init"),
                ("at end", "rank_end"), ("bound min(n, p, q)", "rank_bound")],
    "jacobian": [("width", "width"), ("depth", "depth"), ("‖J‖_F at init", "frob_init"),
                 ("‖J‖₂ at init", "spec_init"), ("bound at init", "bound_init"),
                 ("‖J‖_F at end", "frob_end"), ("‖J‖₂ at end", "spec_end"),
                 ("bound at end", "bound_end"), ("theory ‖J‖_F at init", "frob_init_theory")],
    "sharpness": [("lr", lambda r: lr(r.lr)), ("networks", "networks"),
                  ("at init λ·η/2 (median)", "at_init"), ("peak λ·η/2 (median)", "peak"),
                  ("second-half λ·η/2 (median)", "second_half"),
                  ("IQR", lambda r: f"{fmt(r.second_half_q25)}–{fmt(r.second_half_q75)}")],
    "sharpness_stability": [("width", "width"), ("depth", "depth"), ("λ₀", "sharpness_init"),
                            ("η_max", "largest_stable_lr"), ("η_max·λ₀", "stable_product"),
                            ("next η·λ₀", "next_product")],
    "balance": [("layer", layer), ("Δ‖W‖_F (median)", "change"),
                ("Δ‖W‖_F / ‖W(0)‖_F", "relative_change"), ("Δ‖W‖_F² / c_l", "squared_change")],
    "cumulative_terms": [("η₀", lambda r: lr(r.lr)), ("layer", "layer"),
                         ("Δ‖W_l‖²", "total"), ("first order (gradient flow)", "first_order"),
                         ("η² part", "second_order"),
                         ("η² share", lambda r: fmt(r.second_order_share, 2))],
    "depth_exponents": [("metric", "metric"), ("layer", "layer_role"),
                        ("depth exponent c", lambda r: ci(r.depth_exponent, r.lo, r.hi)),
                        ("n", "n")],
    "lazy": [("metric", "metric"), ("depth", "depth"), ("layer", layer),
             ("implied under η ∝ 1/m (b − a)", lambda r: fmt(r.implied, 2)),
             ("lazy prediction", lambda r: f"{r.lazy:+.1f}")],
    "ntk": [("slice", "slice"), ("depth", "depth"),
            ("eigenvalue", lambda r: {"ntk_max_eig": "λ_max", "ntk_min_eig": "λ_min"}[
                r.eigenvalue]),
            ("at init (median, smallest → largest m)",
             lambda r: f"{fmt(r.init_smallest_width)} → {fmt(r.init_largest_width)}"),
            ("relative change: η exponent", interval("a")), ("m exponent", interval("b")),
            ("n", "n")],
    "data_size": [("metric", "metric"), ("depth", "depth"), ("layer", layer),
                  ("b (width)", interval("width_exponent")), ("c (n)", interval("n_exponent")),
                  ("b + c", lambda r: ci(r.sum, r.sum_lo, r.sum_hi)),
                  ("m/n alone (0 in b + c)", lambda r: verdict(r.sum, r.sum_lo, r.sum_hi, 0.0))],
}


def coordinates_table(t: pd.DataFrame) -> str:
    wide = t.pivot_table(index=["parametrization", "layer", "layer_role"], columns="step",
                         values="exponent", sort=False, dropna=False)
    rows = []
    for (param, lay, role), r in wide.iterrows():
        pred = t[(t.parametrization == param) & (t.layer == lay)].predicted.iloc[0]
        rows.append({"parametrization": param, "layer": f"{lay} ({role})",
                     **{f"step {s}": f"{v:+.2f}" if np.isfinite(v) else "–"
                        for s, v in r.items()},
                     "predicted": f"{pred:+.1f}" if np.isfinite(pred) else "–"})
    return markdown(pd.DataFrame(rows))


# -- the whole report -----------------------------------------------------------

def select(t: pd.DataFrame, labels: dict) -> pd.DataFrame:
    """The rows of `t` in the slice `labels` (columns named as `fits.column`)."""
    from normsweep.analysis.fits import column
    for name, value in labels.items():
        for col in (column(name), name):
            if col in t:
                t = t[np.isclose(t[col], value) if isinstance(value, float) else t[col] == value]
                break
    return t


def read_folder(folder: str | Path) -> tuple[dict[str, pd.DataFrame], dict]:
    """The tables and summary an analysis wrote to `folder`."""
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    found = {name: pd.read_csv(folder / f"{name}.csv") for name in summary["tables"]}
    return found, summary


def render_folder(folder: str | Path) -> str:
    """report.md's text from the files of `folder` alone."""
    return render(*read_folder(folder))


def view(t: dict[str, pd.DataFrame], s: dict) -> dict:
    """What the template shows beyond the summary: each table formatted, and
    the few lists of words derived from them."""
    ref = s["reference"]
    fits_all = t["fits"]
    table = select(fits_all, ref)
    c = s["counts"]
    v = {"c": c, "total": c["fit"] + c["training"] + c["failed"] + c["diverged"],
         "softmax": s["output"] == "softmax",
         "md": {name: show(frame, SPECS[name]) for name, frame in t.items()
                if name in SPECS and name not in ("cumulative_terms", "data_size")},
         "fits": table, "t": t}
    md = v["md"]
    md["init"] = init_table(t["init"])
    md["stability"] = stability_table(select(t["stability"], ref))
    md["scaling"] = exponents(table[table.metric.isin(["rel_frob_dist", "rel_frob_change"])])
    md["spectral"] = exponents(table[table.metric.isin(["rel_spec_dist", "rel_spec_change"])])
    md["early"] = exponents(table[table.metric == "early_update_norm"]) \
        if (table.metric == "early_update_norm").any() else ""
    rows = theory_rows(table)
    md["theory"] = theory_table(rows) if len(rows) else ""
    if "cumulative_terms" in t:
        spec = list(SPECS["cumulative_terms"])
        if s["parametrization"] != "standard":
            spec[2] = ("Δ‖W_l‖²/c_l", "total")
        md["cumulative_terms"] = show(t["cumulative_terms"], spec)
    for name, fn in (("first_step", first_step_table), ("fit_norms", fit_norms_table),
                     ("norm_growth", growth_table), ("coordinates", coordinates_table)):
        if name in t:
            md[name] = fn(t[name])
    if "norm_by_loss" in t:
        md["norm_by_loss"] = by_loss_table(t["norm_by_loss"], s["loss_levels"])
    if "kernel" in t and (t["kernel"]["networks"] > 0).any():
        md["kernel"] = kernel_shown(t["kernel"][t["kernel"]["networks"] > 0])
    md["regimes"], v["drift"], v["drifting"] = regime_rows(t["regimes"]) if "regimes" in t \
        else ("", [], [])
    md["local"], v["moving"] = local_table(t["local_slopes"]) if "local_slopes" in t \
        else ("", [])
    v["local_rows"] = len(md["local"].splitlines()) - 2 if md["local"] else 0
    v["thin"] = table[(np.isfinite(table.width_exponent) | np.isfinite(table.lr_exponent))
                      & (table.n < s["min_networks"])]
    if "data_size" in t:
        labels = [c for c in ("parametrization", "weight_decay", "data_d") if c in t["data_size"]]
        md["data_size"] = show(t["data_size"], [(c, c) for c in labels] + SPECS["data_size"])
    if s["slices"]:
        md["compare"] = comparison(fits_all, s["slices"])
        v["mup_parts"], v["mup_theory"] = first_step_parts(fits_all)
    first = table[(table.metric == "first_update_spec") & (table.layer_role == "hidden")]
    v["first_step"] = first[np.isfinite(first.width_exponent_at_lr0)
                            & np.isfinite(first.theory_width_exponent)]
    v["answer"] = answer(t["init"], table, s)
    if "balance_by_lr" in t:
        v["spread"] = "; ".join(f"η₀ {lr(r.lr)}: {fmt(r.spread, 2)}"
                                for r in t["balance_by_lr"].itertuples())
    v["identity"] = t["identity"].to_dict("records")[0] if "identity" in t else None
    return v


def answer(init: pd.DataFrame, table: pd.DataFrame, s: dict) -> list[str]:
    """The first screen's lines on init and the exponents (the outcomes
    follow in the template): the widest hidden (or input) layer at init
    beside theory; the width exponents of one step and of the whole run per
    layer at the deepest depth, beside theory with a verdict."""
    lines = []
    if len(init):
        widest = init[init["width"] == init["width"].max()]
        role = "hidden" if (widest["layer"] == "hidden").any() else "input"
        r = widest[widest["layer"] == role].iloc[0]
        lines.append(f"- **At init** a {role} {r.p}×{r.q} layer has ‖W‖_F = {r.frob:.3g} "
                     f"(theory {r.frob_theory:.3g}) and ‖W‖₂ = {r.spec:.3g} (theory "
                     f"{r.spec_finite:.3g}; {r.spec_edge:.3g} as m → ∞).")
    depth = int(table["depth"].max()) if len(table) else None
    for metric, what in (("rel_first_step", "One step moves"),
                         ("rel_frob_dist", f"{s['steps']} steps move")):
        rows = table[(table.metric == metric) & (table.depth == depth)]
        if not len(rows):
            continue
        parts = []
        for r in rows.itertuples():
            b, lo, hi = r.width_exponent_at_lr0, r.width_exponent_at_lr0_lo, \
                r.width_exponent_at_lr0_hi
            th = r.theory_width_exponent
            parts.append(f"{r.layer_role} m^{ci(b, lo, hi)}" + (
                f" (theory {th:+.2g}: {verdict(b, lo, hi, th)})" if np.isfinite(th) else ""))
        eta = rows["lr_exponent"].dropna()
        lines.append(f"- **{what}** each layer by ‖W(t) − W(0)‖_F/‖W(0)‖_F ∝ width^b at fixed "
                     f"η₀, depth {depth}: " + "; ".join(parts)
                     + (f"; and ∝ η^{eta.min():.2f}…{eta.max():.2f}" if len(eta) else "") + ".")
    return lines


def heading(key: str, title: str) -> str:
    """A section's heading; `number_sections` numbers the sections in the
    order they appear, so that no number is typed into the template."""
    return f"## \x00{key}\x00 {title}"


def ref(key: str) -> str:
    """The number of the section `key`, once `number_sections` has run."""
    return f"\x00ref:{key}\x00"


def number_sections(text: str) -> str:
    """Numbers the `heading`s 1, 2, … in order and fills in the `ref`s; a
    reference to a section the report lacks is an error."""
    keys = re.findall(r"## \x00(\w+)\x00 ", text)
    numbers = {key: i + 1 for i, key in enumerate(keys)}
    text = re.sub(r"## \x00(\w+)\x00 ", lambda m: f"## {numbers[m.group(1)]}. ", text)
    return re.sub(r"\x00ref:(\w+)\x00", lambda m: str(numbers[m.group(1)]), text)


def reflow(text: str) -> str:
    """Joins the template's wrapped prose lines into one line per paragraph
    (or list item); tables, headings, images and blank lines stay as they are."""
    out: list[str] = []
    for line in text.splitlines():
        block = not line.strip() or line.startswith(("|", "#", "![", "- ", "```"))
        prev = out[-1] if out else ""
        joinable = prev.strip() and not prev.startswith(("|", "#", "![", "```"))
        if not block and joinable and not line.startswith("**") or \
                (line.startswith("  ") and prev.startswith("- ")):
            out[-1] = prev.rstrip() + " " + line.strip()
        else:
            out.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


PARAMETRIZATION_NAMES = {"standard": "the standard parametrization",
                         "ntk": "the NTK parametrization",
                         "mup": "μP (maximal-update parametrization)"}


def environment():
    """The template's jinja2 environment: the formatting functions as
    filters, `heading` and `ref` as globals, undefined names an error."""
    import jinja2
    env = jinja2.Environment(loader=jinja2.PackageLoader("normsweep.analysis", "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters.update(fmt=fmt, ci=ci, verdict=verdict, lr=lr, g=lambda x: f"{x:g}",
                       signed=lambda x, d=1: f"{x:+.{d}f}", pct=lambda x: f"{x:.1%}")
    env.globals.update(heading=heading, ref=ref, names=PARAMETRIZATION_NAMES,
                       isfinite=lambda x: x is not None and math.isfinite(x),
                       sqrt=math.sqrt)
    return env


def render(t: dict[str, pd.DataFrame], s: dict, block: str | None = None) -> str:
    """The report (or one `block` of the template, for tests) from the
    tables `t` and the summary `s`."""
    template = environment().get_template(TEMPLATE)
    values = {"s": s, **view(t, s)}
    if block is not None:
        return reflow("".join(template.blocks[block](template.new_context(values))))
    return number_sections(reflow(template.render(values)))
