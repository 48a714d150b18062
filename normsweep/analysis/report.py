"""`normsweep analyze DIR`: the fit table, figures, and a report that answers
the seed question with this sweep's numbers.

    from normsweep.analysis import report
    result = report.analyze("results/seed")   # writes results/seed/analysis/

Writes DIR/analysis/{report.md, fits.csv, fits.nc, *.png}. The numbers come
from `tables` and `fits`, the figures from `figures`; this module writes the
markdown around them, its sections numbered by `number_sections`. Nothing in
the report is hard-coded.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from normsweep import config as config_mod
from normsweep import store
from normsweep.analysis import fits, kernel, outcomes, runs
from normsweep.analysis.figures import (fig_balance, fig_comparison, fig_coordinates,
                                        fig_identity, fig_init, fig_jacobian, fig_margin,
                                        fig_ntk, fig_scaling, fig_sharpness, fig_spectrum,
                                        fig_stability, fig_trajectories)
from normsweep.analysis.tables import (balance, ci, coordinate_lr, coordinate_slopes,
                                       cumulative_terms,
                                       first_step_terms, fmt, init_numbers, markdown,
                                       identity_check, init_table, jacobian_table,
                                       layer_multipliers, LOSS_LEVELS, local_width_slopes, norm_by_loss,
                                       norm_growth,
                                       ntk_change, separated_at, sharpness_table, spectra_table,
                                       spectrum_layer, stability_against_sharpness,
                                       stable_ranks, well_trained_table)
from normsweep.errors import GridError, RunError
from normsweep.folder import ResultsFolder

PARAMETRIZATION_NAMES = {"standard": "the standard parametrization",
                         "ntk": "the NTK parametrization",
                         "mup": "μP (maximal-update parametrization)"}


@dataclasses.dataclass
class Analysis:
    table: pd.DataFrame
    report: Path
    figures: list[Path]


def _md(df: pd.DataFrame) -> str:
    return markdown(df)


def analyze(root: str | Path, *, fit_accuracy: float = outcomes.FIT_ACCURACY) -> Analysis:
    """Fits, figures and report.md for the results folder `root`."""
    root = Path(root)
    sweep = store.open_sweep(root, partial=True)      # warns what is missing
    try:
        full = sweep.load()
    except (OSError, RuntimeError, ValueError) as err:   # a checksum that does not match
        raise RunError(f"{root}/sweep.nc cannot be read ({err}); delete it and launch again "
                       "to rewrite it from the cohort files") from None
    finally:
        sweep.close()
    try:
        cfg = config_mod.parse(full.attrs["config_toml"], source=f"{root} (config_toml)")
    except KeyError:
        raise RunError(f"{root}: the dataset has no config_toml attribute") from None
    except GridError as err:
        raise RunError(f"{root}: the dataset's config_toml is not a valid grid ({err})") from None
    place = ResultsFolder(root)
    out = place.subfolder("analysis")
    # the first sections describe one slice (standard, no weight decay where
    # the sweep has those axes); the comparison section and those after it
    # cover all slices
    ref_labels = fits.reference_labels(full)
    ds = full.sel(ref_labels) if ref_labels else full
    grid_cfg = cfg
    if "n" in ref_labels or "d" in ref_labels:       # the first sections' training set
        cfg = cfg.with_data(ref_labels.get("n", cfg.data.n), ref_labels.get("d", cfg.data.d))
        ds = store.training_set(ds, cfg.data.n, cfg.data.d)
    param = ref_labels.get("parametrization", cfg.model.parametrization)
    wd = ref_labels.get("weight_decay", cfg.train.weight_decay)
    full_outcome = outcomes.classify(full, fit_accuracy)
    outcome = full_outcome.sel(ref_labels) if ref_labels else full_outcome
    keep = outcomes.usable(outcome)
    full_table = fits.fit_sweep(full, fit_accuracy=fit_accuracy)
    table = full_table
    for name, value in ref_labels.items():
        table = table[table[fits.column(name)] == value]
    place.write_csv(out / "fits.csv", full_table)
    place.write_netcdf(out / "fits.nc", fits.to_dataset(full_table))
    figures = [fig_init(ds, cfg, out), *fig_trajectories(ds, out),
               fig_stability(ds, outcome, out)]
    if ds.sizes["width"] > 1:          # one width: nothing to plot against width
        figures.append(fig_scaling(ds, table, out, keep))
    # networks that fit or still train: a failed one can blow its norms up to
    # where ‖W‖² itself overflows, which says nothing about the identity
    check = identity_check(ds.where(keep), layer_multipliers(ds, cfg, param), wd)
    if check:
        figures.append(fig_identity(check, out))
    moved = balance(ds, layer_multipliers(ds, cfg, param), keep)
    cum = (cumulative_terms(ds, layer_multipliers(ds, cfg, param), keep) if wd == 0
           else None)
    if cum is not None:
        place.write_csv(out / "cumulative_terms.csv", cum)
    if moved:
        figures.append(fig_balance(moved["moved"], moved["depth"], out))
    if "sharpness" in ds:
        figures.append(fig_sharpness(ds, outcome, out))
    if "jacobian_spec_norm" in ds:
        figures.append(fig_jacobian(ds, outcome, cfg.model.output == "softmax", out))
    if "singular_values" in ds:
        figures.append(fig_spectrum(ds, cfg, keep, out))
    if "margin" in ds and bool(((outcome == outcomes.FIT)
                                & separated_at(ds, fit_accuracy).notnull()).any()):
        figures.append(fig_margin(ds, outcome, fit_accuracy, out))
    trained = {"growth": norm_growth(ds, outcome, fit_accuracy)
               if "margin" in ds else pd.DataFrame(),
               "by_loss": norm_by_loss(ds, outcome),
               "kernel_reason": kernel.not_applicable(full, cfg)}
    trained["kernel"] = (kernel.kernel_table(root, full, grid_cfg)
                         if trained["kernel_reason"] is None else pd.DataFrame())
    for name in ("growth", "by_loss", "kernel"):
        if len(trained[name]):
            place.write_csv(out / CSV_NAMES[name], trained[name])
    trained["cumulative"] = cum
    # the report's other numbers as tables: init norms, the largest stable η,
    # and one row per network (`normsweep table`)
    trained["init"] = init_numbers(ds, cfg)
    place.write_csv(out / "init.csv", trained["init"])
    place.write_csv(out / "stability.csv", outcomes.largest_stable_lr(full, full_outcome)
                    .drop_vars("step", errors="ignore").to_dataframe().reset_index())
    place.write_csv(out / "runs.csv", runs.run_table(full, "last", fit_accuracy, full_outcome))
    text = render(ds, cfg, table, outcome, check, fit_accuracy, root, param, moved, wd,
                  trained)
    if ref_labels:
        text += "\n".join(_comparison_section(full, full_table, ref_labels))
        figures.append(fig_comparison(full, out))
    trade = fits.data_size_exponents(full, fit_accuracy)
    if len(trade):
        place.write_csv(out / "data_size.csv", trade)
        text += "\n".join(data_size_section(trade))
    if "ntk_max_eig" in full:
        text += "\n".join(_ntk_section(full, full_outcome, cfg))
        figures.append(fig_ntk(full, full_outcome, out))
    full_keep = outcomes.usable(full_outcome)
    lr = coordinate_lr(full, full_keep)
    coords = coordinate_slopes(full, full_keep, lr, cfg) if lr is not None else None
    if coords is not None:
        text += "\n".join(coordinate_section(coords, lr))
        figures.append(fig_coordinates(full, full_keep, lr, out))
    elif "activation_change" in full and full.sizes["width"] > 1:
        text += "\n".join(no_coordinate_section(full, full_outcome))
    place.write_text(out / "report.md", number_sections(arrange(text)))
    return Analysis(full_table, out / "report.md", figures)


CSV_NAMES = {"growth": "norm_growth.csv", "by_loss": "norm_by_loss.csv",
             "kernel": "kernel.csv"}


def answer_section(init: pd.DataFrame, ds, table: pd.DataFrame, outcome,
                   regime_list) -> list[str]:
    """The report's first screen, at most ten lines: the norms at init, how
    far one step and the whole run move each layer against width (beside
    theory, with a verdict), the regime warning when the slices disagree,
    and the outcomes. Every number comes from a table the sections below
    show (`tables.init_numbers`, fits.csv, `fits.regimes`, `outcomes`)."""
    lines = ["**The answer in brief** (the sections below give the details and the "
             "methods; `fits.csv` has every exponent):", ""]
    if len(init):
        widest = init[init["width"] == init["width"].max()]
        role = "hidden" if (widest["layer"] == "hidden").any() else "input"
        r = widest[widest["layer"] == role].iloc[0]
        lines.append(f"- **At init** a {role} {r.p}×{r.q} layer has ‖W‖_F = {r.frob:.3g} "
                     f"(theory {r.frob_theory:.3g}) and ‖W‖₂ = {r.spec:.3g} (theory "
                     f"{r.spec_finite:.3g}; {r.spec_edge:.3g} as m → ∞).")
    depth = int(table["depth"].max()) if len(table) else None
    T = int(ds["step"].values[-1])
    for metric, what in (("rel_first_step", "One step moves"),
                         ("rel_frob_dist", f"{T} steps move")):
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
    drifting = sorted({metric for metric, _, _, by_lr, by_width in regime_list
                       if by_lr.differ or by_width.differ})
    if drifting:
        lines.append(f"- **Read the slices:** the exponents of {', '.join(drifting)} drift "
                     f"across η or width (F test p < {fits.HOMOGENEITY_P:g}): one power law "
                     f"does not hold over this grid (section {ref('regimes')}).")
    counts = outcomes.counts(outcome)
    lines.append(f"- **Outcomes:** {counts[outcomes.FIT]} fit, {counts[outcomes.TRAINING]} still "
                 f"training, {counts[outcomes.FAILED]} failed, {counts[outcomes.DIVERGED]} "
                 f"diverged (section {ref('stability')}).")
    return lines + [""]


def data_size_section(trade: pd.DataFrame) -> list[str]:
    """Width against the number of points (`fits.data_size_exponents`)."""
    labels = [c for c in ("parametrization", "weight_decay", "data_d") if c in trade.columns]
    shown = pd.DataFrame({
        **{c: trade[c] for c in labels},
        "metric": trade["metric"], "depth": trade["depth"],
        "layer": [f"{l} ({r})" for l, r in zip(trade["layer"], trade["layer_role"])],
        "b (width)": [ci(v, lo, hi) for v, lo, hi in zip(
            trade["width_exponent"], trade["width_exponent_lo"], trade["width_exponent_hi"])],
        "c (n)": [ci(v, lo, hi) for v, lo, hi in zip(
            trade["n_exponent"], trade["n_exponent_lo"], trade["n_exponent_hi"])],
        "b + c": [ci(v, lo, hi) for v, lo, hi in zip(trade["sum"], trade["sum_lo"],
                                                     trade["sum_hi"])],
        "m/n alone (0 in b + c)": [verdict(v, lo, hi, 0.0) for v, lo, hi in zip(
            trade["sum"], trade["sum_lo"], trade["sum_hi"])]})
    return ["", heading("datasize", "Width against the number of points"), "",
            "With an n axis each training set is a slice of its own; here they are fitted "
            "together as metric ≈ C(η)·m^b·n^c (one intercept per η, 95% intervals over "
            "seeds). If a metric depends on the width and the number of points only through "
            "the ratio m/n, c = −b and b + c = 0. The table is `data_size.csv`.", "",
            _md(shown), ""]


def heading(key: str, title: str) -> str:
    """A section's heading; `number_sections` numbers the sections in the
    order they appear, so that no number is typed into a string."""
    return f"## \x00{key}\x00 {title}"


def ref(key: str) -> str:
    """The number of the section `key`, once `number_sections` has run."""
    return f"\x00ref:{key}\x00"


# the report's order: the answers first, then the appendix of methods,
# diagnostics and checks; a section not named here goes last in the main body
MAIN = ("scaling", "regimes", "compare", "datasize", "trained", "kernel", "stability", "edge",
        "balance", "ntk", "coordinates")
APPENDIX = ("theory", "slices", "fitnorms", "init", "training", "iteration", "jacobian",
            "spectra")


def arrange(text: str) -> str:
    """The `heading`ed sections of `text` in the order of `MAIN`, then under
    an appendix heading those of `APPENDIX`; what precedes the first heading
    (the title, the sweep and the answer) stays first."""
    chunks = re.split(r"(?=^## \x00\w+\x00 )", text, flags=re.M)
    head, named = chunks[0], {}
    for chunk in chunks[1:]:
        named[re.match(r"## \x00(\w+)\x00 ", chunk).group(1)] = chunk.rstrip("\n") + "\n\n"
    main = [k for k in MAIN if k in named] + [k for k in named
                                               if k not in MAIN and k not in APPENDIX]
    back = [k for k in APPENDIX if k in named]
    out = head.rstrip("\n") + "\n\n" + "".join(named[k] for k in main)
    if back:
        out += ("# Appendix: methods, diagnostics and checks\n\nThe measurements behind the "
                "answers above, and the checks of the instrument itself.\n\n"
                + "".join(named[k] for k in back))
    return out


def number_sections(text: str) -> str:
    """Numbers the `heading`s 1, 2, … in order and fills in the `ref`s; a
    reference to a section the report lacks is an error."""
    keys = re.findall(r"## \x00(\w+)\x00 ", text)
    numbers = {key: i + 1 for i, key in enumerate(keys)}
    text = re.sub(r"## \x00(\w+)\x00 ", lambda m: f"## {numbers[m.group(1)]}. ", text)
    return re.sub(r"\x00ref:(\w+)\x00", lambda m: str(numbers[m.group(1)]), text)


def axes_note(grid) -> str:
    """The header's sentence on the parametrization, weight-decay, n and d
    axes ('' without)."""
    axes = []
    if grid.parametrization:
        axes.append(f"parametrization {list(grid.parametrization)}")
    if grid.weight_decay:
        axes.append(f"weight decay {list(grid.weight_decay)}")
    for name, values in (("n (points)", grid.n), ("d (input dimension)", grid.d)):
        if values:
            axes.append(f"{name} {list(values)}")
    if not axes:
        return ""
    return (f" The sweep also has the axes {' and '.join(axes)}: section {ref('compare')} "
            "compares all its slices; the other sections describe one slice of it, named "
            "there.")


def render(ds, cfg, table, outcome, check, fit_accuracy, root, param: str = "standard",
           moved: dict | None = None, wd: float = 0.0, trained: dict | None = None) -> str:
    g = cfg.grid
    trained = trained or {}
    counts = outcomes.counts(outcome)
    untrained = counts.pop(outcomes.UNTRAINED)
    total = sum(counts.values())
    T = int(ds["step"].values[-1])
    slices = axes_note(g)
    partial = ""
    if ds.attrs.get("partial"):
        missing = str(ds.attrs.get("cohorts_missing", "")).split()
        partial = (f" **This sweep is partial:** {len(missing)} cohorts are not on disk "
                   f"({', '.join(missing)}), so {untrained} of the grid's networks are "
                   f"untrained and left out of every count, fit and figure below; launch again "
                   "to finish it.")
    where = " in this slice" if slices else ""
    lines = [f"# normsweep report: {cfg.name}", "",
             f"Sweep `{root}`: {total} trained networks{where} — widths {list(g.width)}, "
             f"depths {list(g.depth)}, "
             f"{len(g.lr)} learning rates from {min(g.lr):.3g} to {max(g.lr):.3g}"
             + (f" (× width^{g.lr_width_exponent:g})" if g.lr_width_exponent else "")
             + f", seeds {list(g.seed)}; n = {cfg.data.n} points on S^{cfg.data.d - 1}, "
             f"k = {cfg.data.k}, {PARAMETRIZATION_NAMES[param]}, init `{cfg.model.init}`, "
             f"output `{cfg.model.output}`, "
             f"loss `{cfg.train.loss}`, {T} steps of full-batch GD, {cfg.train.dtype}; "
             f"{ds.attrs.get('backend')} ({ds.attrs.get('device_kind')}), "
             f"jax {ds.attrs.get('jax_version')}." + slices + partial, ""]
    regime_list = fits.regimes(ds, fit_accuracy)
    init = trained["init"] if "init" in trained else init_numbers(ds, cfg)
    lines += answer_section(init, ds, table, outcome, regime_list)

    lines += [heading("init", "Norms at initialisation"), "",
              "Measured mean ± sd over seeds (each distinct matrix counted once) against the "
              "random-matrix values for i.i.d. N(0, s²) entries: Frobenius s√(pq)(1 − 1/(4pq)); "
              "spectral: the Bai–Yin edge s(√p + √q) and its finite-size (Tracy–Widom) "
              "correction, against which the relative error is given.", "",
              _md(init_table(ds, cfg, init)), ""]
    hidden = [m for m in g.width] if max(g.depth) > 2 else []
    if hidden and cfg.model.init in ("he", "width"):
        m = hidden[len(hidden) // 2]
        lines += [f"For a square m×m hidden layer with variance 2/m, E‖W‖_F ≈ √(2m) "
                  f"({math.sqrt(2 * m):.1f} at m = {m}) and ‖W‖₂ → 2√2 ≈ 2.83 from below. A "
                  "quoted E‖W‖_F = 4 applies the spectral edge of a symmetric (Wigner) matrix "
                  "and takes 2/√m as a standard deviation, and '= 2' uses variance 4/m²: neither "
                  "is the Frobenius norm.", ""]
    lines += ["![init](init_norms.png)", ""]

    lines += [heading("training", "During training"), "",
              "Trajectories of ‖W‖_F, ‖W‖₂ and ‖W(t) − W(0)‖_F for one hidden layer, faceted by "
              "width, one line per η (mean over seeds):", "",
              "![frob](trajectory_frob_norm.png)", "", "![spec](trajectory_spec_norm.png)", "",
              "![dist](trajectory_frob_dist.png)", ""]

    lines += balance_section(moved or {}, param, wd)
    lines += cumulative_section(trained.get("cumulative"), param)
    lines += spectra_section(ds, cfg, outcome)
    jac = jacobian_table(ds, cfg, outcomes.usable(outcome))
    if jac is not None:
        output = ("softmax output F: the bound is ½Π_l‖W_l‖₂, as ‖diag(s) − ssᵀ‖₂ ≤ ½"
                  if cfg.model.output == "softmax" else
                  "the logits: the bound is Π_l‖W_l‖₂")
        output += (". The theory column is E‖J‖_F at init for this parametrization, "
                   "d·Π_l s_l²·fan_out_l·2^−(L−1) under the square root (half the units of a "
                   "ReLU layer pass; √(2k) for the logits under He init, k√(2/m) under μP)"
                   + (", times √((k − 1)/k³) for the softmax at small logits"
                      if cfg.model.output == "softmax" else ""))
        lines += [heading("jacobian", "The input–output Jacobian"), "",
                  "The mean over the data of ‖∂F(x_i)/∂x_i‖ (the question's motivation: how "
                  f"the weight norms bound the network's sensitivity), for the {output}. "
                  "Medians over seeds and η, at the end over the networks that fit or still "
                  "train (a failed network's saturated softmax has ‖J‖ → 0), at each one's last "
                  "measurement:", "",
                  _md(jac), "",
                  "Over training, at the deepest depth (medians over the seeds that fit or "
                  "still train; the bound dashed):", "", "![jacobian](jacobian.png)", ""]

    lines += [heading("iteration", "Per iteration"), ""]
    if check:
        lines += identity_prose(check, param)
    else:
        lines += ["No consecutive recorded steps (or no grad_dot_weight): record with "
                  "steps = \"log\" or \"all\" to check the per-step identity.", ""]
    terms = first_step_terms(ds, cfg)
    if terms is not None:
        lines += ["**The first step, in closed form.** Every layer's ⟨W_l, ∇L⟩ equals "
                  "Σ_i⟨∂ℓ/∂z_i, z_i⟩ (Euler), whose expectation at init has a closed form for "
                  "random one-hot targets: n·k·σ² for a linear output, n(k − 1)σ²/k² for "
                  "softmax with ½‖s − y‖², n(k − 1)σ²/k for cross-entropy, σ² the logits' "
                  "variance at init (leading order in σ² for the softmax losses). So at the "
                  "first step every layer's ‖W_l‖_F² falls by the same 2η·c_l·(closed form), "
                  "plus the η² term η²c_l²‖∇_l L‖², which differs by layer (Du, Hu & Lee "
                  "2018). Measured at init over seeds, at the deepest depth:", "",
                  _md(terms), ""]
    upd = table[table.metric == "early_update_norm"]
    if len(upd):
        lines += [f"The expected change per iteration, mean ‖W(t) − W(t−1)‖_F over steps "
                  f"1–{fits.EARLY_STEPS}, scales as (fits per layer, 95% intervals):", "",
                  _md(_exponents(upd)), ""]
    lines += first_step_prose(table, param, float(g.lr_width_exponent))

    wt = well_trained_table(ds, outcome, fit_accuracy)
    lines += [heading("trained", "Well-trained networks"), "",
              f"Criterion: training accuracy ≥ {fit_accuracy:g} at the last step. "
              f"{counts[outcomes.FIT]} of {total} networks fit their random targets"
              + (f"; the step at which each first fits, and its norms then and at the end, per "
                 f"η, are in section {ref('fitnorms')}." if len(wt) else
                 ": train longer or with a larger stable η."), ""]
    if cfg.model.output == "softmax":
        lines += ["With a softmax output and one-hot targets the loss has no finite minimiser: "
                  "reaching zero loss needs infinite logit margins, so fitting keeps driving the "
                  "norms up (for cross-entropy ‖θ_t‖ grows like (log t)^{1/L}, Lyu & Li 2019). "
                  "A 'well-trained norm' is therefore a function of the training time, not a "
                  "limit.", ""]
    lines += norm_by_loss_section(trained.get("by_loss", pd.DataFrame()))
    lines += margin_section(trained.get("growth", pd.DataFrame()), cfg)
    if cfg.model.output == "linear":
        lines += kernel_section(trained.get("kernel", pd.DataFrame()),
                                trained.get("kernel_reason"))

    lines += [heading("stability", "Stability"), "",
              f"Outcomes: {counts[outcomes.FIT]} fit, {counts[outcomes.TRAINING]} still training "
              f"(loss fell), {counts[outcomes.FAILED]} failed ("
              + ("final loss ≥ initial: with a softmax output the loss is bounded by n, so a "
                 "too-large η saturates the network instead of overflowing"
                 if cfg.model.output == "softmax" else
                 "final loss ≥ initial, or stuck with every gradient exactly 0: all ReLUs dead")
              + f"), {counts[outcomes.DIVERGED]} diverged (non-finite loss, weight or norm).",
              "", "Largest η at which no seed failed or diverged:", ""]
    stable = outcomes.largest_stable_lr(ds, outcome)
    st = stable.to_pandas()
    st = st.map(lambda v: fmt(v)) if hasattr(st, "map") else st
    st.index = [f"width {w}" for w in st.index]
    st.columns = [f"depth {d}" for d in st.columns]
    lines += [_md(st.reset_index().rename(columns={"index": ""})), "",
              "![stability](stability.png)", ""]
    against = stability_against_sharpness(ds, outcome)
    if against is not None:
        lines += ["Measured against the sharpness at init λ₀ (the top Hessian eigenvalue at "
                  "W(0)): gradient descent is stable near a minimum while η·λ < 2, so the "
                  "largest stable η and the next one of the grid should bracket 2 if the "
                  "initial curvature sets the limit (the sharpness changes during training, and "
                  "a softmax output can fail without diverging):", "", _md(against), ""]

    if "sharpness" in ds:
        lines += [heading("edge", "Edge of stability"), "",
                  "Full-batch GD is stable near a minimum only while the top Hessian eigenvalue "
                  "λ < 2/η; under GD the sharpness tends to rise to about 2/η and hover there "
                  "(Cohen et al. 2021). λ·η/2 per learning rate (1 = the threshold), over "
                  "the networks that fit or still train:", "",
                  _md(sharpness_table(ds, outcome)), "", "![sharpness](sharpness.png)", ""]
    lines += [heading("scaling", "Scaling laws"), "",
              "metric ≈ C·η^a·m^b, least squares in log space over the networks that fit or are "
              "still training (diverged and failed ones are left out and counted). The 95% "
              "intervals treat seeds as the independent replicates: one seed fixes W(0) at "
              "every η, so the law is refitted on each seed's networks alone and the interval "
              "is the pooled estimate ± t·sd/√S over the S seeds (column `S`). "
              "`rel_frob_dist` is ‖W(T) − W(0)‖_F/‖W(0)‖_F, how far a layer moved; "
              "`rel_frob_change` is (‖W(T)‖_F − ‖W(0)‖_F)/‖W(0)‖_F, how much its norm changed "
              f"(the spectral versions are in section {ref('theory')}).", ""]
    main = table[table.metric.isin(["rel_frob_dist", "rel_frob_change"])]
    lines += [_md(_exponents(main)), ""]
    lines += (["![scaling](scaling_rel_frob_dist.png)", ""] if ds.sizes["width"] > 1 else
              ["One width: no width exponent is identified and nothing is plotted against "
               "width; the η exponents above are fitted at that width.", ""])
    lines += ["The full table, with prefactors and counts, is in `fits.csv` and `fits.nc`; "
              f"section {ref('theory')} sets the exponents beside theory.", ""]
    lines += [heading("theory", "The exponents beside theory, and finite width"), "",
              "The spectral versions of the laws of section "
              f"{ref('scaling')}, ‖W(T) − W(0)‖₂/‖W(0)‖₂ (`rel_spec_dist`) and "
              "(‖W(T)‖₂ − ‖W(0)‖₂)/‖W(0)‖₂ (`rel_spec_change`):", "",
              _md(_exponents(table[table.metric.isin(["rel_spec_dist", "rel_spec_change"])])),
              ""]
    lines += lazy_section(table, cfg, param)
    lines += finite_width_section(ds, fit_accuracy)
    lines += regime_section(ds, table, fit_accuracy, regime_list)
    if len(wt):
        lines += [heading("fitnorms", "Norms of the networks that fit, per η"), "",
                  "The median step at which they first fit, and their norms (mean over the "
                  "seeds that fit; ‖W_l‖_F at the first fit → at the last step; layer 0 is the "
                  "input layer, layer depth − 1 the readout, the others hidden):", "",
                  _md(wt), ""]
    return "\n".join(lines)


def spectra_section(ds, cfg, outcome) -> list[str]:
    """Stable ranks; with recorded spectra, the singular values against the
    Marchenko–Pastur bulk, the outliers and the update's effective rank."""
    keep = outcomes.usable(outcome)
    lines = [heading("spectra", "Spectra"), "",
             "The stable rank ‖A‖_F²/‖A‖₂² of W at init (beside the random-matrix value: pq "
             "over the finite-size squared edge, pq/(√p + √q)² in the limit), at the last step, "
             f"and of the change W(T) − W(0), at depth {int(ds['depth'].values[-1])}, medians "
             "over the networks that fit or still train. A change whose stable rank is a small "
             "number moved the weights along a few directions, whatever the layer's size.", "",
             _md(stable_ranks(ds, cfg, keep)), ""]
    table = spectra_table(ds, cfg, keep)
    if table is None:
        return lines + ["Record `[record] spectra = true` for the singular values themselves "
                        "(Marchenko–Pastur bulk, outliers, the update's effective rank).", ""]
    depth, layer = spectrum_layer(ds)
    return lines + [
        "The whole spectrum, at step 0 and the last. W(0) has i.i.d. entries, so its singular "
        "values fill the Marchenko–Pastur bulk for its entry variance s² = ‖W(0)‖_F²/(pq); a "
        "value beyond the bulk's edge s(√p + √q) by more than 4 Tracy–Widom scales is an "
        "outlier (pure noise makes one with probability below 1e-3). Training adds a low-rank "
        "change, and its large directions leave the bulk. The effective rank (the exponential "
        "of the entropy of the normalised singular values) of ∂L/∂W_l is that of the plain GD "
        "update, at most min(n, p, q): n outer products h_iδ_iᵀ make it. Medians over the "
        "networks that fit or still train:", "", _md(table), "",
        f"The spectrum of layer {layer} at depth {depth} and the change's largest singular "
        "values:", "", "![spectrum](spectrum.png)", ""]


def margin_section(growth: pd.DataFrame, cfg) -> list[str]:
    """Norms of the networks that fit against log t beside Lyu & Li's
    (log t)^{1/L}, and their normalised margin (`tables.norm_growth`)."""
    if cfg.train.loss == "cross_entropy":
        law = ("With cross-entropy the network is L-homogeneous and the loss exponential-"
               "tailed: Lyu & Li (2019) prove that, once the data are separated, the "
               "normalised margin q_min/‖θ‖^L rises and ‖θ(t)‖ grows like (log t)^{1/L}")
    else:
        law = ("Lyu & Li's theorem (‖θ(t)‖ ∝ (log t)^{1/L} once the data are separated, and a "
               f"rising normalised margin) is for exponential-tailed losses such as "
               f"cross-entropy; this sweep's loss `{cfg.train.loss}` is outside it, so the "
               "exponent below is a measurement, with 1/L beside it for reference only")
    if not len(growth):
        return [f"{law}. No network that fit ends with every point classified right "
                "(q_min > 0), so there is no separated phase to measure.", ""]
    shown = pd.DataFrame({
        "depth": growth["depth"], "width": growth["width"],
        "networks (seeds)": [f"{n} ({s})" for n, s in zip(growth["networks"], growth["seeds"])],
        "separated at step": [fmt(v) for v in growth["separated_at"]],
        "a in ‖θ‖ ∝ (log t)^a": [ci(a, lo, hi) for a, lo, hi in
                                 zip(growth["a"], growth["a_lo"], growth["a_hi"])],
        "1/L": [fmt(v, 2) for v in growth["lyu_li"]],
        "verdict (1/L in interval)": [verdict(a, lo, hi, t) for a, lo, hi, t in zip(
            growth["a"], growth["a_lo"], growth["a_hi"], growth["lyu_li"])],
        "dq_min/d log t": [ci(r, lo, hi, signed=False) for r, lo, hi in zip(
            growth["margin_rate"], growth["margin_rate_lo"], growth["margin_rate_hi"])],
        "q/‖θ‖^L at separation": [fmt(v, 3) for v in growth["margin_at_separation"]],
        "at the end": [fmt(v, 3) for v in growth["margin_at_end"]]})
    return [f"{law}. Per (depth, width) over the networks that fit and separate the data "
            "(every point classified right from some record on: q_min > 0, q_min the smallest "
            "logit margin over the points): the exponent a of ‖θ(t)‖ = (Σ_l‖W_l‖_F²)^½ ∝ "
            "(log t)^a, fitted on the records from separation (t ≥ 3; at least 4 records), "
            "averaged per seed, with its 95% interval over seeds; the rate dq_min/d log t at "
            "which the smallest margin grows over the same records, likewise (for cross-"
            "entropy the loss falls like 1/t up to log factors, so this rate tends to 1; for "
            "softmax-MSE no theorem fixes it, and the interval is the measurement); and the "
            "normalised margin q_min/‖θ‖^L at separation and at the end, medians. A finite run "
            "spans a short range of log log t: read a as the local rate, not a limit.", "",
            _md(shown), "", "![margin](margin.png)", ""]


def norm_by_loss_section(by_loss: pd.DataFrame) -> list[str]:
    """‖θ‖ and the margin as the loss falls (`tables.norm_by_loss`), at the
    widest width of each depth."""
    if not len(by_loss):
        return []
    widest = by_loss.groupby("depth")["width"].transform("max")
    shown = by_loss[by_loss["width"] == widest].copy()
    shown["cell"] = [f"{fmt(t)} ({fmt(q, 2)})" if np.isfinite(q) else fmt(t)
                     for t, q in zip(shown["theta"], shown["margin"])]
    shown["η₀"] = [f"{v:.3g}" for v in shown["lr"]]
    table = shown.pivot_table(index=["depth", "width", "η₀"], columns="when", values="cell",
                              aggfunc="first", sort=False)
    order = ["init"] + [f"loss ≤ {level:g}·loss(0)" for level in LOSS_LEVELS] + ["end"]
    table = table[[c for c in order if c in table.columns]].fillna("–").reset_index()
    return ["How large the weights of the networks that fit are at a given degree of training: "
            "‖θ‖ = (Σ_l ‖W_l‖_F²)^½, median over seeds, at init, at the first record where the "
            "loss has fallen to a fraction of its initial value, and at the last step; in "
            "brackets the median smallest logit margin q_min there; widest width of each depth. "
            "Every width, with steps and counts, is in `norm_by_loss.csv`.", "", _md(table), ""]


def kernel_section(ker: pd.DataFrame, reason: str | None) -> list[str]:
    """The measured ‖θ(T) − θ₀‖ against the kernel prediction (`kernel.kernel_table`)."""
    if reason is not None:
        return [f"The kernel prediction of ‖θ(∞) − θ₀‖ is not shown: {reason}.", ""]
    shown = ker[ker["networks"] > 0]
    if not len(shown):
        return ["No network trained to interpolation (loss(T) ≤ "
                f"{kernel.CONVERGED:g}·loss(0)): the kernel prediction has nothing to meet.", ""]
    table = pd.DataFrame({
        **{c.replace("data_", ""): shown[c] for c in ("data_n", "data_d") if c in shown},
        **({"parametrization": shown["parametrization"]}
           if shown["parametrization"].nunique() > 1 else {}),
        "depth": shown["depth"], "width": shown["width"],
        "η₀": [f"{v:.3g}" for v in shown["lr"]], "networks": shown["networks"],
        "predicted ‖θ(∞) − θ₀‖": [fmt(v) for v in shown["predicted"]],
        "measured / predicted": [ci(v, lo, hi, signed=False) for v, lo, hi in
                                 zip(shown["ratio"], shown["ratio_lo"], shown["ratio_hi"])],
        "verdict (1 in interval)": [verdict(v, lo, hi, 1.0) for v, lo, hi in
                                    zip(shown["ratio"], shown["ratio_lo"], shown["ratio_hi"])]})
    return [heading("kernel", "Distance travelled against the kernel prediction"), "",
            "With a linear output and ½Σ‖z − y‖², the linearised network trained by GD to "
            "interpolation moves the weights by ‖θ(∞) − θ₀‖ = √(rᵀΘ⁻¹r) (r = z₀ − y the "
            "initial residual, Θ the empirical NTK at W(0); with rate factors c_l the metric "
            "is C⁻¹, see `normsweep/analysis/kernel.py`). In the lazy (kernel) regime the "
            "network stays close to its linearisation and the measured distance meets this "
            "prediction; a ratio away from 1 measures how far training left the kernel regime. "
            "Per cell over the networks that interpolated (loss(T) ≤ "
            f"{kernel.CONVERGED:g}·loss(0)); the prediction is computed in float64 from each "
            "seed's recorded W(0), and the ratio's 95% interval is over seeds. The table is "
            "`kernel.csv`.", "", _md(table), ""]


def finite_width_section(ds, fit_accuracy: float) -> list[str]:
    """The width exponent between adjacent widths (`tables.local_width_slopes`):
    where a measured exponent stands against its infinite-width limit."""
    local = local_width_slopes(ds, fit_accuracy)
    if not len(local):
        return []
    moving = local[np.abs(local["largest widths"] - local["first"]) > 0.1]
    shown = local.drop(columns=["first", "largest widths"])
    lines = ["**Finite width.** A width exponent is a statement about m → ∞; at finite width "
             "the corrections shrink as m grows, so the slope between the two largest widths "
             "is the best estimate of the limit, and a pooled fit, which weighs every width "
             "alike, lies between it and the small-width slopes. The local slopes between "
             "adjacent widths, at each η₀ (medians over seeds, deepest networks):", "",
             _md(shown), ""]
    if len(moving):
        lines += [f"In {len(moving)} of {len(local)} rows the local slope still moves by more "
                  "than 0.1 from the smallest to the largest widths (e.g. "
                  + "; ".join(f"{r.metric} layer {r.layer} at η₀ {r['η₀']}: {r.first:+.2f} → "
                              f"{r['largest widths']:+.2f}" for _, r in moving.head(3).iterrows())
                  + "): there the exponent has not reached its limit, and wider networks would "
                  "move it further.", ""]
    else:
        lines += ["Every local slope is within 0.1 of its value between the smallest widths: "
                  "the exponents have settled at these widths.", ""]
    return lines


def coordinate_section(coords: pd.DataFrame, lr: float) -> list[str]:
    """The μP coordinate check (`tables.coordinate_slopes`) in words."""
    return [heading("coordinates", "Coordinate check"), "",
            "How much a coordinate of each layer's preactivations moves, mean |a_l(t) − a_l(0)| "
            "over the data and units, against width at the first measured steps, at "
            f"η₀ = {lr:.3g} (the largest at which every network of the deepest depth fits or "
            "still trains). After the first step, from ΔW_l = −η·c_l·h_lᵀδ_l (Yang & Hu "
            "2021): μP keeps every layer's change Θ(1) in width (exponent 0); the NTK "
            "parametrization is lazy, its features (input and hidden layers) moving like m^−½ "
            "and its logits Θ(1); the standard one at fixed η blows the logits up like m and "
            "the hidden preactivations like m^½, and η ∝ 1/m makes every exponent 1 smaller. "
            "Later steps add the feedback of the earlier ones. Width exponents, least squares "
            "over widths of the medians over seeds:", "", _md(coords), "",
            "![coordinates](coordinates.png)", ""]


def no_coordinate_section(ds: xr.Dataset, outcome: xr.DataArray) -> list[str]:
    """Why a sweep that recorded the coordinate check shows none: no η₀ at
    which every network of the deepest depth fits or still trains."""
    depth = int(ds["depth"].max())
    counts = outcomes.counts(outcome.sel(depth=depth))
    said = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    return [heading("coordinates", "Coordinate check"), "",
            f"The sweep recorded the coordinate check (`activation_change`), but at no η₀ does "
            f"every network of depth {depth} fit or still train ({said}), so no width exponent "
            "is shown: a failed or diverged network's activations say nothing about how a "
            "coordinate scales. Add smaller learning rates to the grid to see it.", ""]


def balance_section(moved: dict, param: str, wd: float) -> list[str]:
    """The signed change of each layer's norm from init to the end, and the
    balance the exact per-step identity implies (`tables.balance`)."""
    if not moved:
        return []
    factor = "" if param == "standard" else " (c_l the per-layer rate factor)"
    spread = "; ".join(f"η₀ {lr:.3g}: {fmt(v, 2)}" for lr, v in moved["spread_by_lr"].items())
    expect = ("Summed over the steps, the exact per-step identity makes Δ‖W_l‖_F²/c_l the same "
              "in every layer but for the η² terms η²Σ_t c_l‖∇_l L‖², which differ by layer: the "
              "layers stay balanced at small η and drift apart as η grows" if wd == 0 else
              "With weight decay λ > 0 the decay term differs by layer, so no balance is expected")
    return [heading("balance", "How the norms move, signed"), "",
            f"From init to the last step at depth {moved['depth']}, over the "
            f"{moved['networks']} networks that fit or still train: the change of each layer's "
            "norm Δ‖W_l‖_F (signed: the question asks how the norm changes; the scaling laws "
            "below fit the size of the change ‖W(T) − W(0)‖ instead), relative to ‖W_l(0)‖_F, "
            f"and Δ‖W_l‖_F²/c_l{factor} (medians).", "",
            _md(moved["table"]), "",
            f"{expect}. Per network, the spread of Δ‖W_l‖_F²/c_l across layers (max − min over "
            f"the largest), median by learning rate: {spread}. Equal squared changes move the "
            f"layer of smallest norm most in relative terms (here layer "
            f"{moved['smallest_at_init']}); the largest relative move, either way, is layer "
            f"{moved['moves_most']}'s, which "
            f"{'grew' if moved['moves_most_change'] > 0 else 'shrank'} by "
            f"{abs(moved['moves_most_change']):.1%} (median).", "",
            "![balance](balance.png)", ""]


def cumulative_section(cum: pd.DataFrame | None, param: str) -> list[str]:
    """Gradient flow against GD over the whole run (`tables.cumulative_terms`)."""
    if cum is None or not len(cum):
        return []
    factor = "" if param == "standard" else "/c_l"
    shown = pd.DataFrame({
        "η₀": [f"{v:.3g}" for v in cum["lr"]], "layer": cum["layer"],
        f"Δ‖W_l‖²{factor}": [fmt(v) for v in cum["total"]],
        "first order (gradient flow)": [fmt(v) for v in cum["first_order"]],
        "η² part": [fmt(v) for v in cum["second_order"]],
        "η² share": [fmt(v, 2) for v in cum["second_order_share"]]})
    width, depth = int(cum["width"].iloc[0]), int(cum["depth"].iloc[0])
    return ["**Over the whole run.** Every step is recorded, so the change of each layer's "
            f"squared norm from init to the end{' (divided by c_l)' if factor else ''} splits "
            "exactly into a first-order part −2η·Σ_t⟨W_l, ∇_l L⟩, which is the same in every "
            "layer (gradient flow conserves the differences ‖W_l‖² − ‖W_{l+1}‖²), and the η² "
            "part Σ_t‖W_l(t) − W_l(t−1)‖², which is not. The η² part is how far GD departs "
            f"from gradient flow's conservation. Medians at depth {depth}, width {width}, over "
            "the networks that fit or still train; `cumulative_terms.csv` also has the "
            "first-order part summed from the recorded ⟨W_l, ∇_l L⟩, an independent route to "
            "the same number:", "", _md(shown), ""]


def regime_section(ds, table: pd.DataFrame, fit_accuracy: float,
                   regime_list: list | None = None) -> list[str]:
    """Whether one power law describes the sweep: the exponents fitted slice
    by slice (`fits.regimes`) with the F test of their equality, stated in
    words; then the fits that rest on too few networks and the metrics the
    record schedule cannot give."""
    lines = [heading("regimes", "Is one power law enough?"), "",
             "A pooled exponent is only a law if the data follow one: the width exponent "
             "fitted at each η, and the η exponent at each width (least squares, 95% "
             "intervals), with the p-value of the F test that each family shares one value "
             f"(p < {fits.HOMOGENEITY_P:g}: it does not).", ""]
    rows, verdicts = [], []
    if regime_list is None:
        regime_list = fits.regimes(ds, fit_accuracy)
    for metric, depth, layer, by_lr, by_width in regime_list:
        def cells(local, label):
            return "; ".join(f"{label} {v:.3g}: {ci(e, lo, hi)}" for v, e, lo, hi
                             in zip(local.at, local.exponent, local.lo, local.hi)
                             if np.isfinite(e)) or "–"
        rows.append({"metric": metric, "depth, layer": f"{depth}, {layer}",
                     "width exponent at each η": cells(by_lr, "η₀"),
                     "p": fmt(by_lr.p, 2),
                     "η exponent at each width": cells(by_width, "m"),
                     "p ": fmt(by_width.p, 2)})
        for local, what in ((by_lr, "width exponent across η"), (by_width, "η exponent across "
                                                                  "widths")):
            finite = np.isfinite(local.exponent)
            if local.differ:
                verdicts.append(f"- `{metric}`: the {what} drifts from "
                                f"{local.exponent[finite][0]:+.2f} to "
                                f"{local.exponent[finite][-1]:+.2f} (p = {fmt(local.p, 2)}): the "
                                "pooled exponent averages regimes; read the slices.")
    lines += (verdicts or ["Every family agrees within its intervals: the pooled laws above "
                           "describe the sweep."]) + [""]
    lines += [f"The exponents slice by slice are in section {ref('slices')}.", ""]
    thin = table[(np.isfinite(table.width_exponent) | np.isfinite(table.lr_exponent))
                 & (table.n < fits.MIN_NETWORKS)]
    if len(thin):
        lines += [f"**Thin fits:** {len(thin)} fits rest on fewer than {fits.MIN_NETWORKS} "
                  "networks (" + ", ".join(f"{r.metric} depth {r.depth} layer {r.layer}: n = "
                                           f"{r.n}" for _, r in thin.head(6).iterrows())
                  + (", …" if len(thin) > 6 else "") + "); their r² and intervals say little.",
                  ""]
    by_depth = fits.depth_exponents(ds, fit_accuracy)
    if len(by_depth):
        lines += ["Depth: metric ≈ C(η, m)·L^c for the layers every depth has, each (η, m) cell "
                  "its own prefactor and one depth exponent c (least squares, 95% interval):",
                  "", _md(pd.DataFrame({
                      "metric": by_depth.metric, "layer": by_depth.layer_role,
                      "depth exponent c": [ci(*v) for v in zip(by_depth.depth_exponent,
                                                               by_depth.lo, by_depth.hi)],
                      "n": by_depth.n})), ""]
    gaps = fits.schedule_gaps(ds["step"].values)
    if gaps:
        lines += ["**Record schedule:** " + "; ".join(gaps) + ". Record more of the first "
                  "steps (`[record] steps`) to fit them.", ""]
    lines += [heading("slices", "The exponents slice by slice"), "",
              "The width exponent fitted at each η and the η exponent at each width, with the "
              "p-value of the F test that each family shares one value:", "",
              _md(pd.DataFrame(rows)), ""]
    return lines


def first_step_prose(table: pd.DataFrame, param: str, p: float) -> list[str]:
    """The hidden layers' first-step width exponent beside its prediction
    (the table's `theory_width_exponent`), when both exist."""
    first = table[(table.metric == "first_update_spec") & (table.layer_role == "hidden")]
    first = first[np.isfinite(first.width_exponent_at_lr0)
                  & np.isfinite(first.theory_width_exponent)]
    if not len(first):
        return []
    pred = first.theory_width_exponent.iloc[0]
    found = "; ".join(f"depth {r.depth} layer {r.layer}: "
                      f"{ci(r.width_exponent_at_lr0, r.width_exponent_at_lr0_lo, r.width_exponent_at_lr0_hi)}"
                      for _, r in first.iterrows())
    return [f"The first step's spectral size ‖W(1) − W(0)‖₂ of a hidden layer against width "
            f"at fixed η₀: {found}. Prediction for {PARAMETRIZATION_NAMES[param]} at "
            f"width_exponent = {p:g}: {pred:+.1f} (one step ‖ΔW‖₂ = η·c_l·‖∇L‖₂; Yang, Simon & "
            "Bernstein 2023).", ""]


def identity_prose(check: dict, param: str) -> list[str]:
    """Section 3's text on the exact per-step identity, in the terms of `param`:
    the layer-independent quantity is Δ‖W_l‖²/c_l (c_l the per-layer rate
    factor, 1 in every layer only under the standard parametrization)."""
    if param == "standard":
        rule, equal = ("‖W(t+1)‖_F² − ‖W(t)‖_F² = −2η⟨W, ∇L⟩ + η²‖∇L‖²",
                       "every layer's squared norm moves by the same amount up to the η² term")
    else:
        factor = {"ntk": "c_l = s_l², the squared init scale of the layer",
                  "mup": "c_l = fan_out/fan_in"}[param]
        rule = ("‖W_l(t+1)‖_F² − ‖W_l(t)‖_F² = −2ηc_l⟨W_l, ∇L⟩ + η²c_l²‖∇L‖², with the "
                f"per-layer rate factor of {PARAMETRIZATION_NAMES[param]}, {factor}")
        equal = ("Δ‖W_l‖_F²/c_l is the same for every layer up to the η² term; the squared "
                 "norms themselves move by amounts in the ratio of the c_l, not equally")
    return [f"Plain GD obeys {rule}, exactly. Over "
            f"{check['pairs']} consecutive recorded step pairs (steps ≤ {check['max_step']}) "
            f"of the networks that fit or still train, the measured change differs from it by a "
            f"median {fmt(check['identity_rel_median'], 2)} and at most "
            f"{fmt(check['identity_rel_max'], 2)} of ‖W(t)‖_F² (float rounding).", "",
            "For a bias-free ReLU network the logits are 1-homogeneous in each W_l, so "
            f"⟨W_l, ∇_{{W_l}}L⟩ = Σ_i⟨∂L/∂z_i, z_i⟩ is the same for every layer: {equal}. "
            "Measured spread of ⟨W_l, ∇L⟩ across layers (max − min over the largest "
            f"|⟨W_l, ∇L⟩|): median {fmt(check['layer_spread_median'], 2)}, 90th percentile "
            f"{fmt(check['layer_spread_p90'], 2)}. The second-order term is a median "
            f"{fmt(check['second_order_share_median'], 2)} of the first-order term.", "",
            "![identity](per_step_identity.png)", ""]


def _exponents(t: pd.DataFrame) -> pd.DataFrame:
    """The fit rows `t` as the report's table: the exponents, the width
    exponent at fixed η₀ where η scales with width, the prediction, and the
    sample (n networks, S independent seeds)."""
    scaled = bool(np.any(np.abs(t.width_exponent_at_lr0 - t.width_exponent) > 1e-12))
    out = pd.DataFrame({
        "metric": t.metric, "depth": t.depth,
        "layer": [f"{l} ({r})" for l, r in zip(t.layer, t.layer_role)],
        "sign": [{1.0: "+", -1.0: "−"}.get(s, "0") for s in t.sign],
        "η exponent a": [ci(*v) for v in zip(t.lr_exponent, t.lr_exponent_lo, t.lr_exponent_hi)],
        "width exponent b": [ci(*v) for v in zip(t.width_exponent, t.width_exponent_lo,
                                                 t.width_exponent_hi)]})
    if scaled:
        out["at fixed η₀ (b + p·a)"] = [ci(*v) for v in zip(
            t.width_exponent_at_lr0, t.width_exponent_at_lr0_lo, t.width_exponent_at_lr0_hi)]
    out["theory"] = [f"{v:+.1f}" if np.isfinite(v) else "–" for v in t.theory_width_exponent]
    out["r²"] = [fmt(v, 2) for v in t.r2]
    out["n"] = t.n
    out["S"] = t.n_seeds
    return out


THEORY_METRICS = ("rel_frob_dist", "rel_spec_dist", "rel_param_dist", "rel_first_step",
                  "first_update_spec")


def verdict(value: float, lo: float, hi: float, predicted: float) -> str:
    """Whether `predicted` lies in the interval [lo, hi] of `value`."""
    if not np.isfinite(value):
        return "–"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval (one seed)"
    return "yes" if lo <= predicted <= hi else "no"


def lazy_section(table: pd.DataFrame, cfg, param: str = "standard") -> list[str]:
    """The measured width exponents at fixed η₀ beside the table's
    `theory_width_exponent` (`theory.predict`, for this sweep's
    parametrization, η scaling and depth), each with its verdict; for a
    standard sweep at fixed η, whose end-of-training laws are not predicted,
    the fitted joint law followed along η ∝ 1/m beside the lazy prediction."""
    from normsweep.analysis import theory

    p = float(cfg.grid.lr_width_exponent)
    name = PARAMETRIZATION_NAMES[param]
    rows = []
    for metric in THEORY_METRICS:
        sel = table[(table.metric == metric) & np.isfinite(table.theory_width_exponent)]
        for _, r in sel.iterrows():
            c, lo, hi = r.width_exponent_at_lr0, r.width_exponent_at_lr0_lo, \
                r.width_exponent_at_lr0_hi
            row = {"metric": metric, "depth": r.depth, "layer": f"{r.layer} ({r.layer_role})",
                   "measured m-exponent": ci(c, lo, hi),
                   "prediction": f"{r.theory_width_exponent:+.1f}",
                   "within interval": verdict(c, lo, hi, r.theory_width_exponent)}
            if "width_exponent_limit" in r:
                row["limit, with c/√m"] = ci(r.width_exponent_limit, r.width_exponent_limit_lo,
                                             r.width_exponent_limit_hi)
                row["gap at largest m"] = fmt(r.finite_size_gap, 2)
            rows.append(row)
    head = (f"This sweep used {name} with width_exponent = {p:g}: "
            f"{theory.regime(param, cfg.model.init, p)}. The width exponent at fixed η₀ "
            "(b + p·a) against the prediction derived for this parametrization, η scaling and "
            "depth (`theory.predict`; the columns `width_exponent_at_lr0` and "
            "`theory_width_exponent` of fits.csv). The predictions are limits m → ∞: the "
            "column 'limit, with c/√m' refits log y = α(η₀) + b·log m + c/√m, the leading "
            "finite-size correction, and 'gap at largest m' is |c|/(2√m), how far the local "
            "exponent at the largest width still is from that limit (with three widths or "
            "more; log m and 1/√m are nearly collinear over a narrow range, and the interval "
            "says so):")
    out = [head, "", _md(pd.DataFrame(rows)), ""] if rows else \
        [head.rsplit(". ", 1)[0] + ". No prediction applies to the fitted metrics.", ""]
    if param == "standard" and not theory.width_exponents(param, cfg.model.init, p, 3).stable:
        lazy = []
        for metric in ("rel_frob_dist", "rel_spec_dist", "rel_param_dist"):
            for _, r in table[table.metric == metric].iterrows():
                pred = theory.predict(metric, r.layer_role, param, cfg.model.init, -1.0,
                                      int(r.depth))
                if np.isfinite(pred) and np.isfinite(r.lr_exponent):
                    lazy.append({"metric": metric, "depth": r.depth,
                                 "layer": f"{r.layer} ({r.layer_role})",
                                 "implied under η ∝ 1/m (b − a)":
                                     fmt(r.width_exponent - r.lr_exponent, 2),
                                 "lazy prediction": f"{pred:+.1f}"})
        if lazy:
            out += ["The lazy-training laws hold for η ∝ 1/m (width_exponent = −1). The "
                    "column b − a follows the fitted joint law C·η^a·m^b along η ∝ 1/m: an "
                    "extrapolation (a point estimate, valid only as far as the law holds "
                    "jointly), not a measurement; sweep with width_exponent = −1 to test them "
                    "directly:", "", _md(pd.DataFrame(lazy)), ""]
    return out


# -- parametrizations, weight decay and the NTK --------------------------------

COMPARED = ("first_update_spec", "early_update_norm", "rel_frob_dist", "rel_spec_dist")


def _comparison_section(ds: xr.Dataset, table: pd.DataFrame, ref_labels: dict) -> list[str]:
    """Fitted exponents side by side, one column per parametrization/weight-decay slice."""
    labels = fits.slices(ds)
    rows = []
    for (metric, depth, layer), group in table.groupby(["metric", "depth", "layer"], sort=False):
        if metric not in COMPARED:
            continue
        row = {"metric": metric, "depth": depth,
               "layer": f"{layer} ({fits.layer_role(int(layer), int(depth))})"}
        for lab in labels:
            sel = group
            for name, value in lab.items():
                sel = sel[sel[fits.column(name)] == value]
            r = sel.iloc[0]
            b, lo, hi = r.width_exponent, r.width_exponent_lo, r.width_exponent_hi
            row[f"m-exponent, {fits.slice_name(lab)}"] = (f"{b:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                                                          if np.isfinite(b) else "–")
        rows.append(row)
    order = {m: i for i, m in enumerate(COMPARED)}
    rows.sort(key=lambda r: (order[r["metric"]], r["depth"]))
    mup = ""
    first = table[(table.metric == "first_update_spec")]
    if "parametrization" in table.columns and len(first):
        hidden = first[first.layer_role == "hidden"]
        parts = []
        for name, g in hidden.groupby("parametrization", sort=False):
            b = g.width_exponent.dropna()
            if len(b):
                parts.append(f"{name} {b.min():+.2f}" if b.min() == b.max() else
                             f"{name} {b.min():+.2f}…{b.max():+.2f}")
        if parts:
            p = float(config_mod.parse(ds.attrs["config_toml"]).grid.lr_width_exponent)
            theory_parts = [f"{name} {g.theory_width_exponent.dropna().iloc[0]:+.1f}"
                            for name, g in hidden.groupby("parametrization", sort=False)
                            if g.theory_width_exponent.notna().any()]
            mup = ("The width exponent of a hidden layer's first step ‖W(1) − W(0)‖₂, over "
                   "its depths, weight decays and fits: " + "; ".join(parts) + ". "
                   + (f"Theory at width_exponent = {p:g} (Yang, Simon & Bernstein 2023; μP's "
                      "updates have a width-independent spectral size): "
                      + "; ".join(theory_parts) + "." if theory_parts else
                      f"No theory is shown for width_exponent = {p:g}."))
    return ["", heading("compare", "Parametrizations and weight decay side by side"), "",
            "The other sections describe the slice "
            f"{fits.slice_name(ref_labels)}. Width exponents b "
            "of metric ≈ C·η^a·m^b per slice (95% intervals over seeds); the η exponents and "
            "prefactors are in fits.csv.", "", _md(pd.DataFrame(rows)), "", mup, "",
            "![comparison](parametrizations.png)", ""]


def _ntk_section(ds: xr.Dataset, outcome: xr.DataArray, cfg) -> list[str]:
    rows = []
    lr_eff = ds["lr_effective"].transpose("lr", "width").values
    keep = outcomes.usable(outcome)
    for lab in fits.slices(ds):
        for depth in ds["depth"].values:
            for name, label in (("ntk_max_eig", "λ_max"), ("ntk_min_eig", "λ_min")):
                y = ntk_change(ds, name).where(keep).sel(lab).sel(depth=depth)
                fit = fits.fit_power_law(y.transpose("lr", "width", "seed").values, lr_eff,
                                         ds["width"].values)
                lam0 = ds[name].isel(step=0).sel(lab).sel(depth=depth)
                rows.append({"slice": fits.slice_name(lab), "depth": int(depth),
                             "eigenvalue": label,
                             "at init (median, smallest → largest m)":
                                 f"{fmt(float(lam0.isel(width=0).median()))} → "
                                 f"{fmt(float(lam0.isel(width=-1).median()))}",
                             "relative change: η exponent": ci(fit.a, fit.a_lo, fit.a_hi),
                             "m exponent": ci(fit.b, fit.b_lo, fit.b_hi), "n": fit.n})
    return ["", heading("ntk", "The neural tangent kernel"), "",
            f"Empirical NTK of the logits on the first {cfg.record.ntk_points} training points, "
            "traced over the k outputs and weighted by each layer's lr multiplier (the kernel "
            "of the function-space dynamics GD follows). Its relative change |λ(T)/λ(0) − 1| "
            "over training, fitted as C·η^a·m^b over the networks that fit or still train: in "
            "the lazy regime (NTK parametrization, or η ∝ 1/m) the kernel freezes as the width "
            "grows, so b < 0; under μP features and the kernel keep moving (b ≈ 0).", "",
            _md(pd.DataFrame(rows)), "", "![ntk](ntk.png)", ""]


