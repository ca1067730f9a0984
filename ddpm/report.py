"""The sweep's report: one table row per setting and sampler point (plus the baselines), as CSV, Markdown and LaTeX,
and figures.

Every metric column names its feature extractor, so figures from different extractors never share a column, and
the number of samples or test images behind each figure stands beside it.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_open
from .settings import SAMPLER_FILE, SETTING_FILE, Setting, read_sampler_file, read_setting
from .checkpoint import DIVERGED

#: The sampling of a sweep without a sampling axis: its one point, DDPM's ancestral sampler on every step.
DEFAULT_SAMPLERS = ("ancestral",)

#: A score's key in fid_is.json → its column (with the extractor's name appended), and the scale the column shows it on:
#: KID on the conventional ×10³ (Bińkowski et al. 2018 and after). ``±``: the bootstrap standard error over the
#: samples (:func:`ddpm.metrics.bootstrap_errors`).
FIDELITY_KEYS = (("fid", "FID", 1), ("fid_se", "FID ±", 1), ("is_mean", "IS", 1), ("is_se", "IS ±", 1),
                 ("is_std", "IS std", 1), ("kid_mean", "KID ×10³", 1e3), ("kid_se", "KID ×10³ ±", 1e3),
                 ("precision", "precision", 1), ("recall", "recall", 1))

#: Which way a metric column is better, shown beside its name in the Markdown, LaTeX and HTML tables (the CSV keeps
#: the bare names, for programs): a column's label up to its extractor (``FID [classifier]`` → ``FID``), or its
#: label in the paper and samplers tables (``S=10 FID``: by its last word).
LOWER_IS_BETTER = ("FID", "FID test", "KID ×10³", "bits/dim", "bits/dim train", "final loss", "s/image",
                   "network evaluations", "reconstruction MSE")
HIGHER_IS_BETTER = ("IS", "precision", "recall", "sampling images/s")

#: The reference rows of the main table: samples of a Gaussian fitted to the train pixels (the bar every setting must
#: beat), and held-out real images, the test split (what a model that draws new images from the data distribution
#: scores at this sample count; a model can score below it only within noise or by reproducing train images, since
#: FID is taken against the train split).
GAUSSIAN_ROW = "gaussian baseline"
REAL_ROW = "test split (real, held out)"


def _read_json(path: Path, setting: str | None = None) -> dict:
    """A result file; with ``setting``, one that records another setting (copied from another run) is refused."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if setting is not None and found.get("setting", setting) != setting:
        raise ValueError(f"{path} records the setting {found['setting']}, but it is in the folder of {setting}: it "
                         f"belongs to another run; delete it and run the workflow again")
    return found


def _fidelity_columns(scores: dict) -> dict:
    extractor = scores["extractor"]
    row = {f"{label} [{extractor}]": scores.get(key, float("nan")) * scale for key, label, scale in FIDELITY_KEYS}
    if not _kid_readable(scores):
        row.update({f"{label} [{extractor}]": float("nan") for key, label, _ in FIDELITY_KEYS if key.startswith("kid")})
    if "fid_test" in scores:
        row[f"FID test [{extractor}]"] = scores["fid_test"]
    row["samples"] = scores["num_samples"]
    row["FID against"] = _fid_reference(scores.get("fid_reference"))
    row["reference images"] = scores.get("reference_images", float("nan"))  # FID's real images (files of old: –)
    row["preprocess"] = scores.get("reference_preprocess")
    return row


def _kid_readable(scores: dict) -> bool:
    """Whether a result's KID can be read: torch-fidelity's on Inception's features, or on another extractor's with the
    kernel scaled to them (it records its γ, :func:`ddpm.metrics.kid_kernel_gamma`); one scored before that (≈ 10⁶ on
    the classifier's features) is not shown."""
    from .metrics import KID_GAMMA

    return scores["extractor"] == "inception-v3-compat" or KID_GAMMA in scores


def _fid_reference(reference: dict | None) -> str:
    """What a FID was computed against: the train images, this project's statistics file of them, or a statistics file
    from elsewhere (pytorch-fid, clean-fid: labelled foreign, with its name and the start of its sha256)."""
    if not reference:
        return "train split"
    if reference["origin"] == "ddpm":
        return "train split (statistics file)"
    return f"foreign statistics {Path(reference['stats']).name} ({reference['npz_sha256'][:12]})"


def _setting(folder: Path, name: str) -> dict:
    """The axes of the run in ``folder`` (its setting.json), which must be the setting ``name`` it is reported as."""
    setting = read_setting(folder)
    if setting.name != name:
        raise ValueError(f"{folder / SETTING_FILE} records the setting {setting.name}, but the run is reported as "
                         f"{name}: it belongs to another run; delete it and run the workflow again")
    return setting.axes()


def _last_record(metrics_file: Path) -> dict:
    """The last line of a run's metrics.jsonl (its final step and loss), or {} if it logged none."""
    lines = metrics_file.read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _point_dir(folder: Path, sampler: str) -> Path:
    return folder / "samplers" / sampler


def build_table(run_dirs: dict[str, Path], baselines: dict[str, Path], *, samplers=DEFAULT_SAMPLERS,
                nll_train: bool = False) -> pd.DataFrame:
    """``run_dirs``: setting name → its folder (with metrics.jsonl, nll.json, ``samplers/<point>/fid_is.json`` for
    each of ``samplers``, and nll-train.json with ``nll_train``); one row per setting and sampler point, with what the
    point's samples cost; ``baselines``: row label → a fidelity-metrics JSON scored the same way (the Gaussian
    baseline, the test split)."""
    rows = []
    for name, folder in run_dirs.items():
        nll = _read_json(folder / "nll.json", name)
        for sampler in samplers:
            scores = _read_json(_point_dir(folder, sampler) / "fid_is.json", name)
            diverged = scores.get(DIVERGED, nll.get(DIVERGED))
            row = {"setting": name, **_setting(folder, name), "sampler": sampler,
                   "status": "finished" if diverged is None else f"diverged at step {diverged}",
                   "final loss": _last_record(folder / "metrics.jsonl").get("loss", float("nan"))}
            if diverged is None:
                _check_sampler(scores, folder, sampler)
                row.update({"network evaluations": scores.get("network_evaluations", float("nan")),
                            "sampling images/s": scores.get("sampling_images_per_s", float("nan"))})
                row.update(_fidelity_columns(scores), **{"bits/dim": nll["bpd"], "bits/dim stderr": nll["bpd_stderr"],
                                                         "NLL images": nll["num_images"],
                                                         "decoder": nll.get("decoder", "exact")})
                if nll_train:
                    train = _read_json(folder / "nll-train.json", name)
                    row.update({"bits/dim train": train["bpd"], "bits/dim train stderr": train["bpd_stderr"],
                                "NLL train images": train["num_images"]})
            rows.append(row)
    for label, path in baselines.items():
        rows.append({"setting": label, **_fidelity_columns(_read_json(path))})
    table = pd.DataFrame(rows)
    fid = next((c for c in table.columns if c.startswith("FID [")), None)
    if fid is not None:
        table["FID vs best"] = compare_to_best(table, fid, fid.replace("FID [", "FID ± ["), table["status"].notna())
    return table


def distinguishable(a: float, se_a: float, b: float, se_b: float) -> bool:
    """Whether two scores, each with its bootstrap standard error, differ by more than twice their combined error
    (|a − b| > 2 √(se_a² + se_b²): about a 95 % two-sided test for independent, roughly normal estimates)."""
    return abs(a - b) > 2 * float(np.hypot(se_a, se_b))


def compare_to_best(table: pd.DataFrame, column: str, se_column: str, candidates: pd.Series) -> pd.Series:
    """Each row against the best (lowest) ``column`` among the ``candidates`` rows (the settings, not the reference
    rows): ``best``, ``not distinguishable`` (within noise of it at this sample count, :func:`distinguishable`),
    ``worse`` or ``better`` (a reference row below it); empty where a row has no score or no standard error."""
    scored = table[column].astype(float).notna() & (table[se_column].astype(float).notna()
                                                    if se_column in table else False)
    pool = table[candidates & scored]
    if pool.empty:
        return pd.Series([""] * len(table), index=table.index)
    best = pool[column].astype(float).idxmin()
    best_value, best_se = float(table.loc[best, column]), float(table.loc[best, se_column])

    def verdict(i) -> str:
        if not scored[i]:
            return ""
        if i == best:
            return "best"
        value, se = float(table.loc[i, column]), float(table.loc[i, se_column])
        if not distinguishable(value, se, best_value, best_se):
            return "not distinguishable"
        return "worse" if value > best_value else "better"

    return pd.Series([verdict(i) for i in table.index], index=table.index)


def _check_sampler(scores: dict, folder: Path, sampler: str) -> None:
    """Scores in the folder of sampler point ``sampler`` must be of samples that point drew."""
    if scores.get("sampler", sampler) != sampler:
        raise ValueError(f"{_point_dir(folder, sampler) / 'fid_is.json'} scores samples of the sampler point "
                         f"{scores['sampler']}, but it is in the folder of {sampler}: delete it and run the workflow "
                         f"again")


def fid_over_training_table(run_dirs: dict[str, Path], snapshot_steps=(), *, sampler: str = DEFAULT_SAMPLERS[0]
                            ) -> pd.DataFrame:
    """FID over training: one row per setting and scored checkpoint (the snapshots at ``snapshot_steps``, then the
    final one sampled by ``sampler``, the sweep's first point), with its step and scores. A checkpoint the training
    never reached (it diverged) has no row, nor has a model that was not trained here (imported: no steps)."""
    rows = []
    for name, folder in run_dirs.items():
        points = [(step, "snapshot", folder / "snapshots" / f"step-{step}" / "fid_is.json") for step in snapshot_steps]
        final_step = _last_record(folder / "metrics.jsonl").get("step")
        if final_step is not None:
            points.append((final_step, "final", _point_dir(folder, sampler) / "fid_is.json"))
        for step, kind, path in points:
            scores = _read_json(path, name)
            if DIVERGED not in scores:
                rows.append({"setting": name, "step": step, "checkpoint": kind, **_fidelity_columns(scores)})
    return pd.DataFrame(rows)


def best_checkpoints(curve: pd.DataFrame) -> pd.DataFrame:
    """Each setting's checkpoint with the minimum FID (DDPM reports sample quality there), among those scored with
    the most samples (FID from fewer samples is biased upwards, so it cannot win against the final's)."""
    if curve.empty:
        return curve
    fid = next(c for c in curve.columns if c.startswith("FID ["))
    most = curve.groupby("setting")["samples"].transform("max")
    eligible = curve[curve["samples"] == most]
    return eligible.loc[eligible.groupby("setting", sort=False)[fid].idxmin()].set_index("setting")


def plot_fid_over_training(curve: pd.DataFrame, path: str | Path) -> None:
    """FID against the training step, one line per setting, a star at its minimum (see :func:`best_checkpoints`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not curve.empty:
        fid = next(c for c in curve.columns if c.startswith("FID ["))
        best = best_checkpoints(curve)
        for name, points in curve.groupby("setting", sort=False):
            line, = ax.plot(points["step"], points[fid], marker="o", label=name)
            ax.plot(best.loc[name, "step"], best.loc[name, fid], marker="*", markersize=14, color=line.get_color())
        ax.set_ylabel(fid)
    ax.set_xlabel("training step")
    ax.legend(fontsize=7)
    ax.set_title("FID over training (star: each setting's minimum)")
    _save(fig, path)


#: The paper table's metrics: (column label, published metric name); the full table's column is the label with the
#: feature extractor, but for bits/dim. The last two are optional: left out where neither measured nor published.
PAPER_METRICS = (("IS", "is"), ("FID", "fid"), ("FID test", "fid_test"), ("bits/dim", "bpd"),
                 ("bits/dim train", "bpd_train"))
OPTIONAL_PAPER_METRICS = ("fid_test", "bpd_train")


def paper_table(table: pd.DataFrame, published: pd.DataFrame, sweep: str, *, scaled_down: bool = False,
                curve: pd.DataFrame | None = None) -> pd.DataFrame:
    """The sweep in the paper's layout: one row per setting (seeds pooled), each metric measured, published and
    their difference (Δ = measured − paper), with the number of samples and the feature extractor.

    With ``curve`` (:func:`fid_over_training_table`), IS and FID come from each run's checkpoint with the minimum FID,
    as DDPM reports them, and ``min-FID step`` says which; bits/dim is the final checkpoint's.

    With one seed, IS ± is torch-fidelity's spread over splits (as the paper's); with two or more seeds every ± is
    the standard deviation over seeds. A setting the paper could not train says so in ``paper note``. A number
    measured under other conditions than the paper's (:func:`ddpm.paper.not_comparable`: a scaled-down run, fewer
    samples, another extractor, fewer images) gets no Δ, and ``not comparable`` says why, per column."""
    from .paper import PAPER_PREPROCESS, SETTING_AXES, comparability_note, not_comparable, published_for

    settings = table[table["status"].notna()]  # the settings' rows, not the baselines'
    if curve is not None and not curve.empty:
        settings = _at_best_checkpoint(settings, best_checkpoints(curve))
    extractor = next((c[c.index("[") + 1:-1] for c in settings.columns if c.startswith("FID [")), None)

    def measured_column(label: str) -> str:
        return label if label.startswith("bits/dim") else f"{label} [{extractor}]"

    sweep_metrics = set(published.loc[published["sweep"] == sweep, "metric"])
    metrics = [(label, metric) for label, metric in PAPER_METRICS
               if metric not in OPTIONAL_PAPER_METRICS or measured_column(label) in settings or metric in sweep_metrics]
    # A column the table lacks (every setting diverged, or no FID against the test set) reads as NaN.
    rows = []
    integer_axes = {f.name for f in fields(Setting) if f.type in ("int", int)}  # floats beside the baselines' NaN
    for axes, group in settings.groupby(list(SETTING_AXES), sort=False):
        setting = {axis: int(value) if axis in integer_axes else value for axis, value in zip(SETTING_AXES, axes)}
        paper = published_for(published, sweep, setting)
        row = {**setting, "seeds": len(group)}
        conditions = {"samples": _column(group, "samples").max(), "extractor": extractor, "scaled_down": scaled_down,
                      "reference_images": _column(group, "reference images").min(),
                      "preprocess": _only(group, "preprocess"), "decoder": _only(group, "decoder")}
        marks: dict[tuple[str, ...], list[str]] = {}
        for label, metric in metrics:
            values = _column(group, measured_column(label))
            row[label] = values.mean()
            if len(group) > 1:
                row[f"{label} ±"] = values.std(ddof=1)
            elif label == "IS":
                row[f"{label} ±"] = _column(group, f"IS std [{extractor}]").iloc[0]
            elif label == "FID":  # one run: the bootstrap standard error over its samples
                row[f"{label} ±"] = _column(group, f"FID ± [{extractor}]").iloc[0]
            published_value = paper.get(metric, {}).get("value")
            row[f"{label} (paper)"] = published_value
            if label == "IS":
                row["IS ± (paper)"] = paper.get(metric, {}).get("std")
            images = _column(group, "NLL train images" if metric == "bpd_train" else "NLL images").min()
            source = paper.get(metric, {})
            reasons = tuple(not_comparable(metric, nll_images=images, **conditions,
                                           paper_preprocess=PAPER_PREPROCESS.get((source.get("paper"), source.get("table")))))
            if published_value is not None:
                marks.setdefault(reasons, []).append(label)
            row[f"{label} Δ"] = None if published_value is None or reasons else row[label] - published_value
        if "min-FID step" in group:
            row["min-FID step"] = ", ".join(str(int(s)) for s in group["min-FID step"].dropna())
        row["samples"] = _column(group, "samples").max()
        row["extractor"] = extractor
        if "FID against" in group:
            row["FID against"] = ", ".join(sorted(set(group["FID against"].dropna())))
        row["reference images"] = conditions["reference_images"]
        row["bits/dim decoder"] = conditions["decoder"]
        row["status"] = "; ".join(sorted(set(group["status"])))
        row["not comparable"] = comparability_note(marks)
        row["paper note"] = "; ".join(v["note"] for k, v in paper.items() if k == "unstable")
        row["source"] = ", ".join(sorted({f"{v['paper']}, {v['table']}" for k, v in paper.items()
                                          if k in (*dict(metrics).values(), "unstable")}))
        rows.append(row)
    return pd.DataFrame(rows)


def _at_best_checkpoint(settings: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """The settings' rows with the sample-quality scores of their best checkpoint in place of the final one's."""
    settings = settings.copy()
    columns = [c for c in best.columns if c not in ("step", "checkpoint")]
    settings["min-FID step"] = float("nan")
    for i, name in settings["setting"].items():
        if name in best.index:
            for column in columns:
                settings.loc[i, column] = best.loc[name, column]
            settings.loc[i, "min-FID step"] = best.loc[name, "step"]
    return settings


def _only(group: pd.DataFrame, column: str):
    """The one value a column has in ``group`` (None where it has none); several are joined, so no reference or
    decoder is silently taken for another's."""
    values = sorted({str(v) for v in group[column].dropna()}) if column in group else []
    return values[0] if len(values) == 1 else (", ".join(values) or None)


def _column(group: pd.DataFrame, column: str) -> pd.Series:
    return group[column].astype(float) if column in group else pd.Series([float("nan")] * len(group))


def _cell(v, *, missing: str, text=str) -> str:
    """A table cell: floats to 4 significant digits, NaN / None / NA as ``missing``, anything else through ``text``."""
    if isinstance(v, float):
        return missing if np.isnan(v) else f"{v:.4g}"
    return missing if v is None or v is pd.NA else text(v)


def display_header(column: str) -> str:
    """A column's name as the rendered tables show it: with ↓ (lower is better) or ↑ (higher is better) after its
    metric's label (:data:`LOWER_IS_BETTER`, :data:`HIGHER_IS_BETTER`), before the extractor: ``FID ↓ [classifier]``,
    ``S=10 FID ↓``, ``bits/dim ↓``. Errors (``±``), published values and differences (Δ) get no arrow."""
    label, bracket, rest = column.partition(" [")
    if label.endswith(("±", "Δ", "(paper)", "stderr")) or " ± " in label:
        return column
    words = label.split(" ")
    for cut in range(len(words)):  # the longest tail of the label that is a metric: "S=10 FID" → "FID"
        tail = " ".join(words[cut:])
        arrow = "↓" if tail in LOWER_IS_BETTER else "↑" if tail in HIGHER_IS_BETTER else None
        if arrow:
            return f"{label} {arrow}{bracket}{rest}"
    return column


#: What every rendered table says under its caption.
LEGEND = ("↓ lower is better, ↑ higher is better; ± after a score: its bootstrap standard error over the samples, or "
          "in the paper table the standard deviation over seeds (≥ 2 seeds) and, for IS of one seed, the spread over "
          "IS's splits as the papers give it; IS std: that spread; KID is shown ×10³, with the cubic kernel "
          "(γ x·y + 1)³: γ = 1/d (torch-fidelity's) on Inception's features; on the classifier's, whose scale is "
          "arbitrary, γ = 1 / their mean squared norm over the reference images (γ x·x ≈ 1, as 1/d supposes), "
          "and a KID scored without it is not shown; KID is unbiased, so it can be slightly below 0 where the samples "
          "are as close to the reference as its own images are (within its ±); FID vs best: a row's FID against "
          "the best setting's, distinguishable when they differ by more than twice their combined standard error; "
          "– : not measured or not published")


def _shown(table: pd.DataFrame, *, drop_empty: bool) -> pd.DataFrame:
    """The table as rendered: headers with their direction; with ``drop_empty``, without the columns no row fills."""
    if drop_empty:
        filled = [c for c in table.columns
                  if not all(v is None or v is pd.NA or v == "" or (isinstance(v, float) and np.isnan(v))
                             for v in table[c])]
        table = table[filled]
    return table.rename(columns=display_header)


def _markdown(table: pd.DataFrame, caption: str = "") -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(_cell(v, missing="–") for v in row) + " |" for row in table.itertuples(index=False)]
    lead = [caption, "", LEGEND, ""] if caption else []
    return "\n".join([*lead, header, rule, *body]) + "\n"


def _latex(table: pd.DataFrame, caption: str = "") -> str:
    def esc(text) -> str:
        return str(text).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%").replace("#", "\\#")

    lines = ["\\begin{tabular}{" + "l" * len(table.columns) + "}", "\\hline",
             " & ".join(esc(c) for c in table.columns) + " \\\\", "\\hline"]
    lines += [" & ".join(_cell(v, missing="--", text=esc) for v in row) + " \\\\" for row in table.itertuples(index=False)]
    lines += ["\\hline", "\\end{tabular}"]
    if caption:
        lines = ["\\begin{table}", "\\caption{" + esc(caption) + "}", *lines, "\\end{table}"]
    return "\n".join(lines) + "\n"


def _html(table: pd.DataFrame, caption: str = "") -> str:
    """A page with the table (its caption, the legend under it), for the Snakemake report and a browser."""
    from html import escape

    head = "".join(f"<th>{escape(str(c))}</th>" for c in table.columns)
    def cell(v) -> str:  # numbers right-aligned, words left
        number = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        opening = '<td class="n">' if number else "<td>"
        return f"{opening}{escape(_cell(v, missing='–'))}</td>"

    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>\n" for row in table.itertuples(index=False))
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;font-size:13px}"
             "caption{text-align:left;font-weight:bold;margin-bottom:.5em}th,td{border:1px solid #ccc;padding:3px 6px;"
             "text-align:left}td.n{text-align:right}th{background:#f3f3f3}td:first-child{white-space:nowrap}"
             "p.legend{font-size:12px;color:#555;max-width:70em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{escape(caption)}</title>"
            f"<style>{style}</style></head><body>\n<table>\n<caption>{escape(caption)}</caption>\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"
            f"<p class=\"legend\">{escape(LEGEND)}</p>\n</body></html>\n")


def write_tables(table: pd.DataFrame, stem: str | Path, *, caption: str = "", html: str | Path | None = None,
                 drop_empty: bool = False) -> list[Path]:
    """``<stem>.csv`` (the table as it is, bare column names), ``<stem>.md`` and ``<stem>.tex`` (with ``caption``, the
    legend, and each metric's direction in its header; with ``drop_empty``, without the columns no row fills) and,
    with ``html``, the same as an HTML page there."""
    stem = Path(stem)
    shown = _shown(table, drop_empty=drop_empty)
    renders = [(stem.with_suffix(".csv"), table.to_csv(index=False)), (stem.with_suffix(".md"), _markdown(shown, caption)),
               (stem.with_suffix(".tex"), _latex(shown, caption))]
    if html is not None:
        renders.append((Path(html), _html(shown, caption)))
    for path, text in renders:
        with atomic_open(path, "w") as f:
            f.write(text)
    return [path for path, _ in renders]


def _sampler_row_label(point) -> str:
    """DDIM Table 1's row names: η = … for ddim, σ̂ for ancestral with σ² = β (on the subsequence)."""
    if point.sampler == "ddim":
        return f"η = {point.eta:.1f}"
    return {"model": "ancestral", "fixedlarge": "σ̂", "fixedsmall": "ancestral, σ² = β̃"}[point.variance]


def samplers_table(run_dirs: dict[str, Path], samplers, published: pd.DataFrame | None, sweep: str, *,
                   scaled_down: bool = False) -> pd.DataFrame:
    """The sampling axis in DDIM Table 1's layout: one row per (setting, sampler row: η or σ̂, skip, clipping), seeds
    pooled; for each S, the measured FID (mean over seeds), the published one, Δ = measured − paper (only where the
    FIDs were measured as the paper's: :func:`ddpm.paper.not_comparable`; ``not comparable`` says why not) and the
    seconds per image of sampling, then the FIDs' feature extractor and number of samples. A point on every step is
    S = T."""
    from .paper import PAPER_PREPROCESS, SETTING_AXES, not_comparable, published_for_sampler

    cells: dict[tuple, dict] = {}
    measured_with = set()  # (feature extractor, samples, reference images, preprocess) of the FIDs
    paper_preprocess = None  # how the published numbers' data were prepared, where a paper says (LSUN)
    for name, folder in run_dirs.items():
        setting = _setting(folder, name)
        for sampler in samplers:
            point_dir = _point_dir(folder, sampler)
            scores = _read_json(point_dir / "fid_is.json", name)
            if DIVERGED in scores:
                continue
            _check_sampler(scores, folder, sampler)
            point = read_sampler_file(point_dir / SAMPLER_FILE)
            if point.name != sampler:
                raise ValueError(f"{point_dir / SAMPLER_FILE} records the sampler point {point.name}, but it is in "
                                 f"the folder of {sampler}: delete it and run the workflow again")
            S = point.num_steps(setting["T"])
            key = (*(setting[a] for a in SETTING_AXES), _sampler_row_label(point), point.skip, point.clip)
            cell = cells.setdefault(key, {}).setdefault(S, {"fid": [], "seconds": [], "paper": None})
            cell["fid"].append(scores["fid"])
            images_per_s = scores.get("sampling_images_per_s")
            cell["seconds"].append(1 / images_per_s if images_per_s else float("nan"))
            measured_with.add((scores["extractor"], scores["num_samples"], scores.get("reference_images"),
                               scores.get("reference_preprocess")))
            if published is not None:
                source = published_for_sampler(published, sweep, setting, point).get("fid", {})
                cell["paper"] = source.get("value")
                paper_preprocess = paper_preprocess or PAPER_PREPROCESS.get((source.get("paper"), source.get("table")))
    all_steps = sorted({S for by_steps in cells.values() for S in by_steps})
    reasons = list(dict.fromkeys(reason for extractor, count, images, preprocess in sorted(measured_with, key=str)
                                 for reason in not_comparable("fid", samples=count, extractor=extractor,
                                                              scaled_down=scaled_down, reference_images=images,
                                                              preprocess=preprocess, paper_preprocess=paper_preprocess)))
    rows = []
    for key, by_steps in cells.items():
        row = dict(zip((*SETTING_AXES, "sampler", "skip", "clip"), key))
        for S in all_steps:
            cell = by_steps.get(S)
            measured = float(np.mean(cell["fid"])) if cell else float("nan")
            paper = cell["paper"] if cell else None
            row[f"S={S} FID"] = measured
            row[f"S={S} paper"] = paper
            row[f"S={S} Δ"] = None if paper is None or reasons else measured - paper
            row[f"S={S} s/image"] = float(np.mean(cell["seconds"])) if cell else float("nan")
        row["extractor"] = ", ".join(sorted({measured[0] for measured in measured_with}))
        row["samples"] = max((measured[1] for measured in measured_with), default=None)
        has_paper = any(cell["paper"] is not None for cell in by_steps.values())
        row["not comparable"] = ", ".join(reasons) if has_paper else ""
        rows.append(row)
    return pd.DataFrame(rows)


def plot_samplers(table: pd.DataFrame, path: str | Path) -> None:
    """FID against S (log scale), one line per row of :func:`samplers_table`; the published values dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [int(c.split()[0][2:]) for c in table.columns if c.endswith(" FID")]
    for _, row in table.iterrows():
        label = f"{row['sampler']}, {row['skip']}" + ("" if row["clip"] else ", no clip")
        if table[["schedule", "T"]].drop_duplicates().shape[0] > 1:
            label = f"{row['schedule']}-T{row['T']}: {label}"
        line, = ax.plot(steps, [row[f"S={S} FID"] for S in steps], marker="o", label=label)
        paper = [row[f"S={S} paper"] for S in steps]
        if any(v is not None and not pd.isna(v) for v in paper):
            ax.plot(steps, [np.nan if v is None else v for v in paper], linestyle="--", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("S (reverse steps)")
    ax.set_ylabel("FID")
    ax.legend(fontsize=7)
    ax.set_title("FID against the number of sampling steps (dashed: published)")
    _save(fig, path)


#: DDPM Table 4's rows: after 1000, 900, …, 100 reverse steps of T = 1000 (the same fractions of any other T).
TABLE4_FRACTIONS = tuple(f / 10 for f in range(10, 0, -1))


def rate_distortion(nll: dict, fractions=TABLE4_FRACTIONS) -> pd.DataFrame:
    """Progressive coding with the reverse process (DDPM §4.3, Table 4), from a gathered ``nll.json``.

    After k reverse steps the receiver holds x_t, t = T − k + 1 (1-based). The rate is the bits sent so far,
    L_T + Σ_{s=t}^{T−1} L_s (bits/dim); the distortion is the RMSE of x̂_0 predicted from x_t, on the 0..255 scale.
    After all T steps the rate is the bound less L_0, the decoder's term."""
    vb = np.asarray(nll["vb_per_timestep"], dtype=float)  # index 0: L_0; index s ≥ 1: L_s
    mse = np.asarray(nll["xstart_mse_per_timestep"], dtype=float)  # index t − 1: x̂_0 from x_t, on [-1, 1]
    T = len(vb)
    rows = []
    for fraction in fractions:
        k = max(1, round(fraction * T))
        t = T - k + 1
        rows.append({"reverse step": k, "rate (bits/dim)": nll["prior_bpd"] + vb[t:].sum(),
                     "distortion (RMSE, 0..255)": float(np.sqrt(mse[t - 1]) * 127.5)})
    return pd.DataFrame(rows)


def rate_distortion_table(run_dirs: dict[str, Path], published: pd.DataFrame | None, sweep: str) -> pd.DataFrame:
    """Table 4 for every setting that has a bound (a diverged one has none), with the paper's rows beside its own
    (published for T = 1000: reverse step k of the paper is reverse step k here)."""
    from .paper import published_for

    parts = []
    for name, folder in run_dirs.items():
        nll = _read_json(folder / "nll.json")
        if DIVERGED in nll:
            continue
        part = rate_distortion(nll)
        part.insert(0, "setting", name)
        paper = published_for(published, sweep, _setting(folder, name)) if published is not None else {}
        for column, metric in (("rate (paper)", "rate_bpd"), ("distortion (paper)", "distortion_rmse")):
            part[column] = [paper.get(f"{metric}_step{k}", {}).get("value", np.nan) for k in part["reverse step"]]
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def plot_rate_distortion(run_dirs: dict[str, Path], path: str | Path) -> None:
    """DDPM Figure 5: rate and distortion against the number of reverse steps, one curve per setting."""
    plt = _pyplot()
    fig, (rate_ax, distortion_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, folder in run_dirs.items():
        nll = _read_json(folder / "nll.json")
        if DIVERGED in nll:
            continue
        T = len(nll["vb_per_timestep"])
        curve = rate_distortion(nll, fractions=[k / T for k in range(1, T + 1)])
        rate_ax.plot(curve["reverse step"], curve["rate (bits/dim)"], label=name)
        distortion_ax.plot(curve["reverse step"], curve["distortion (RMSE, 0..255)"], label=name)
    rate_ax.set_xlabel("reverse steps")
    rate_ax.set_ylabel("rate (bits/dim)")
    distortion_ax.set_xlabel("reverse steps")
    distortion_ax.set_ylabel("distortion (RMSE, 0..255)")
    distortion_ax.legend(fontsize=7)
    fig.suptitle("Progressive coding: rate and distortion along the reverse process")
    _save(fig, path)


def plot_schedules(run_dirs: dict[str, Path], path: str | Path, *, rescale: bool = False) -> None:
    """The sweep's noise schedules side by side: ᾱ_t against t / T for each (schedule, T), with L_T, the prior
    term of the bound (bits/dim, measured on the test images), in the legend (as Improved DDPM's Figure 5)."""
    from .schedules import make_betas

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen = set()
    for name, folder in run_dirs.items():
        setting = _setting(folder, name)
        key = (setting["schedule"], setting["T"])
        if key in seen:
            continue
        seen.add(key)
        alpha_bar = np.cumprod(1.0 - make_betas(setting["schedule"], setting["T"], rescale=rescale))
        nll = _read_json(folder / "nll.json")
        prior = f", L_T = {nll['prior_bpd']:.2e} bits/dim" if "prior_bpd" in nll else ""
        ax.plot(np.arange(1, setting["T"] + 1) / setting["T"], alpha_bar, label=f"{key[0]}, T = {key[1]}{prior}")
    ax.set_xlabel("t / T")
    ax.set_ylabel("ᾱ_t")
    ax.legend(fontsize=7)
    ax.set_title("Noise schedules" + (" (linear endpoints scaled by 1000 / T)" if rescale else ""))
    _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    _pyplot().close(fig)


def plot_loss_curves(run_dirs: dict[str, Path], path: str | Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, folder in run_dirs.items():
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("Training loss per setting")
    _save(fig, path)


#: DDIM Table 2's columns: the setting's axes, S, then the error measured (mean over seeds), its ±, published, Δ.
RECONSTRUCTION_COLUMNS = ("schedule", "T", "mean_type", "var_type", "loss_type", "S", "seeds", "reconstruction MSE",
                          "reconstruction MSE ±", "reconstruction MSE (paper)", "reconstruction MSE Δ",
                          "network evaluations", "skip", "images", "status", "not comparable", "source")


def reconstruction_table(run_dirs: dict[str, Path], steps, published: pd.DataFrame | None, sweep: str, *,
                         scaled_down: bool = False) -> pd.DataFrame:
    """DDIM Table 2: one row per setting (seeds pooled) and S of ``steps`` (each run's ``reconstruction/S<S>.json``,
    ``ddpm evaluate reconstruction``): the per-dimension MSE on [0, 1] of test images encoded and decoded on S steps
    (the mean over seeds), its ± (one seed: the standard error over the images; two or more: the standard deviation
    over seeds), the published error, Δ = measured − paper only where the error was measured as the paper's
    (:func:`ddpm.paper.not_comparable`: not scaled down, the whole CIFAR-10 test split; ``not comparable`` says why
    not), the network evaluations per image (both ways), the skip and the number of test images. A setting whose
    training diverged has its row, with no error. No ``steps``: a table without rows."""
    from .paper import SETTING_AXES, not_comparable, published_for_sampler
    from .reconstruction import METRIC, reconstruction_point

    cells: dict[tuple, list[dict]] = {}
    for name, folder in run_dirs.items():
        setting = _setting(folder, name)
        for S in sorted(steps):
            path = folder / "reconstruction" / f"S{S}.json"
            found = _read_json(path, name)
            if DIVERGED not in found and found.get("steps") != S:
                raise ValueError(f"{path} records the reconstruction on S = {found.get('steps')} steps, but it is the "
                                 f"file of S = {S}: delete it and run the workflow again")
            cells.setdefault((*(setting[a] for a in SETTING_AXES), S), []).append(found)
    rows = []
    for key, results in cells.items():
        setting, S = dict(zip(SETTING_AXES, key[:-1])), key[-1]
        measured = [r for r in results if DIVERGED not in r]
        values = [r[METRIC] for r in measured]
        row = {**setting, "S": S, "seeds": len(results),
               "reconstruction MSE": float(np.mean(values)) if values else float("nan"),
               "reconstruction MSE ±": (float(np.std(values, ddof=1)) if len(values) > 1
                                        else measured[0][f"{METRIC}_stderr"] if measured else float("nan"))}
        skips = sorted({r["skip"] for r in measured})
        paper = None
        if published is not None:
            point = reconstruction_point(S, skips[0] if skips else "uniform")  # the skip is no key of the paper's
            paper = published_for_sampler(published, sweep, setting, point).get(METRIC)
        images = min((r["num_images"] for r in measured), default=float("nan"))
        reasons = not_comparable(METRIC, reconstruction_images=images, scaled_down=scaled_down)
        row["reconstruction MSE (paper)"] = paper["value"] if paper else None
        row["reconstruction MSE Δ"] = (row["reconstruction MSE"] - paper["value"]
                                       if paper and measured and not reasons else None)
        evaluations = sorted({r["network_evaluations"] for r in measured})
        row["network evaluations"] = evaluations[0] if len(evaluations) == 1 else float("nan")
        row["skip"] = ", ".join(skips)
        row["images"] = images
        row["status"] = "; ".join(sorted({"finished" if DIVERGED not in r else f"diverged at step {r[DIVERGED]}"
                                          for r in results}))
        row["not comparable"] = ", ".join(reasons) if paper else ""
        row["source"] = f"{paper['paper']}, {paper['table']}" if paper else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RECONSTRUCTION_COLUMNS))


# ---------------------------------------------------------------------------------------------- the report job
#: The tables of a sweep, the main one first: kind → the suffix of its files' stem.
TABLE_KINDS = {"main": "", "paper": "-paper", "samplers": "-samplers", "fid-over-training": "-fid-over-training",
               "rate-distortion": "-rate-distortion", "reconstruction": "-reconstruction"}
TABLE_CAPTIONS = {
    "main": "{name}: every setting × sampler point, and two reference rows scored the same way",
    "paper": "{name} in the paper's layout: measured, published and Δ per setting (seeds pooled)",
    "samplers": "{name}: FID against the number of sampling steps S, per sampler (DDIM Table 1's layout)",
    "fid-over-training": "{name}: FID and IS of each scored checkpoint",
    "rate-distortion": "{name}: rate and distortion along the reverse process (DDPM Table 4)",
    "reconstruction": "{name}: test images encoded by DDIM (η = 0) and decoded on S steps each way, the per-dimension "
                      "MSE on [0, 1] (DDIM Table 2); ± is its standard error over the images (one seed) or the "
                      "standard deviation over seeds",
}

def write_report(runs, *, out_stem: str, gaussian, test_split, loss_figure, published=None, paper_sweep=None,
                 scaled_down: bool = False, nll_train: bool = False, snapshot_steps=(), rate_distortion_figure=None,
                 schedules_figure=None, schedule_rescale: bool = False, fid_over_training_figure=None,
                 samplers=DEFAULT_SAMPLERS, samplers_figure=None, tracking=None, config: dict | None = None,
                 html_tables=None, reconstruction_steps=()) -> pd.DataFrame:
    """``ddpm report``: a sweep's tables (``<out_stem>.{csv,md,tex}``; ``-fid-over-training``, ``-rate-distortion``
    and, with the papers' numbers ``published``, ``-paper`` beside them) and figures; with ``tracking`` (the
    sweep's tracking file), every table and figure also goes to the sweep's parent MLflow run (with ``config``, the
    sweep's resolved config), which is then finished. ``samplers``: the sweep's sampler points, in order; the first
    is each setting's own (the paper table and FID over training); ``-samplers`` lays out every point.
    ``reconstruction_steps``: the S of every run's ``reconstruction/S<S>.json``, laid out in ``-reconstruction``
    (:func:`reconstruction_table`; no S: a table without rows).
    ``html_tables``: six paths, where the tables go as HTML pages too (for the Snakemake report), in the order of
    :data:`TABLE_KINDS`. Returns the main table."""
    from .paper import load_published

    published = load_published(published) if published else None  # read first: a bad file stops here
    paper_sweep = paper_sweep or Path(out_stem).name
    run_dirs = {Path(r).name: Path(r) for r in runs}
    table = build_table(run_dirs, {GAUSSIAN_ROW: Path(gaussian), REAL_ROW: Path(test_split)},
                        samplers=samplers, nll_train=nll_train)
    if html_tables and len(html_tables) != len(TABLE_KINDS):
        raise ValueError(f"html_tables needs {len(TABLE_KINDS)} paths ({', '.join(TABLE_KINDS)}), got {len(html_tables)}")
    html = dict(zip(TABLE_KINDS, html_tables)) if html_tables else {}
    name = Path(out_stem).name

    def write(kind: str, part: pd.DataFrame, **options) -> list[Path]:
        return write_tables(part, f"{out_stem}{TABLE_KINDS[kind]}", caption=TABLE_CAPTIONS[kind].format(name=name),
                            html=html.get(kind), **options)

    outputs = write("main", table)
    curve = fid_over_training_table(run_dirs, snapshot_steps, sampler=samplers[0])
    outputs += write("fid-over-training", curve)
    by_sampler = samplers_table(run_dirs, samplers, published, paper_sweep, scaled_down=scaled_down)
    outputs += write("samplers", by_sampler, drop_empty=True)  # no published numbers: no paper, Δ columns
    print(by_sampler.to_string(index=False))
    beside = pd.DataFrame()
    if published is not None:
        own = table[table["sampler"].isna() | (table["sampler"] == samplers[0])]  # the settings' own and baselines
        beside = paper_table(own, published, paper_sweep, scaled_down=scaled_down, curve=curve)
        print(beside.to_string(index=False))
    outputs += write("paper", beside, drop_empty=True)  # a scaled-down run: no Δ, a column of – each
    outputs += write("rate-distortion", rate_distortion_table(run_dirs, published, paper_sweep))
    reconstruction = reconstruction_table(run_dirs, reconstruction_steps, published, paper_sweep,
                                          scaled_down=scaled_down)
    outputs += write("reconstruction", reconstruction, drop_empty=not reconstruction.empty)  # scaled down: no Δ
    if not reconstruction.empty:
        print(reconstruction.to_string(index=False))
    plot_loss_curves(run_dirs, loss_figure)
    figures = [Path(loss_figure)]
    if rate_distortion_figure:
        plot_rate_distortion(run_dirs, rate_distortion_figure)
        figures.append(Path(rate_distortion_figure))
    if schedules_figure:
        plot_schedules(run_dirs, schedules_figure, rescale=schedule_rescale)
        figures.append(Path(schedules_figure))
    if fid_over_training_figure:
        plot_fid_over_training(curve, fid_over_training_figure)
        figures.append(Path(fid_over_training_figure))
    if samplers_figure:
        plot_samplers(by_sampler, samplers_figure)
        figures.append(Path(samplers_figure))
    if tracking:
        from . import tracking as mlflow_tracking

        info = mlflow_tracking.read_tracking(tracking)
        if config is not None:
            mlflow_tracking.log_config(info["tracking_uri"], info["parent_run_id"], config)
        for path in [*outputs, *figures]:
            mlflow_tracking.log_artifact(info["tracking_uri"], info["parent_run_id"], path, "report")
        mlflow_tracking.finish_run(info["tracking_uri"], info["parent_run_id"], "FINISHED")
        print(f"MLflow ({info['tracking_uri']}): the runs sorted by FID with its columns at <the UI's address>/"
              f"{mlflow_tracking.view_url(info['experiment_id'])}")
    return table
